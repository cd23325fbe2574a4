"""Progress is the engine's: download, load and rounds reach the page, the CLI and the webui.

Downloads come from the loopback fake hub of test_models (never the network); the
model itself is the scripted backend of test_upsample_loop.
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import sys
from pathlib import Path

import pytest
from fake_lookup import FakeLookup
from fake_upsampler import FakeUpsampler
from test_batched import BatchedScripted
from test_models import Q8, REPO, FakeHub, gguf_bytes
from test_models import clean_env as clean_env  # autouse: no user's HF cache or offline flags
from test_models import fake_hub as fake_hub
from test_upsample_loop import ScriptedBackend, make
from test_webui_script import webui as webui  # the stand-in webui, with its fake engine

from dtg_lib import cli, model_selection
from dtg_lib.backends import BackendCache
from dtg_lib.models import ProgressEvent
from dtg_lib.settings import UpsampleSettings
from dtg_lib.upsampler import Upsampler

SHORT = UpsampleSettings(target="short", max_rounds=4)


def _downloading_upsampler(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Upsampler, bytes]:
    """An engine whose default model is only on the fake hub, and a backend without weights."""
    data = gguf_bytes(tokens=3000)
    fake_hub.files[(REPO, Q8)] = data
    # The GGUF stays a GGUF even where llama.cpp is not installed: nothing loads it for real.
    monkeypatch.setattr(model_selection, "_available", lambda backend: True)
    cache = BackendCache(loader=lambda *args, **options: ScriptedBackend(per_round=5))
    upsampler = Upsampler(model_dir=tmp_path / "models", lookup=FakeLookup(), backends=cache)
    return upsampler, data


def _phases(events: list[ProgressEvent]) -> list[str]:
    """The phases in the order they came, each run of one phase once."""
    order: list[str] = []
    for event in events:
        if not order or order[-1] != event.phase:
            order.append(event.phase)
    return order


# ---------------------------------------------------------------- the engine


def test_a_download_then_the_load_then_the_rounds_are_reported_in_order(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upsampler, data = _downloading_upsampler(fake_hub, tmp_path, monkeypatch)
    terminal = _Terminal()  # where the hub would draw its own bar
    monkeypatch.setattr(sys, "stderr", terminal)
    events: list[ProgressEvent] = []
    result = upsampler.upsample("1girl, solo", SHORT, 7, progress=events.append)
    assert result.new_tags
    assert _phases(events) == ["download", "load", "generate"]
    downloads = [e for e in events if e.phase == "download"]
    assert all(e.total == len(data) and e.unit == "bytes" for e in downloads)
    assert all(Q8 in e.message for e in downloads)
    done = [e.done for e in downloads]
    assert done == sorted(done) and done[-1] == len(data)
    loads = [e for e in events if e.phase == "load"]
    assert [(e.done, e.total) for e in loads] == [(0, None), (1, 1)]
    assert "delta-rev2" in loads[0].message
    import huggingface_hub

    if "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters:
        # The caller shows progress: no hub bar besides. (Hubs before 0.26, as in
        # AUTOMATIC1111 1.10, take no tqdm_class: there the hub's own bar stays.)
        assert Q8 not in terminal.getvalue()


def test_a_model_on_disk_is_loaded_without_a_download(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upsampler, _ = _downloading_upsampler(fake_hub, tmp_path, monkeypatch)
    upsampler.upsample("1girl", SHORT, 1)  # fetches it
    events: list[ProgressEvent] = []
    upsampler.upsample("1girl", SHORT, 2, progress=events.append)
    assert _phases(events) == ["load", "generate"]


def test_each_round_is_reported_and_the_end_fills_the_bar(monkeypatch) -> None:
    events: list[ProgressEvent] = []
    upsampler = make(ScriptedBackend(per_round=2), monkeypatch)
    result = upsampler.upsample("1girl", SHORT, 3, progress=events.append)
    rounds = [e for e in events if e.phase == "generate"]
    # One event per round, then the end.
    assert len(rounds) == result.rounds + 1
    assert [e.done for e in rounds[:-1]] == list(range(1, result.rounds + 1))
    assert all(e.total == SHORT.max_rounds and e.unit == "rounds" for e in rounds)
    assert rounds[-1].done == rounds[-1].total and rounds[-1].message == "Expanded the prompt"


def test_prompts_one_after_another_count_on_one_bar(monkeypatch) -> None:
    events: list[ProgressEvent] = []
    upsampler = make(ScriptedBackend(per_round=2), monkeypatch)
    upsampler.upsample_many(["1girl", "1boy"], SHORT, [1, 2], progress=events.append)
    rounds = [e for e in events if e.phase == "generate"]
    assert rounds[0].message == "Expanding: prompt 1 of 2, round 1"
    assert any(e.message.startswith("Expanding: prompt 2 of 2") for e in rounds)
    assert all(e.total == 2 * SHORT.max_rounds for e in rounds)
    done = [e.done for e in rounds]
    assert done == sorted(done) and done[-1] == 2 * SHORT.max_rounds


def test_prompts_expanded_together_report_each_batched_round(monkeypatch) -> None:
    events: list[ProgressEvent] = []
    backend = BatchedScripted(per_round=2)
    upsampler = make(backend, monkeypatch)
    upsampler.upsample_many(["1girl", "1boy", "1girl"], SHORT, [1, 2, 3], progress=events.append)
    rounds = [e for e in events if e.phase == "generate"]
    assert len(rounds) == len(backend.batches) + 1
    assert rounds[0].message == "Expanding 3 prompts together: round 1" and rounds[0].done == 3


def test_a_failing_progress_display_never_costs_the_expansion(monkeypatch, caplog) -> None:
    calls = []

    def broken(event: ProgressEvent) -> None:
        calls.append(event)
        raise OSError("the display went away")

    upsampler = make(ScriptedBackend(per_round=2), monkeypatch)
    with caplog.at_level(logging.WARNING, logger="dtg"):
        result = upsampler.upsample("1girl", SHORT, 3, progress=broken)
    assert result.new_tags and len(calls) == 1
    assert [r.message for r in caplog.records if "progress" in r.message] == [
        "progress display failed, shown no more: OSError: the display went away"
    ]


# ---------------------------------------------------------------- the page


def test_the_page_resolves_the_model_once_and_shows_the_engines_progress(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gradio")
    from dtg_app import page
    from dtg_lib import models

    upsampler, _ = _downloading_upsampler(fake_hub, tmp_path, monkeypatch)
    resolved = []
    real_resolve = models.resolve_model

    def counting_resolve(*args, **kwargs):
        resolved.append(args[0])
        return real_resolve(*args, **kwargs)

    monkeypatch.setattr(models, "resolve_model", counting_resolve)
    shown: list[tuple] = []
    config = page.PageConfig(tmp_path / "models", "delta-rev2", allow_download=True)
    form = {"prompt": "1girl, solo", "seeds": [5], "width": 1024, "height": 1024}
    _, _, final, status = page.run_form(
        {**form, "settings": {"target": "short", "max_rounds": 4}},
        lambda: upsampler,
        config,
        lambda value, desc=None, unit="steps": shown.append((value, desc, unit)),
    )
    assert final.startswith("1girl,") and "tag" in final and status.startswith("Expanded")
    assert len(resolved) == 1, resolved  # the engine's, no download of the page's own
    gets = [r for r in fake_hub.requests if r[0] == "GET"]
    assert len(gets) == 1
    descriptions = [desc for _, desc, _ in shown]
    assert descriptions[0] == f"Downloading {Q8}" and shown[0][2] == "bytes"
    assert any(d.startswith("Loading delta-rev2") for d in descriptions)
    assert descriptions[-1] == "Expanded the prompt" and shown[-1][0] == (4, 4)


# ---------------------------------------------------------------- the CLI


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_cli_draws_a_bar_only_on_a_terminal() -> None:
    assert cli.shows_progress_bar(_Terminal())
    assert not cli.shows_progress_bar(io.StringIO())  # a pipe or a file
    with open(os.devnull, "w") as closed:
        pass
    assert not cli.shows_progress_bar(closed)
    assert not cli.shows_progress_bar(object())  # no isatty at all


def test_the_cli_bar_shows_each_phase_and_is_cleared(monkeypatch) -> None:
    pytest.importorskip("tqdm")
    terminal = _Terminal()
    with cli.progress_display(terminal) as show:
        show(ProgressEvent("download", f"Downloading {Q8}", 512, 2048, "bytes"))
        show(ProgressEvent("load", "Loading delta-rev2 on cpu"))
        show(ProgressEvent("generate", "Expanding: round 1", 1, 4, "rounds"))
    drawn = terminal.getvalue()
    assert f"Downloading {Q8}" in drawn and "Loading delta-rev2 on cpu" in drawn
    assert "Expanding: round 1" in drawn


def test_the_cli_shows_nothing_off_a_terminal(monkeypatch, capsys) -> None:
    seen = []

    class Reporting:
        def upsample(self, prompt, settings, seed, width, height, progress=None):
            progress(ProgressEvent("download", f"Downloading {Q8}", 1, 2, "bytes"))
            seen.append(progress)
            return FakeUpsampler._result(prompt, 1, settings)

    monkeypatch.setattr(cli, "_upsampler", lambda args: Reporting())
    assert cli.main(["1girl"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "1girl, tag1" and err == ""
    assert seen and seen[0] is not None  # given, so the hub's own bar stays off too


# ---------------------------------------------------------------- the webui


def test_the_webui_job_shows_progress_in_the_hosts_text_and_gives_it_back(webui) -> None:
    from test_webui_script import FakeResult, on

    from dtg_webui import engine

    state = webui.shared.state
    state.begin("txt2img")
    seen_in_host: list[str | None] = []

    class ReportingEngine:
        def upsample_many(self, prompts, settings, seeds, width=1024, height=1024, progress=None):
            for event in (
                ProgressEvent("download", f"Downloading {Q8}", 50_000_000, 100_000_000, "bytes"),
                ProgressEvent("load", "Loading delta-rev2 on cpu"),
                ProgressEvent("generate", "Expanding: round 1", 1, 20, "rounds"),
            ):
                if progress is not None:
                    progress(event)
                seen_in_host.append(state.textinfo)
            return [
                FakeResult(p, f"{p}, dtg {s}", (f"dtg {s}",), s) for p, s in zip(prompts, seeds)
            ]

    engine.set_factory(lambda model_dir, embeddings: ReportingEngine())
    processed = webui.run(webui.txt2img(on(), prompt="1girl", seed=3))
    assert processed.all_prompts == ["1girl, dtg 3"]
    assert seen_in_host == [
        f"DTG: Downloading {Q8} (50 of 100 MB)",
        "DTG: Loading delta-rev2 on cpu",
        "DTG: Expanding: round 1 (5%)",
    ]
    assert state.textinfo is None  # the job's own text is back once DTG is done


def test_an_engine_without_progress_still_runs_in_the_webui(webui) -> None:
    from test_webui_script import on

    processed = webui.run(webui.txt2img(on(), prompt="1girl", seed=3))
    assert processed.all_prompts == ["1girl, dtg 3"]  # the fixture's engine takes no progress

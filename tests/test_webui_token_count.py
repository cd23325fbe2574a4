"""The webui's token budget counts with the host's own counter (dtg_webui.token_count).

The stand-in host counts 10 tokens for every comma-separated part, far more than CLIP
does for these short tags, so a final prompt cut to its count proves which counter was
used. The engine runs for real (the scripted backend answers for the model).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import types
from pathlib import Path

import pytest
from fake_lookup import FakeLookup
from test_upsample_loop import ScriptedBackend
from test_webui_script import on, webui  # noqa: F401 (webui is the fixture)

import dtg_lib.upsampler as upsampler_module
from dtg_lib import budget
from dtg_lib.backends import BackendCache
from dtg_lib.clip_tokens import ClipVocabularyMissing, count_tokens
from dtg_lib.model_selection import ModelChoice
from dtg_webui import engine, preview_ui, token_count

try:
    budget.require_vocabulary("fill")
except ClipVocabularyMissing as missing:
    pytest.skip(f"{missing} (pip install --no-deps open_clip_torch)", allow_module_level=True)

USER = "1girl, solo"
PER_PART = 10


def parts_of(text: str) -> int:
    return len([part for part in text.split(",") if part.strip()])


def stand_in_lengths(text: str) -> tuple[int, int]:
    """The stand-in host's count of one prompt line: (tokens, target), as the host answers."""
    tokens = PER_PART * parts_of(text)
    return tokens, math.ceil(max(tokens, 1) / 75) * 75


class Hijack:
    """AUTOMATIC1111's `modules.sd_hijack.model_hijack`, with the counter it is given."""

    def __init__(self, lengths) -> None:
        self.lengths = lengths
        self.seen: list[str] = []
        self.embedding_db = None

    def get_prompt_lengths(self, text):
        self.seen.append(text)
        return self.lengths(text)


def a1111_counter(lengths=stand_in_lengths) -> Hijack:
    hijack = Hijack(lengths)
    module = types.ModuleType("modules.sd_hijack")
    module.model_hijack = hijack
    sys.modules["modules.sd_hijack"] = module  # the webui fixture takes every modules.* away
    return hijack


class FakeInitialModel:
    """Forge's stand-in model before a checkpoint loads: it counts words."""

    def get_prompt_lengths_on_ui(self, text):
        return len(text.split()), 75


class ForgeModel:
    def __init__(self, lengths) -> None:
        self.get_prompt_lengths_on_ui = lengths


def forge_counter(model) -> None:
    module = types.ModuleType("modules.sd_models")
    module.FakeInitialModel = FakeInitialModel
    module.model_data = types.SimpleNamespace(sd_model=model)
    sys.modules["modules.sd_models"] = module
    # Forge's model_hijack takes the model as a second argument: never called with one.
    a1111_counter(lambda text: pytest.fail("Forge's model_hijack must not be called"))


def t5_lengths(text: str) -> tuple[int, int]:
    """Forge's Flux/Chroma/SD 3.5 counter: T5 tokens against 255."""
    tokens = len(text.split()) + 1
    return tokens, max(255, tokens)


@pytest.fixture
def scripted(webui, monkeypatch):  # noqa: F811
    """The webui's own engine factory, with the scripted backend for the model."""
    real = upsampler_module.Upsampler
    backend = ScriptedBackend(per_round=6)
    choice = ModelChoice("llama.cpp", Path("scripted.gguf"), "scripted", True)

    def scripted_upsampler(**given):
        made = real(
            lookup=FakeLookup(), backends=BackendCache(loader=lambda *a, **k: backend), **given
        )
        monkeypatch.setattr(made, "_choose_model", lambda settings, progress=None: choice)
        return made

    monkeypatch.setattr(upsampler_module, "Upsampler", scripted_upsampler)
    engine.set_factory(None)  # the webui's own factory, as a real job has
    return webui


def job_prompt(webui, **values) -> str:  # noqa: F811
    p = webui.txt2img(on(target="very_long", **values), prompt=USER, seed=3)
    (final,) = webui.run(p).all_prompts
    return final


def preview_count(**values) -> tuple[str, tuple[int, int]]:
    html = preview_ui.run_preview(USER, 3, 1024, 1024, [], *on(target="very_long", **values))
    shown = re.search(r"(\d+)/(\d+) tokens", html)
    final = re.search(r'<pre class="dtg-preview-final"[^>]*>(.*?)</pre>', html, re.S)
    assert shown and final, html
    return final.group(1), (int(shown.group(1)), int(shown.group(2)))


def test_a_job_fits_the_budget_by_the_hosts_count(scripted):
    a1111_counter()
    final = job_prompt(scripted, budget="chunks:1")
    assert final.startswith("1girl,") and "solo" in final
    # As many parts as the host's 75 tokens hold, no more: CLIP would take far more.
    assert parts_of(final) == 75 // PER_PART
    assert count_tokens(final).tokens < 75 // 2


def test_the_preview_shows_the_hosts_count(scripted):
    hijack = a1111_counter()
    final, shown = preview_count(budget="fill")
    assert shown == stand_in_lengths(final) == (70, 75)
    assert final in hijack.seen  # the host counted the final prompt itself
    _, shown = preview_count(budget="none")
    assert shown[0] > 75 and shown[0] % PER_PART == 0  # no budget: still the host's count


def test_without_a_host_counter_the_engine_counts(scripted, caplog):
    caplog.set_level(logging.WARNING, logger="dtg")
    final, shown = preview_count(budget="chunks:1")
    assert shown == (count_tokens(final).tokens, 75)
    assert parts_of(final) > 75 // PER_PART
    preview_count(budget="chunks:1")
    told = [r.getMessage() for r in caplog.records if "own CLIP counter" in r.getMessage()]
    assert len(told) == 1 and "no token counter" in told[0]


def test_a_failing_host_counter_falls_back_and_is_told_once(scripted, caplog):
    def broken(text):
        raise RuntimeError("no tokenizer on this model")

    a1111_counter(broken)
    caplog.set_level(logging.WARNING, logger="dtg")
    final = job_prompt(scripted, budget="chunks:1")
    assert count_tokens(final).tokens <= 75 < PER_PART * parts_of(final)
    _, shown = preview_count(budget="chunks:1")
    assert shown[1] == 75
    told = [r.getMessage() for r in caplog.records if "own CLIP counter" in r.getMessage()]
    assert len(told) == 1 and "no tokenizer on this model" in told[0]


def test_a1111_without_a_loaded_checkpoint_answers_dashes(scripted):
    a1111_counter(lambda text: ("-", "-"))
    final, shown = preview_count(budget="chunks:1")
    assert shown == (count_tokens(final).tokens, 75)


def test_forge_counts_with_the_loaded_model(scripted):
    forge_counter(ForgeModel(stand_in_lengths))
    final = job_prompt(scripted, budget="chunks:1")
    assert parts_of(final) == 75 // PER_PART


@pytest.mark.parametrize(
    "model", [FakeInitialModel(), ForgeModel(t5_lengths), ForgeModel(lambda text: (0, 75))]
)
def test_forge_without_a_clip_count_falls_back(scripted, model):
    forge_counter(model)
    final, shown = preview_count(budget="chunks:1")
    assert shown == (count_tokens(final).tokens, 75)


def test_the_longest_of_the_prompts_the_counter_measures():
    seen: list[str] = []

    def lengths(text):
        seen.append(text)
        return stand_in_lengths(text)

    counter = token_count.HostTokenCounter(lambda: lengths)
    counted = counter.count("a, b <lora:x:1> AND c, d, e :1.2 AND [f:g, h:5]")
    assert counted == budget.Count(30, 75)
    assert {"a, b", "c, d, e", "f", "g, h"} <= {text.strip() for text in seen}


def test_the_tiny_tipo_model_fits_by_the_given_counter(tiny_tipo_model):
    pytest.importorskip("llama_cpp")
    from dtg_lib.settings import UpsampleSettings

    cache = BackendCache()
    counter = token_count.HostTokenCounter(lambda: stand_in_lengths)
    made = upsampler_module.Upsampler(
        lookup=FakeLookup(), backends=cache, allow_download=False, token_counter=counter
    )
    settings = UpsampleSettings(
        model=str(tiny_tipo_model.gguf_f16), backend="llama.cpp", target="long", budget="chunks:1"
    )
    try:
        result = made.upsample(USER, settings, seed=4, nl_prompt="a girl reading")
    finally:
        cache.unload()
    assert (result.tokens, result.token_target) == stand_in_lengths(result.final_prompt)
    assert result.tokens <= 75 and "a girl reading" in result.final_prompt
    assert count_tokens(result.final_prompt).tokens < result.tokens  # not the engine's count

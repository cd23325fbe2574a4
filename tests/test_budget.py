"""The CLIP token budget (`budget`: none, fill, chunks:N) on the engine and its faces.

The scripted backend decides the model's answers; the tiny models check the real loops.
Counting needs open_clip_torch's vocabulary, as in the engine.
"""

from __future__ import annotations

import json
import math

import pytest
from test_upsample_loop import ScriptedBackend, make

from dtg_lib import budget, cli, http_api
from dtg_lib.assemble import assemble
from dtg_lib.clip_tokens import ClipVocabularyMissing, count_tokens
from dtg_lib.settings import SettingsError, UpsampleSettings
from dtg_webui.args import ARG_NAMES, ScriptArgs
from dtg_webui.infotext import PARAMS_KEY, PASTE_KEYS, on_infotext_pasted, params_text

try:
    budget.require_vocabulary("fill")
except ClipVocabularyMissing as missing:
    pytest.skip(f"{missing} (pip install --no-deps open_clip_torch)", allow_module_level=True)

USER = "1girl, solo, (red hair:1.2), looking at viewer"
# About 110 CLIP tokens: over one chunk on its own.
LONG_USER = ", ".join(f"very long descriptive tag number {i}" for i in range(16))


def _keeps(user: str, final: str) -> bool:
    """Every piece of the user's text is in the final prompt (formats may regroup them)."""
    return all(piece.strip() in final for piece in user.split(","))


def _expand(monkeypatch, prompt=USER, per_round=6, **given):
    backend = ScriptedBackend(per_round=per_round)
    settings = UpsampleSettings(target="very_long", max_rounds=30, **given)
    return make(backend, monkeypatch).upsample(prompt, settings, seed=3), backend


@pytest.mark.parametrize("good", ["none", "fill", "chunks:1", "chunks:32"])
def test_valid_budgets(good):
    assert UpsampleSettings(budget=good).budget == good
    assert UpsampleSettings.from_dict({"budget": good}).to_dict()["budget"] == good


@pytest.mark.parametrize("bad", ["chunks:0", "chunks:33", "chunks:", "chunks:x", "full", 2, None])
def test_invalid_budgets_are_clear_errors(bad):
    with pytest.raises(SettingsError, match="budget"):
        UpsampleSettings(budget=bad)


def test_fill_stays_in_the_chunk_the_prompt_reaches(monkeypatch):
    result, _ = _expand(monkeypatch, budget="fill")
    counted = count_tokens(result.final_prompt)
    assert counted.tokens <= 75 and counted.chunks == 1
    assert (result.tokens, result.token_target) == (counted.tokens, 75)
    assert _keeps(USER, result.final_prompt)
    assert result.new_tags  # it did add tags, up to the chunk's end


def test_chunks_n_caps_the_final_prompt_and_keeps_the_user_text(monkeypatch):
    result, _ = _expand(monkeypatch, prompt=LONG_USER, budget="chunks:2")
    assert count_tokens(LONG_USER).tokens > 75
    assert _keeps(LONG_USER, result.final_prompt)
    assert count_tokens(result.final_prompt).tokens <= 150 == result.token_target
    assert result.new_tags


def test_budget_none_changes_nothing(monkeypatch):
    unset, _ = _expand(monkeypatch)
    none, _ = _expand(monkeypatch, budget="none")
    assert none.final_prompt == unset.final_prompt and none.new_tags == unset.new_tags
    # No budget: the very_long target goes past the first chunk, and the count says so.
    assert none.tokens == count_tokens(none.final_prompt).tokens > 75
    assert not any("budget" in n for n in none.notices)


def test_the_loop_stops_once_the_budget_is_full(monkeypatch):
    _, unbounded = _expand(monkeypatch)
    _, bounded = _expand(monkeypatch, budget="fill")
    assert len(bounded.calls) < len(unbounded.calls)


def test_a_prompt_already_over_budget_is_kept_whole_with_a_notice(monkeypatch):
    result, _ = _expand(monkeypatch, prompt=LONG_USER, budget="chunks:1")
    assert _keeps(LONG_USER, result.final_prompt) and result.new_tags == ()
    assert any("already" in n and "chunks:1" in n for n in result.notices)
    assert result.tokens == count_tokens(result.final_prompt).tokens > 75


def test_the_binary_search_keeps_the_most_tags_that_fit(monkeypatch):
    upsampler = make(ScriptedBackend(), monkeypatch)
    settings = UpsampleSettings(budget="chunks:2")
    classified = upsampler.prepare(USER, settings).classified
    tags = [f"extra tag {i}" for i in range(80)]
    counts = []
    real_count = budget.count
    monkeypatch.setattr(budget, "count", lambda text: counts.append(text) or real_count(text))
    final, fitted = budget.fit_tags(classified, tags, settings)

    def tokens(kept):
        return count_tokens(assemble(classified, tags[:kept], settings.format)).tokens

    brute = max(k for k in range(len(tags) + 1) if tokens(k) <= 150)
    assert fitted.kept == brute < len(tags)
    assert final == assemble(classified, tags[:brute], settings.format)
    assert len(counts) <= 4 + math.ceil(math.log2(len(tags)))  # not one count per tag


def test_a_budget_without_the_vocabulary_is_a_clear_error(monkeypatch):
    def missing():
        raise ClipVocabularyMissing("counting CLIP tokens needs the open_clip_torch package")

    monkeypatch.setattr("dtg_lib.clip_bpe.vocabulary_path", missing)
    monkeypatch.setattr("dtg_lib.clip_bpe._vocabulary", None)
    with pytest.raises(ClipVocabularyMissing) as caught:
        _expand(monkeypatch, budget="fill")
    assert caught.value.http_status == 503
    result, _ = _expand(monkeypatch)  # no budget: expanded, just not counted
    assert result.new_tags and result.tokens is None and result.token_target is None


def test_cli_budget_and_token_line(monkeypatch, capsys):
    upsampler = make(ScriptedBackend(per_round=6), monkeypatch)
    monkeypatch.setattr(cli, "_upsampler", lambda args: upsampler)
    argv = [USER, "--target", "very_long", "--max-rounds", "30", "--seed", "3"]
    assert cli.main([*argv, "--budget", "fill"]) == 0
    captured = capsys.readouterr()
    final = captured.out.strip()
    assert f"tokens: {count_tokens(final).tokens}/75" in captured.err
    assert cli.main([*argv, "--budget", "chunks:1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tokens"] <= 75 and data["token_target"] == 75
    assert cli.main([*argv, "--budget", "chunks:99"]) == 2
    assert "budget" in capsys.readouterr().err


def test_http_budget_round_trip(monkeypatch, tmp_path):
    upsampler = make(ScriptedBackend(per_round=6), monkeypatch)
    body = {"prompt": USER, "seed": 3, "settings": {"target": "very_long", "budget": "fill"}}
    request = http_api.parse_request(body, tmp_path, {})
    status, payload = http_api.run_request(lambda: upsampler, request)
    assert status == 200, payload
    (result,) = payload["results"]
    assert result["tokens"] == count_tokens(result["final_prompt"]).tokens <= 75
    assert result["token_target"] == 75
    with pytest.raises(http_api.RequestError, match="budget"):
        http_api.parse_request({**body, "settings": {"budget": "chunks:0"}}, tmp_path, {})


def test_webui_budget_keeps_its_positional_place_and_survives_a_paste():
    # Index 14, as when it was appended; the TIPO args came after it.
    budget = ARG_NAMES.index("budget")
    assert budget == 14
    older = ScriptArgs.from_args([True, "short"])  # an older caller, without budget
    assert older.settings(backend="auto", device="cpu").budget == "none"
    positional = [None] * len(ARG_NAMES)
    defaults = ScriptArgs()
    positional = [getattr(defaults, name) for name in ARG_NAMES]
    positional[0], positional[budget] = True, "chunks:2"
    settings = ScriptArgs.from_args(positional).settings(backend="auto", device="cpu")
    assert settings.budget == "chunks:2"
    assert (
        ScriptArgs.from_args([{"budget": "fill"}]).settings(backend="auto", device="cpu").budget
        == "fill"
    )
    params = {PARAMS_KEY: params_text(settings, 5), "DTG original prompt": USER}
    assert json.loads(params[PARAMS_KEY])["budget"] == "chunks:2"
    on_infotext_pasted("", params)
    assert params[PASTE_KEYS["budget"]] == "chunks:2"
    with pytest.raises(SettingsError, match="budget"):
        ScriptArgs(enabled=True, budget="lots").settings(backend="auto", device="cpu")


def test_preview_shows_the_count():
    from dtg_lib.preview import render_preview_html, render_preview_text

    result = {"final_prompt": USER, "new_tags": [], "rounds": 1, "seed": 1, "notices": []}
    result |= {"timings": {"total_s": 0.1}, "model": "m", "backend": "b", "tag_categories": {}}
    counted = {**result, "tokens": 87, "token_target": 150}
    assert "87/150 tokens (2 chunks)" in render_preview_html(counted)
    assert "87/150 tokens" in render_preview_text(counted)
    assert "tokens" not in render_preview_html({**result, "tokens": None, "token_target": None})


def test_tiny_dtg_model_within_budget(tiny_model):
    pytest.importorskip("llama_cpp")
    from fake_lookup import FakeLookup

    from dtg_lib.backends import BackendCache
    from dtg_lib.upsampler import Upsampler

    cache = BackendCache()
    engine = Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    try:
        for chosen, limit in (("fill", 75), ("chunks:1", 75), ("chunks:2", 150)):
            settings = UpsampleSettings(
                model=str(tiny_model.gguf_f16),
                backend="llama.cpp",
                target="very_long",
                budget=chosen,
            )
            result = engine.upsample(USER, settings, seed=2)
            assert _keeps(USER, result.final_prompt)
            assert result.tokens == count_tokens(result.final_prompt).tokens <= limit
    finally:
        cache.unload()


def test_tiny_tipo_model_keeps_the_users_text_within_budget(tiny_tipo_model):
    pytest.importorskip("llama_cpp")
    from fake_lookup import FakeLookup

    from dtg_lib.backends import BackendCache
    from dtg_lib.upsampler import Upsampler

    cache = BackendCache()
    engine = Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    nl = "a girl reading in a (library:1.2)"
    try:
        settings = UpsampleSettings(
            model=str(tiny_tipo_model.gguf_f16),
            backend="llama.cpp",
            target="long",
            nl_length="long",
            budget="chunks:1",
        )
        result = engine.upsample("1girl, solo", settings, seed=4, nl_prompt=nl)
        assert nl in result.final_prompt and "1girl" in result.final_prompt
        assert result.tokens == count_tokens(result.final_prompt).tokens <= 75
    finally:
        cache.unload()

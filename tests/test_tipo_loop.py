"""The TIPO loop, for real, with the project's tiny TIPO model on both backends: the four
uses (extend tags, a sentence into tags, caption tags, extend both), each reproducible
per seed; the CLI dry run, the HTTP fields, and a DTG model ignoring the text."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from fake_lookup import FakeLookup

from dtg_lib import cli
from dtg_lib.backends import BackendCache
from dtg_lib.categories import Category
from dtg_lib.http_api import RequestError, parse_request, result_to_json, run_request
from dtg_lib.settings import SamplingSettings, SettingsError, UpsampleSettings
from dtg_lib.tipo_format import TipoRequest, TipoSampling, build_model_input, plan_passes
from dtg_lib.tipo_loop import plain_text, tipo_sampling
from dtg_lib.upsampler import Upsampler

BACKENDS = ["llama.cpp", "torch"]
NL = "a girl reading in a (library:1.2)"


@pytest.fixture(scope="module")
def engine():
    cache = BackendCache()
    yield Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    cache.unload()


def _model(tiny_tipo_model, backend: str) -> str:
    if backend == "llama.cpp":
        pytest.importorskip("llama_cpp")
        return str(tiny_tipo_model.gguf_f16)
    pytest.importorskip("torch")
    return str(tiny_tipo_model.hf_dir)


def _settings(tiny_tipo_model, backend: str, **given) -> UpsampleSettings:
    return UpsampleSettings(model=_model(tiny_tipo_model, backend), backend=backend, **given)


def _twice(engine, prompt, settings, seed, nl=""):
    first = engine.upsample(prompt, settings, seed, nl_prompt=nl)
    again = engine.upsample(prompt, settings, seed, nl_prompt=nl)
    # Same seed, same everything the user sees (timings aside).
    for field in ("final_prompt", "new_tags", "extended", "generated", "model_input", "rounds"):
        assert getattr(first, field) == getattr(again, field), field
    return first


@pytest.mark.parametrize("backend", BACKENDS)
def test_extend_tags(engine, tiny_tipo_model, backend):
    settings = _settings(tiny_tipo_model, backend, target="very_short")
    result = _twice(engine, "1girl, solo, (smile:1.1)", settings, seed=4)
    assert result.model_input.endswith("target: <|very_short|>\ntag: 1girl, solo, smile")
    assert result.new_tags and result.extended == "" and result.generated == ""
    assert result.final_prompt.startswith("1girl,") and "(smile:1.1)" in result.final_prompt
    assert len(result.new_tags) <= 18 - 3  # very_short's tag maximum, the user's tags counted
    assert result.backend == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sentence_into_tags(engine, tiny_tipo_model, backend):
    settings = _settings(tiny_tipo_model, backend, target="short")
    result = _twice(engine, "", settings, seed=2, nl=NL)
    # The model reads the sentence without webui syntax; the final prompt keeps it as typed.
    assert "<|long_to_tag|>" in result.model_input
    assert "long: a girl reading in a library" in result.model_input
    assert result.final_prompt.startswith(NL)
    assert result.rounds >= 1 and result.completion_tokens > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_caption_tags(engine, tiny_tipo_model, backend):
    settings = _settings(tiny_tipo_model, backend, target="very_short", caption=True)
    result = _twice(engine, "1girl, solo", settings, seed=1)
    assert result.generated and result.extended == ""
    assert result.rounds >= 2  # the tags pass, then the caption pass
    tags_end = result.final_prompt.index(result.new_tags[-1])
    # Tags first, the caption after them (escaped as the webui reads it).
    assert result.final_prompt.rfind(result.generated.split(".")[0][:10]) > tags_end
    assert result.to_dict()["generated"] == result.generated


@pytest.mark.parametrize("backend", BACKENDS)
def test_extend_both(engine, tiny_tipo_model, backend):
    settings = _settings(tiny_tipo_model, backend, target="very_short", nl_length="short")
    result = _twice(engine, "1girl, solo", settings, seed=3, nl="a girl (reading:1.3)")
    assert "<|short_to_tag|>" in result.model_input
    assert "short: a girl reading\ntag: 1girl, solo" in result.model_input
    assert result.new_tags and result.generated.startswith("a girl reading")
    assert "a girl (reading:1.3)" in result.final_prompt
    assert result.final_prompt.index("a girl (reading:1.3)") > result.final_prompt.index("solo")


def test_new_tags_are_capped_by_the_tag_maximum_not_the_sentence_one(engine, tiny_tipo_model):
    settings = _settings(tiny_tipo_model, "llama.cpp", target="very_short")
    few = engine.upsample("1girl, solo, smile", settings, seed=0)
    # tipo-kgen cuts new tags at the sentence maximum (2 for very_short); we use the tag one.
    assert 2 < len(few.new_tags) <= 18 - 3
    many = ", ".join(["1girl", "solo"] + [f"tag{i}" for i in range(14)])
    full = engine.upsample(many, settings, seed=0)
    assert len(full.new_tags) <= 18 - 16


def test_another_seed_gives_another_expansion(engine, tiny_tipo_model):
    settings = _settings(tiny_tipo_model, "llama.cpp", target="short")
    results = {engine.upsample("1girl, solo", settings, seed).new_tags for seed in range(3)}
    assert len(results) > 1


def test_the_ban_list_keeps_new_tags_out_and_sentences_in(engine, tiny_tipo_model):
    settings = _settings(tiny_tipo_model, "llama.cpp", target="very_short", caption=True)
    free = engine.upsample("1girl, solo", settings, 1)
    banned = list(free.new_tags[:3])
    result = engine.upsample("1girl, solo", replace(settings, ban_tags=", ".join(banned)), 1)
    assert not set(banned) & set(result.new_tags)
    assert result.generated  # a ban list names tags; sentences stay as written


def test_a_dtg_model_ignores_the_text_and_says_so(engine, tiny_model):
    pytest.importorskip("llama_cpp")
    settings = UpsampleSettings(model=str(tiny_model.gguf_f16), target="very_short")
    plain = engine.upsample("1girl, solo", settings, 5)
    told = engine.upsample("1girl, solo", settings, 5, nl_prompt="a girl reading")
    assert told.new_tags == plain.new_tags and told.final_prompt == plain.final_prompt
    assert any("natural-language prompt was ignored" in n for n in told.notices)
    assert not any("natural-language" in n for n in plain.notices)
    assert told.extended == told.generated == ""


# ----------------------------------------------------------------- faces


def test_the_dry_run_shows_the_first_pass_input_without_a_model(capsys, tmp_path):
    argv = ["--dry-run", "--json", "--offline", "--model", "tipo-500m", "--model-dir"]
    argv += [str(tmp_path), "--nl", "a girl (reading:1.2)", "--target", "short"]
    argv += ["--nl-length", "very_long", "--width", "832", "--height", "1216", "1girl, solo"]
    assert cli.main(argv) == 0
    shown = json.loads(capsys.readouterr().out)["model_input"]
    request = TipoRequest(
        tags={Category.SPECIAL: ["1girl"], Category.GENERAL: ["solo"]},
        text="a girl reading",
        tag_length="short",
        text_length="very_long",
        caption=False,
        width=832,
        height=1216,
    )
    assert shown == build_model_input(request, plan_passes(request)[0])
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


def test_the_cli_passes_the_text_and_tipo_settings(capsys, tiny_tipo_model):
    pytest.importorskip("llama_cpp")
    argv = ["--json", "--offline", "--model", str(tiny_tipo_model.gguf_f16), "--caption"]
    argv += ["--nl-length", "short", "--target", "very_short", "--seed", "1", "1girl, solo"]
    assert cli.main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["generated"] and shown["new_tags"]
    assert cli.main([*argv[:-1], "--nl-length", "medium", "1girl"]) == 2
    assert "unknown nl_length 'medium'" in capsys.readouterr().err


def test_http_fields_round_trip(tiny_tipo_model, tmp_path):
    pytest.importorskip("llama_cpp")
    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "tiny-tipo.gguf")
    settings = {"model": "tiny-tipo.gguf", "target": "very_short", "nl_length": "short"}
    body = {"prompts": ["1girl, solo", ""], "nl_prompts": ["a girl (reading:1.3)", NL]}
    request = parse_request({**body, "seed": 3, "settings": settings}, tmp_path)
    assert request.nl_prompts == tuple(body["nl_prompts"])
    assert request.settings.nl_length == "short" and request.settings.caption is False
    engine = Upsampler(lookup=FakeLookup(), backends=BackendCache(), allow_download=False)
    status, payload = run_request(lambda: engine, request)
    assert status == 200
    both, sentence = payload["results"]
    assert both["new_tags"] and both["generated"].startswith("a girl reading")
    assert "a girl (reading:1.3)" in both["final_prompt"]
    assert sentence["final_prompt"].startswith(NL) and "extended" in sentence
    assert json.loads(json.dumps(both)) == both
    engine.unload()


def test_http_checks_the_text_fields(tmp_path):
    one = parse_request({"prompt": "1girl", "seeds": [1, 2], "nl_prompt": "a girl"}, tmp_path)
    assert one.nl_prompts == ("a girl", "a girl")
    assert parse_request({"prompt": "1girl"}, tmp_path).nl_prompts == ()
    problems = [
        ({"prompts": ["a", "b"], "nl_prompts": ["x"]}, "2 prompts but 1 nl_prompts"),
        ({"prompt": "a", "nl_prompts": ["x"]}, "nl_prompts goes with prompts"),
        ({"prompt": "a", "nl_prompt": "x", "nl_prompts": ["x"]}, "either nl_prompt"),
        ({"prompt": "a", "nl_prompt": 3}, "nl_prompt must be text"),
        ({"prompt": "a", "nl_prompt": "x" * 4001}, "at most 4000 characters"),
    ]
    for body, message in problems:
        with pytest.raises(RequestError, match=message):
            parse_request(body, tmp_path)
    with pytest.raises(RequestError, match="invalid setting: unknown nl_length 'huge'"):
        parse_request({"prompt": "a", "settings": {"nl_length": "huge"}}, tmp_path)


def test_result_json_carries_the_texts_apart():
    from dtg_lib.upsampler import Result, Timings

    result = Result("a", "a, b", ("b",), "", 1, 1, 1, 1, Timings(), "m", "torch", "cpu")
    shown = result_to_json(replace(result, extended="short one.", generated="long one."))
    assert shown["new_tags"] == ["b"] and shown["extended"] == "short one."
    assert shown["generated"] == "long one."


# ----------------------------------------------------------------- settings and defaults


def test_tipo_settings_are_checked():
    assert UpsampleSettings().nl_length == "long" and UpsampleSettings().caption is False
    with pytest.raises(SettingsError, match="nl_length"):
        UpsampleSettings(nl_length="medium")
    with pytest.raises(SettingsError, match="caption must be true or false"):
        UpsampleSettings.from_dict({"caption": "yes"})
    assert UpsampleSettings.from_dict({"caption": True, "nl_length": "short"}).caption


def test_unset_sampling_takes_tipo_defaults_and_set_sampling_is_kept():
    tipo = TipoSampling()
    chosen = tipo_sampling(SamplingSettings())
    assert (chosen.temperature, chosen.top_k, chosen.min_p) == (0.35, 60, 0.1)
    assert chosen.max_new_tokens == tipo.max_new_tokens == 512
    mine = tipo_sampling(SamplingSettings(temperature=0.8, max_new_tokens=300))
    assert (mine.temperature, mine.max_new_tokens, mine.top_k) == (0.8, 300, 60)


def test_the_model_reads_a_sentence_without_webui_syntax():
    assert plain_text("a (girl:1.2) in [the] \\(old\\) library <lora:x:1>") == (
        "a girl in the (old) library"
    )


def test_sentences_continue_the_users_text_without_stray_marks():
    """The model often continues the user's sentence by ending it: "... library. The girl
    ...". That full stop joins the user's text, and the caption does not start with one."""
    from types import SimpleNamespace

    from dtg_lib.tipo_loop import final_sentences

    given = "a girl reading in a (library:1.2)"
    run = SimpleNamespace(
        extended="a girl reading in a library. She smiles",
        generated="a girl reading in a library. The girl has black shoes.",
    )
    sentences = final_sentences(run, given)
    assert sentences["extended"] == "a girl reading in a (library:1.2). She smiles"
    assert sentences["generated"] == "The girl has black shoes."
    run = SimpleNamespace(extended="a girl reading in a library, quietly", generated="")
    assert final_sentences(run, given)["extended"] == given + " quietly"
    assert final_sentences(SimpleNamespace(extended="", generated=""), given) == {
        "extended": given,
        "generated": "",
    }

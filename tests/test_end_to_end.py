"""The whole path, prompt to final prompt, with the project's tiny model on both backends."""

from __future__ import annotations

import shutil

import pytest
from fake_lookup import FakeLookup

from dtg_lib import cli, model_selection
from dtg_lib.backends import BackendCache
from dtg_lib.categories import canonical
from dtg_lib.prompt_syntax import ItemKind, parse
from dtg_lib.settings import UpsampleSettings
from dtg_lib.upsampler import Upsampler

pytestmark = pytest.mark.slow


@pytest.fixture(params=["llama.cpp", "torch"])
def model_path(request, tiny_model):
    if request.param == "llama.cpp":
        pytest.importorskip("llama_cpp")
        return str(tiny_model.gguf_f16)
    return str(tiny_model.hf_dir)


@pytest.fixture
def upsampler():
    cache = BackendCache()
    yield Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    cache.unload()


def settings(model, **extra):
    return UpsampleSettings.from_dict({"model": model, "target": "short", **extra})


def test_expands_to_the_target_with_real_tags(upsampler, model_path):
    prompt = "1girl, solo, (dragon girl:1.2), <lora:style:0.6>, ganyu \\(genshin impact\\)"
    result = upsampler.upsample(prompt, settings(model_path), seed=11)
    assert result.rounds >= 1 and result.completion_tokens > 0
    # short is 16 tags; 1girl, solo and dragon girl count. Short of it, the loop must have
    # gone on until the model stopped adding tags (three empty rounds) or the round limit.
    assert len(result.new_tags) + 3 >= 16 or result.rounds >= 3
    final = parse(result.final_prompt)
    texts = [i.text for i in final.items if i.kind is not ItemKind.SEPARATOR]
    for kept in ["1girl", "solo", "(dragon girl:1.2)", "<lora:style:0.6>"]:
        assert texts.count(kept) == 1
    assert "ganyu \\(genshin impact\\)" in result.final_prompt
    assert all("<|" not in t and t.strip() for t in result.new_tags)
    assert "<|" not in result.final_prompt
    assert result.timings.prompt_eval_s > 0 and result.timings.generation_s > 0


def test_same_seed_same_output_different_seed_different_output(upsampler, model_path):
    s = settings(model_path)
    first = upsampler.upsample("1girl, solo", s, seed=5)
    again = upsampler.upsample("1girl, solo", s, seed=5)
    other = upsampler.upsample("1girl, solo", s, seed=6)
    assert first.final_prompt == again.final_prompt
    assert first.new_tags != other.new_tags


def test_continuation_rounds_happen_for_long_targets(upsampler, model_path):
    result = upsampler.upsample("1girl", settings(model_path, target="very_long"), seed=3)
    assert result.rounds >= 2
    assert len(set(result.new_tags)) == len(result.new_tags)


def test_a_round_that_continues_its_last_fed_tag_keeps_the_space(upsampler, model_path):
    """A later round's input ends with a fed tag ("..., closed"); when the model goes on
    with " mouth", the tag is "closed mouth", never "closedmouth"."""
    from dtg_dev.tiny_model import GENERAL_TAGS

    glued = {tag.replace(" ", "") for tag in GENERAL_TAGS if " " in tag}
    found = set()
    for seed in range(24):
        result = upsampler.upsample("1girl, solo", settings(model_path, target="very_long"), seed)
        found |= set(result.new_tags) & glued
    assert not found


def test_ban_list_is_honoured(upsampler, model_path):
    s = settings(model_path, target="long", ban_tags="*hair, /.*eyes/, solo")
    for seed in range(3):
        result = upsampler.upsample("1girl, solo", s, seed=seed)
        assert not any(t.endswith("hair") or t.endswith("eyes") for t in result.new_tags)
        assert result.final_prompt.count("solo") == 1  # the user's own tag stays


def test_batch_matches_one_by_one(upsampler, model_path):
    s = settings(model_path)
    batch = upsampler.upsample_many(["1girl", "1boy", "1girl"], s, [1, 2, 3])
    alone = [
        upsampler.upsample(p, s, seed) for p, seed in [("1girl", 1), ("1boy", 2), ("1girl", 3)]
    ]
    assert [r.final_prompt for r in batch] == [r.final_prompt for r in alone]
    assert batch[0].timings.load_s >= 0 and batch[1].timings.load_s == 0


def test_unload_frees_the_model_and_the_next_call_reloads(upsampler, model_path):
    s = settings(model_path)
    before = upsampler.upsample("1girl", s, seed=1)
    assert upsampler.backends.current is not None
    upsampler.unload()
    assert upsampler.backends.current is None
    after = upsampler.upsample("1girl", s, seed=1)
    assert after.final_prompt == before.final_prompt


def test_user_tags_are_not_added_again(upsampler, model_path):
    result = upsampler.upsample("1girl, long hair, smile, twintails", settings(model_path), seed=2)
    user = {canonical(t) for t in ["1girl", "long hair", "smile", "twintails"]}
    assert not user & set(result.new_tags)


def test_corrupt_and_missing_models_are_clear_errors(upsampler, tmp_path):
    pytest.importorskip("llama_cpp")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(RuntimeError, match=r"broken\.gguf"):
        upsampler.upsample("1girl", settings(str(broken)), seed=1)
    with pytest.raises(RuntimeError, match="No model file or folder"):
        upsampler.upsample("1girl", settings(str(tmp_path / "nothing.gguf")), seed=1)


def test_missing_llama_cpp_falls_back_to_torch_for_registry_models(
    upsampler, tiny_model, tmp_path, monkeypatch
):
    # A registry model whose transformers files are already in the model folder.
    shutil.copytree(tiny_model.hf_dir, tmp_path / "DanTagGen-delta-rev2")
    monkeypatch.setattr(model_selection, "llama_cpp_available", lambda: False)
    upsampler.model_dir = tmp_path
    result = upsampler.upsample("1girl", settings("delta-rev2"), seed=1)
    assert result.backend == "torch" and result.model == "delta-rev2:hf"
    assert any("llama.cpp backend is not installed" in n for n in result.notices)
    assert "pip install llama-cpp-python" in result.notices[0]


def test_missing_backend_for_a_local_file_says_how_to_install(upsampler, tiny_model, monkeypatch):
    monkeypatch.setattr(model_selection, "llama_cpp_available", lambda: False)
    monkeypatch.setattr(model_selection, "torch_available", lambda: False)
    with pytest.raises(RuntimeError, match="pip install llama-cpp-python"):
        upsampler.upsample("1girl", settings(str(tiny_model.gguf_f16)), seed=1)


def test_cli_expands_with_the_tiny_model(model_path, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DTG_CACHE_DIR", str(tmp_path))
    args = ["1girl, solo, dragon girl", "--model", model_path, "--seed", "42", "--offline"]
    assert cli.main([*args, "--target", "short"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("1girl,") and "dragon girl" in out
    assert len([t for t in out.replace("\n", ",").split(",") if t.strip()]) > 3

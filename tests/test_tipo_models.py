"""TIPO models: registry entries, family and licence, reading a local model's family from
its own files, and the tiny TIPO-format test model."""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest

from dtg_lib import cli, models
from dtg_lib.models import REGISTRY, ModelNotFound, parse_model_name, resolve_model
from dtg_lib.models.family import TIPO_MARKERS, detect_family, read_gguf_identity
from dtg_lib.tipo_format import OPERATIONS

TIPO_NAMES = [
    "tipo-100m",
    "tipo-200m",
    "tipo-200m-ft",
    "tipo-200m-ft2",
    "tipo-500m",
    "tipo-500m-ft",
]
TIPO_FILES = {
    "tipo-100m": "TIPO-100M-F16.gguf",
    "tipo-200m": "TIPO-200M-40Btok-F16.gguf",
    "tipo-200m-ft": "TIPO-200M-ft-F16.gguf",
    "tipo-200m-ft2": "TIPO-200M-ft2-F16.gguf",
    "tipo-500m": "TIPO-500M_epoch5-F16.gguf",
    "tipo-500m-ft": "TIPO-500M-ft-F16.gguf",
}

# ----------------------------------------------------------------- registry


def test_every_registry_model_has_a_family_and_a_licence():
    assert [n for n, e in REGISTRY.items() if e.family == "tipo"] == TIPO_NAMES
    for entry in REGISTRY.values():
        assert entry.family in models.FAMILIES and entry.licence
    assert {e.licence for e in REGISTRY.values() if e.family == "dtg"} == {"openrail"}
    assert REGISTRY["tipo-200m"].licence == "apache-2.0"
    for name in ("tipo-200m-ft", "tipo-200m-ft2", "tipo-500m", "tipo-500m-ft"):
        assert REGISTRY[name].licence == "kohaku-license-1.0"


@pytest.mark.parametrize("name", TIPO_NAMES)
def test_a_tipo_name_defaults_to_its_f16_gguf(name):
    spec = parse_model_name(name)
    assert spec.kind == "gguf" and spec.filename == TIPO_FILES[name]
    assert spec.family == "tipo" and spec.entry.context_length == 1024
    assert spec.entry.repo_id.lower() == f"kblueleaf/{name}"
    assert spec.display_name == f"{name}:F16"
    assert parse_model_name(f"{name}:f16") == spec
    assert parse_model_name(spec.entry.repo_id) == spec
    hf = parse_model_name(f"{name}:hf")
    assert hf.kind == "hf" and hf.family == "tipo"


def test_dtg_names_keep_their_q8_default_and_family():
    spec = parse_model_name("delta-rev2")
    assert spec.filename == "ggml-model-Q8_0.gguf" and spec.family == "dtg"
    assert parse_model_name("gamma:hf").family == "dtg"


def test_a_quantization_tipo_does_not_publish_says_only_f16_exists():
    # Q8_0 and Q6_K are made locally from the F16 file (tests/test_local_quant.py).
    with pytest.raises(ModelNotFound) as caught:
        parse_model_name("tipo-500m-ft:Q4_K_M")
    message = str(caught.value)
    assert "only as F16" in message and "F16, Q8_0, Q6_K, hf" in message
    assert "TIPO-500M-ft-F16.gguf" in message


@pytest.mark.parametrize("name", ["tipov2-1b-a200m", "KBlueLeaf/TIPO-v2.1-1B-A200M:hf"])
def test_tipo_v2_is_named_as_unsupported_with_the_reason(name):
    with pytest.raises(ModelNotFound) as caught:
        parse_model_name(name)
    message = str(caught.value)
    assert "not supported" in message and "remote code" in message
    assert "\n" not in message


def test_model_choices_offer_tipo_and_each_parses_back():
    choices = models.model_choices()
    assert {"tipo-200m", "tipo-200m:F16", "tipo-200m:hf"} <= set(choices)
    assert {"tipo-200m:Q8_0", "tipo-200m:Q6_K"} <= set(choices)  # made locally
    for name in choices:
        assert parse_model_name(name).entry is not None


def test_model_list_shows_family_and_licence(capsys, tmp_path):
    assert cli.main(["--list-models", "--model-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(x for x in lines if x.split()[:1] == ["tipo-500m-ft"])
    assert line.split()[1:4] == ["tipo", "kohaku-license-1.0", "F16,"]
    assert next(x for x in lines if x.split()[:1] == ["delta-rev2"]).split()[1:3] == [
        "dtg",
        "openrail",
    ]
    assert any(x.split()[:1] == ["tipov2-1b-a200m"] and "not supported" in x for x in lines)
    assert cli.main(["--list-models", "--json", "--model-dir", str(tmp_path)]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert listed["tipo-200m"]["licence"] == "apache-2.0"
    assert listed["tipo-200m"]["variants"] == ["F16", "Q8_0", "Q6_K", "hf"]
    assert listed["tipo-v2.1-1b-a200m"]["supported"] is False


def test_a_tipo_download_lands_in_its_repo_folder(tmp_path):
    target = tmp_path / "TIPO-200M-ft" / "TIPO-200M-ft-F16.gguf"
    assert models.registry_path(parse_model_name("tipo-200m-ft"), tmp_path) == target


def test_the_offline_message_names_the_tipo_file_and_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("tipo-200m", tmp_path, allow_download=False)
    assert "TIPO-200M-40Btok-F16.gguf" in str(caught.value)
    assert "KBlueLeaf/TIPO-200M" in str(caught.value)


def test_tipo_markers_are_the_format_operations():
    assert {f"<|{op}|>" for op in OPERATIONS} == TIPO_MARKERS


# ----------------------------------------------------------------- family from the file


def test_family_is_read_from_a_gguf_vocabulary(tiny_model, tiny_tipo_model):
    assert detect_family(tiny_tipo_model.gguf_f16, "gguf") == "tipo"
    assert detect_family(tiny_model.gguf_f16, "gguf") == "dtg"
    assert detect_family(tiny_model.gguf_f32, "gguf") == "dtg"
    name, tokens = read_gguf_identity(tiny_tipo_model.gguf_f16)
    assert name == "tiny-tipo" and "<|short_to_tag|>" in tokens and "<|input_end|>" not in tokens


def test_family_is_read_from_a_transformers_folder(tiny_model, tiny_tipo_model):
    assert detect_family(tiny_tipo_model.hf_dir, "hf") == "tipo"
    assert detect_family(tiny_model.hf_dir, "hf") == "dtg"


def test_a_local_path_gets_its_family_without_being_told(tiny_model, tiny_tipo_model, tmp_path):
    # Copies under neutral names: nothing in the path says which family they are.
    gguf = tmp_path / "model.gguf"
    shutil.copy(tiny_tipo_model.gguf_f16, gguf)
    folder = tmp_path / "weights"
    shutil.copytree(tiny_tipo_model.hf_dir, folder)
    assert parse_model_name(str(gguf)).family == "tipo"
    assert parse_model_name(str(folder)).family == "tipo"
    resolved = resolve_model(str(gguf), tmp_path, allow_download=False)
    assert resolved.family == "tipo"
    dtg = tmp_path / "other.gguf"
    shutil.copy(tiny_model.gguf_f16, dtg)
    assert parse_model_name(str(dtg)).family == "dtg"


def test_listing_the_model_folder_shows_each_family(tiny_model, tiny_tipo_model, tmp_path):
    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "a.gguf")
    shutil.copy(tiny_model.gguf_f16, tmp_path / "b.gguf")
    shutil.copytree(tiny_tipo_model.hf_dir, tmp_path / "tipo-hf")
    families = {m.name: m.family for m in models.list_local_models(tmp_path)}
    assert families == {"a.gguf": "tipo", "b.gguf": "dtg", "tipo-hf": "tipo"}


def test_family_of_a_registry_layout_folder_without_markers(tmp_path):
    # A file in TIPO's download folder is TIPO even if its vocabulary says nothing.
    folder = tmp_path / "TIPO-200M"
    folder.mkdir()
    target = folder / "TIPO-200M-40Btok-F16.gguf"
    _write_gguf_with_tokens(target, ["<unk>", "<s>", "</s>", "a"])
    spec = parse_model_name(str(target))
    assert spec.family == "tipo" and spec.entry is REGISTRY["tipo-200m"]
    assert [m.name for m in models.list_local_models(tmp_path)] == ["tipo-200m:F16"]


def test_a_damaged_gguf_gets_no_family_and_validation_names_the_damage(tiny_tipo_model, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_tipo_model.gguf_f16.read_bytes()[:5000])
    assert detect_family(cut, "gguf") is None
    with pytest.raises(models.ModelCorrupt, match="truncated"):
        resolve_model(str(cut), tmp_path, allow_download=False)


def test_reading_a_32k_vocabulary_is_quick(tmp_path):
    path = tmp_path / "big.gguf"
    tokens = [f"piece{i}" for i in range(32000)] + ["<|tag_to_long|>"]
    _write_gguf_with_tokens(path, tokens)
    started = time.perf_counter()
    assert detect_family(path, "gguf") == "tipo"
    assert time.perf_counter() - started < 2.0  # about 20 ms here


def _write_gguf_with_tokens(path: Path, tokens: list[str]) -> None:
    """A GGUF header with only a name and a token list (no tensors)."""

    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = text("general.name") + struct.pack("<I", 8) + text("x")
    body += text("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, len(tokens))
    body += b"".join(text(t) for t in tokens)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + body)


# ----------------------------------------------------------------- the tiny TIPO model


def test_tiny_tipo_model_answers_in_tipo_format(tiny_tipo_model):
    llama_cpp = pytest.importorskip("llama_cpp")
    from dtg_lib.categories import Category
    from dtg_lib.tipo_format import (
        TipoPass,
        TipoRequest,
        TipoSampling,
        build_model_input,
        split_sections,
    )

    llm = llama_cpp.Llama(str(tiny_tipo_model.gguf_f16), n_ctx=1024, verbose=False, seed=1)
    try:
        sampling = TipoSampling()
        request = TipoRequest(
            tags={Category.SPECIAL: ["1girl", "solo"], Category.GENERAL: ["smile"]}
        )
        steps = (
            (TipoPass(None, "long", True), "tag"),
            (TipoPass("tag_to_long", "long", False), "long"),
        )
        for step, section in steps:
            given = build_model_input(request, step)
            before = dict(split_sections(given)).get(section, "")
            for seed in range(3):
                out = llm(
                    given,
                    max_tokens=sampling.max_new_tokens,
                    temperature=sampling.temperature,
                    top_k=sampling.top_k,
                    top_p=sampling.top_p,
                    min_p=sampling.min_p,
                    seed=seed,
                )["choices"][0]
                assert out["finish_reason"] == "stop"  # it ends with EOS, as TIPO does
                assert len(dict(split_sections(given + out["text"]))[section]) > len(before)
    finally:
        llm.close()  # not left to the collector at interpreter exit


def test_a_registry_tipo_model_is_chosen_as_tipo_and_an_offline_miss_names_it(tmp_path):
    from dtg_lib import model_selection

    # Chosen, not refused: the miss is the ordinary "not downloaded" one.
    with pytest.raises(ModelNotFound, match=r"TIPO-500M_epoch5-F16\.gguf"):
        model_selection.select_model("tipo-500m", model_dir=tmp_path, allow_download=False)


def test_a_local_tipo_model_is_chosen_by_its_own_tokens_and_expands(tiny_tipo_model):
    pytest.importorskip("llama_cpp")
    from fake_lookup import FakeLookup

    from dtg_lib import model_selection
    from dtg_lib.backends import BackendCache
    from dtg_lib.settings import UpsampleSettings
    from dtg_lib.upsampler import Upsampler

    choice = model_selection.select_model(str(tiny_tipo_model.gguf_f16))
    assert choice.family == "tipo" and choice.backend == "llama.cpp"
    assert model_selection.select_model(str(tiny_tipo_model.hf_dir)).family == "tipo"
    cache = BackendCache()
    engine = Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    settings = UpsampleSettings(model=str(tiny_tipo_model.gguf_f16), target="very_short")
    result = engine.upsample("1girl, solo", settings, seed=2)
    cache.unload()
    assert result.new_tags and "target: <|very_short|>" in result.model_input

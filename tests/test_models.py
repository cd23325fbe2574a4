"""Model registry, resolution, validation and downloads (against a loopback fake hub)."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import socket
import struct
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtg_lib import models
from dtg_lib.models import (
    DEFAULT_MODEL,
    REGISTRY,
    DownloadFailed,
    ModelCorrupt,
    ModelError,
    ModelNotFound,
    list_local_models,
    parse_model_name,
    resolve_model,
    safe_model_path,
    validate_model_file,
    validation,
)

REPO = "KBlueLeaf/DanTagGen-delta-rev2"
Q8 = "ggml-model-Q8_0.gguf"

# ---------------------------------------------------------------- fake files

_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT32 = 8, 9, 4
_F32, _Q8_0 = 0, 8


def _gguf_str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(version: int = 3, tokens: int = 5) -> bytes:
    """A small but structurally complete GGUF: metadata, two tensors, aligned data."""
    kvs = [
        _gguf_str("general.architecture") + struct.pack("<I", _GGUF_STRING) + _gguf_str("llama"),
        _gguf_str("general.alignment") + struct.pack("<II", _GGUF_UINT32, 32),
        _gguf_str("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", _GGUF_ARRAY, _GGUF_STRING, tokens)
        + b"".join(_gguf_str(f"tok{i}") for i in range(tokens)),
        _gguf_str("tokenizer.ggml.token_type")
        + struct.pack("<IIQ", _GGUF_ARRAY, _GGUF_UINT32, tokens)
        + struct.pack(f"<{tokens}I", *range(tokens)),
    ]
    # 64 F32 values = 256 bytes at offset 0; 64 Q8_0 values = 2 blocks * 34 bytes at 256.
    tensors = [("w", 64, _F32, 0), ("q", 64, _Q8_0, 256)]
    infos = b"".join(
        _gguf_str(name) + struct.pack("<IQIQ", 1, n, kind, offset)
        for name, n, kind, offset in tensors
    )
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    header += infos
    header += b"\0" * (-len(header) % 32)
    return header + bytes(range(256)) + b"\x01" * 68


def safetensors_bytes(claimed_end: int | None = None) -> bytes:
    data = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    end = len(data) if claimed_end is None else claimed_end
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, end]}}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def make_hf_folder(folder: Path, model_type: str = "llama") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(safetensors_bytes())
    return folder


# ---------------------------------------------------------------- environment


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's offline flags, endpoint, model folder or HF cache."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "DTG_MODEL_DIR"):
        monkeypatch.delenv(var, raising=False)
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"), raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False, raising=False)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


# ---------------------------------------------------------------- registry and parsing


def test_registry_describes_the_five_repos() -> None:
    dtg = {n: e for n, e in REGISTRY.items() if e.family == "dtg"}  # TIPO: test_tipo_models
    assert list(dtg) == ["alpha", "beta", "gamma", "delta", "delta-rev2"]
    assert REGISTRY["delta-rev2"].repo_id == REPO
    assert REGISTRY["gamma"].context_length == 512
    assert {e.context_length for n, e in dtg.items() if n != "gamma"} == {2048}
    assert [n for n, e in dtg.items() if e.takes_quality_line] == ["delta", "delta-rev2"]
    assert DEFAULT_MODEL == "delta-rev2"


@pytest.mark.parametrize(
    ("name", "entry", "kind", "filename"),
    [
        ("delta-rev2", "delta-rev2", "gguf", Q8),
        ("delta-rev2:Q8_0", "delta-rev2", "gguf", Q8),
        ("delta-rev2:q6_k", "delta-rev2", "gguf", "ggml-model-Q6_K.gguf"),
        ("delta:f16", "delta", "gguf", "ggml-model-f16.gguf"),
        ("gamma:hf", "gamma", "hf", None),
        ("  alpha  ", "alpha", "gguf", Q8),
        (REPO, "delta-rev2", "gguf", Q8),
        ("kblueleaf/dantaggen-beta:HF", "beta", "hf", None),
        ("DanTagGen-delta:Q6_K", "delta", "gguf", "ggml-model-Q6_K.gguf"),
    ],
)
def test_parse_registry_names(name: str, entry: str, kind: str, filename: str | None) -> None:
    spec = parse_model_name(name)
    assert spec.entry is REGISTRY[entry]
    assert (spec.kind, spec.filename, spec.local_path) == (kind, filename, None)
    assert spec.takes_quality_line == REGISTRY[entry].takes_quality_line


def test_display_name_spells_out_the_variant() -> None:
    assert parse_model_name("delta-rev2").display_name == "delta-rev2:Q8_0"
    assert parse_model_name("gamma:hf").display_name == "gamma:hf"


def test_model_choices_parse_back() -> None:
    choices = models.model_choices()
    assert "delta-rev2:Q6_K" in choices and "alpha:hf" in choices
    for name in choices:
        assert parse_model_name(name).entry is not None


@pytest.mark.parametrize("name", ["epsilon", "", "   ", "KBlueLeaf/Other-model"])
def test_unknown_name_lists_the_choices(name: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        parse_model_name(name)
    assert "delta-rev2" in str(info.value) and "Q6_K" in str(info.value)


def test_unknown_variant_lists_variants() -> None:
    with pytest.raises(ModelNotFound, match=r"Q4_K.*Q8_0, Q6_K, f16, hf"):
        parse_model_name("delta:Q4_K")


def test_missing_path_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="No model file or folder"):
        parse_model_name(str(tmp_path / "nope.gguf"))


@given(st.text(max_size=40))
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_parse_never_fails_with_anything_but_model_error(name: str) -> None:
    with contextlib.suppress(ModelError):
        parse_model_name(name)


# ---------------------------------------------------------------- local paths


def test_local_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "my-dtg.gguf"
    path.write_bytes(gguf_bytes())
    spec = parse_model_name(str(path))
    assert (spec.entry, spec.kind, spec.filename) == (None, "gguf", "my-dtg.gguf")
    assert spec.local_path == path.resolve()
    assert spec.takes_quality_line is True
    resolved = resolve_model(str(path), tmp_path / "elsewhere")
    assert resolved.path == path.resolve() and resolved.kind == "gguf"


@pytest.mark.parametrize(
    ("filename", "quality"),
    [("dtg-gamma-q8.gguf", False), ("dtg-delta-rev2.gguf", True), ("alphabet.gguf", True)],
)
def test_local_quality_line_guess(tmp_path: Path, filename: str, quality: bool) -> None:
    path = tmp_path / filename
    path.write_bytes(gguf_bytes())
    assert parse_model_name(str(path)).takes_quality_line is quality


def test_local_file_in_repo_layout_gets_its_entry(model_dir: Path) -> None:
    path = model_dir / "DanTagGen-gamma" / "ggml-model-Q6_K.gguf"
    path.parent.mkdir()
    path.write_bytes(gguf_bytes())
    spec = parse_model_name(str(path))
    assert spec.entry is REGISTRY["gamma"] and spec.takes_quality_line is False


def test_local_hf_folder(tmp_path: Path) -> None:
    folder = make_hf_folder(tmp_path / "my-delta-model")
    spec = parse_model_name(str(folder))
    assert (spec.kind, spec.filename, spec.local_path) == ("hf", None, folder.resolve())
    assert resolve_model(str(folder), tmp_path).path == folder.resolve()


def test_bare_name_resolves_inside_model_dir(model_dir: Path) -> None:
    (model_dir / "custom.gguf").write_bytes(gguf_bytes())
    resolved = resolve_model("custom.gguf", model_dir)
    assert resolved.path == (model_dir / "custom.gguf").resolve()


def test_local_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelCorrupt, match="pickle"):
        parse_model_name(str(path))


def test_folder_without_config_points_at_its_gguf_files(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(gguf_bytes())
    with pytest.raises(ModelError, match=r"a\.gguf"):
        parse_model_name(str(tmp_path))


def test_default_model_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert models.default_model_dir().name == "models"
    assert "dtg-upsampler" in str(models.default_model_dir())
    monkeypatch.setenv("DTG_MODEL_DIR", str(tmp_path / "x"))
    assert models.default_model_dir() == tmp_path / "x"


# ---------------------------------------------------------------- listing


def test_list_local_models(model_dir: Path) -> None:
    repo = model_dir / "DanTagGen-delta-rev2"
    repo.mkdir()
    (repo / Q8).write_bytes(gguf_bytes())
    (repo / "ggml-model-Q4_K.gguf").write_bytes(gguf_bytes())
    make_hf_folder(repo)
    (model_dir / "top.gguf").write_bytes(gguf_bytes())
    make_hf_folder(model_dir / "finetunes" / "mine")
    (model_dir / "finetunes" / "ft.gguf").write_bytes(gguf_bytes())
    hidden = repo / ".cache" / "huggingface" / "download"
    hidden.mkdir(parents=True)
    (hidden / "x.gguf").write_bytes(b"partial")
    (model_dir / "deep" / "er" / "est").mkdir(parents=True)
    (model_dir / "deep" / "er" / "est" / "far.gguf").write_bytes(gguf_bytes())

    found = {m.name: m for m in list_local_models(model_dir)}
    assert set(found) == {
        "DanTagGen-delta-rev2/ggml-model-Q4_K.gguf",
        "delta-rev2:hf",
        "delta-rev2:Q8_0",
        "finetunes/ft.gguf",
        "finetunes/mine",
        "top.gguf",
    }
    assert found["delta-rev2:Q8_0"].kind == "gguf"
    assert found["delta-rev2:Q8_0"].size == len(gguf_bytes())
    assert found["finetunes/mine"].kind == "hf" and found["finetunes/mine"].size > 0
    for model in found.values():  # every listed name resolves back without a network
        assert resolve_model(model.name, model_dir, allow_download=False).path.exists()


def test_list_local_models_of_missing_folder(tmp_path: Path) -> None:
    assert list_local_models(tmp_path / "missing") == []


# ---------------------------------------------------------------- validation


def test_valid_gguf_passes(tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf_bytes(version=2))
    validate_model_file(path, "gguf")


def test_gguf_written_by_the_gguf_package_passes(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    path = tmp_path / "real.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"t{i}" for i in range(300)])
    writer.add_tensor("f32", np.arange(96, dtype=np.float32))
    writer.add_tensor("f16", np.arange(40, dtype=np.float16))
    q8 = np.zeros((2, 34 * 2), dtype=np.uint8)  # 2 rows of 64 values, Q8_0 blocks
    writer.add_tensor("q8", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    validate_model_file(path, "gguf")
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # past the final padding, into the last tensor
    with pytest.raises(ModelCorrupt, match="truncated"):
        validate_model_file(path, "gguf")


def test_block_table_matches_the_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    for type_id, sizes in validation._GGML_BLOCKS.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)] == sizes


@pytest.mark.parametrize("cut", [1, 68, 200, 400])
def test_truncated_gguf_is_corrupt(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(gguf_bytes()[:-cut])
    with pytest.raises(ModelCorrupt, match="truncated"):
        validate_model_file(path, "gguf")


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html>rate limited</html>", "HTML"),
        (b"PK\x03\x04 torch zip", "pickle"),
        (os.urandom(64).replace(b"G", b"x"), "not a GGUF"),
    ],
)
def test_non_gguf_content_is_corrupt(tmp_path: Path, content: bytes, hint: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelCorrupt, match=hint):
        validate_model_file(path, "gguf")


def test_old_gguf_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v1.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<III", 1, 0, 0))
    with pytest.raises(ModelCorrupt, match="version 1"):
        validate_model_file(path, "gguf")


def test_lying_gguf_counts_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "lie.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 1))
    with pytest.raises(ModelCorrupt, match="implausible"):
        validate_model_file(path, "gguf")
    path.write_bytes(
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + _gguf_str("k")
        + struct.pack("<IIQ", _GGUF_ARRAY, _GGUF_STRING, 2**50)
    )
    with pytest.raises(ModelCorrupt, match="truncated"):
        validate_model_file(path, "gguf")


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_gguf_parser_only_ever_raises_model_corrupt(tail: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.gguf"
        path.write_bytes(b"GGUF\x03\x00\x00\x00" + tail)
        with contextlib.suppress(ModelCorrupt):
            validate_model_file(path, "gguf")


def test_recorded_download_size_catches_later_truncation(model_dir: Path) -> None:
    path = model_dir / "ok.gguf"
    data = gguf_bytes() + b"\0" * 100  # trailing bytes the header doesn't account for
    path.write_bytes(data)
    validation.record_size(model_dir, path.name, len(data))
    validate_model_file(path, "gguf")
    path.write_bytes(data[:-50])
    with pytest.raises(ModelCorrupt, match="was downloaded with"):
        validate_model_file(path, "gguf")


def test_pickle_bin_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\x80\x02}q\x00.")
    for kind in ("gguf", "hf"):
        with pytest.raises(ModelCorrupt, match="never loaded"):
            validate_model_file(path, kind)


def test_valid_hf_folder_passes(tmp_path: Path) -> None:
    validate_model_file(make_hf_folder(tmp_path / "m"), "hf")


def test_hf_folder_with_real_safetensors_passes(tmp_path: Path) -> None:
    numpy_backend = pytest.importorskip("safetensors.numpy")
    np = pytest.importorskip("numpy")
    folder = make_hf_folder(tmp_path / "m")
    tensors = {"a": np.ones((3, 5), dtype=np.float32), "b": np.arange(7, dtype=np.int64)}
    numpy_backend.save_file(tensors, str(folder / "model.safetensors"), metadata={"x": "y"})
    validate_model_file(folder, "hf")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (safetensors_bytes(claimed_end=4096), "promises 4096 bytes"),
        (safetensors_bytes()[:-3], "truncated"),
        (struct.pack("<Q", 10**6) + b"{}", "truncated"),
        (struct.pack("<Q", 4) + b"nope", "damaged safetensors header"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (b"abc", "too short"),
        (struct.pack("<Q", 10**12), "header length"),
    ],
)
def test_broken_safetensors_is_corrupt(tmp_path: Path, content: bytes, message: str) -> None:
    folder = make_hf_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelCorrupt, match=message):
        validate_model_file(folder, "hf")


def test_hf_folder_problems(tmp_path: Path) -> None:
    folder = make_hf_folder(tmp_path / "gpt", model_type="gpt2")
    with pytest.raises(ModelCorrupt, match="model_type 'gpt2'"):
        validate_model_file(folder, "hf")

    folder = make_hf_folder(tmp_path / "pickles")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02.")
    with pytest.raises(ModelCorrupt, match=r"only has pickle weights \(pytorch_model\.bin\)"):
        validate_model_file(folder, "hf")

    folder = make_hf_folder(tmp_path / "notok")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelCorrupt, match="no tokenizer"):
        validate_model_file(folder, "hf")

    folder = make_hf_folder(tmp_path / "badjson")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelCorrupt, match="not valid JSON"):
        validate_model_file(folder, "hf")


def test_validate_reports_missing_paths_and_bad_kinds(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        validate_model_file(tmp_path / "gone.gguf", "gguf")
    with pytest.raises(ModelError, match="Unknown model kind"):
        validate_model_file(tmp_path, "onnx")


# ---------------------------------------------------------------- offline behaviour


def test_offline_and_missing_names_the_variable_and_the_place(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as info:
        resolve_model("delta-rev2", model_dir)
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message
    assert str(model_dir / "DanTagGen-delta-rev2" / Q8) in message


def test_downloads_turned_off(model_dir: Path) -> None:
    with pytest.raises(ModelNotFound, match="downloading is turned off"):
        resolve_model("gamma:hf", model_dir, allow_download=False)


def test_offline_uses_a_copy_in_the_hf_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_dir: Path
) -> None:
    pytest.importorskip("huggingface_hub")
    commit = "a" * 40
    repo_cache = tmp_path / "hf-cache" / "models--KBlueLeaf--DanTagGen-delta-rev2"
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(commit)
    snapshot = repo_cache / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / Q8).write_bytes(gguf_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model("delta-rev2", model_dir)
    assert resolved.path == snapshot / Q8
    assert resolved.spec.entry is REGISTRY["delta-rev2"]


# ---------------------------------------------------------------- safe_model_path


def test_safe_model_path_accepts_registry_names_and_files_inside(model_dir: Path) -> None:
    assert safe_model_path("delta-rev2:Q6_K", model_dir) == (
        model_dir / "DanTagGen-delta-rev2" / "ggml-model-Q6_K.gguf"
    )
    assert safe_model_path("gamma:hf", model_dir) == model_dir / "DanTagGen-gamma"
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "x.gguf").write_bytes(gguf_bytes())
    assert safe_model_path("sub/x.gguf", model_dir) == (model_dir / "sub" / "x.gguf").resolve()
    inside = str((model_dir / "sub" / "x.gguf").resolve())
    assert safe_model_path(inside, model_dir) == Path(inside)


def test_safe_model_path_rejects_escapes(tmp_path: Path, model_dir: Path) -> None:
    outside = tmp_path / "secret.gguf"
    outside.write_bytes(gguf_bytes())
    (model_dir / "link.gguf").symlink_to(outside)
    (model_dir / "linkdir").symlink_to(tmp_path)
    for name in [
        "../secret.gguf",
        "sub/../../secret.gguf",
        "..\\secret.gguf",
        "/etc/passwd",
        str(outside),
        "link.gguf",
        "linkdir/secret.gguf",
        "",
        "a\x00b",
    ]:
        with pytest.raises(ModelError):
            safe_model_path(name, model_dir)
    with pytest.raises(ModelNotFound):
        safe_model_path("missing.gguf", model_dir)


@given(st.text(alphabet=st.sampled_from(list("./\\~ab:-\x00")), max_size=20))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_safe_model_path_never_leaves_the_folder(model_dir: Path, name: str) -> None:
    try:
        path = safe_model_path(name, model_dir)
    except ModelError:
        return
    assert path.resolve().is_relative_to(model_dir.resolve())


# ---------------------------------------------------------------- fake hub


@dataclass
class FakeHub:
    """Serves the /resolve/ endpoint hf_hub_download uses (HEAD + ranged GET)."""

    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    mode: str = "good"  # "good" or "drop": cut the first GET short, then fail
    dropped: int = 0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    url: str = ""


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 5  # an idle keep-alive connection never pins a thread for long

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def _lookup(self) -> bytes | None:
            parts = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).split("/")
            # /{owner}/{repo}/resolve/{revision}/{filename}
            if len(parts) < 6 or parts[3] != "resolve":
                return None
            return hub.files.get((f"{parts[1]}/{parts[2]}", "/".join(parts[5:])))

        def _serve(self, send_body: bool) -> None:
            byte_range = self.headers.get("Range")
            hub.requests.append((self.command, self.path, byte_range))
            data = self._lookup()
            if data is None:
                self._reply(404, b"", {"X-Error-Code": "EntryNotFound"})
                return
            if send_body and hub.mode == "drop":
                self._drop_or_fail(data)
                return
            start = int(byte_range.split("=")[1].split("-")[0]) if byte_range else 0
            headers = {
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "X-Repo-Commit": hub.commit,
                "Accept-Ranges": "bytes",
            }
            if byte_range:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            self._reply(206 if byte_range else 200, body if send_body else b"", headers, len(body))

        def _drop_or_fail(self, data: bytes) -> None:
            if hub.dropped:  # the library retrying: the "server" is broken by now
                self._reply(500, b"", {"X-Repo-Commit": hub.commit})
                return
            hub.dropped += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", '"x"')
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True

        def _reply(
            self, status: int, body: bytes, headers: dict, length: int | None = None
        ) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if body:
                self.wfile.write(body)

    return Handler


def _point_old_hub_versions_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Versions without an `endpoint` argument read HF_ENDPOINT only at import time.

    Versions with it must keep their import-time ENDPOINT: they swap that
    prefix of the URL for the endpoint passed in.
    """
    import huggingface_hub
    from huggingface_hub import constants, file_download

    if "endpoint" in inspect.signature(huggingface_hub.hf_hub_download).parameters:
        return
    monkeypatch.setattr(constants, "ENDPOINT", url)
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    for module in (constants, file_download):
        monkeypatch.setattr(module, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    pytest.importorskip("huggingface_hub")

    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    _point_old_hub_versions_at(monkeypatch, hub.url)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_lands_in_the_repo_layout(fake_hub: FakeHub, model_dir: Path) -> None:
    data = gguf_bytes(tokens=500)
    fake_hub.files[(REPO, Q8)] = data
    reports: list[models.ProgressEvent] = []
    resolved = resolve_model("delta-rev2", model_dir, progress=reports.append)
    assert resolved.path == model_dir / "DanTagGen-delta-rev2" / Q8
    assert resolved.path.read_bytes() == data
    assert not resolved.path.is_symlink()  # a real file, not a link into the HF cache
    assert reports and (reports[-1].done, reports[-1].total) == (len(data), len(data))
    assert reports[-1].phase == "download" and Q8 in reports[-1].message
    assert validation.read_sizes(resolved.path.parent) == {Q8: len(data)}
    assert not list(resolved.path.parent.glob("*.incomplete"))

    fake_hub.requests.clear()  # present on disk: no network at all
    assert resolve_model("delta-rev2", model_dir).path == resolved.path
    assert fake_hub.requests == []


def test_dropped_connection_fails_cleanly_then_retry_succeeds(
    fake_hub: FakeHub, model_dir: Path
) -> None:
    data = gguf_bytes(tokens=2000)
    fake_hub.files[(REPO, Q8)] = data
    fake_hub.mode = "drop"
    final = model_dir / "DanTagGen-delta-rev2" / Q8
    with pytest.raises(DownloadFailed, match=r"ggml-model-Q8_0\.gguf"):
        resolve_model("delta-rev2", model_dir)
    assert fake_hub.dropped == 1
    assert not final.exists()
    assert list_local_models(model_dir) == []

    fake_hub.mode = "good"
    resolved = resolve_model("delta-rev2", model_dir)
    assert resolved.path == final and final.read_bytes() == data


def test_wrong_bytes_are_corrupt_and_removed(fake_hub: FakeHub, model_dir: Path) -> None:
    fake_hub.files[(REPO, Q8)] = b"<html>this is no model</html>" * 40
    with pytest.raises(ModelCorrupt, match="not a GGUF file") as info:
        resolve_model("delta-rev2", model_dir)
    assert "deleted" in str(info.value)
    folder = model_dir / "DanTagGen-delta-rev2"
    assert not (folder / Q8).exists()
    assert Q8 not in validation.read_sizes(folder)


def test_missing_file_on_the_hub(fake_hub: FakeHub, model_dir: Path) -> None:
    with pytest.raises(DownloadFailed, match="404"):
        resolve_model("delta:f16", model_dir)


def test_unreachable_hub_is_a_download_failure(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    pytest.importorskip("huggingface_hub")

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    _point_old_hub_versions_at(monkeypatch, url)
    with pytest.raises(DownloadFailed, match="Could not download"):
        resolve_model("alpha", model_dir)


def test_an_unreachable_hub_is_not_asked_again_for_a_while(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    # Without network each attempt waits through the hub client's retries (about 23 s in a
    # webui): the second job says at once why it has no model, instead of waiting again.
    pytest.importorskip("huggingface_hub")
    from dtg_lib.models import download

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    _point_old_hub_versions_at(monkeypatch, url)
    with pytest.raises(DownloadFailed):
        resolve_model("alpha", model_dir)
    asked = []
    monkeypatch.setattr(download, "_remote_size", lambda *a, **k: asked.append(a))
    with pytest.raises(ModelNotFound, match="could not be reached a moment ago"):
        resolve_model("alpha", model_dir)
    assert asked == []
    monkeypatch.setattr(download.time, "monotonic", lambda: 10**9)  # the wait has passed
    assert download.download_blocker(allow_download=True) is None


def test_a_hub_that_answers_with_an_error_is_asked_again(
    fake_hub: FakeHub, model_dir: Path
) -> None:
    with pytest.raises(DownloadFailed, match="404"):
        resolve_model("delta:f16", model_dir)
    fake_hub.files[(REPO, Q8)] = gguf_bytes(tokens=500)
    assert resolve_model("delta-rev2", model_dir).path.is_file()


def test_transformers_folder_download_tolerates_missing_optional_files(
    fake_hub: FakeHub, model_dir: Path
) -> None:
    repo = "KBlueLeaf/DanTagGen-gamma"
    fake_hub.files[(repo, "config.json")] = json.dumps({"model_type": "llama"}).encode()
    fake_hub.files[(repo, "model.safetensors")] = safetensors_bytes()
    fake_hub.files[(repo, "tokenizer.json")] = b"{}"
    fake_hub.files[(repo, "tokenizer_config.json")] = b"{}"
    resolved = resolve_model("gamma:hf", model_dir)
    folder = model_dir / "DanTagGen-gamma"
    assert resolved.path == folder and resolved.kind == "hf"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert [m.name for m in list_local_models(model_dir)] == ["gamma:hf"]


def test_transformers_folder_with_lying_weights_is_removed(
    fake_hub: FakeHub, model_dir: Path
) -> None:
    repo = "KBlueLeaf/DanTagGen-gamma"
    fake_hub.files[(repo, "config.json")] = json.dumps({"model_type": "llama"}).encode()
    fake_hub.files[(repo, "model.safetensors")] = safetensors_bytes(claimed_end=10**6)
    fake_hub.files[(repo, "tokenizer.model")] = b"sp"
    with pytest.raises(ModelCorrupt, match="promises"):
        resolve_model("gamma:hf", model_dir)
    assert not (model_dir / "DanTagGen-gamma" / "model.safetensors").exists()

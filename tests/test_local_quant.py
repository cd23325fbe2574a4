"""Q8_0/Q6_K of a model published only as F16 (TIPO), made on the user's machine once with
llama.cpp's own quantizer: names, the made file (valid, loads, generates), reuse, atomicity
under interruption and a killed process, one quantization for two requests, the model
list's mark, and offline use. Everything runs on the tiny models; nothing uses the network.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from fake_lookup import FakeLookup

from dtg_lib import cli, models
from dtg_lib.models import (
    ModelError,
    ModelNotFound,
    QuantizeFailed,
    list_local_models,
    make_local_quant,
    parse_model_name,
    resolve_model,
    validate_model_file,
)
from dtg_lib.models import quantize as quantize_module
from dtg_lib.models.quantize import local_quant_plan
from dtg_lib.models.validation import read_sizes

REPO_ROOT = Path(__file__).resolve().parent.parent
F16_NAME = "TIPO-200M-40Btok-F16.gguf"
Q8_NAME = "TIPO-200M-40Btok-Q8_0.local-quant.gguf"


@pytest.fixture(autouse=True)
def offline_world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's model folder or HF cache, and none may reach a hub."""
    for var in ("HF_ENDPOINT", "DTG_MODEL_DIR", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"), raising=False)


@pytest.fixture
def model_dir(tmp_path: Path, tiny_tipo_model) -> Path:
    """A model folder holding the tiny TIPO model as tipo-200m's published F16 file."""
    folder = tmp_path / "models"
    (folder / "TIPO-200M").mkdir(parents=True)
    shutil.copy(tiny_tipo_model.gguf_f16, folder / "TIPO-200M" / F16_NAME)
    return folder


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every quantizer process started, by its command line."""
    started: list[list[str]] = []
    real = subprocess.Popen

    def counting(command, *args, **kwargs):
        started.append(list(command))
        return real(command, *args, **kwargs)

    monkeypatch.setattr(quantize_module.subprocess, "Popen", counting)
    return started


def _tensor_types(path: Path) -> set[str]:
    gguf = pytest.importorskip("gguf")
    return {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


# ----------------------------------------------------------------- names (no model needed)


def test_tipo_names_offer_the_local_quantizations():
    spec = parse_model_name("tipo-500m:q8_0")
    assert spec.filename == "TIPO-500M_epoch5-Q8_0.local-quant.gguf"
    assert spec.display_name == "tipo-500m:Q8_0" and spec.family == "tipo"
    assert parse_model_name("tipo-500m-ft:Q6_K").filename == "TIPO-500M-ft-Q6_K.local-quant.gguf"
    quant, source = local_quant_plan(spec)
    assert quant == "Q8_0" and source.filename == "TIPO-500M_epoch5-F16.gguf"
    choices = models.model_choices()
    assert {"tipo-200m:Q8_0", "tipo-200m:Q6_K", "tipo-200m:F16"} <= set(choices)
    listed = {m["name"]: m for m in models.registry_models()}
    assert listed["tipo-200m"]["variants"] == ["F16", "Q8_0", "Q6_K", "hf"]
    assert listed["tipo-200m"]["local_quants"] == ["Q8_0", "Q6_K"]
    assert listed["tipo-200m"]["default_variant"] == "F16"  # the default stays the F16 file


def test_published_quantizations_are_downloaded_not_made():
    spec = parse_model_name("delta-rev2:Q6_K")
    assert spec.filename == "ggml-model-Q6_K.gguf" and local_quant_plan(spec) is None
    assert models.registry_models()[0]["local_quants"] == []
    assert local_quant_plan(parse_model_name("tipo-200m")) is None  # F16: the hub's file


@pytest.mark.parametrize("name", ["tipo-500m:Q4_K_M", "tipo-500m:Q5_0", "tipo-500m:f32"])
def test_a_quantization_not_offered_is_refused_with_the_choices(name):
    with pytest.raises(ModelNotFound) as caught:
        parse_model_name(name)
    message = str(caught.value)
    assert "F16, Q8_0, Q6_K, hf" in message and "made on this machine" in message


def test_offline_without_the_f16_file_says_what_is_needed(tmp_path):
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("tipo-200m:Q8_0", tmp_path, allow_download=False)
    message = str(caught.value)
    assert "made on this machine from tipo-200m:F16" in message and F16_NAME in message
    assert not (tmp_path / "TIPO-200M" / Q8_NAME).exists()


# ----------------------------------------------------------------- making it (llama.cpp)

llama = pytest.mark.llama


@llama
def test_the_first_request_quantizes_and_the_second_reuses(model_dir, children):
    pytest.importorskip("llama_cpp")
    events: list[models.ProgressEvent] = []
    resolved = resolve_model("tipo-200m:Q8_0", model_dir, progress=events.append)
    target = model_dir / "TIPO-200M" / Q8_NAME
    assert resolved.path == target and resolved.spec.display_name == "tipo-200m:Q8_0"
    validate_model_file(target, "gguf")
    assert "Q8_0" in _tensor_types(target) and "F16" not in _tensor_types(target)
    assert target.stat().st_size < (model_dir / "TIPO-200M" / F16_NAME).stat().st_size
    assert read_sizes(target.parent)[Q8_NAME] == target.stat().st_size
    assert len(children) == 1 and _leftovers(target.parent) == []
    steps = [e for e in events if e.phase == "quantize"]
    counted = [e for e in steps if e.unit == "tensors" and e.total and e.total > 1]
    assert counted, "no per-tensor progress"
    assert [e.done for e in counted] == sorted(e.done for e in counted)
    assert counted[-1].done == counted[-1].total
    assert steps[-1].done == steps[-1].total == counted[-1].total
    assert "Quantized" in steps[-1].message

    made_at = target.stat().st_mtime_ns
    events.clear()
    again = resolve_model("tipo-200m:Q8_0", model_dir, progress=events.append)
    assert again.path == target and target.stat().st_mtime_ns == made_at
    assert len(children) == 1 and events == []


@llama
def test_the_f16_file_may_go_once_the_quantization_is_made(model_dir):
    pytest.importorskip("llama_cpp")
    made = resolve_model("tipo-200m:Q6_K", model_dir).path
    (model_dir / "TIPO-200M" / F16_NAME).unlink()
    assert resolve_model("tipo-200m:Q6_K", model_dir, allow_download=False).path == made


@llama
def test_the_local_quantization_expands_a_prompt(model_dir):
    pytest.importorskip("llama_cpp")
    from dtg_lib.backends import BackendCache
    from dtg_lib.settings import UpsampleSettings
    from dtg_lib.upsampler import Upsampler

    cache = BackendCache()
    engine = Upsampler(model_dir=model_dir, lookup=FakeLookup(), backends=cache)
    settings = UpsampleSettings(model="tipo-200m:Q8_0", target="very_short")
    try:
        result = engine.upsample("1girl, solo", settings, seed=3)
        again = engine.upsample("1girl, solo", settings, seed=3)
    finally:
        cache.unload()
    assert result.model == "tipo-200m:Q8_0"
    assert result.final_prompt.startswith("1girl") and "solo" in result.final_prompt
    assert result.new_tags
    assert again.final_prompt == result.final_prompt


@llama
def test_a_tiny_dtg_model_quantized_here_generates(tiny_model, tmp_path):
    pytest.importorskip("llama_cpp")
    from dtg_lib.backends import load_backend
    from dtg_lib.settings import SamplingSettings

    target = make_local_quant(tiny_model.gguf_f16, tmp_path / "tiny-Q8_0.local-quant.gguf", "Q8_0")
    assert "Q8_0" in _tensor_types(target)
    backend = load_backend("llama.cpp", target)
    try:
        prompt = "quality: masterpiece\nrating: safe\ntarget: <|long|>\ngeneral: 1girl, solo"
        text = backend.generate(prompt + "<|input_end|>", SamplingSettings(), 0).text
    finally:
        backend.close()
    assert text.strip()


@llama
def test_an_interrupted_quantization_leaves_nothing_and_the_next_one_works(model_dir, children):
    pytest.importorskip("llama_cpp")

    folder = model_dir / "TIPO-200M"
    seen: list[tuple[bool, list[str]]] = []

    def interrupt(event: models.ProgressEvent) -> None:
        if event.unit == "tensors" and event.done >= 2:
            seen.append(((folder / Q8_NAME).exists(), _leftovers(folder)))
            raise KeyboardInterrupt  # Ctrl-C in the middle

    with pytest.raises(KeyboardInterrupt):
        resolve_model("tipo-200m:Q8_0", model_dir, progress=interrupt)
    # While it ran, the file was written under a hidden temporary name only.
    assert len(seen) == 1 and seen[0][0] is False and len(seen[0][1]) == 1
    assert not (folder / Q8_NAME).exists() and _leftovers(folder) == []
    assert Q8_NAME not in read_sizes(folder)
    assert [m.name for m in list_local_models(model_dir)] == ["tipo-200m:F16"]
    assert resolve_model("tipo-200m:Q8_0", model_dir).path == folder / Q8_NAME
    assert len(children) == 2


KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from dtg_lib.models import resolve_model

    def die(event):
        if event.unit == "tensors" and event.done >= 2:
            os.kill(os.getpid(), signal.SIGKILL)

    resolve_model("tipo-200m:Q8_0", sys.argv[1], progress=die)
    """
)


@llama
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_process_leaves_no_file_and_its_leftover_is_cleaned(model_dir):
    pytest.importorskip("llama_cpp")
    done = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, str(model_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    folder = model_dir / "TIPO-200M"
    assert not (folder / Q8_NAME).exists()
    # A leftover of a killed attempt (its quantizer may even still run for a moment).
    stale = folder / f".{Q8_NAME}.99999-1.partial"
    stale.write_bytes(b"GGUF half a file")
    assert resolve_model("tipo-200m:Q8_0", model_dir).path == folder / Q8_NAME
    assert _leftovers(folder) == []


@llama
def test_two_requests_at_once_quantize_once(model_dir, children):
    pytest.importorskip("llama_cpp")
    found: list[Path] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            found.append(resolve_model("tipo-200m:Q8_0", model_dir).path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and len(set(found)) == 1 and len(found) == 3
    assert len(children) == 1


@llama
def test_a_request_waits_for_another_process_holding_the_lock(model_dir, tmp_path, children):
    """Another process's lock (a second open file, as another process has) is waited for;
    the file it made is then taken as it is."""
    pytest.importorskip("llama_cpp")
    fcntl = pytest.importorskip("fcntl")
    folder = model_dir / "TIPO-200M"
    made_elsewhere = make_local_quant(folder / F16_NAME, tmp_path / "elsewhere.gguf", "Q8_0")
    children.clear()
    events: list[models.ProgressEvent] = []
    found: list[Path] = []
    with (folder / f".{Q8_NAME}.lock").open("a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        waiter = threading.Thread(
            target=lambda: found.append(
                resolve_model("tipo-200m:Q8_0", model_dir, progress=events.append).path
            )
        )
        waiter.start()
        deadline = time.monotonic() + 30
        while not any("Waiting" in e.message for e in events) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("Waiting for another process" in e.message for e in events)
        assert not found
        shutil.copy(made_elsewhere, folder / Q8_NAME)  # the other process finished
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    waiter.join(timeout=60)
    assert found == [folder / Q8_NAME] and children == []


@llama
def test_a_damaged_local_quantization_is_made_again(model_dir):
    pytest.importorskip("llama_cpp")
    path = resolve_model("tipo-200m:Q8_0", model_dir).path
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)
    assert resolve_model("tipo-200m:Q8_0", model_dir).path == path
    assert path.stat().st_size == size
    validate_model_file(path, "gguf")


# ----------------------------------------------------------------- the model list


@llama
def test_the_model_lists_mark_the_local_quantization(model_dir, capsys):
    pytest.importorskip("llama_cpp")
    resolve_model("tipo-200m:Q8_0", model_dir)
    listed = {m.name: m for m in list_local_models(model_dir)}
    assert listed["tipo-200m:Q8_0"].local_quant is True
    assert listed["tipo-200m:F16"].local_quant is False
    assert listed["tipo-200m:Q8_0"].family == "tipo"
    for name in listed:  # each listed name resolves offline, to the file listed
        assert resolve_model(name, model_dir, allow_download=False).path == listed[name].path

    assert cli.main(["--list-models", "--json", "--model-dir", str(model_dir)]) == 0
    local = {m["name"]: m for m in json.loads(capsys.readouterr().out)["local"]}
    assert local["tipo-200m:Q8_0"]["local_quant"] is True
    assert local["tipo-200m:F16"]["local_quant"] is False
    assert cli.main(["--list-models", "--model-dir", str(model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(x.split()[:1] == ["tipo-200m:Q8_0"] and "(quantized here)" in x for x in lines)
    assert any(x.split()[:1] == ["tipo-200m"] and "Q8_0*," in x.split() for x in lines)

    from dtg_lib.http_api import list_models

    http_local = {m["name"]: m for m in list_models(model_dir)["local"]}
    assert http_local["tipo-200m:Q8_0"]["local_quant"] is True


# ----------------------------------------------------------------- failures


def test_without_llama_cpp_the_error_names_the_fix(model_dir, monkeypatch):
    real = quantize_module.importlib.util.find_spec
    monkeypatch.setattr(
        quantize_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    with pytest.raises(ModelError, match="pip install llama-cpp-python"):
        resolve_model("tipo-200m:Q8_0", model_dir)
    assert _leftovers(model_dir / "TIPO-200M") == []
    assert not (model_dir / "TIPO-200M" / Q8_NAME).exists()


@pytest.mark.parametrize(
    ("status", "expected"),
    [(4, "pip install llama-cpp-python"), (5, "has no quantizer"), (6, "could not quantize")],
)
def test_what_the_quantizer_process_says_becomes_a_clear_error(
    model_dir, monkeypatch, status, expected
):
    monkeypatch.setattr(quantize_module, "_check_llama_cpp", lambda: None)
    code = f"import sys; print('[   1/   9] then trouble', file=sys.stderr); sys.exit({status})"
    monkeypatch.setattr(quantize_module, "_CHILD_CODE", code)
    with pytest.raises(ModelError, match=expected):
        resolve_model("tipo-200m:Q8_0", model_dir)
    assert not (model_dir / "TIPO-200M" / Q8_NAME).exists()
    assert _leftovers(model_dir / "TIPO-200M") == []


@llama
def test_a_file_llama_cpp_cannot_read_is_a_quantize_failure(tmp_path):
    pytest.importorskip("llama_cpp")
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    source = tmp_path / "not-a-model-F16.gguf"
    writer = gguf.GGUFWriter(str(source), "llama")  # no hyperparameters, no vocabulary
    writer.add_tensor("w", np.zeros((32, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    target = tmp_path / "not-a-model-Q8_0.local-quant.gguf"
    with pytest.raises(QuantizeFailed, match="could not quantize"):
        make_local_quant(source, target, "Q8_0")
    assert not target.exists() and _leftovers(tmp_path) == []


def test_a_folder_that_cannot_be_written_is_a_clear_error(tmp_path, children):
    # A file where the model folder should be: mkdir fails as it would on a read-only
    # share (and does so for root too, who may write read-only folders).
    blocked = tmp_path / "TIPO-500M"
    blocked.write_text("not a folder")
    with pytest.raises(QuantizeFailed, match=r"writable.*:F16"):
        make_local_quant(tmp_path / "x-F16.gguf", blocked / "x-Q8_0.local-quant.gguf", "Q8_0")
    assert children == []


def test_an_unknown_quantization_is_refused_before_anything_runs(tmp_path, children):
    with pytest.raises(ModelError, match="Q8_0, Q6_K"):
        make_local_quant(tmp_path / "x-F16.gguf", tmp_path / "x.gguf", "Q3_K_S")
    assert children == [] and list(tmp_path.iterdir()) == []


def test_quant_ftypes_match_llama_cpp():
    llama_cpp = pytest.importorskip("llama_cpp")
    assert quantize_module.QUANT_FTYPES == {
        "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    }


FAKE_LLAMA_CPP = """
import ctypes, time

class Params(ctypes.Structure):
    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int)]

def llama_model_quantize_default_params():
    return Params()

def llama_model_quantize(source, out, params):
    time.sleep(60)  # a long quantization
    return 0
"""


def test_the_quantizer_process_exits_when_its_parent_is_gone(tmp_path):
    """A killed parent closes the child's stdin; the child then stops at once instead of
    quantizing on for nobody."""
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text(FAKE_LLAMA_CPP, encoding="utf-8")
    child = subprocess.Popen(
        [sys.executable, "-c", quantize_module._CHILD_CODE, "in.gguf", "out.gguf", "7", "0"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    try:
        time.sleep(1.0)
        assert child.poll() is None  # quantizing
        child.stdin.close()  # what the parent's death does to the pipe
        assert child.wait(timeout=10) == quantize_module._ORPHANED
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()

"""The command line and device choice under hostile conditions (issue 13, items 8, 9, 11).

An ASCII-only stdout, a closed pipe, sizes and prompts past the HTTP API's limits,
and a GPU the llama.cpp build cannot use: each reproduction is a case here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from fake_lookup import FakeLookup

from dtg_lib import cli
from dtg_lib.backends import BackendCache, load_backend
from dtg_lib.backends.llama_cpp import offload_problem, placement
from dtg_lib.limits import MAX_PROMPT_CHARS, MAX_SIZE
from dtg_lib.settings import UpsampleSettings
from dtg_lib.upsampler import Upsampler

REPO_ROOT = Path(__file__).resolve().parent.parent
JAPANESE_TAG = "初音ミク"
ESCAPED_TAG = "\\u521d\\u97f3\\u30df\\u30af"
NOT_AVAILABLE = "is not available to llama.cpp here; ran on cpu"


def _cpu_only_llama_cpp():
    """llama_cpp, when its build cannot offload to a GPU (else the device cases mean nothing)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python can offload to a GPU")
    return llama_cpp


# ------------------------------------------------------------- the CLI as a process


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One tag index for every run in this module: building it takes seconds."""
    return tmp_path_factory.mktemp("dtg-cache")


def run_cli(
    args: list[str], cache_dir: Path, encoding: str = "ascii"
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONIOENCODING": encoding,
        "DTG_CACHE_DIR": str(cache_dir),
        "DTG_MODEL_DIR": str(cache_dir / "models"),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "dtg_lib", *args, "--offline"],
        capture_output=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=600,
    )


def _gguf_args(tiny_model, *extra: str) -> list[str]:
    pytest.importorskip("llama_cpp")
    prompt = f"1girl, {JAPANESE_TAG}"
    return [prompt, "--model", str(tiny_model.gguf_f16), "--target", "very_short", *extra]


@pytest.mark.slow
@pytest.mark.llama
def test_ascii_stdout_gets_the_expansion_escaped(tiny_model, cache_dir):
    done = run_cli(_gguf_args(tiny_model, "--seed", "1"), cache_dir)
    out, err = done.stdout.decode("ascii"), done.stderr.decode("ascii")
    assert done.returncode == 0, err
    assert "Traceback" not in err
    assert out.startswith("1girl,") and ESCAPED_TAG in out
    # The same expansion as on a UTF-8 stdout, only written with escapes.
    plain = run_cli(_gguf_args(tiny_model, "--seed", "1"), cache_dir, encoding="utf-8")
    assert plain.returncode == 0
    assert plain.stdout.decode("utf-8") == out.replace(ESCAPED_TAG, JAPANESE_TAG)


@pytest.mark.slow
@pytest.mark.llama
def test_ascii_stdout_gets_valid_json(tiny_model, cache_dir):
    done = run_cli(_gguf_args(tiny_model, "--seed", "1", "--json"), cache_dir)
    assert done.returncode == 0, done.stderr.decode("ascii")
    result = json.loads(done.stdout.decode("ascii"))
    assert result["prompt"] == f"1girl, {JAPANESE_TAG}"
    assert JAPANESE_TAG in result["final_prompt"] and result["new_tags"]


@pytest.mark.slow
@pytest.mark.llama
def test_a_gpu_notice_on_stderr_once_and_the_expansion_on_stdout(tiny_model, cache_dir):
    _cpu_only_llama_cpp()
    done = run_cli(_gguf_args(tiny_model, "--seed", "1", "--device", "cuda"), cache_dir)
    out, err = done.stdout.decode("ascii"), done.stderr.decode("ascii")
    assert done.returncode == 0, err
    assert ESCAPED_TAG in out and NOT_AVAILABLE not in out
    assert err.count(f"device 'cuda' {NOT_AVAILABLE}") == 1, err


@pytest.mark.slow
@pytest.mark.llama
def test_a_closed_pipe_is_no_traceback(tiny_model, cache_dir):
    env = {**os.environ, "DTG_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "dtg_lib", *_gguf_args(tiny_model), "--offline"]
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT
    ) as child:
        child.stdout.close()  # long before the child has an expansion to write
        err = child.stderr.read().decode("utf-8")
        assert child.wait(timeout=600) == 1
    assert "Traceback" not in err and "Exception ignored" not in err, err


# ----------------------------------------------------------------- the CLI's limits


@pytest.fixture
def no_engine(monkeypatch):
    """The CLI with an engine that must not be reached, or records what reached it."""
    calls = []

    class Recording:
        def upsample(self, prompt, settings, seed, width, height, progress=None):
            calls.append((prompt, width, height))
            return types.SimpleNamespace(final_prompt="expanded", notices=())

    monkeypatch.setattr(cli, "_upsampler", lambda args: Recording())
    return calls


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", str(10**9), "1girl"], f"--width must be a whole number from 1 to {MAX_SIZE}"),
        (["--height", "0", "1girl"], "--height must be a whole number from 1"),
        (["--width", "-5", "1girl"], "--width must be a whole number from 1"),
        (["x" * (MAX_PROMPT_CHARS + 1)], f"at most {MAX_PROMPT_CHARS} are read"),
        (["1girl, \udcff"], "not valid text"),
    ],
)
def test_limits_are_argument_errors(no_engine, capsys, args, message):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert no_engine == []


def test_notices_the_log_did_not_print_go_to_stderr(monkeypatch, capsys):
    told = "a round stopped after 2 tokens, before it finished a tag"

    class Noting:
        def upsample(self, prompt, settings, seed, width, height, progress=None):
            return types.SimpleNamespace(final_prompt=f"{prompt}, hat", notices=(told,))

    monkeypatch.setattr(cli, "_upsampler", lambda args: Noting())
    assert cli.main(["1girl"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "1girl, hat\n" and captured.err == f"note: {told}\n"


def test_limits_let_the_largest_allowed_through(no_engine, capsys):
    longest = "x" * MAX_PROMPT_CHARS
    assert cli.main(["--width", str(MAX_SIZE), "--height", "1", longest]) == 0
    assert no_engine == [(longest, MAX_SIZE, 1)]
    assert capsys.readouterr().out.strip() == "expanded"


# ------------------------------------------------------------- the engine's device


class FakeLlama:
    def __init__(self, offloads: bool) -> None:
        self.offloads = offloads

    def llama_supports_gpu_offload(self) -> bool:
        return self.offloads


@pytest.mark.parametrize(
    ("offloads", "platform", "device", "problem"),
    [
        (False, "linux", "cuda", "no GPU offload"),
        (False, "darwin", "mps", "no GPU offload"),
        (True, "linux", "cuda", None),
        (True, "linux", "cuda:1", None),
        (True, "linux", "mps", "only on macOS"),
        (True, "darwin", "mps", None),
        (True, "darwin", "cuda", "Metal"),
    ],
)
def test_offload_problem(offloads, platform, device, problem):
    found = offload_problem(FakeLlama(offloads), device, platform)
    assert found is None if problem is None else problem in found


def test_placement_falls_back_to_the_cpu_with_a_notice():
    assert placement(FakeLlama(False), "cpu") == (0, "cpu", "")
    layers, device, notice = placement(FakeLlama(False), "cuda:99")
    assert (layers, device) == (0, "cpu")
    assert notice.startswith(f"device 'cuda:99' {NOT_AVAILABLE} (")


@pytest.mark.slow
@pytest.mark.llama
@pytest.mark.parametrize("device", ["cuda", "cuda:99", "mps", "gpu"])
def test_llama_cpp_backend_says_where_it_runs(tiny_model, device):
    _cpu_only_llama_cpp()
    backend = load_backend("llama.cpp", tiny_model.gguf_f16, device)
    try:
        assert backend.device == "cpu"
        (notice,) = backend.notices
        named = "cuda" if device == "gpu" else device
        assert notice.startswith(f"device {named!r} {NOT_AVAILABLE}")
    finally:
        backend.close()
    on_cpu = load_backend("llama.cpp", tiny_model.gguf_f16, "cpu")
    try:
        assert on_cpu.notices == ()
    finally:
        on_cpu.close()


@pytest.fixture
def engine(tiny_model):
    cache = BackendCache()
    yield Upsampler(
        model_dir=tiny_model.gguf_f16.parent,
        lookup=FakeLookup(),
        backends=cache,
        allow_download=False,
    )
    cache.unload()


@pytest.mark.slow
@pytest.mark.llama
def test_every_result_carries_the_device_notice(tiny_model, engine):
    _cpu_only_llama_cpp()
    settings = UpsampleSettings(model=str(tiny_model.gguf_f16), target="very_short")
    on_cpu = engine.upsample("1girl, solo", settings, 5)
    asked = UpsampleSettings(model=str(tiny_model.gguf_f16), target="very_short", device="cuda")
    first, second = engine.upsample_many(["1girl, solo", "1boy"], asked, [5, 6])
    for result in (first, second):
        assert result.device == "cpu"
        assert sum(NOT_AVAILABLE in n for n in result.notices) == 1, result.notices
    assert on_cpu.device == "cpu" and not any(NOT_AVAILABLE in n for n in on_cpu.notices)
    # It ran exactly as a cpu request does.
    assert first.final_prompt == on_cpu.final_prompt


@pytest.mark.slow
@pytest.mark.llama
def test_http_reports_the_device_it_ran_on(tiny_model, engine):
    _cpu_only_llama_cpp()
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from dtg_lib import http_api

    app = FastAPI()
    app.include_router(http_api.create_router(lambda: engine, model_dir=engine.model_dir))
    settings = {"model": tiny_model.gguf_f16.name, "target": "very_short", "device": "mps"}
    with TestClient(app) as client:
        response = client.post("/dtg/v1/upsample", json={"prompt": "1girl", "settings": settings})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["device"] == "cpu"
    assert any(n.startswith(f"device 'mps' {NOT_AVAILABLE}") for n in result["notices"])

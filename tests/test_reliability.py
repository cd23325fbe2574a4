"""Faults anywhere in the engine give one clear error, and the next job still works.

Also: prompts longer than the context, ban patterns that backtrack forever,
many threads on one cached model, and untrusted model names.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_lookup import FakeLookup
from test_upsample_loop import ScriptedBackend

from dtg_lib import assemble as assemble_module
from dtg_lib import cli
from dtg_lib import upsampler as upsampler_module
from dtg_lib.backends import BackendCache, BackendUnavailable, ModelLoadError
from dtg_lib.ban import compile_ban_list
from dtg_lib.model_selection import ModelChoice
from dtg_lib.models import ModelError
from dtg_lib.prompt_syntax import ItemKind, parse
from dtg_lib.settings import UpsampleSettings
from dtg_lib.upsampler import GenerationError, UpsampleError, Upsampler

REPO_ROOT = Path(__file__).resolve().parent.parent
SHORT = UpsampleSettings(target="short")


class Failing(ScriptedBackend):
    """Raises `error` on the first `failures` generate calls, then behaves."""

    def __init__(self, error: BaseException, failures: int = 1, context: int = 2048):
        super().__init__()
        self.error, self.failures, self.context, self.closed = error, failures, context, False

    def generate(self, prompt, sampling, seed):
        if self.failures:
            self.failures -= 1
            raise self.error
        return super().generate(prompt, sampling, seed)

    def close(self):
        self.closed = True


def scripted(monkeypatch, make_backend):
    """An Upsampler whose cache loads `make_backend()` each time it (re)loads."""
    loaded: list = []

    def loader(*args, **options):
        loaded.append(make_backend())
        return loaded[-1]

    engine = Upsampler(lookup=FakeLookup(), backends=BackendCache(loader))
    choice = ModelChoice("llama.cpp", Path("scripted.gguf"), "scripted", True)
    monkeypatch.setattr(engine, "_choose_model", lambda settings, progress=None: choice)
    return engine, loaded


def user_texts(prompt: str) -> list[str]:
    return [i.text for i in parse(prompt).items if i.kind is not ItemKind.SEPARATOR]


# ------------------------------------------------------------- generation faults


def _oom_errors():
    errors = [pytest.param(MemoryError(), id="MemoryError")]
    try:
        import torch

        errors.append(
            pytest.param(torch.cuda.OutOfMemoryError("CUDA out of memory"), id="cuda-oom")
        )
    except ImportError:
        pass
    return errors


@pytest.mark.parametrize("error", _oom_errors())
def test_out_of_memory_is_one_clear_error_and_the_next_job_reloads(monkeypatch, error):
    engine, loaded = scripted(monkeypatch, lambda: Failing(error))
    with pytest.raises(GenerationError, match="ran out of memory") as caught:
        engine.upsample_many(["1girl, solo", "1boy"], SHORT, [1, 2])
    assert "prompt 1 ('1girl, solo')" in str(caught.value)
    # The failed backend left the cache and was closed; the next job gets a fresh one.
    assert loaded[0].closed and engine.backends.current is None
    loaded_next = Failing(error, failures=0)
    engine.backends._loader = lambda *a, **k: loaded_next
    result = engine.upsample("1girl, solo", SHORT, seed=3)
    assert result.new_tags and engine.backends.current is loaded_next


def test_other_backend_failures_are_generation_errors(monkeypatch):
    engine, _ = scripted(monkeypatch, lambda: Failing(RuntimeError("decode returned -3")))
    with pytest.raises(GenerationError, match="decode returned -3"):
        engine.upsample("1girl", SHORT, seed=1)


@pytest.mark.parametrize(
    ("target", "stage"),
    [
        ("parse", "reading the prompt"),
        ("classify_prompt", "reading the prompt"),
        ("build_model_input", "reading the prompt"),
        ("assemble", "writing the final prompt"),
        ("parse_model_output", "failed"),
    ],
)
def test_a_failing_stage_names_itself_and_the_next_job_works(monkeypatch, target, stage):
    engine, _ = scripted(monkeypatch, lambda: Failing(MemoryError(), failures=0))
    # The final prompt is written by the budget fit, which looks `assemble` up in its module.
    owner = assemble_module if target == "assemble" else upsampler_module
    original = getattr(owner, target)
    calls = {"n": 0}

    def broken(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, target, broken)
    with pytest.raises(UpsampleError, match=stage) as caught:
        engine.upsample("1girl, solo", SHORT, seed=1)
    assert "KeyError" in str(caught.value) and "'1girl, solo'" in str(caught.value)
    assert engine.upsample("1girl, solo", SHORT, seed=1).new_tags


def test_lookup_failure_is_reported(monkeypatch):
    class BrokenLookup:
        def classify(self, tag):
            raise OSError("tag index unreadable")

    engine, _ = scripted(monkeypatch, lambda: Failing(MemoryError(), failures=0))
    engine._lookup = BrokenLookup()
    with pytest.raises(UpsampleError, match="reading the prompt failed: OSError"):
        engine.upsample("1girl", SHORT, seed=1)


# ----------------------------------------------------------------- load faults

pytest_slow_llama = [pytest.mark.slow, pytest.mark.llama]


@pytest.fixture
def real_engine(tmp_path):
    cache = BackendCache()
    engine = Upsampler(
        lookup=FakeLookup(), backends=cache, allow_download=False, model_dir=tmp_path / "models"
    )
    yield engine
    cache.unload()


def _works(engine, model) -> None:
    settings = UpsampleSettings.from_dict({"model": str(model), "target": "very_short"})
    result = engine.upsample("1girl, solo", settings, seed=1)
    assert result.final_prompt.startswith("1girl")


def _truncated_gguf(tiny_model, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_model.gguf_f16.read_bytes()[:100_000])
    return path


def _text_as_gguf(tiny_model, tmp_path):
    path = tmp_path / "page.gguf"
    path.write_text("<html>rate limited</html>")
    return path


def _garbled_gguf(tiny_model, tmp_path):
    data = bytearray(tiny_model.gguf_f16.read_bytes())
    data[8:24] = b"\xff" * 16  # tensor and metadata counts
    path = tmp_path / "garbled.gguf"
    path.write_bytes(bytes(data))
    return path


def _truncated_safetensors(tiny_model, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_model.hf_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50_000])
    return folder


def _pickle_only_folder(tiny_model, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_model.hf_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    return folder


@pytest.mark.slow
@pytest.mark.llama
@pytest.mark.parametrize(
    "make_bad",
    [
        _truncated_gguf,
        _text_as_gguf,
        _garbled_gguf,
        _truncated_safetensors,
        _pickle_only_folder,
    ],
)
def test_damaged_models_are_clear_errors_and_the_next_job_works(
    real_engine, tiny_model, tmp_path, make_bad
):
    pytest.importorskip("llama_cpp")
    bad = make_bad(tiny_model, tmp_path)
    settings = UpsampleSettings.from_dict({"model": str(bad), "target": "very_short"})
    with pytest.raises((ModelError, ModelLoadError)) as caught:
        real_engine.upsample("1girl", settings, seed=1)
    assert str(bad.name) in str(caught.value)
    _works(real_engine, tiny_model.gguf_f16)


@pytest.mark.slow
def test_missing_model_offline_is_a_clear_error(real_engine):
    settings = UpsampleSettings.from_dict({"model": "delta-rev2"})
    with pytest.raises(ModelError, match=r"delta-rev2|DanTagGen"):
        real_engine.upsample("1girl", settings, seed=1)


@pytest.mark.slow
@pytest.mark.llama
def test_missing_backend_library_is_a_clear_error_then_recovers(
    real_engine, tiny_model, monkeypatch
):
    pytest.importorskip("llama_cpp")
    settings = UpsampleSettings.from_dict(
        {"model": str(tiny_model.gguf_f16), "backend": "llama.cpp", "target": "very_short"}
    )
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
        with pytest.raises((BackendUnavailable, ModelError)) as caught:
            real_engine.upsample("1girl", settings, seed=1)
        assert "llama-cpp-python" in str(caught.value) or "llama.cpp" in str(caught.value)
    _works(real_engine, tiny_model.gguf_f16)


@pytest.mark.slow
@pytest.mark.llama
def test_cli_reports_out_of_memory_without_a_traceback(tiny_model, monkeypatch, capsys):
    pytest.importorskip("llama_cpp")
    from dtg_lib.backends.llama_cpp import LlamaCppBackend

    def no_memory(self, prompt, sampling, seed):
        raise MemoryError()

    monkeypatch.setattr(LlamaCppBackend, "generate", no_memory)
    code = cli.main(["1girl", "--model", str(tiny_model.gguf_f16), "--offline"])
    err = capsys.readouterr().err
    assert code == 1
    assert "ran out of memory" in err and "Traceback" not in err


# ------------------------------------------------------------------ long prompts


def test_a_prompt_longer_than_the_context_is_trimmed_with_a_notice(monkeypatch):
    # The scripted backend counts words; a 400-word context forces trimming.
    engine, _ = scripted(monkeypatch, lambda: Failing(MemoryError(), failures=0, context=400))
    tags = [f"general tag number {i}" for i in range(150)]
    prompt = "1girl, " + ", ".join(tags)
    result = engine.upsample(prompt, SHORT, seed=1)
    assert any("left out of the model input" in n for n in result.notices)
    assert result.model_input.count("general tag number") < 150
    assert "general tag number 0," in result.model_input  # the end was dropped, not the start
    for text in user_texts(prompt):
        assert text in result.final_prompt


@pytest.mark.slow
@pytest.mark.llama
def test_real_model_with_a_prompt_over_2048_tokens(real_engine, tiny_model):
    pytest.importorskip("llama_cpp")
    # Distinct tags: the model input lists each name once.
    prompt = ", ".join(f"(colour {i} ribbon:1.1)" for i in range(600))
    settings = UpsampleSettings.from_dict({"model": str(tiny_model.gguf_f16), "target": "long"})
    result = real_engine.upsample("1girl, " + prompt, settings, seed=1)
    assert result.notices and "context" in result.notices[0]
    for text in user_texts("1girl, " + prompt):
        assert text in result.final_prompt


# --------------------------------------------------------------------- ban regex


def test_a_backtracking_ban_regex_cannot_hang():
    bans = compile_ban_list("/(a|aa)+b/, hat")
    started = time.perf_counter()
    # Under `re` this match takes minutes (it tries every split of the a's).
    assert not bans.bans("a" * 40)
    assert time.perf_counter() - started < 5  # generous: the timeout is 0.05 s
    assert bans.bans("hat") and compile_ban_list("/(a|aa)+b/").bans("aab")


def test_an_invalid_ban_regex_is_a_settings_error():
    from dtg_lib.settings import SettingsError

    with pytest.raises(SettingsError, match="not a valid regex"):
        UpsampleSettings.from_dict({"ban_tags": "/(unclosed/"})


# ------------------------------------------------------------------ concurrency


@pytest.mark.slow
@pytest.mark.llama
def test_eight_threads_match_one_by_one_even_while_unloading(real_engine, tiny_model):
    pytest.importorskip("llama_cpp")
    settings = UpsampleSettings.from_dict(
        {"model": str(tiny_model.gguf_f16), "target": "short", "max_new_tokens": 64}
    )
    jobs = [(f"1girl, solo, tag{i % 3}", 100 + i) for i in range(8)]
    expected = [real_engine.upsample(p, settings, s).final_prompt for p, s in jobs]
    got: dict[int, str] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(index, prompt, seed):
        try:
            got[index] = real_engine.upsample(prompt, settings, seed).final_prompt
        except Exception as exc:  # collected and reported by the assertion below
            errors.append(exc)

    def unloader():
        while not stop.is_set():
            real_engine.unload()
            time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(i, *job)) for i, job in enumerate(jobs)]
    churn = threading.Thread(target=unloader)
    churn.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    churn.join()
    assert not errors
    assert [got[i] for i in range(len(jobs))] == expected


def test_unload_waits_for_leases():
    closed: list = []

    class Fake(ScriptedBackend):
        def close(self):
            closed.append(self)

    cache = BackendCache(lambda *a, **k: Fake())
    with cache.lease("torch", Path("m")) as first:
        assert cache.unload()
        assert not closed  # still in use
        with cache.lease("torch", Path("m")) as second:
            assert second is not first
        assert not closed
    # The old backend closed once its lease ended; the new one stays cached.
    assert closed == [first] and cache.current is second


# --------------------------------------------------------------------- security


def test_untrusted_names_stay_inside_the_model_folder(tmp_path, tiny_model):
    """The one rule for names from outside (HTTP, the webui API): models.checked_model_spec."""
    from dtg_lib.models import checked_model_spec, parse_model_name

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_model.gguf_f16, models / "tiny.gguf")
    outside = tmp_path / "outside.gguf"
    shutil.copy(tiny_model.gguf_f16, outside)
    for name in (str(outside), "../outside.gguf", "/etc/passwd", "tiny.gguf\x00", "", 7):
        with pytest.raises(ModelError):
            checked_model_spec(name, models)
    assert checked_model_spec("tiny.gguf", models).local_path == (models / "tiny.gguf").resolve()
    assert checked_model_spec("delta-rev2:Q6_K", models) == parse_model_name("delta-rev2:Q6_K")


@pytest.mark.slow
@pytest.mark.torch
def test_torch_loading_never_trusts_remote_code_or_pickle(tiny_model, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from dtg_lib.backends import load_backend

    seen: dict[str, list[tuple[tuple, dict]]] = {}
    classes = (transformers.AutoTokenizer, transformers.AutoConfig, transformers.PreTrainedModel)
    for cls in classes:
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=cls.__name__, **kwargs):
            seen.setdefault(_name, []).append((args, kwargs))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_backend("torch", tiny_model.hf_dir).close()
    for name in ("AutoTokenizer", "AutoConfig"):
        assert seen[name] and all(kw.get("trust_remote_code") is False for _, kw in seen[name])
    # The weights: read from the safetensors by the backend and handed over as tensors,
    # so the model class is given no folder to load files (or code) from.
    [(args, kwargs)] = seen["PreTrainedModel"]
    assert args == (None,) and isinstance(kwargs.get("state_dict"), dict)


def test_no_source_file_enables_remote_code_or_unpickling():
    risky = re.compile(r"trust_remote_code\s*=\s*True|torch\.load\(|pickle\.loads?\(")
    for path in (REPO_ROOT / "dtg_lib").rglob("*.py"):
        assert not risky.search(path.read_text(encoding="utf-8")), path

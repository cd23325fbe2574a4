"""One error family with one meaning per class, and the backend contract as types (issue 14).

Every error the engine raises on purpose derives from `DtgError` and says by its
class what it means for a client (`http_status`); the HTTP routes and the webui
read that instead of lists of classes. Both backends satisfy the `Backend`
protocols the upsampler is typed against.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import threading
from pathlib import Path

import pytest

import dtg_lib
from dtg_lib import http_api
from dtg_lib.assemble import FormatError
from dtg_lib.backends import BackendCache, load_backend
from dtg_lib.backends.base import (
    Backend,
    BackendUnavailable,
    BatchBackend,
    Generation,
    ModelLoadError,
    PromptTooLong,
)
from dtg_lib.ban import BanListError
from dtg_lib.errors import DtgError
from dtg_lib.model_selection import ModelChoice
from dtg_lib.models import DownloadFailed, ModelCorrupt, ModelError, ModelNotFound
from dtg_lib.settings import SettingsError, UpsampleSettings
from dtg_lib.upsampler import Cancelled, GenerationError, UpsampleError, Upsampler

README = Path(__file__).resolve().parent.parent / "README.md"
HTTP_STATUSES = {413, 422, 500, 503}


def _engine_modules() -> list[str]:
    names = [dtg_lib.__name__]
    for info in pkgutil.walk_packages(dtg_lib.__path__, prefix="dtg_lib."):
        if not info.name.endswith("__main__"):  # runs the CLI when imported
            names.append(info.name)
    return names


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class a dtg_lib module defines under a public name.

    Private ones (`ban._TooCostly`) are signals inside one module that no caller sees.
    """
    found = set()
    for name in _engine_modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")
            ):
                found.add(value)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def test_the_walk_finds_the_engine_errors():
    found = set(_exception_classes())
    assert {SettingsError, ModelCorrupt, PromptTooLong, GenerationError} <= found
    assert http_api.BodyTooLarge in found and len(found) >= 15


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda cls: cls.__qualname__)
def test_every_engine_error_is_a_dtg_error_with_an_http_status(cls):
    assert issubclass(cls, DtgError)
    assert cls.http_status in HTTP_STATUSES


@pytest.mark.parametrize(
    ("cls", "old_base"),
    [
        (SettingsError, ValueError),
        (BanListError, ValueError),
        (FormatError, ValueError),
        (PromptTooLong, ValueError),
        (http_api.RequestError, ValueError),
        (ModelError, RuntimeError),
        (BackendUnavailable, RuntimeError),
        (ModelLoadError, RuntimeError),
        (UpsampleError, RuntimeError),
    ],
)
def test_errors_keep_the_base_their_callers_catch(cls, old_base):
    assert issubclass(cls, old_base)


# ----------------------------------------------------------- HTTP, as the README says

# (words of the README's HTTP section, an error of that kind): the first "gets NNN"
# after the words is the status the README promises for it.
README_PROMISES = [
    ("an invalid setting", SettingsError("target must be one of ...")),
    ("an invalid setting", BanListError("ban pattern 're:(' is not a valid regex")),
    ("an invalid setting", FormatError("unknown format 'x'")),
    ("a registry model that is not downloaded", ModelNotFound("delta-rev2 is not downloaded")),
    ("a registry model that is not downloaded", DownloadFailed("the hub did not answer")),
    ("a damaged model file", ModelCorrupt("tiny.gguf is truncated")),
    ("a damaged model file", ModelLoadError("tiny.gguf is not a GGUF file")),
    ("a backend that is not installed", BackendUnavailable("pip install llama-cpp-python")),
    ("A request still running after", Cancelled("the upsample job was cancelled")),
]


def _readme_status(words: str) -> int:
    text = " ".join(README.read_text(encoding="utf-8").split())
    found = re.search(r"gets (\d{3})", text[text.index(words) :])
    assert found, f"the README says no status after {words!r}"
    return int(found.group(1))


def _client(upsampler, model_dir, **options):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.include_router(http_api.create_router(lambda: upsampler, model_dir=model_dir, **options))
    return TestClient(app)


@pytest.mark.parametrize(
    ("words", "error"), README_PROMISES, ids=[type(e).__name__ for _, e in README_PROMISES]
)
def test_each_error_kind_gets_the_status_the_readme_gives(words, error, tmp_path):
    from fake_upsampler import FakeUpsampler

    status = _readme_status(words)
    assert error.http_status == status
    response = _client(FakeUpsampler(error), tmp_path).post(
        "/dtg/v1/upsample", json={"prompt": "1girl", "seed": 1}
    )
    assert response.status_code == status, response.text
    assert str(error) in response.json()["detail"]


def test_a_body_over_the_limit_gets_the_status_the_readme_gives(tmp_path):
    from fake_upsampler import FakeUpsampler

    status = _readme_status("Limits: a body over")
    assert http_api.BodyTooLarge.http_status == status
    client = _client(FakeUpsampler(), tmp_path, max_body_bytes=100)
    response = client.post("/dtg/v1/upsample", json={"prompt": "x" * 1000})
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    "error", [GenerationError("the model ran out of memory"), UpsampleError("assembly failed")]
)
def test_a_failure_while_generating_is_a_500_that_says_so(error, tmp_path):
    from fake_upsampler import FakeUpsampler

    response = _client(FakeUpsampler(error), tmp_path).post(
        "/dtg/v1/upsample", json={"prompt": "1girl", "seed": 1}
    )
    assert response.status_code == 500
    assert response.json()["detail"] == f"upsampling failed: {error}"


# ------------------------------------------------- a model file damaged mid-expansion


class CutAfterFirstRound:
    """A real backend whose model file is cut short once its first round is done."""

    def __init__(self, real: Backend) -> None:
        self.real = real
        self.rounds = 0
        self.name, self.device = real.name, real.device
        self.context, self.notices = real.context, real.notices

    def generate(self, prompt, sampling, seed):
        generation = self.real.generate(prompt, sampling, seed)
        self.rounds += 1
        path = self.real.model_path
        path.write_bytes(path.read_bytes()[:1000])  # a half-written download, say
        return generation

    def count_tokens(self, text):
        return self.real.count_tokens(text)

    def close(self):
        self.real.close()


@pytest.mark.slow
def test_a_model_file_damaged_during_an_expansion_is_a_503(tiny_model, tmp_path):
    pytest.importorskip("llama_cpp")
    from fake_lookup import FakeLookup

    model = tmp_path / "tiny.gguf"
    model.write_bytes(tiny_model.gguf_f16.read_bytes())
    wrapped = []

    def loader(*args, **kwargs):
        wrapped.append(CutAfterFirstRound(load_backend(*args, **kwargs)))
        return wrapped[-1]

    cache = BackendCache(loader=loader)
    upsampler = Upsampler(model_dir=tmp_path, lookup=FakeLookup(), backends=cache)
    settings = {"model": model.name, "target": "very_long", "max_rounds": 6}
    try:
        response = _client(upsampler, tmp_path).post(
            "/dtg/v1/upsample", json={"prompt": "1girl, solo", "seed": 1, "settings": settings}
        )
        assert wrapped[0].rounds == 1  # the second round found the file changed
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "no longer loads" in detail and model.name in detail
        assert cache.current is None  # dropped: the next request loads it afresh
    finally:
        cache.unload()


# ------------------------------------------------------------------ the backend types


@pytest.mark.slow
def test_llama_cpp_backend_is_a_backend_without_batches(tiny_model):
    pytest.importorskip("llama_cpp")
    backend = load_backend("llama.cpp", tiny_model.gguf_f16)
    try:
        assert isinstance(backend, Backend) and not isinstance(backend, BatchBackend)
        assert backend.context > 0 and backend.notices == ()
    finally:
        backend.close()


@pytest.mark.slow
def test_torch_backend_is_a_batch_backend(tiny_model):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    backend = load_backend("torch", tiny_model.hf_dir)
    try:
        assert isinstance(backend, BatchBackend) and isinstance(backend, Backend)
        assert backend.context > 0 and backend.notices == ()
    finally:
        backend.close()


def test_a_backend_missing_a_promised_attribute_is_no_backend():
    class NoContext:
        name, device, notices = "fake", "cpu", ()

        def generate(self, prompt, sampling, seed): ...

        def count_tokens(self, text): ...

        def close(self): ...

    assert not isinstance(NoContext(), Backend)
    NoContext.context = 2048
    assert isinstance(NoContext(), Backend) and not isinstance(NoContext(), BatchBackend)


def test_the_upsampler_is_typed_not_probed():
    source = Path(inspect.getfile(Upsampler)).read_text(encoding="utf-8")
    for probe in ("hasattr(", "getattr(", "_CLEAR_ERRORS"):
        assert probe not in source
    assert "_UNAVAILABLE" not in Path(inspect.getfile(http_api)).read_text(encoding="utf-8")


def test_the_webui_notes_an_engine_error_by_its_message_and_an_unexpected_one_by_type():
    from dtg_webui.rewrite import _failure_text

    assert _failure_text(ModelCorrupt("tiny.gguf is truncated")) == "tiny.gguf is truncated"
    assert _failure_text(KeyError("x")) == "KeyError: 'x'"


class CancelsInItsRound:
    """A backend whose first round ends with the job cancelled (its client left)."""

    name, device, context, notices = "cancelling", "cpu", 2048, ()

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def generate(self, prompt, sampling, seed):
        self.cancel.set()
        return Generation("tag1, tag2", 3, 2, 0.0, 0.0, True)

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        """Nothing to free."""


def test_cancelled_passes_through_the_stages_unchanged(monkeypatch):
    from fake_lookup import FakeLookup

    cancel = threading.Event()
    backend = CancelsInItsRound(cancel)
    upsampler = Upsampler(lookup=FakeLookup(), backends=BackendCache(lambda *a, **k: backend))
    choice = ModelChoice("llama.cpp", Path("cancelling.gguf"), "cancelling", True)
    monkeypatch.setattr(upsampler, "_choose_model", lambda settings, **_: choice)
    settings = UpsampleSettings(target="very_long")
    with pytest.raises(Cancelled) as caught:
        upsampler.upsample("1girl", settings, 1, cancel=cancel)
    assert str(caught.value) == "the upsample job was cancelled"  # no stage wrapped it

"""The HTTP face under hostile or careless clients (issue 13).

Each case is a reproduction from an adversarial pass against the server: work
left running for a client that left, plain-text 500s, server paths in answers,
unbounded bodies, and seed rules that differed between `seed` and `seeds`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx")

from fake_lookup import FakeLookup
from fake_upsampler import FakeUpsampler
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dtg_lib import http_api, limits, models
from dtg_lib.backends import BackendCache, load_backend
from dtg_lib.dtg_format import INPUT_END
from dtg_lib.settings import UpsampleSettings
from dtg_lib.upsampler import Cancelled, Upsampler

URL = "/dtg/v1/upsample"
JSON_HEADERS = {"content-type": "application/json"}
# Seeds are folded modulo this before use (see the README's Reproducibility section).
SEED_FOLD = 2**32 - 1


def make_client(upsampler, model_dir, **kwargs):
    app = FastAPI()
    app.include_router(http_api.create_router(lambda: upsampler, model_dir=model_dir, **kwargs))
    return TestClient(app)


@pytest.fixture
def fake():
    return FakeUpsampler()


@pytest.fixture
def client(fake, tmp_path):
    (tmp_path / "mine.gguf").write_bytes(b"GGUF")
    return make_client(fake, tmp_path)


class WaitingUpsampler:
    """Works until it is cancelled, for at most `limit_s`; records what happened."""

    def __init__(self, limit_s: float = 15.0) -> None:
        self.limit_s = limit_s
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.cancelled = False

    def upsample_many(self, prompts, settings, seeds, width, height, *, cancel=None):
        self.started.set()
        try:
            deadline = time.monotonic() + self.limit_s
            while time.monotonic() < deadline:
                if cancel is not None and cancel.wait(0.02):
                    self.cancelled = True
                    raise Cancelled("the upsample job was cancelled")
                time.sleep(0.02)
            return [FakeUpsampler._result(p, s, settings) for p, s in zip(prompts, seeds)]
        finally:
            self.stopped.set()


# ---------------------------------------------------------------- cancellation: the engine


class CancelAfterFirstRound:
    """A real backend that sets `cancel` once its first round is done, and counts rounds."""

    def __init__(self, real, cancel: threading.Event) -> None:
        self.real = real
        self.cancel = cancel
        self.rounds = 0
        self.name, self.device = real.name, real.device
        self.context, self.notices = real.context, real.notices

    def generate(self, prompt, sampling, seed):
        generation = self.real.generate(prompt, sampling, seed)
        self.rounds += 1
        self.cancel.set()  # as if the client left while this round ran
        return generation

    def count_tokens(self, text):
        return self.real.count_tokens(text)

    def close(self):
        self.real.close()


def tiny_name(tiny_model):
    """The tiny model in the format an installed backend reads, named inside its folder."""
    try:
        import llama_cpp  # noqa: F401

        return tiny_model.gguf_f16.name
    except ImportError:
        return tiny_model.hf_dir.name


@pytest.mark.slow
def test_engine_stops_within_a_round_after_cancel(tiny_model):
    cancel = threading.Event()
    wrapped = []

    def loader(*args, **kwargs):
        wrapped.append(CancelAfterFirstRound(load_backend(*args, **kwargs), cancel))
        return wrapped[-1]

    cache = BackendCache(loader=loader)
    upsampler = Upsampler(
        model_dir=tiny_model.gguf_f16.parent,
        lookup=FakeLookup(),
        backends=cache,
        allow_download=False,
    )
    settings = UpsampleSettings(model=tiny_name(tiny_model), target="very_long", max_rounds=20)
    try:
        with pytest.raises(Cancelled):
            upsampler.upsample_many(["1girl, solo"] * 3, settings, [1, 2, 3], cancel=cancel)
        # Three expansions of up to 20 rounds each were asked for; one round ran.
        assert wrapped[0].rounds == 1
        # The model was not dropped as if it had failed: the next job reuses it.
        result = upsampler.upsample("1girl", settings, 4)
        assert len(wrapped) == 1 and result.rounds >= 1
    finally:
        cache.unload()


@dataclass
class BatchBackend:
    """Answers a whole batch per call (the torch path) and cancels after the first call."""

    cancel: threading.Event
    calls: list[int] = field(default_factory=list)
    name: str = "batch"
    device: str = "cpu"
    context: int = 2048
    notices: tuple[str, ...] = ()

    def generate_batch(self, prompts, sampling, seeds):
        self.calls.append(len(prompts))
        self.cancel.set()
        return [self.generate(p, sampling, s) for p, s in zip(prompts, seeds)]

    def generate(self, prompt, sampling, seed):
        fed = prompt.split(INPUT_END, 1)[1]
        text = (", " if fed else "") + f"tag{seed}a, tag{seed}b"
        return _Generation(text)

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        """Nothing to free."""


@dataclass
class _Generation:
    text: str
    prompt_tokens: int = 10
    completion_tokens: int = 5
    prompt_eval_s: float = 0.001
    generation_s: float = 0.002
    stopped_by_eos: bool = True


def test_batched_expansions_stop_within_a_round_after_cancel(monkeypatch):
    from pathlib import Path

    from dtg_lib.model_selection import ModelChoice

    cancel = threading.Event()
    backend = BatchBackend(cancel)
    upsampler = Upsampler(
        lookup=FakeLookup(), backends=BackendCache(loader=lambda *a, **k: backend)
    )
    choice = ModelChoice("torch", Path("batch"), "batch", True)
    monkeypatch.setattr(upsampler, "_choose_model", lambda settings, progress=None: choice)
    settings = UpsampleSettings(target="very_long", max_rounds=20)
    with pytest.raises(Cancelled):
        upsampler.upsample_many(["1girl"] * 4, settings, [1, 2, 3, 4], cancel=cancel)
    assert backend.calls == [4]


def test_a_cancelled_job_does_not_start():
    cancel = threading.Event()
    cancel.set()
    loader_calls = []
    upsampler = Upsampler(
        lookup=FakeLookup(), backends=BackendCache(loader=lambda *a, **k: loader_calls.append(a))
    )
    with pytest.raises(Cancelled):
        upsampler.upsample("1girl", UpsampleSettings(), 1, cancel=cancel)
    assert loader_calls == []


# ---------------------------------------------------------------- cancellation: the route


def test_a_request_over_the_time_limit_is_stopped_and_gets_json_503(tmp_path):
    upsampler = WaitingUpsampler()
    client = make_client(upsampler, tmp_path, request_timeout_s=0.5)
    started = time.monotonic()
    response = client.post(URL, json={"prompt": "1girl"})
    assert response.status_code == 503
    assert "limit of 0.5 s" in response.json()["detail"]
    assert time.monotonic() - started < 10
    # The worker thread stops too, instead of working for nobody.
    assert upsampler.stopped.wait(5) and upsampler.cancelled


@contextlib.contextmanager
def running_server(app):
    """A real uvicorn server on 127.0.0.1 (TestClient cannot show a client leaving)."""
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the test server did not start"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def test_a_client_that_disconnects_cancels_its_request(tmp_path):
    upsampler = WaitingUpsampler()
    app = FastAPI()
    app.include_router(http_api.create_router(lambda: upsampler, model_dir=tmp_path))
    body = json.dumps({"prompt": "1girl"}).encode()
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    with running_server(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(head + body)
            assert upsampler.started.wait(10), "the request never reached the engine"
        # The client is gone; the work stops within a poll or two, not after limit_s.
        assert upsampler.stopped.wait(5)
        assert upsampler.cancelled


# ---------------------------------------------------------------- errors are JSON 4xx


def post_raw(client, content: bytes):
    return client.post(URL, content=content, headers=JSON_HEADERS)


def test_an_integer_too_long_to_read_is_422(client, fake):
    response = post_raw(client, b'{"prompt": "a", "seed": ' + b"7" * 5000 + b"}")
    assert response.status_code == 422
    assert "too many digits" in response.json()["detail"]
    assert fake.calls == []


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (rb'{"prompt": "a", "settings": {"format": "<|general|> \ud800"}}', "settings.format"),
        (rb'{"prompt": "a", "settings": {"model": "x\udc80.gguf"}}', "settings.model"),
        (rb'{"prompt": "a", "settings": {"sampling": {"x": ["\ud800"]}}}', "settings.sampling.x"),
        (rb'{"prompt": "a", "\ud800": 1}', "a field name"),
        (rb'{"prompt": "a", "settings": {"\udfff": 1}}', "a field name in settings"),
    ],
)
def test_a_lone_surrogate_anywhere_is_422_naming_where(client, fake, content, where):
    response = post_raw(client, content)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith(f"{where} is not valid Unicode text"), detail
    assert fake.calls == []


def test_a_very_long_model_name_is_422_not_500(client, fake):
    response = client.post(URL, json={"prompt": "a", "settings": {"model": "m" * 5000}})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("invalid model") and len(detail) < 1000
    assert fake.calls == []


def test_an_engine_message_that_is_no_unicode_still_goes_out_as_json(tmp_path):
    client = make_client(FakeUpsampler(RuntimeError("broke on \ud800 here")), tmp_path)
    response = client.post(URL, json={"prompt": "a"})
    assert response.status_code == 500
    assert response.json()["detail"] == "upsampling failed: broke on \\ud800 here"


def test_a_failure_outside_the_engine_is_json_500(tmp_path):
    class Broken:
        def upsample_many(self, prompts, settings, seeds, width, height):
            return [object()]  # not a Result: reading it fails after the engine returned

    response = make_client(Broken(), tmp_path).post(URL, json={"prompt": "a"})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error while upsampling; see the server log"}


# ---------------------------------------------------------------- no server paths


def test_model_name_errors_name_no_server_path(client, tmp_path_factory, tmp_path):
    outside = tmp_path_factory.mktemp("outside") / "secret.gguf"
    outside.write_bytes(b"GGUF")
    (tmp_path / "link.gguf").symlink_to(outside)
    private = {str(tmp_path), str(tmp_path.resolve()), str(outside.parent)}
    for name in ["../x.gguf", "link.gguf", "missing.gguf", "sub/../../x", "\x00"]:
        response = client.post(URL, json={"prompt": "a", "settings": {"model": name}})
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert detail.startswith("invalid model"), detail
        assert not any(path in detail for path in private), detail


def test_a_missing_model_503_names_no_server_path(tmp_path):
    import huggingface_hub.constants  # its cache folder is one of the places named

    upsampler = Upsampler(model_dir=tmp_path, lookup=FakeLookup(), allow_download=False)
    client = make_client(upsampler, tmp_path)
    response = client.post(URL, json={"prompt": "a", "settings": {"model": "delta-rev2"}})
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "<model folder>/DanTagGen-delta-rev2" in detail, detail
    assert str(tmp_path) not in detail and huggingface_hub.constants.HF_HUB_CACHE not in detail


def test_the_server_model_path_shows_as_its_file_name(fake, tmp_path):
    client = make_client(fake, tmp_path, defaults={"model": "/trusted/by/the/server.gguf"})
    (result,) = client.post(URL, json={"prompt": "a", "seed": 1}).json()["results"]
    assert result["model"] == "server.gguf"


@pytest.mark.slow
def test_results_name_the_model_as_the_request_did(tiny_model):
    name = tiny_name(tiny_model)
    cache = BackendCache()
    folder = tiny_model.gguf_f16.parent
    upsampler = Upsampler(model_dir=folder, lookup=FakeLookup(), backends=cache)
    try:
        client = make_client(upsampler, folder)
        body = {"prompt": "1girl", "seed": 1, "settings": {"model": name, "target": "very_short"}}
        response = client.post(URL, json=body)
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["model"] == name
    finally:
        cache.unload()


def test_shown_model_name_is_relative_to_the_model_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    model = tmp_path / "sub" / "x.gguf"
    model.write_bytes(b"GGUF")
    spec = models.parse_model_name(str(model.resolve()), tmp_path)
    assert models.shown_model_name(spec, str(model.resolve()), tmp_path) == "sub/x.gguf"
    registry = models.parse_model_name("gamma:hf", tmp_path)
    assert models.shown_model_name(registry, "gamma:hf", tmp_path) == "gamma:hf"


@pytest.fixture
def folder_with_links_out(tmp_path_factory, tmp_path):
    """A model folder with one real model and links to things outside it."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n" * 40)
    (outside / "x.gguf").write_bytes(b"GGUF")
    (outside / "hf").mkdir()
    (outside / "hf" / "config.json").write_text("{}")
    (outside / "hf" / "model.safetensors").write_bytes(b"0" * 100)
    (tmp_path / "mine.gguf").write_bytes(b"GGUF")
    (tmp_path / "passwd.gguf").symlink_to(outside / "passwd")
    (tmp_path / "elsewhere").symlink_to(outside, target_is_directory=True)
    (tmp_path / "hf-link").symlink_to(outside / "hf", target_is_directory=True)
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "config.json").write_text("{}")
    (tmp_path / "own" / "model.safetensors").write_bytes(b"0" * 10)
    (tmp_path / "own" / "big.bin").symlink_to(outside / "passwd")  # not counted in its size
    return tmp_path


def test_listings_skip_links_out_of_the_model_folder(folder_with_links_out):
    client = make_client(FakeUpsampler(), folder_with_links_out)
    local = client.get("/dtg/v1/models").json()["local"]
    assert [(m["name"], m["kind"], m["size"]) for m in local] == [
        ("mine.gguf", "gguf", 4),
        ("own", "hf", 12),
    ]


def test_the_page_dropdown_skips_links_out_of_the_model_folder(folder_with_links_out):
    pytest.importorskip("gradio")
    from dtg_app.model_list import model_options

    options = [o.name for o in model_options(folder_with_links_out, "delta-rev2")]
    assert "mine.gguf" in options and "own" in options
    assert not any("passwd" in o or "elsewhere" in o or "hf-link" in o for o in options)


# ---------------------------------------------------------------- the body limit


def test_the_default_body_cap_fits_the_largest_valid_request():
    assert limits.MAX_BODY_BYTES == 64 * (50_000 + 4_000) * 6 + 2**20
    # Python's json.dumps escapes every non-ASCII character as \uXXXX, 6 bytes.
    nl = ["é" * limits.MAX_NL_PROMPT_CHARS] * limits.MAX_ITEMS
    largest = json.dumps(
        {"prompts": ["é" * limits.MAX_PROMPT_CHARS] * limits.MAX_ITEMS, "nl_prompts": nl}
    )
    assert len(largest) < limits.MAX_BODY_BYTES


def test_the_largest_valid_request_is_accepted(client, fake):
    body = json.dumps({"prompts": ["é" * limits.MAX_PROMPT_CHARS] * limits.MAX_ITEMS}).encode()
    response = post_raw(client, body)
    assert response.status_code == 200
    assert len(fake.calls[0][0]) == limits.MAX_ITEMS


def test_a_body_over_the_cap_is_413_before_it_is_read(fake, tmp_path):
    client = make_client(fake, tmp_path, max_body_bytes=1000)
    response = client.post(URL, json={"prompt": "a" * 5000})
    assert response.status_code == 413
    assert "the limit is 1,000 bytes" in response.json()["detail"]
    assert fake.calls == []


def test_a_chunked_body_over_the_cap_is_413(fake, tmp_path):
    client = make_client(fake, tmp_path, max_body_bytes=1000)
    chunks = iter([b'{"prompt": "', b"a" * 600, b"a" * 600, b'"}'])
    response = client.post(URL, content=chunks, headers=JSON_HEADERS)
    assert response.status_code == 413
    assert fake.calls == []


# ---------------------------------------------------------------- seeds


def test_null_seed_means_missing_like_null_seeds(client, fake):
    for body in ({"prompt": "a", "seed": None}, {"prompt": "a", "seed": None, "seeds": None}):
        response = client.post(URL, json=body)
        assert response.status_code == 200, response.text
        assert 0 <= response.json()["results"][0]["seed"] < SEED_FOLD
    response = client.post(URL, json={"prompt": "a", "seed": None, "seeds": [3, 4]})
    assert [r["seed"] for r in response.json()["results"]] == [3, 4]
    response = client.post(URL, json={"prompt": "a", "seed": 5, "seeds": None})
    assert [r["seed"] for r in response.json()["results"]] == [5]


@pytest.mark.slow
def test_seeds_one_fold_apart_give_the_same_expansion(tiny_model):
    cache = BackendCache()
    upsampler = Upsampler(model_dir=tiny_model.gguf_f16.parent, lookup=FakeLookup(), backends=cache)
    settings = UpsampleSettings(model=tiny_name(tiny_model), target="very_long", max_rounds=6)
    try:
        for seed, same in [(1, 1 + SEED_FOLD), (SEED_FOLD - 3, -3), (0, SEED_FOLD)]:
            one = upsampler.upsample("1girl, solo", settings, seed)
            other = upsampler.upsample("1girl, solo", settings, same)
            assert one.rounds >= 2  # later rounds feed tags back, shuffled by the seed
            assert one.final_prompt == other.final_prompt
            assert (one.seed, other.seed) == (seed, same)  # reported as given
    finally:
        cache.unload()

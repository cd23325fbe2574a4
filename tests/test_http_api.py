"""The HTTP routes: request checking, error shapes, the models list, concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx")

from fake_lookup import FakeLookup
from fake_upsampler import FakeUpsampler
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dtg_lib import http_api
from dtg_lib.backends import BackendCache, BackendUnavailable
from dtg_lib.models import ModelNotFound
from dtg_lib.settings import UpsampleSettings
from dtg_lib.upsampler import Upsampler

URL = "/dtg/v1/upsample"


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


def test_one_prompt(client, fake):
    body = {"prompt": "1girl", "seed": 7, "width": 832, "height": 1216}
    response = client.post(URL, json={**body, "settings": {"target": "short", "top_k": 5}})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["final_prompt"] == "1girl, tag7"
    assert result["seed"] == 7 and result["new_tags"] == ["tag7"]
    expected = {"prompt", "final_prompt", "new_tags", "seed", "rounds", "timings", "model"}
    expected |= {"backend", "device", "notices", "tag_categories", "extended", "generated"}
    expected |= {"tokens", "token_target"}
    assert set(result) == expected
    assert result["extended"] == result["generated"] == ""  # a DTG result has no texts
    assert result["timings"]["total_s"] == 0.01 and result["notices"] == []
    prompts, settings, seeds, width, height = fake.calls[0]
    assert (prompts, seeds, width, height) == (("1girl",), (7,), 832, 1216)
    assert settings.target == "short" and settings.sampling.top_k == 5


def test_many_prompts_one_seed_each(client):
    response = client.post(URL, json={"prompts": ["a", "b"], "seeds": [1, 2]})
    assert [r["final_prompt"] for r in response.json()["results"]] == ["a, tag1", "b, tag2"]


def test_many_prompts_share_one_seed(client):
    response = client.post(URL, json={"prompts": ["a", "b"], "seed": 4})
    assert [r["seed"] for r in response.json()["results"]] == [4, 4]


def test_one_prompt_several_seeds(client):
    response = client.post(URL, json={"prompt": "a", "seeds": [1, 2, 3]})
    assert [r["final_prompt"] for r in response.json()["results"]] == [
        "a, tag1",
        "a, tag2",
        "a, tag3",
    ]


def test_missing_or_random_seed_is_drawn_and_reported(client):
    for body in ({"prompt": "a"}, {"prompt": "a", "seed": -1}):
        (result,) = client.post(URL, json=body).json()["results"]
        assert isinstance(result["seed"], int) and result["seed"] >= 0


def test_defaults_fill_in_the_model(fake, tmp_path):
    client = make_client(fake, tmp_path, defaults={"model": "/trusted/by/the/server.gguf"})
    assert client.post(URL, json={"prompt": "a", "seed": 1}).status_code == 200
    assert fake.calls[0][1].model == "/trusted/by/the/server.gguf"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "exactly one of prompt"),
        ({"prompt": "a", "prompts": ["b"]}, "exactly one of prompt"),
        ({"prompt": 3}, "prompt must be text"),
        ({"prompts": []}, "non-empty list"),
        ({"prompts": ["a", 1]}, "every entry of prompts"),
        ({"prompts": ["a", "b"], "seeds": [1]}, "2 prompts but 1 seeds"),
        ({"prompt": "a", "seed": 1, "seeds": [1]}, "either seed or seeds"),
        ({"prompt": "a", "seed": "1"}, "whole numbers"),
        ({"prompt": "a", "seed": True}, "whole numbers"),
        ({"prompt": "a", "width": 0}, "width must be"),
        ({"prompt": "a", "height": 1.5}, "height must be"),
        ({"prompt": "a", "colour": "red"}, "unknown field(s): colour"),
        ({"prompt": "a", "settings": []}, "settings must be a JSON object"),
        ({"prompt": "a", "settings": {"target": "huge"}}, "unknown target"),
        ({"prompt": "a", "settings": {"temperature": 0}}, "temperature must be in"),
        ({"prompt": "a", "settings": {"top_k": "many"}}, "top_k must be a whole number"),
        ({"prompt": "a", "settings": {"colour": 1}}, "unknown setting(s): colour"),
        ({"prompt": "a", "settings": {"ban_tags": "/(/"}}, "invalid setting"),
        ({"prompt": "a", "settings": {"model": 5}}, "model must be text"),
        ({"prompt": "a, " * 20_000}, "at most 50000 characters"),
        ({"prompt": "a", "settings": {"device": "banana"}}, "unknown device 'banana'"),
    ],
)
def test_bad_requests_are_422_with_a_reason(client, fake, body, reason):
    response = client.post(URL, json=body)
    assert response.status_code == 422
    assert reason in response.json()["detail"]
    assert fake.calls == []


@pytest.mark.parametrize(
    "name",
    ["../x", "../../etc/passwd", "sub/../../x", "/etc/passwd", "..\\x", "delta-rev2:Q99", "a\x00b"],
)
def test_unsafe_or_unknown_model_names_are_422(client, fake, name):
    response = client.post(URL, json={"prompt": "a", "settings": {"model": name}})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("invalid model")
    assert fake.calls == []


def test_symlink_out_of_the_model_folder_is_422(client, fake, tmp_path_factory, tmp_path):
    outside = tmp_path_factory.mktemp("outside") / "secret.gguf"
    outside.write_bytes(b"GGUF")
    (tmp_path / "link.gguf").symlink_to(outside)
    response = client.post(URL, json={"prompt": "a", "settings": {"model": "link.gguf"}})
    assert response.status_code == 422 and "outside the model folder" in response.text


def test_model_names_that_are_allowed(client, fake, tmp_path):
    for name in ["delta-rev2", "gamma:hf", "KBlueLeaf/DanTagGen-delta", "mine.gguf"]:
        assert (
            client.post(URL, json={"prompt": "a", "settings": {"model": name}}).status_code == 200
        )
    models = [call[1].model for call in fake.calls]
    # registry names stay names (the engine may switch format); local names become paths
    assert models[:3] == ["delta-rev2", "gamma:hf", "KBlueLeaf/DanTagGen-delta"]
    assert models[3] == str((tmp_path / "mine.gguf").resolve())


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (rb'{"prompt": "a, \ud800 b"}', "prompt is not valid Unicode text"),
        (rb'{"prompts": ["a", "\udfff"]}', "prompts is not valid Unicode text"),
    ],
)
def test_an_escaped_lone_surrogate_is_422(client, fake, content, reason):
    # Valid JSON, but no character: the engine could not even write it out.
    headers = {"content-type": "application/json"}
    response = client.post(URL, content=content, headers=headers)
    assert response.status_code == 422 and reason in response.json()["detail"]
    assert fake.calls == []


def test_body_that_is_not_json_is_422(client):
    deep = b'{"prompt": "a", "settings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for content in (b"", b"{", b"\xff\xfe", b"[1, 2]", deep):
        response = client.post(URL, content=content, headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BackendUnavailable("no DTG backend is installed: pip install llama-cpp-python"), 503),
        (ModelNotFound("Model delta-rev2 is not on disk and downloading is turned off."), 503),
        (RuntimeError("llama.cpp crashed"), 500),
        (KeyError("a bug"), 500),
    ],
)
def test_engine_failures_are_json_without_traceback(tmp_path, error, status):
    client = make_client(FakeUpsampler(error), tmp_path)
    response = client.post(URL, json={"prompt": "a"})
    assert response.status_code == status
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "Traceback" not in response.text
    if status == 503:
        assert detail == str(error)


def test_models_route(client):
    data = client.get("/dtg/v1/models").json()
    assert "delta-rev2" in data["registry"] and "delta-rev2:hf" in data["registry"]
    # A damaged file's family cannot be read; it counts as DTG. One's own file: no licence.
    local = {"name": "mine.gguf", "kind": "gguf", "family": "dtg", "licence": "", "size": 4}
    assert data["local"] == [{**local, "local_quant": False}]  # not quantized on this machine
    licences = {m["name"]: m["licence"] for m in data["models"] if m["supported"]}
    assert licences["tipo-500m-ft"] == "kohaku-license-1.0" and licences["delta-rev2"]


def test_router_is_mountable_twice_under_one_app(fake, tmp_path):
    # The webui mounts at app start, which some setups call more than once per process.
    app = FastAPI()
    for _ in range(2):
        app.include_router(http_api.create_router(lambda: fake, model_dir=tmp_path))
    assert TestClient(app).post(URL, json={"prompt": "a"}).status_code == 200


# ---------------------------------------------------------------- the real engine


@pytest.fixture
def tiny_client(tiny_model):
    """A client over the real engine and the tiny model, named as a file in the model folder."""
    try:
        import llama_cpp  # noqa: F401

        name = tiny_model.gguf_f16.name
    except ImportError:
        name = tiny_model.hf_dir.name
    cache = BackendCache()
    upsampler = Upsampler(
        model_dir=tiny_model.gguf_f16.parent,
        lookup=FakeLookup(),
        backends=cache,
        allow_download=False,
    )
    router = http_api.create_router(lambda: upsampler, model_dir=tiny_model.gguf_f16.parent)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        yield client, name
    cache.unload()


@pytest.mark.slow
def test_real_engine_one_and_many(tiny_client):
    client, name = tiny_client
    settings = {"model": name, "target": "short"}
    one = client.post(URL, json={"prompt": "1girl, hatsune miku", "seed": 3, "settings": settings})
    assert one.status_code == 200, one.text
    (result,) = one.json()["results"]
    assert result["new_tags"] and result["rounds"] >= 1
    assert result["tag_categories"] == {"1girl": "special", "hatsune miku": "character"}
    many = client.post(
        URL,
        json={"prompts": ["1girl, hatsune miku", "1boy"], "seeds": [3, 4], "settings": settings},
    )
    first, second = many.json()["results"]
    assert first["final_prompt"] == result["final_prompt"]
    assert second["prompt"] == "1boy" and second["seed"] == 4


@pytest.mark.slow
def test_concurrent_requests_match_sequential(tiny_client):
    client, name = tiny_client
    bodies = [
        {"prompt": f"1girl, {extra}", "seed": seed, "settings": {"model": name, "target": "short"}}
        for seed, extra in enumerate(["solo", "smile", "hat", "dress"] * 2)
    ]
    sequential = [client.post(URL, json=body).json() for body in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda body: client.post(URL, json=body).json(), bodies))

    assert [without_timings(p) for p in concurrent] == [without_timings(p) for p in sequential]


def without_timings(payload):
    # Timings differ from run to run; everything else must not.
    return [{k: v for k, v in r.items() if k != "timings"} for r in payload["results"]]


def test_result_to_json_matches_result_to_dict():
    result = FakeUpsampler._result("1girl", 5, UpsampleSettings(model="x"))
    data = http_api.result_to_json(result)
    full = result.to_dict()
    assert all(data[key] == full[key] for key in data if key not in ("notices",))
    assert data["notices"] == list(full["notices"])

"""The /dtg/v1 routes as the webui mounts them: through the stand-in's on_app_started."""

from __future__ import annotations

import base64

import pytest
from test_webui_script import webui  # noqa: F401 (the fixture)
from webui_fakes import ResultEngine

from dtg_webui import engine, routes

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("httpx")
import asyncio  # noqa: E402

import httpx  # noqa: E402
from fastapi.testclient import TestClient as _StarletteClient  # noqa: E402


class _AsgiClient:
    """httpx straight on the ASGI app, for a starlette TestClient that predates httpx 0.28
    (A1111 1.10 pins starlette 0.26; an unpinned httpx beside it breaks its TestClient)."""

    def __init__(self, app) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs):
        async def send():
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://dtg") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs):
        return self.request("POST", url, **kwargs)


def TestClient(app):  # a function standing in for the class
    try:
        return _StarletteClient(app)
    except TypeError:
        return _AsgiClient(app)


@pytest.fixture
def api(webui, tmp_path):  # noqa: F811
    """The webui started with --api, a fake engine and a model folder from the settings."""
    fake = ResultEngine()
    made_with = []

    def factory(model_dir, embeddings):
        made_with.append(model_dir)
        return fake

    engine.set_factory(factory)
    webui.shared.cmd_opts.api = True
    webui.shared.opts.dtg_model_dir = str(tmp_path)
    webui.shared.opts.dtg_device = "cuda"
    app = fastapi.FastAPI()
    webui.callbacks.app_started_callback(None, app)
    return webui, app, fake, made_with


def test_upsample_route_uses_the_shared_engine_and_settings(api, tmp_path):
    _, app, fake, made_with = api
    client = TestClient(app)
    response = client.post(
        "/dtg/v1/upsample", json={"prompt": "1girl", "seed": 5, "settings": {"target": "short"}}
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["final_prompt"] == "1girl, dtg 5, smile"
    assert result["seed"] == 5 and result["rounds"] == 2
    assert made_with == [tmp_path], "the model folder comes from the Settings tab"
    settings = fake.calls[0]["settings"]
    assert settings.target == "short" and settings.device == "cuda"


def test_models_route(api):
    _, app, _, _ = api
    response = TestClient(app).get("/dtg/v1/models")
    assert response.status_code == 200
    assert "delta-rev2" in response.json()["registry"]


def test_bad_request_is_a_sentence(api):
    _, app, fake, _ = api
    response = TestClient(app).post("/dtg/v1/upsample", json={"seed": 1})
    assert response.status_code == 422 and "prompt" in response.json()["detail"]
    assert fake.calls == []


def test_mounted_once_per_app(api):
    host, app, _, _ = api
    before = len(app.routes)
    host.callbacks.app_started_callback(None, app)
    assert len(app.routes) == before


def test_not_mounted_without_api_flag(webui):  # noqa: F811
    app = fastapi.FastAPI()
    webui.callbacks.app_started_callback(None, app)
    assert all(not getattr(r, "path", "").startswith("/dtg/") for r in app.routes)


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_api_auth_guards_the_routes(webui):  # noqa: F811
    engine.set_factory(lambda model_dir, embeddings: ResultEngine())
    webui.shared.cmd_opts.api = True
    webui.shared.cmd_opts.api_auth = "alice:s3cret,bob:pw"
    app = fastapi.FastAPI()
    webui.callbacks.app_started_callback(None, app)
    client = TestClient(app)
    assert client.get("/dtg/v1/models").status_code == 401
    assert client.get("/dtg/v1/models", headers=_basic("alice", "wrong")).status_code == 401
    assert client.get("/dtg/v1/models", headers=_basic("bob", "pw")).status_code == 200
    body = {"prompt": "1girl", "seed": 1}
    ok = client.post("/dtg/v1/upsample", json=body, headers=_basic("alice", "s3cret"))
    assert ok.status_code == 200


def test_credentials_parsing():
    assert routes.parse_credentials("a:b, c:d:e,broken,:x") == {"a": "b", "c": "d:e"}


def _readme_webui_api() -> str:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("## WebUI API\n")
    return readme[start : readme.index("\n## ", start + 1)]


def test_readme_examples_named_first_then_in_the_ui_order():
    """The README's alwayson_scripts examples: by name first, then every argument in
    ui() order; both read as a job would read them."""
    import json
    import re

    from dtg_webui.args import ARG_NAMES, ScriptArgs

    blocks = re.findall(r"```json\n(\{\n  \"prompt\".*?)\n```", _readme_webui_api(), re.S)
    named, positional = (json.loads(b)["alwayson_scripts"]["DanTagGen"]["args"] for b in blocks)
    assert len(named) == 1 and set(named[0]) <= set(ARG_NAMES) and named[0]["enabled"] is True
    assert len(positional) == len(ARG_NAMES) and positional[0] is True
    for args in (named, positional):
        assert ScriptArgs.from_args(args).settings(backend="auto", device="cpu")


def test_readme_table_names_and_defaults_are_the_scripts():
    import json
    import re

    from dtg_webui.args import ARG_NAMES, ScriptArgs

    rows = re.findall(r"^\| (\d+) \| (\w+) \| `([^`]*)` \|", _readme_webui_api(), re.M)
    assert [(int(i), name) for i, name, _ in rows] == list(enumerate(ARG_NAMES))
    defaults = {name: json.loads(value) for _, name, value in rows}
    assert defaults == {name: getattr(ScriptArgs(), name) for name in ARG_NAMES}


def test_webui_routes_default_to_the_engine_settings(webui):  # noqa: F811
    """Mounted with the Settings page untouched, a request without settings gets the
    engine's defaults, as the command line and the panel do."""
    from dtg_lib.settings import UpsampleSettings

    fake = ResultEngine()
    engine.set_factory(lambda model_dir, embeddings: fake)
    webui.shared.cmd_opts.api = True
    app = fastapi.FastAPI()
    webui.callbacks.app_started_callback(None, app)
    response = TestClient(app).post("/dtg/v1/upsample", json={"prompt": "1girl", "seed": 1})
    assert response.status_code == 200, response.text
    assert fake.calls[0]["settings"] == UpsampleSettings()

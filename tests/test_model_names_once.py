"""One HTTP request parses its model name once; the spec travels to the loader."""

from __future__ import annotations

import pytest

pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx")

from fake_lookup import FakeLookup
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dtg_lib import http_api
from dtg_lib.backends import BackendCache
from dtg_lib.models import locations, names
from dtg_lib.upsampler import Upsampler

URL = "/dtg/v1/upsample"


@pytest.mark.slow
def test_one_request_parses_its_model_name_once(tiny_model, monkeypatch):
    try:
        import llama_cpp  # noqa: F401

        name = tiny_model.gguf_f16.name
    except ImportError:
        name = tiny_model.hf_dir.name
    model_dir = tiny_model.gguf_f16.parent
    specs_made = []
    real_local_spec = names.local_spec

    def counting_local_spec(path):
        specs_made.append(path)
        return real_local_spec(path)

    # Every parse of a local name ends in local_spec, wherever it is called from.
    monkeypatch.setattr(names, "local_spec", counting_local_spec)
    monkeypatch.setattr(locations, "local_spec", counting_local_spec)
    cache = BackendCache()
    upsampler = Upsampler(
        model_dir=model_dir, lookup=FakeLookup(), backends=cache, allow_download=False
    )
    app = FastAPI()
    app.include_router(http_api.create_router(lambda: upsampler, model_dir=model_dir))
    try:
        with TestClient(app) as client:
            settings = {"model": name, "target": "very_short", "max_new_tokens": 16}
            answer = client.post(URL, json={"prompt": "1girl", "seed": 1, "settings": settings})
    finally:
        cache.unload()
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["model"] == name
    assert len(specs_made) == 1, specs_made

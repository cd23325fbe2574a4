"""End to end in a real browser: the standalone page, served on 127.0.0.1, expands a prompt.

Needs gradio, uvicorn, playwright (the Python package) and Debian's chromium at
/usr/bin/chromium; skipped when any is missing. Leaves a screenshot in artifacts/.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from fake_lookup import FakeLookup

from dtg_lib.backends import BackendCache
from dtg_lib.upsampler import Upsampler

pytest.importorskip("gradio")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tiny_model):
    """The standalone app with the tiny model as its default, on a free local port."""
    from dtg_app.server import create_app

    try:
        import llama_cpp  # noqa: F401

        name = tiny_model.gguf_f16.name
    except ImportError:
        name = tiny_model.hf_dir.name
    folder = tiny_model.gguf_f16.parent
    cache = BackendCache()
    upsampler = Upsampler(model_dir=folder, lookup=FakeLookup(), backends=cache)
    app = create_app(upsampler, model_dir=folder, default_model=name, allow_download=False)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)
    cache.unload()


@pytest.fixture
def page(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_page_expands_a_prompt_and_api_answers_on_the_same_port(server, page):
    page.goto(server, wait_until="networkidle")
    prompt = page.locator("#dtg-prompt textarea")
    prompt.fill("1girl, hatsune miku, vocaloid, (smile:1.2)")
    page.locator("#dtg-seed input").fill("7")
    page.locator("#dtg-expand").click()
    new_tags = page.locator("#dtg-preview .dtg-new")
    new_tags.first.wait_for(timeout=60_000)
    assert new_tags.count() >= 1
    assert page.locator("#dtg-preview .dtg-cat-character").inner_text() == "hatsune miku"
    assert page.locator("#dtg-preview .dtg-cat-copyright").inner_text() == "vocaloid"
    final = page.locator("#dtg-final textarea").input_value()
    assert "hatsune miku" in final and "(smile:1.2)" in final
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-expanded.png"), full_page=True)

    # The same request through the API on the same server gives the same final prompt.
    body = {"prompt": "1girl, hatsune miku, vocaloid, (smile:1.2)", "seed": 7}
    request = urllib.request.Request(
        f"{server}/dtg/v1/upsample",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.load(response)["results"][0]["final_prompt"] == final

    # A bad setting is a message on the page, and the page keeps working.
    page.locator("#dtg-ban textarea, #dtg-ban input").first.fill("/(/")
    page.locator("#dtg-expand").click()
    page.locator("#dtg-error").wait_for(timeout=30_000)
    assert "Could not expand" in page.locator("#dtg-error").inner_text()
    page.screenshot(path=str(ARTIFACTS / "app-error.png"), full_page=True)

"""End to end in a real browser: the standalone page, served on 127.0.0.1, expands a prompt;
with a TIPO model, a sentence too.

Needs gradio, uvicorn, playwright (the Python package) and Debian's chromium at
/usr/bin/chromium; skipped when any is missing. Leaves a screenshot in artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
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
    try:
        import llama_cpp  # noqa: F401

        name = tiny_model.gguf_f16.name
    except ImportError:
        name = tiny_model.hf_dir.name
    with serving(tiny_model.gguf_f16.parent, name) as url:
        yield url


@pytest.fixture
def tipo_server(tiny_tipo_model, tmp_path):
    """The app with the tiny TIPO model (GGUF, in a folder of its own) as its default."""
    pytest.importorskip("llama_cpp")
    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "tiny-tipo.gguf")
    with serving(tmp_path, "tiny-tipo.gguf") as url:
        yield url


@contextlib.contextmanager
def serving(folder: Path, name: str) -> Iterator[str]:
    """The app serving `folder` with `name` as its model, on a free local port."""
    from dtg_app.server import create_app

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
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
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


def test_page_takes_a_sentence_and_shows_the_sentences_apart(tipo_server, page):
    page.goto(tipo_server, wait_until="networkidle")
    sentence = page.locator("#dtg-nl textarea")
    sentence.wait_for(state="visible", timeout=30_000)  # the server's model is a TIPO model
    _choose(page, "#dtg-target", "very_short")
    page.locator("#dtg-seed input").fill("2")

    # Tags and a sentence: new tag chips, and the sentence continued under them, apart.
    page.locator("#dtg-prompt textarea").fill("1girl, solo")
    sentence.fill("a girl (reading:1.3)")
    _choose(page, "#dtg-nl-length", "very_short")
    page.locator("#dtg-expand").click()
    generated = page.locator("#dtg-sentences .dtg-generated")
    generated.wait_for(timeout=60_000)
    assert "a girl reading" in generated.inner_text()
    assert page.locator("#dtg-preview .dtg-new").count() >= 1
    final = page.locator("#dtg-final textarea")
    assert "a girl (reading:1.3)" in final.input_value()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-tipo.png"), full_page=True)

    # A sentence alone is enough; the final prompt starts with it as typed.
    page.locator("#dtg-prompt textarea").fill("")
    sentence.fill("a girl reading in a (library:1.2)")
    page.locator("#dtg-expand").click()
    typed = re.compile(r"^a girl reading in a \(library:1\.2\)")
    sync_api.expect(final).to_have_value(typed, timeout=60_000)

    # A DTG model in the list hides the natural-language box.
    _choose(page, "#dtg-model", "delta-rev2")
    sentence.wait_for(state="hidden", timeout=10_000)


def _choose(page, elem_id: str, value: str) -> None:
    """Pick `value` in a gradio dropdown: typed, then Enter picks the matching choice."""
    box = page.locator(f"{elem_id} input")
    box.fill(value)
    box.press("Enter")
    assert box.input_value().startswith(value)  # a model's label adds its family and licence

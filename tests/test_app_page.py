"""The page's handler without a browser: form to request, several seeds, errors as messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_upsampler import FakeUpsampler

pytest.importorskip("gradio")
pytest.importorskip("fastapi")

from dtg_app.page import PageConfig, form_to_body, run_form
from dtg_lib.backends import BackendUnavailable

FORM = {
    "prompt": "1girl, solo",
    "target": "short",
    "seed": 5.0,
    "count": 1.0,
    "width": 832.0,
    "height": 1216.0,
    "ban_tags": None,
    "model": "server-model",
    "backend": "auto",
    "format": "default",
    "temperature": 1.0,
    "top_p": 0.9,
    "top_k": 100.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "max_new_tokens": 256.0,
}


def no_progress(*args, **kwargs):
    return None


def run(form, upsampler, tmp_path):
    config = PageConfig(Path(tmp_path), "server-model", allow_download=False)
    return run_form(form_to_body(form, "server-model"), lambda: upsampler, config, no_progress)


def test_form_becomes_an_api_body():
    body = form_to_body(FORM, "server-model")
    assert body["seeds"] == [5] and (body["width"], body["height"]) == (832, 1216)
    settings = body["settings"]
    assert "model" not in settings  # the server's own model: left to its defaults
    assert settings["top_k"] == 100 and isinstance(settings["top_k"], int)
    assert settings["ban_tags"] == ""


def test_several_seeds_are_neighbours_and_a_random_seed_is_drawn_once():
    body = form_to_body({**FORM, "seed": -1, "count": 3}, "server-model")
    first = body["seeds"][0]
    assert first >= 0 and body["seeds"] == [first, first + 1, first + 2]


def test_one_expansion(tmp_path):
    fake = FakeUpsampler()
    html, final, status = run(FORM, fake, tmp_path)
    assert final == "1girl, solo, tag5" and 'class="dtg-preview"' in html
    assert status.startswith("Expanded in")
    assert fake.calls[0][1].model == "server-model"


def test_several_seeds_side_by_side(tmp_path):
    html, final, status = run({**FORM, "count": 3}, FakeUpsampler(), tmp_path)
    assert html.count('class="dtg-preview-card"') == 3
    assert final == "1girl, solo, tag5" and status.startswith("3 expansions")


@pytest.mark.parametrize(
    ("form", "error", "message"),
    [
        ({**FORM, "prompt": "  "}, None, "Type a prompt first"),
        ({**FORM, "ban_tags": "/(/"}, None, "invalid setting"),
        ({**FORM, "model": "../../etc/passwd"}, None, "invalid model"),
        (FORM, BackendUnavailable("no DTG backend is installed"), "no DTG backend is installed"),
    ],
)
def test_errors_are_messages_on_the_page(tmp_path, form, error, message):
    html, final, _ = run(form, FakeUpsampler(error), tmp_path)
    assert 'id="dtg-error"' in html and message in html and final == ""

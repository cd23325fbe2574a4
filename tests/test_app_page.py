"""The page's handler without a browser: form to request, several seeds, errors as messages;
the TIPO controls, the sentences shown apart from the tags, and the model list's licences."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fake_lookup import FakeLookup
from fake_upsampler import FakeUpsampler

pytest.importorskip("gradio")
pytest.importorskip("fastapi")

from dtg_app.model_list import model_option, model_options
from dtg_app.page import (
    PageConfig,
    build_page,
    form_to_body,
    render_sentence_list,
    run_form,
    tipo_controls_shown,
)
from dtg_lib.backends import BackendCache, BackendUnavailable
from dtg_lib.upsampler import Upsampler

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
    "nl_prompt": "",
    "nl_length": "long",
    "caption": False,
    "gen_meta": False,
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
    html, sentences, final, status = run(FORM, fake, tmp_path)
    assert final == "1girl, solo, tag5" and 'class="dtg-preview"' in html
    assert status.startswith("Expanded in") and sentences == ""  # a DTG result has none
    assert fake.calls[0][1].model == "server-model"


def test_several_seeds_side_by_side(tmp_path):
    html, _, final, status = run({**FORM, "count": 3}, FakeUpsampler(), tmp_path)
    assert html.count('class="dtg-preview-card"') == 3
    assert final == "1girl, solo, tag5" and status.startswith("3 expansions")


@pytest.mark.parametrize(
    ("form", "error", "message"),
    [
        ({**FORM, "prompt": "  ", "nl_prompt": " "}, None, "Type a prompt first"),
        ({**FORM, "ban_tags": "/(/"}, None, "invalid setting"),
        ({**FORM, "model": "../../etc/passwd"}, None, "invalid model"),
        (FORM, BackendUnavailable("no DTG backend is installed"), "no DTG backend is installed"),
    ],
)
def test_errors_are_messages_on_the_page(tmp_path, form, error, message):
    html, _, final, _ = run(form, FakeUpsampler(error), tmp_path)
    assert 'id="dtg-error"' in html and message in html and final == ""


# ---------------------------------------------------------------- TIPO on the page

NL = "a girl reading in a (library:1.2)"


def test_the_tipo_controls_become_fields_of_the_request():
    body = form_to_body(FORM, "server-model")
    assert "nl_prompt" not in body  # none typed
    settings = body["settings"]
    assert settings["nl_length"] == "long"
    assert settings["caption"] is False and settings["gen_meta"] is False
    given = {**FORM, "nl_prompt": NL, "nl_length": "short", "caption": True, "gen_meta": True}
    body = form_to_body(given, "server-model")
    assert body["nl_prompt"] == NL  # as typed, weights and all
    assert body["settings"]["nl_length"] == "short"
    assert body["settings"]["caption"] is True and body["settings"]["gen_meta"] is True


def test_a_sentence_without_tags_is_enough_to_expand(tmp_path):
    fake = FakeUpsampler()
    html, *_ = run({**FORM, "prompt": "", "nl_prompt": NL}, fake, tmp_path)
    assert 'id="dtg-error"' not in html and fake.calls[0][0] == ("",)


def test_sentences_are_shown_apart_from_the_tags():
    one = {"extended": "", "generated": "A girl <b>reads</b>.", "seed": 4}
    assert render_sentence_list([{**one, "generated": ""}]) == ""  # nothing to show
    html = render_sentence_list([one])
    assert 'class="dtg-sentence dtg-generated"' in html and "dtg-extended" not in html
    assert "A girl &lt;b&gt;reads&lt;/b&gt;." in html  # escaped, never markup
    both = render_sentence_list([{**one, "extended": "A girl reads."}, {**one, "seed": 5}])
    assert both.count('class="dtg-sentence ') == 3 and "seed 5" in both


@pytest.fixture
def tipo_folder(tiny_tipo_model, tmp_path):
    """A model folder with the tiny TIPO model, also in TIPO-500M's registry layout."""
    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "tiny-tipo.gguf")
    (tmp_path / "TIPO-500M").mkdir()
    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "TIPO-500M" / "TIPO-500M_epoch5-F16.gguf")
    return tmp_path


@pytest.fixture
def tipo_page(tipo_folder):
    """run_form with the real engine and the tiny TIPO model as the server's model."""
    pytest.importorskip("llama_cpp")
    cache = BackendCache()
    engine = Upsampler(model_dir=tipo_folder, lookup=FakeLookup(), backends=cache)
    config = PageConfig(tipo_folder, "tiny-tipo.gguf", allow_download=False)

    def expand(**given):
        form = {**FORM, "model": "tiny-tipo.gguf", "target": "very_short", **given}
        body = form_to_body(form, config.default_model)
        return run_form(body, lambda: engine, config, no_progress)

    yield expand
    cache.unload()


def test_the_four_uses_on_the_page(tipo_page):
    tags = tipo_page(prompt="1girl, solo, (smile:1.1)")
    assert tags[0].count("dtg-new") >= 1 and tags[1] == ""  # new tags, no sentences
    assert tags[2].startswith("1girl,") and "(smile:1.1)" in tags[2]  # weights kept

    # A sentence alone (the tiny model may go on with it rather than write tags).
    sentence = tipo_page(prompt="", nl_prompt=NL)
    assert 'id="dtg-error"' not in sentence[0] and sentence[2].startswith(NL)

    caption = tipo_page(prompt="1girl, solo", caption=True, nl_length="very_short")
    assert "dtg-generated" in caption[1] and "dtg-extended" not in caption[1]

    both = tipo_page(prompt="1girl, solo", nl_prompt="a girl (reading:1.3)", nl_length="short")
    assert "dtg-generated" in both[1] and "a girl reading" in both[1]
    assert "a girl (reading:1.3)" in both[2]
    again = tipo_page(prompt="1girl, solo", nl_prompt="a girl (reading:1.3)", nl_length="short")
    assert again[1:3] == both[1:3]  # the same seed: the same sentences and final prompt


def test_the_model_list_names_family_and_licence(tipo_folder):
    options = {o.name: o for o in model_options(tipo_folder, "tiny-tipo.gguf")}
    assert next(iter(options)) == "tiny-tipo.gguf"  # the server's model first
    assert options["tiny-tipo.gguf"].label == "tiny-tipo.gguf (TIPO)"  # one's own: no licence
    assert options["tipo-500m:F16"].label == "tipo-500m:F16 (TIPO, kohaku-license-1.0)"
    assert options["tipo-200m"].label == "tipo-200m (TIPO, apache-2.0)"
    assert options["delta-rev2"].label == "delta-rev2 (DTG, openrail)"
    assert options["tipo-500m"].choice == ("tipo-500m (TIPO, kohaku-license-1.0)", "tipo-500m")


def test_the_hidden_box_is_not_sent_for_a_dtg_model(tipo_folder):
    """Typed for a TIPO model, then the model switched to DTG: the box hides, and what
    stays in it must not reach the request (nor count as a prompt to expand)."""
    from dtg_app.page import make_handler, shows_nl_box

    config = PageConfig(tipo_folder, "tiny-tipo.gguf", allow_download=False)
    assert shows_nl_box("tiny-tipo.gguf", config) and shows_nl_box(None, config)
    assert not shows_nl_box("delta-rev2", config)
    bodies = []
    components = {name: name for name in FORM}
    fake_run = "dtg_app.page.run_form"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fake_run, lambda body, *rest: bodies.append(body) or ("", "", "", ""))
        handler = make_handler(lambda: None, config, components)
        handler({**FORM, "prompt": "", "model": "delta-rev2", "nl_prompt": NL}, no_progress)
        handler({**FORM, "prompt": "", "model": "tiny-tipo.gguf", "nl_prompt": NL}, no_progress)
    assert "nl_prompt" not in bodies[0] and bodies[1]["nl_prompt"] == NL


def test_the_tipo_controls_show_for_a_tipo_model_only(tipo_folder, tmp_path_factory):
    config = PageConfig(tipo_folder, "delta-rev2", allow_download=False)
    show = tipo_controls_shown(config, {})
    assert show("tiny-tipo.gguf")["visible"] is True  # read from the file's vocabulary
    assert show("tipo-200m:hf")["visible"] is True
    assert show("delta-rev2")["visible"] is False
    # A name outside the model folder is not read (nor shown as TIPO).
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "x.gguf"
    shutil.copy(tipo_folder / "tiny-tipo.gguf", elsewhere)
    assert model_option(str(elsewhere), tipo_folder).family is None
    assert show(str(elsewhere))["visible"] is False


@pytest.mark.parametrize(("default", "shown"), [("tipo-500m", True), ("delta-rev2", False)])
def test_the_page_starts_with_the_tipo_controls_for_a_tipo_default(tmp_path, default, shown):
    if int(pytest.importorskip("gradio").__version__.split(".")[0]) < 4:
        pytest.skip("the page needs gradio 4 or later (the app's own requirement)")
    page = build_page(lambda: FakeUpsampler(), PageConfig(tmp_path, default, False))
    by_id = {c["props"].get("elem_id"): c["props"] for c in page.config["components"]}
    assert by_id["dtg-tipo"]["visible"] is shown
    assert {"dtg-nl", "dtg-nl-length", "dtg-caption", "dtg-gen-meta", "dtg-sentences"} <= set(by_id)
    labels = [choice[0] for choice in by_id["dtg-model"]["choices"]]
    assert "tipo-500m-ft (TIPO, kohaku-license-1.0)" in labels

"""Polish from a hand check in real webuis: the Settings page's category and model list,
the preview emptied by a paste, and a failed job's infotext that a paste can restore."""

from __future__ import annotations

import importlib
import shutil
from types import SimpleNamespace

import pytest
from test_webui_script import _paste_getters, on, webui  # noqa: F401 (webui is the fixture)

from dtg_webui import host, infotext, preview_ui
from dtg_webui.args import ARG_NAMES
from dtg_webui.infotext import ERROR_KEY

# --- the Settings page --------------------------------------------------------------


def test_settings_are_listed_under_stable_diffusion(webui):  # noqa: F811
    webui.callbacks.ui_settings_callback()
    labels = webui.shared.opts.data_labels
    assert {labels[key].section for key in host._DEFAULTS} == {host.SECTION}
    assert webui.shared.opts.categories_of_sections()["DanTagGen"] == "Stable Diffusion"


class OptionInfoWithoutCategories:
    """OptionInfo of a webui before categories (1.6): no category_id anywhere."""

    def __init__(self, default=None, label="", component=None, component_args=None, **kwargs):
        allowed = {"onchange", "section", "refresh", "comment_before", "comment_after"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}")
        self.default, self.label = default, label
        self.component, self.component_args = component, component_args
        self.section = kwargs.get("section")
        self.refresh = kwargs.get("refresh")


def test_settings_work_on_a_webui_without_categories(webui, monkeypatch):  # noqa: F811
    monkeypatch.setattr(webui.shared, "OptionInfo", OptionInfoWithoutCategories)
    webui.callbacks.ui_settings_callback()
    labels = webui.shared.opts.data_labels
    assert set(host._DEFAULTS) <= set(labels), "every setting is there, as before"
    assert all(not hasattr(labels[key], "category_id") for key in host._DEFAULTS)
    assert webui.shared.opts.categories_of_sections()["DanTagGen"] == "Uncategorized"


def _names(choices) -> list[str]:
    # gradio 4+ keeps (label, value) pairs; 3.41 the names.
    return [choice[0] if isinstance(choice, (tuple, list)) else choice for choice in choices]


def test_default_model_is_a_dropdown_of_names_and_local_files(webui, tmp_path, tiny_model):  # noqa: F811
    gr = pytest.importorskip("gradio")
    ui_settings = importlib.import_module("modules.ui_settings")
    ui_common = importlib.import_module("modules.ui_common")
    shutil.copy(tiny_model.gguf_f16, tmp_path / "mine.gguf")
    webui.shared.cmd_opts.dtg_model_dir = str(tmp_path)
    webui.callbacks.ui_settings_callback()
    with gr.Blocks():
        field = ui_settings.create_setting_component("dtg_default_model")
    assert isinstance(field, gr.Dropdown)
    assert field.allow_custom_value is True, "a typed name or a file added later stays valid"
    names = _names(field.choices)
    assert "delta-rev2" in names and "delta-rev2:hf" in names and names[-1] == "mine.gguf"
    assert field.value == "delta-rev2"

    shutil.copy(tiny_model.gguf_f16, tmp_path / "added later.gguf")
    update = ui_common.refresh_buttons["refresh_dtg_default_model"]()
    assert _names(update["choices"])[-2:] == ["added later.gguf", "mine.gguf"]
    # Each page load sends the list again, through gr.update() (gradio 3.41 checks its keys).
    assert "added later.gguf" in _names(
        ui_settings.get_value_for_setting("dtg_default_model")["choices"]
    )


# --- a paste empties the preview ------------------------------------------------------


def _fields(preview_value: str):
    components = [SimpleNamespace(value=value) for value in on()]
    preview_box = SimpleNamespace(value=preview_value)
    return infotext.paste_fields(components, preview_box), preview_box


@pytest.mark.parametrize("dtg", [True, False])
def test_a_paste_empties_the_preview(webui, dtg):  # noqa: F811
    args = on() if dtg else [False]
    processed = webui.run(webui.txt2img(args, prompt="1girl", seed=3))
    fields, preview_box = _fields('<div class="dtg-preview-wrap">1boy, old</div>')
    updates = dict(
        (id(c), v) for c, v in webui.infotext_utils.paste_values(processed.infotexts[0], fields)
    )
    assert updates[id(preview_box)] == preview_ui.EMPTY_HTML


def test_the_ui_registers_the_preview_box_for_pastes(webui):  # noqa: F811
    gr = pytest.importorskip("gradio")
    with gr.Blocks():
        webui.script.ui(False)
    preview_box, getter = webui.script.infotext_fields[-1]
    assert preview_box.elem_id == "dtg-txt2img-preview"
    assert getter({"Prompt": "1girl"}) == preview_ui.EMPTY_HTML


# --- a failed job's infotext ----------------------------------------------------------


@pytest.mark.parametrize("timing", ["after", "before"])
def test_pasting_a_failed_job_restores_the_panel_and_the_prompt(webui, timing):  # noqa: F811
    webui.engine.fail = True
    chosen = on(target="short", dtg_seed=7, ban_tags="hat", timing=timing)
    processed = webui.run(webui.txt2img(chosen, prompt="1girl,\nsolo", seed=5, batch_size=2))
    assert processed.all_prompts == ["1girl,\nsolo"] * 2
    for text in processed.infotexts:
        pasted = webui.paste(text)
        assert ERROR_KEY in pasted
        assert pasted["Prompt"] == "1girl,\nsolo"
        restored = [getter(pasted) for getter in _paste_getters(webui)]
        # backend and device as the job ran them; the budget and the TIPO values as chosen
        backend = ARG_NAMES.index("backend")
        expected = [*chosen[:backend], "auto", "cpu", *chosen[backend + 2 :]]
        # A DTG image has no natural-language prompt: the (hidden) box is left as it is.
        expected[ARG_NAMES.index("nl_prompt")] = None
        assert restored == expected, "DTG on, the job's values"

"""TIPO in the webui panel, through the stand-in webui (tests/webui_stub): which models
show the natural-language controls, the new script args (positional and named), jobs with
a natural-language prompt (a fake engine for the webui's side, the tiny TIPO model for a
real expansion per image seed), the infotext round trip, the Preview and X/Y/Z axes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_lookup import FakeLookup
from test_webui_script import _paste_getters, on, params, webui  # noqa: F401 (the fixture)
from webui_fakes import ResultEngine

from dtg_lib.backends import BackendCache
from dtg_lib.limits import MAX_NL_PROMPT_CHARS
from dtg_lib.settings import SettingsError, UpsampleSettings
from dtg_lib.upsampler import Upsampler
from dtg_webui import engine, infotext, preview_ui, tipo_panel, xyz
from dtg_webui.args import ARG_NAMES, ScriptArgs
from dtg_webui.infotext import EMPTY_ORIGINAL, ERROR_KEY, ORIGINAL_KEY, PARAMS_KEY

STUB = Path(__file__).resolve().parent / "webui_stub"
TIPO = "tipo-500m"  # a registry TIPO model: its family is known without its file
NL = 'a girl reading in a (library:1.2), "quiet"'
NEW_ARGS = ("nl_prompt", "nl_length", "caption", "gen_meta")


def _tipo(**values) -> list:
    return on(model=TIPO, **values)


# ---------------------------------------------------------------- which model shows what


def test_the_family_comes_from_the_registry_or_the_file(
    webui,  # noqa: F811
    tmp_path,
    tiny_model,
    tiny_tipo_model,
):
    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "my-own.gguf")  # no "tipo" in its name
    shutil.copy(tiny_model.gguf_f16, tmp_path / "dtg.gguf")
    webui.shared.cmd_opts.dtg_model_dir = str(tmp_path)
    assert tipo_panel.model_family("tipo-200m") == "tipo"
    assert tipo_panel.model_family("tipo-500m-ft:hf") == "tipo"
    assert tipo_panel.model_family("delta-rev2") == "dtg"
    assert tipo_panel.model_family("my-own.gguf") == "tipo"
    assert tipo_panel.model_family("dtg.gguf") == "dtg"
    for nothing in ("no-such-model", "", None, "tipov2-1b-a200m"):
        assert tipo_panel.model_family(nothing) is None


def test_the_controls_follow_the_model(webui):  # noqa: F811
    pytest.importorskip("gradio")
    assert tipo_panel.controls_update(TIPO)["visible"] is True
    assert tipo_panel.controls_update("delta-rev2")["visible"] is False
    assert tipo_panel.controls_update("no-such-model")["visible"] is False


class FakeDropdown:
    def __init__(self, value: str) -> None:
        self.value = value
        self.changes: list[dict] = []

    def change(self, **kwargs) -> None:
        self.changes.append(kwargs)


def test_follow_model_wires_the_change_and_the_saved_ui_default(webui):  # noqa: F811
    dropdown, controls = FakeDropdown("delta-rev2"), SimpleNamespace(visible=True)
    tipo_panel.follow_model(dropdown, controls)
    assert controls.visible is False
    (change,) = dropdown.changes
    assert change == {
        "fn": tipo_panel.controls_update,
        "inputs": [dropdown],
        "outputs": [controls],
    }
    # The webui's ui-config.json restores another model into the dropdown before the page
    # is sent, through the dropdown's init_field.
    dropdown.init_field(TIPO)
    assert controls.visible is True
    dropdown.init_field("delta")
    assert controls.visible is False


def _build_ui(webui):  # noqa: F811
    gr = pytest.importorskip("gradio")
    with gr.Blocks():
        components = webui.script.ui(False)
    by_name = dict(zip(ARG_NAMES, components))
    return by_name, _group_of(by_name["nl_prompt"])


def _group_of(component):
    # gradio 3.41 and 4.x both keep a component's enclosing block as `parent`.
    block = component.parent
    while block is not None and "tipo" not in (getattr(block, "elem_id", None) or ""):
        block = block.parent
    assert block is not None, "the NL box sits in the TIPO group"
    return block


def test_the_panel_shows_the_tipo_controls_for_a_tipo_default_model(webui):  # noqa: F811
    by_name, group = _build_ui(webui)
    assert group.visible is False, "hidden for the default model, a DTG model"
    assert [by_name[n].value for n in NEW_ARGS] == ["", "long", False, False]
    webui.shared.opts.dtg_default_model = TIPO
    by_name, group = _build_ui(webui)
    assert group.visible is True and by_name["model"].value == TIPO
    for name in ("nl_length", "caption", "gen_meta"):
        assert _group_of(by_name[name]) is group


def test_the_model_dropdown_lists_tipo_models_and_local_tipo_files(
    webui,  # noqa: F811
    tmp_path,
    tiny_tipo_model,
):
    from dtg_webui import host

    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "tiny-tipo.gguf")
    webui.shared.cmd_opts.dtg_model_dir = str(tmp_path)
    choices = host.model_choices()
    assert {"tipo-100m", "tipo-200m", "tipo-500m", "tipo-500m-ft:hf"} <= set(choices)
    assert "tiny-tipo.gguf" in choices and tipo_panel.is_tipo("tiny-tipo.gguf")


# ---------------------------------------------------------------- args


def test_the_tipo_args_come_after_the_budget():
    assert ARG_NAMES[14:] == ("budget", *NEW_ARGS)


def test_old_positional_calls_keep_working():
    old = [True, "short", "", -1, "after", "delta-rev2", 1.0, 0.9, 50, 0.0, "default", ""]
    old += ["", "", "fill"]
    args = ScriptArgs.from_args(old)
    settings = args.settings(backend="auto", device="cpu")
    assert (args.nl_prompt, settings.nl_length, settings.caption, settings.gen_meta) == (
        "",
        "long",
        False,
        False,
    )
    assert settings.budget == "fill" and settings.target == "short"


def test_positional_tipo_args():
    values = _tipo(nl_prompt=NL, nl_length="short", caption=True, gen_meta=True)
    args = ScriptArgs.from_args(values)
    settings = args.settings(backend="auto", device="cpu")
    assert args.nl_text() == NL
    assert (settings.nl_length, settings.caption, settings.gen_meta) == ("short", True, True)


def test_named_tipo_args():
    named = {"enabled": True, "model": TIPO, "nl_prompt": NL, "nl_length": "very_short"}
    named |= {"caption": "true", "gen_meta": 1}  # an API caller's words, as for "enabled"
    args = ScriptArgs.from_args([named])
    settings = args.settings(backend="auto", device="cpu")
    assert args.nl_text() == NL and settings.nl_length == "very_short"
    assert settings.caption is True and settings.gen_meta is True


@pytest.mark.parametrize(
    ("named", "message"),
    [
        ({"nl_length": "medium"}, "unknown nl_length 'medium'"),
        ({"caption": "maybe"}, "caption must be true or false"),
        ({"gen_meta": 2}, "gen_meta must be true or false"),
        ({"nl_prompt": 5}, "nl_prompt must be text"),
        ({"nl_prompt": "x" * (MAX_NL_PROMPT_CHARS + 1)}, "at most 4000"),
    ],
)
def test_wrong_tipo_args_are_clear_errors(named, message):
    args = ScriptArgs.from_args([{"enabled": True, "model": TIPO, **named}])
    with pytest.raises(SettingsError, match=message):
        args.settings(backend="auto", device="cpu")


def test_a_wrong_tipo_arg_leaves_the_prompt_and_says_so(webui):  # noqa: F811
    processed = webui.run(webui.txt2img(_tipo(nl_length="medium"), prompt="1girl", seed=3))
    assert processed.all_prompts == ["1girl"] and webui.engine.calls == []
    assert "unknown nl_length 'medium'" in params(processed.infotexts[0])[ERROR_KEY]


# ---------------------------------------------------------------- jobs (fake engine)


def test_a_tipo_job_hands_each_image_the_nl_prompt(webui):  # noqa: F811
    chosen = _tipo(nl_prompt=NL, nl_length="short", caption=True)
    processed = webui.run(webui.txt2img(chosen, prompt="1girl", seed=10, batch_size=2))
    (call,) = webui.engine.calls
    assert call["nl_prompts"] == [NL, NL] and call["seeds"] == [10, 11]
    assert (call["settings"].nl_length, call["settings"].caption) == ("short", True)
    assert processed.all_prompts == [f"1girl, dtg {s}, {NL}" for s in (10, 11)]


def test_a_dtg_model_leaves_the_hidden_nl_prompt_unread(webui):  # noqa: F811
    processed = webui.run(webui.txt2img(on(nl_prompt=NL), prompt="1girl", seed=4))
    assert webui.engine.calls[0]["nl_prompts"] is None
    assert processed.all_prompts == ["1girl, dtg 4"]
    stored = json.loads(params(processed.infotexts[0])[PARAMS_KEY])
    assert "nl_prompt" not in stored
    # Pasting that image leaves the box (hidden for its DTG model) as the user left it.
    pasted = webui.paste(processed.infotexts[0])
    assert _getter(webui, "nl_prompt")(pasted) is None


def test_a_sentence_alone_is_expanded_and_pastes_back_to_an_empty_prompt(webui):  # noqa: F811
    processed = webui.run(webui.txt2img(_tipo(nl_prompt=NL), prompt="", seed=2))
    assert webui.engine.calls[0]["prompts"] == [""]
    assert processed.all_prompts == [f", dtg 2, {NL}"]
    # The host drops an empty value when it reads an infotext: the original is recorded
    # as JSON's empty string instead, which the host reads back as "".
    assert params(processed.infotexts[0])[ORIGINAL_KEY] == EMPTY_ORIGINAL
    pasted = webui.paste(processed.infotexts[0])
    assert pasted["Prompt"] == "" and _getter(webui, "enabled")(pasted) is True
    assert _getter(webui, "nl_prompt")(pasted) == NL
    as_the_host_reads_it = {
        **webui.infotext_utils.parse_generation_parameters(processed.infotexts[0]),
        ORIGINAL_KEY: "",
    }
    infotext.on_infotext_pasted(processed.infotexts[0], as_the_host_reads_it)
    assert as_the_host_reads_it["Prompt"] == ""
    assert _getter(webui, "enabled")(as_the_host_reads_it) is True


def test_before_timing_expands_once_with_the_nl_prompt(webui):  # noqa: F811
    chosen = _tipo(nl_prompt=NL, timing="before")
    processed = webui.run(webui.txt2img(chosen, prompt="1girl", seed=6, batch_size=2))
    (call,) = webui.engine.calls
    assert call["nl_prompts"] == [NL] and call["seeds"] == [6]
    assert processed.all_prompts == [f"1girl, dtg 6, {NL}"] * 2


def test_hires_prompt_follows_the_tipo_expansion(webui):  # noqa: F811
    p = webui.txt2img(_tipo(nl_prompt=NL), prompt="1girl", seed=3, batch_size=2, enable_hr=True)
    processed = webui.run(p)
    assert p.all_hr_prompts == processed.all_prompts
    assert [s.hr_prompt for s in processed.samples] == processed.all_prompts


@pytest.mark.parametrize("timing", ["after", "before"])
def test_the_upscale_button_recalls_the_expansion_of_the_same_nl_prompt(webui, timing):  # noqa: F811
    first = webui.run(webui.txt2img(_tipo(nl_prompt=NL, timing=timing), prompt="1girl", seed=21))
    calls = len(webui.engine.calls)

    def upscale(nl_prompt: str):
        p = webui.txt2img(_tipo(nl_prompt=nl_prompt, timing=timing), prompt="1girl", seed=21)
        p.txt2img_upscale = True
        return webui.run(p)

    assert upscale(NL).all_prompts == first.all_prompts
    # Another natural-language prompt is another expansion: not the one remembered.
    assert upscale("a boy in a garden").all_prompts == ["1girl"]
    assert len(webui.engine.calls) == calls


# ---------------------------------------------------------------- infotext


def _getter(webui, name):  # noqa: F811
    return _paste_getters(webui)[ARG_NAMES.index(name)]


LONG_NL = (
    'She said "read, then sleep": a girl (reading:1.3) in a [library],\n'
    "by a window \\ with rain; it's 3:00 a.m., 雨の夜.\n" * 35
)


@pytest.mark.parametrize("nl_prompt", [NL, LONG_NL, '"quoted"', "one, two\n\nthree: four"])
def test_paste_restores_the_tipo_panel_and_the_tags(webui, nl_prompt):  # noqa: F811
    assert len(nl_prompt) <= MAX_NL_PROMPT_CHARS
    chosen = _tipo(nl_prompt=nl_prompt, nl_length="very_long", caption=True, gen_meta=True)
    processed = webui.run(
        webui.txt2img(chosen, prompt="1girl, (solo:1.1)", seed=5, batch_size=2, n_iter=2)
    )
    info = params(processed.infotexts[3])
    assert info[ORIGINAL_KEY] == "1girl, (solo:1.1)"
    assert json.loads(info[PARAMS_KEY])["nl_prompt"] == nl_prompt

    pasted = webui.paste(processed.infotexts[3])
    assert pasted["Prompt"] == "1girl, (solo:1.1)"
    restored = {name: getter(pasted) for name, getter in zip(ARG_NAMES, _paste_getters(webui))}
    assert restored["enabled"] is True and restored["model"] == TIPO
    assert [restored[n] for n in NEW_ARGS] == [nl_prompt, "very_long", True, True]

    # The restored panel gives the same images again.
    again = webui.run(
        webui.txt2img(
            [restored[n] for n in ARG_NAMES],
            prompt=pasted["Prompt"],
            seed=5,
            batch_size=2,
            n_iter=2,
        )
    )
    assert again.all_prompts == processed.all_prompts


def test_a_failed_tipo_job_keeps_the_nl_prompt_for_a_paste(webui):  # noqa: F811
    webui.engine.fail = True
    processed = webui.run(webui.txt2img(_tipo(nl_prompt=NL), prompt="1girl", seed=8))
    assert processed.all_prompts == ["1girl"]
    pasted = webui.paste(processed.infotexts[0])
    assert ERROR_KEY in pasted and pasted["Prompt"] == "1girl"
    assert _getter(webui, "enabled")(pasted) is True
    assert _getter(webui, "nl_prompt")(pasted) == NL


def test_paste_fills_the_panel_controls_with_their_types(webui):  # noqa: F811
    """As the host's paste button does: the callbacks, then each field's getter, the value
    converted to the type of the component's value (a checkbox gets a bool back)."""
    from dtg_webui.infotext import paste_getter

    chosen = _tipo(nl_prompt=NL, nl_length="short", caption=True, gen_meta=False)
    processed = webui.run(webui.txt2img(chosen, prompt="1girl", seed=1))
    panel = ScriptArgs()  # what the controls held before the paste
    fields = [(SimpleNamespace(value=getattr(panel, n)), paste_getter(n)) for n in ARG_NAMES]
    pasted = webui.infotext_utils.paste_values(processed.infotexts[0], fields)
    updates = {name: value for name, (_, value) in zip(ARG_NAMES, pasted)}
    assert [updates[n] for n in NEW_ARGS] == [NL, "short", True, False]
    assert updates["model"] == TIPO


def test_an_old_infotext_without_tipo_values_pastes_the_defaults(webui):  # noqa: F811
    processed = webui.run(webui.txt2img(on(), prompt="1girl", seed=1))
    stored = json.loads(params(processed.infotexts[0])[PARAMS_KEY])
    for name in ("nl_length", "caption", "gen_meta"):
        del stored[name]  # as written before TIPO came to the panel
    old = processed.infotexts[0].replace(
        json.dumps(params(processed.infotexts[0])[PARAMS_KEY], ensure_ascii=False),
        json.dumps(json.dumps(stored, sort_keys=True), ensure_ascii=False),
    )
    assert "nl_length" not in old
    pasted = webui.paste(old)
    # None: the (hidden) natural-language box keeps what it holds; the rest are defaults.
    assert [_getter(webui, n)(pasted) for n in NEW_ARGS] == [None, "long", False, False]


def test_pasting_a_dtg_image_keeps_the_hidden_box_and_a_tipo_one_sets_it(webui):  # noqa: F811
    dtg = webui.run(webui.txt2img(on(), prompt="1girl", seed=1)).infotexts[0]
    assert _getter(webui, "nl_prompt")(webui.paste(dtg)) is None  # left as typed
    tags_only = webui.run(webui.txt2img(_tipo(), prompt="1girl", seed=1)).infotexts[0]
    assert _getter(webui, "nl_prompt")(webui.paste(tags_only)) == ""  # the image had none
    with_text = webui.run(webui.txt2img(_tipo(nl_prompt=NL), prompt="1girl", seed=1))
    assert _getter(webui, "nl_prompt")(webui.paste(with_text.infotexts[0])) == NL


# ---------------------------------------------------------------- preview


@pytest.fixture
def fake(webui):  # noqa: F811
    made = ResultEngine()
    engine.set_factory(lambda model_dir, embeddings: made)
    return made


def test_preview_with_a_tipo_model_shows_the_sentences_apart(fake):
    html = preview_ui.run_preview("1girl", 7, 1024, 1024, [], *_tipo(nl_prompt=NL))
    assert fake.calls[0]["nl_prompts"] == [NL]
    sentences = html.split('class="dtg-sentences"', 1)[1].split("</pre>")[0]
    assert "Extended text" in sentences and "with seed 7." in sentences
    assert "Generated caption" in sentences and "A caption written with seed 7." in sentences
    # Escaped as any other text of the preview.
    assert "&quot;quiet&quot;" in sentences and '"quiet"' not in sentences


def test_preview_of_a_sentence_alone(fake):
    preview_ui.run_preview("", 7, 1024, 1024, [], *_tipo(nl_prompt=NL))
    assert fake.calls[0]["prompts"] == [""]
    html = preview_ui.run_preview("", 7, 1024, 1024, [], *on(nl_prompt=NL))
    assert "prompt box is empty" in html and len(fake.calls) == 1, "a DTG model needs tags"


def test_preview_with_a_dtg_model_has_no_sentences(fake):
    html = preview_ui.run_preview("1girl", 7, 1024, 1024, [], *on(nl_prompt=NL))
    assert fake.calls[0]["nl_prompts"] is None
    assert "dtg-sentences" not in html


# ---------------------------------------------------------------- X/Y/Z


@pytest.fixture
def grid(webui):  # noqa: F811
    path = STUB / "xyz_grid.py"
    spec = importlib.util.spec_from_file_location("xyz_grid.py", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    webui.scripts.scripts_data.append(
        webui.scripts.ScriptClassData(object, str(path), str(STUB), module)
    )
    webui.callbacks.before_ui_callback()
    return module


def _cells(webui, grid, args, axes):  # noqa: F811
    p = webui.txt2img(args, prompt="1girl", seed=10)
    return [webui.run(cell) for cell in grid.cells(p, axes)]


def test_nl_length_axis(webui, grid):  # noqa: F811
    axis = grid.option("[DTG] NL length")
    assert axis.choices() == ["very_short", "short", "long", "very_long"]
    _cells(webui, grid, _tipo(nl_prompt=NL), [(axis, ["short", "very_long"])])
    assert [c["settings"].nl_length for c in webui.engine.calls] == ["short", "very_long"]
    assert all(c["nl_prompts"] == [NL] for c in webui.engine.calls)


def test_model_axis_lists_the_models_and_reads_the_nl_prompt_for_tipo_cells_only(
    webui,  # noqa: F811
    grid,
    tmp_path,
    tiny_tipo_model,
):
    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "tiny-tipo.gguf")
    webui.shared.cmd_opts.dtg_model_dir = str(tmp_path)
    axis = grid.option("[DTG] Model")
    assert axis.cost > 0, "varied slowest, so each model loads once"
    choices = axis.choices()
    assert {"delta-rev2", TIPO, "tiny-tipo.gguf"} <= set(choices)

    # The panel on a DTG model hides its box: a TIPO cell does not read what stays in it.
    _cells(webui, grid, on(nl_prompt=NL), [(axis, ["delta-rev2", TIPO])])
    hidden = [(c["settings"].model, c["nl_prompts"]) for c in webui.engine.calls]
    assert hidden == [("delta-rev2", None), (TIPO, None)]
    webui.engine.calls.clear()

    results = _cells(
        webui, grid, _tipo(nl_prompt=NL), [(axis, ["delta-rev2", TIPO, "tiny-tipo.gguf"])]
    )
    seen = [(c["settings"].model, c["nl_prompts"]) for c in webui.engine.calls]
    assert seen == [("delta-rev2", None), (TIPO, [NL]), ("tiny-tipo.gguf", [NL])]
    assert [r.all_prompts for r in results] == [
        ["1girl, dtg 10"],
        [f"1girl, dtg 10, {NL}"],
        [f"1girl, dtg 10, {NL}"],
    ]
    infos = [json.loads(params(r.infotexts[0])[PARAMS_KEY]) for r in results]
    assert [i.get("nl_prompt") for i in infos] == [None, NL, NL]


def test_axes_are_registered_with_their_cost(webui, grid):  # noqa: F811
    costs = {o.label: o.cost for o in grid.axis_options if o.label.startswith("[DTG]")}
    assert costs["[DTG] Model"] > costs["[DTG] NL length"] == 0
    assert {axis.label for axis in xyz.AXES} == set(costs)


# ---------------------------------------------------------------- the tiny TIPO model, for real


@pytest.fixture
def real_engine(webui, tmp_path, tiny_tipo_model):  # noqa: F811
    """The real engine on the tiny TIPO model (llama.cpp), as `tiny-tipo.gguf` in the
    model folder; the tag lookup is a small in-memory one."""
    pytest.importorskip("llama_cpp")
    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "tiny-tipo.gguf")
    webui.shared.cmd_opts.dtg_model_dir = str(tmp_path)
    cache = BackendCache()
    engine.set_factory(
        lambda model_dir, embeddings: Upsampler(
            model_dir=model_dir,
            embeddings=embeddings,
            lookup=FakeLookup(),
            backends=cache,
            allow_download=False,
        )
    )
    yield Upsampler(model_dir=tmp_path, lookup=FakeLookup(), backends=cache, allow_download=False)
    cache.unload()


REAL = {"model": "tiny-tipo.gguf", "target": "very_short", "nl_length": "very_short"}


@pytest.mark.slow
def test_a_real_tipo_job_is_each_image_seeds_own_expansion(webui, real_engine):  # noqa: F811
    chosen = on(nl_prompt=NL, **REAL)
    job = {"prompt": "1girl, solo", "seed": 30, "batch_size": 2, "n_iter": 2}
    processed = webui.run(webui.txt2img(chosen, **job))
    again = webui.run(webui.txt2img(chosen, **job))
    assert again.all_prompts == processed.all_prompts, "reproducible per image seed"
    assert len(set(processed.all_prompts)) > 1, "each image its own expansion"

    settings = ScriptArgs.from_args(chosen).settings(backend="auto", device="cpu")
    for seed, final in zip(processed.all_seeds, processed.all_prompts):
        alone = real_engine.upsample("1girl, solo", settings, seed, 512, 512, nl_prompt=NL)
        assert final == alone.final_prompt, "the image's expansion is its seed's, alone"
        # Tags first, then the sentence as typed (weights kept), as the template says.
        assert final.startswith("1girl,") and NL in final
        assert final.index(NL) > final.index("solo")

    pasted = webui.paste(processed.infotexts[2])
    restored = [getter(pasted) for getter in _paste_getters(webui)]
    replayed = webui.run(
        webui.txt2img(restored, prompt=pasted["Prompt"], seed=processed.all_seeds[2])
    )
    assert replayed.all_prompts == [processed.all_prompts[2]]


@pytest.mark.slow
def test_a_real_tipo_preview_equals_the_job(webui, real_engine):  # noqa: F811
    chosen = on(nl_prompt=NL, caption=True, **REAL)
    processed = webui.run(webui.txt2img(chosen, prompt="1girl", seed=12))
    html = preview_ui.run_preview("1girl", 12, 512, 512, [], *chosen)
    final = html.split('<pre class="dtg-preview-final"', 1)[1].split(">", 1)[1].split("</pre>")[0]
    from html import unescape

    assert unescape(final) == processed.all_prompts[0]
    assert 'class="dtg-sentences"' in html


def test_engine_default_settings_match_the_panel():
    # The panel's TIPO defaults are the engine's.
    engine_defaults = UpsampleSettings()
    panel = ScriptArgs()
    assert (panel.nl_length, panel.caption, panel.gen_meta) == (
        engine_defaults.nl_length,
        engine_defaults.caption,
        engine_defaults.gen_meta,
    )


def test_use_in_prompt_empties_the_box_for_tipo_and_keeps_a_hidden_one(webui):  # noqa: F811
    """The copied final prompt holds the sentences already: read again from the box, the
    next job would get them twice. A DTG model's hidden box keeps its text."""
    from dtg_webui.preview_ui import nl_after_copy

    assert nl_after_copy(TIPO, NL) == ""
    assert nl_after_copy("delta-rev2", NL) == NL

"""The webui script driven through a stand-in webui (tests/webui_stub), with a fake engine."""

from __future__ import annotations

import argparse
import configparser
import importlib
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dtg_webui import engine, rewrite
from dtg_webui.args import ARG_NAMES, ScriptArgs
from dtg_webui.infotext import ERROR_KEY, NOTICE_KEY, ORIGINAL_KEY, PARAMS_KEY
from dtg_webui.recent import RecentExpansions

ROOT = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "webui_stub"


@dataclass(frozen=True)
class FakeResult:
    prompt: str
    final_prompt: str
    new_tags: tuple[str, ...]
    seed: int
    model: str = "fake"
    backend: str = "fake"
    rounds: int = 1
    timings: Any = None
    notices: tuple[str, ...] = ()


@dataclass
class FakeEngine:
    """Appends one tag named after the seed, so each image's seed is visible in its prompt,
    and the natural-language prompt when one is given (as a TIPO model's final prompt
    holds it)."""

    fail: bool = False
    notices: tuple[str, ...] = ()
    calls: list[dict[str, Any]] = field(default_factory=list)
    unloads: int = 0

    def upsample_many(self, prompts, settings, seeds, width=1024, height=1024, nl_prompts=None):
        self.calls.append(
            {
                "prompts": list(prompts),
                "seeds": list(seeds),
                "size": (width, height),
                "settings": settings,
                "nl_prompts": nl_prompts,
            }
        )
        if self.fail:
            raise RuntimeError("model file is corrupt")
        texts = nl_prompts or [""] * len(prompts)
        return [
            FakeResult(
                p,
                f"{p}, dtg {s}" + (f", {nl}" if nl else ""),
                (f"dtg {s}",),
                s,
                notices=self.notices,
            )
            for p, s, nl in zip(prompts, seeds, texts)
        ]

    def unload(self) -> None:
        self.unloads += 1


def _is_webui_module(name: str) -> bool:
    return name == "modules" or name.startswith("modules.")


@pytest.fixture
def webui():
    """Puts the stand-in `modules` on sys.path for one test and takes it away again."""
    saved_modules = {n: m for n, m in sys.modules.items() if _is_webui_module(n)}
    saved_path = list(sys.path)
    for name in saved_modules:
        del sys.modules[name]
    sys.path.insert(0, str(STUB))
    fake = FakeEngine()
    factory_calls: list[tuple[Any, frozenset[str]]] = []

    def factory(model_dir, embeddings):
        factory_calls.append((model_dir, embeddings))
        return fake

    engine.set_factory(factory)
    # Each test starts with no expansions remembered for the Upscale button.
    saved_recent, rewrite.RECENT = rewrite.RECENT, RecentExpansions()
    try:
        yield _Webui(fake, factory_calls)
    finally:
        rewrite.RECENT = saved_recent
        engine.set_factory(None)
        for name in [n for n in sys.modules if _is_webui_module(n)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path


class _Webui:
    def __init__(self, fake: FakeEngine, factory_calls: list) -> None:
        self.engine = fake
        self.factory_calls = factory_calls
        self.processing = importlib.import_module("modules.processing")
        self.scripts = importlib.import_module("modules.scripts")
        self.shared = importlib.import_module("modules.shared")
        self.callbacks = importlib.import_module("modules.script_callbacks")
        self.infotext_utils = importlib.import_module("modules.infotext_utils")
        self.script = self._load_script()

    def _load_script(self) -> Any:
        spec = importlib.util.spec_from_file_location(
            "dtg_script_under_test", ROOT / "scripts" / "dtg.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.DanTagGenScript()

    def runner(self, args: list[Any], *, before: list[Any] = ()) -> Any:
        scripts = [*before, self.script]
        per_script = [[] for _ in before] + [args]
        return self.scripts.ScriptRunner(scripts, per_script)

    def txt2img(self, args: list[Any], *, before: list[Any] = (), **kwargs: Any) -> Any:
        return self.processing.StableDiffusionProcessingTxt2Img(
            scripts=self.runner(args, before=before), **kwargs
        )

    def run(self, p: Any) -> Any:
        processed = self.processing.process_images(p)
        assert p.scripts.errors == [], "the script must not raise into the host"
        return processed

    def paste(self, infotext: str) -> dict[str, Any]:
        return self.infotext_utils.paste(infotext)


class WildcardScript:
    """Stands in for sd-dynamic-prompts: runs first and gives each image its own prompt."""

    args_from = args_to = 0

    def title(self) -> str:
        return "wildcards"

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None

    def process(self, p, *args) -> None:
        p.all_prompts = [f"{prompt}, variant {i}" for i, prompt in enumerate(p.all_prompts)]


def on(**values: Any) -> list[Any]:
    """Positional script args in ui() order, enabled, with some values changed."""
    chosen = ScriptArgs(enabled=True, **values)
    return [getattr(chosen, name) for name in ARG_NAMES]


def params(infotext: str) -> dict[str, str]:
    *_, last = infotext.split("\n")
    from modules.infotext_utils import parse_params_line

    return parse_params_line(last)


def test_batch_of_two_twice_each_image_own_seed_and_original(webui):
    p = webui.txt2img(
        on(), before=[WildcardScript()], prompt="1girl, solo", seed=100, batch_size=2, n_iter=2
    )
    processed = webui.run(p)

    originals = [f"1girl, solo, variant {i}" for i in range(4)]
    expected = [f"{o}, dtg {100 + i}" for i, o in enumerate(originals)]
    assert processed.all_prompts == expected
    assert [s.prompt for s in processed.samples] == expected
    assert p.prompt == "1girl, solo"
    assert len(webui.engine.calls) == 1, "one engine call for the whole job"
    assert webui.engine.calls[0]["seeds"] == [100, 101, 102, 103]
    for i, text in enumerate(processed.infotexts):
        assert text.startswith(expected[i] + "\n")
        info = params(text)
        assert info["Seed"] == str(100 + i)
        assert info[ORIGINAL_KEY] == originals[i]
        stored = json.loads(info[PARAMS_KEY])
        assert stored["dtg_seed"] == -1 and stored["target"] == "long"


def test_same_image_seed_same_expansion(webui):
    first = webui.run(webui.txt2img(on(), prompt="1girl", seed=7, batch_size=2))
    second = webui.run(webui.txt2img(on(), prompt="1girl", seed=7, batch_size=2))
    assert first.all_prompts == second.all_prompts


def test_fixed_dtg_seed_keeps_the_tags_whatever_the_image_seed(webui):
    processed = webui.run(webui.txt2img(on(dtg_seed=5), prompt="1girl", seed=7, batch_size=3))
    assert processed.all_prompts == ["1girl, dtg 5"] * 3


def _generation_info(processed, first=0):
    # With a grid, the host puts the grid first in the gallery and its infotext first
    # in `infotexts`; `all_seeds` has the images' seeds only.
    grid = ["a grid's infotext, without DTG keys"] if first else []
    return json.dumps(
        {
            "infotexts": grid + processed.infotexts,
            "all_seeds": processed.all_seeds,
            "index_of_first_image": first,
        }
    )


def test_reuse_button_takes_the_selected_images_expansion_seed(webui):
    from dtg_webui.reuse_seed import reused_seed

    processed = webui.run(webui.txt2img(on(), prompt="1girl", seed=40, batch_size=3))
    info = _generation_info(processed)
    assert reused_seed(info, 2, -1) == 42
    # A grid first in the gallery shifts the index by one.
    assert reused_seed(_generation_info(processed, first=1), 2, -1) == 41
    assert reused_seed(_generation_info(processed, first=1), 3, -1) == 42
    assert reused_seed(_generation_info(processed, first=1), 0, 17) == 17  # the grid
    # The reused seed gives back that image's tags for any image seed.
    again = webui.run(webui.txt2img(on(dtg_seed=42), prompt="1girl", seed=99, batch_size=2))
    assert again.all_prompts == [processed.all_prompts[2]] * 2
    assert reused_seed(_generation_info(again), 1, -1) == 42


def test_reuse_button_without_a_dtg_image_keeps_the_field(webui):
    from dtg_webui.reuse_seed import reused_seed

    plain = webui.run(webui.txt2img([False], prompt="1girl", seed=3))
    assert reused_seed(_generation_info(plain), 0, 17) == 17
    assert reused_seed("", 0, -1) == -1
    assert reused_seed("{not json", 0, 8) == 8


def test_hires_prompt_left_empty_follows_the_expansion(webui):
    p = webui.txt2img(on(), prompt="1girl", seed=3, batch_size=2, enable_hr=True)
    processed = webui.run(p)
    assert p.all_hr_prompts == ["1girl, dtg 3", "1girl, dtg 4"]
    assert [s.hr_prompt for s in processed.samples] == p.all_hr_prompts


def test_hires_prompt_in_the_infotext_is_each_images_own(webui):
    # webui 1.10.1 reads the job-wide hires list with the index inside the batch: from
    # the second batch on, its infotext named the first batch's expansions.
    p = webui.txt2img(on(), prompt="1girl", seed=3, batch_size=2, n_iter=2, enable_hr=True)
    processed = webui.run(p)
    assert all("Hires prompt" not in text for text in processed.infotexts)


def test_hires_prompt_of_the_user_stays_in_every_infotext(webui):
    p = webui.txt2img(
        on(), prompt="1girl", seed=3, batch_size=2, n_iter=2, enable_hr=True, hr_prompt="1girl, hd"
    )
    processed = webui.run(p)
    assert all('Hires prompt: "1girl, hd"' in text for text in processed.infotexts)


def test_hires_prompt_written_by_the_user_is_kept(webui):
    p = webui.txt2img(
        on(), prompt="1girl", seed=3, batch_size=2, enable_hr=True, hr_prompt="1girl, detailed"
    )
    processed = webui.run(p)
    assert p.all_hr_prompts == ["1girl, detailed"] * 2
    assert processed.all_prompts == ["1girl, dtg 3", "1girl, dtg 4"]


def test_img2img_expands_with_target_size(webui):
    p = webui.processing.StableDiffusionProcessingImg2Img(
        scripts=webui.runner(on()),
        prompt="1girl",
        seed=9,
        width=768,
        height=512,
        init_images=["img"],
    )
    processed = webui.run(p)
    assert processed.all_prompts == ["1girl, dtg 9"]
    assert webui.engine.calls[0]["size"] == (768, 512)


def test_before_timing_expands_once_and_fixes_the_seed(webui):
    p = webui.txt2img(
        on(timing="before"), prompt="1girl", seed=-1, batch_size=2, n_iter=2, enable_hr=True
    )
    processed = webui.run(p)
    assert isinstance(p.seed, int) and p.seed != -1
    assert processed.all_seeds[0] == p.seed
    expanded = f"1girl, dtg {p.seed}"
    assert p.prompt == expanded
    assert processed.all_prompts == [expanded] * 4
    assert p.all_hr_prompts == [expanded] * 4
    assert [c["prompts"] for c in webui.engine.calls] == [["1girl"]]
    assert all(params(t)[ORIGINAL_KEY] == "1girl" for t in processed.infotexts)

    again = webui.run(webui.txt2img(on(timing="before"), prompt="1girl", seed=p.seed))
    assert again.all_prompts == [expanded], "reusing the recorded seed reproduces the expansion"


def test_engine_failure_leaves_prompts_and_notes_the_error(webui, caplog):
    webui.engine.fail = True
    p = webui.txt2img(on(), prompt="1girl, (smile:1.2)", seed=1, batch_size=2, enable_hr=True)
    with caplog.at_level(logging.INFO, logger="dtg"):
        processed = webui.run(p)
    assert processed.all_prompts == ["1girl, (smile:1.2)"] * 2
    assert p.all_hr_prompts == ["1girl, (smile:1.2)"] * 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "model file is corrupt" in errors[0].getMessage()
    info = params(processed.infotexts[0])
    assert "model file is corrupt" in info[ERROR_KEY]
    # The panel's values and the prompt as written, for a paste (tests/test_webui_polish.py).
    assert info[ORIGINAL_KEY] == "1girl, (smile:1.2)"
    assert json.loads(info[PARAMS_KEY])["target"] == "long"


def test_engine_notices_reach_the_user_once(webui, caplog):
    webui.engine.notices = ("llama.cpp backend is not installed; using the torch backend",)
    p = webui.txt2img(on(), prompt="1girl", seed=1, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="dtg"):
        processed = webui.run(p)
    assert processed.all_prompts == ["1girl, dtg 1", "1girl, dtg 2"]
    warnings = [r for r in caplog.records if "torch backend" in r.getMessage()]
    assert len(warnings) == 1
    assert "using the torch backend" in params(processed.infotexts[1])[NOTICE_KEY]
    assert list(p.comments) == ["DTG: llama.cpp backend is not installed; using the torch backend"]


def test_before_timing_failure_keeps_the_prompt(webui):
    webui.engine.fail = True
    p = webui.txt2img(on(timing="before"), prompt="1girl", seed=4)
    processed = webui.run(p)
    assert p.prompt == "1girl" and processed.all_prompts == ["1girl"]
    assert ERROR_KEY in params(processed.infotexts[0])


def test_invalid_settings_are_reported_not_raised(webui, caplog):
    p = webui.txt2img(on(temperature=0.0, ban_tags="/[/"), prompt="1girl", seed=1)
    with caplog.at_level(logging.ERROR, logger="dtg"):
        processed = webui.run(p)
    assert processed.all_prompts == ["1girl"]
    assert webui.engine.calls == []
    assert len(caplog.records) == 1 and "invalid settings" in caplog.records[0].getMessage()
    assert "invalid settings" in params(processed.infotexts[0])[ERROR_KEY]


def test_disabled_touches_nothing(webui):
    args = [getattr(ScriptArgs(), name) for name in ARG_NAMES]
    p = webui.txt2img(args, prompt="1girl", seed=1, batch_size=2, enable_hr=True)
    processed = webui.run(p)
    assert processed.all_prompts == ["1girl", "1girl"]
    # Only the host's own entry: its hires prompt lookup, left as it set it.
    assert list(p.extra_generation_params) == ["Hires prompt"]
    assert p.extra_generation_params["Hires prompt"].__name__ == "get_hr_prompt"
    assert webui.factory_calls == [] and webui.engine.calls == []


def test_api_call_with_only_enabled_uses_defaults(webui):
    processed = webui.run(webui.txt2img([True], prompt="1girl", seed=2))
    assert processed.all_prompts == ["1girl, dtg 2"]


@pytest.mark.parametrize("timing", ["after", "before"])
def test_upscale_button_pass_is_not_expanded_again(webui, timing):
    p = webui.txt2img(on(timing=timing), prompt="1girl, never seen", seed=11, enable_hr=True)
    p.txt2img_upscale = True
    processed = webui.run(p)
    assert processed.all_prompts == ["1girl, never seen"] and p.prompt == "1girl, never seen"
    assert webui.engine.calls == []


@pytest.mark.parametrize("image", [0, 1])
@pytest.mark.parametrize("timing", ["after", "before"])
def test_upscale_button_pass_reuses_the_expansion_its_image_got(webui, timing, image):
    first = webui.run(webui.txt2img(on(timing=timing), prompt="1girl", seed=21, batch_size=2))
    calls = len(webui.engine.calls)
    # The button reruns one image with its own seed; "before" had expanded once per job,
    # from the job's first seed, so image 1 must find the job's expansion all the same.
    p = webui.txt2img(on(timing=timing), prompt="1girl", seed=21 + image, enable_hr=True)
    p.txt2img_upscale = True
    processed = webui.run(p)
    assert len(webui.engine.calls) == calls  # the model did not run again
    assert processed.all_prompts == [first.all_prompts[image]]
    assert ORIGINAL_KEY in params(processed.infotexts[0])


def test_paste_restores_settings_and_original_prompt(webui):
    chosen = on(
        target="very_long",
        ban_tags="hat, *ribbon",
        dtg_seed=42,
        top_k=40,
        format="custom",
        custom_format="<|general|>, <|quality|>",
        model="delta",
    )
    processed = webui.run(
        webui.txt2img(chosen, prompt="1girl,\nsolo", seed=5, batch_size=2, n_iter=2)
    )

    pasted = webui.paste(processed.infotexts[3])
    assert pasted["Prompt"] == "1girl,\nsolo"
    restored = [getter(pasted) for getter in _paste_getters(webui)]
    # Backend and device come back as what the job used, not "" (the Settings default),
    # so the paste reproduces the expansion on a machine with other Settings too.
    backend = ARG_NAMES.index("backend")
    expected = [*chosen[:backend], "auto", "cpu", "none", *chosen[backend + 3 :]]
    expected[ARG_NAMES.index("nl_prompt")] = None  # a DTG image: the hidden box is kept
    assert restored == expected


def test_paste_without_dtg_turns_the_panel_off(webui):
    processed = webui.run(webui.txt2img([False], prompt="1girl", seed=5))
    pasted = webui.paste(processed.infotexts[0])
    getters = _paste_getters(webui)
    assert getters[0](pasted) is False
    assert all(getter(pasted) is None for getter in getters[1:])
    assert pasted["Prompt"] == "1girl"


def _paste_getters(webui) -> list:
    from dtg_webui.infotext import paste_getter

    return [paste_getter(name) for name in ARG_NAMES]


def test_settings_section_and_command_line_overrides(webui, tmp_path):
    webui.callbacks.ui_settings_callback()
    labels = webui.shared.opts.data_labels
    keys = {"dtg_model_dir", "dtg_default_model", "dtg_backend", "dtg_device", "dtg_keep_loaded"}
    assert keys <= set(labels)
    assert {labels[k].section for k in keys} == {("dtg", "DanTagGen")}

    webui.shared.cmd_opts.dtg_model_dir = str(tmp_path)
    webui.shared.cmd_opts.dtg_device = "cuda"
    webui.shared.opts.dtg_backend = "torch"
    webui.run(webui.txt2img(on(), prompt="1girl", seed=1))
    assert webui.factory_calls[-1][0] == tmp_path
    settings = webui.engine.calls[-1]["settings"]
    assert (settings.device, settings.backend) == ("cuda", "torch")


def test_panel_backend_and_device_win_over_settings(webui):
    webui.shared.opts.dtg_backend = "llama.cpp"
    webui.run(webui.txt2img(on(backend="torch", device="mps"), prompt="1girl", seed=1))
    settings = webui.engine.calls[-1]["settings"]
    assert (settings.backend, settings.device) == ("torch", "mps")
    webui.run(webui.txt2img(on(backend="from settings", device=""), prompt="1girl", seed=1))
    settings = webui.engine.calls[-1]["settings"]
    assert (settings.backend, settings.device) == ("llama.cpp", "cpu")


def test_model_list_has_the_registry_and_the_model_folder(webui, tmp_path, tiny_model):
    import shutil

    from dtg_webui import host

    shutil.copy(tiny_model.gguf_f16, tmp_path / "mine.gguf")
    webui.shared.cmd_opts.dtg_model_dir = str(tmp_path)
    choices = host.model_choices()
    assert "delta-rev2" in choices and "delta-rev2:hf" in choices
    assert choices[-1] == "mine.gguf"


def test_model_dir_defaults_under_the_webui_models_folder(webui, tmp_path):
    importlib.import_module("modules.paths").models_path = str(tmp_path)
    webui.run(webui.txt2img(on(), prompt="1girl", seed=1))
    assert webui.factory_calls[-1][0] == tmp_path / "dtg"


def test_unload_after_job_when_not_kept(webui):
    webui.shared.opts.dtg_keep_loaded = False
    webui.run(webui.txt2img(on(), prompt="1girl", seed=1))
    assert webui.engine.unloads == 1
    webui.shared.opts.dtg_keep_loaded = True
    webui.run(webui.txt2img(on(), prompt="1girl", seed=1))
    assert webui.engine.unloads == 1


def test_script_identity(webui):
    assert webui.script.title() == "DanTagGen"
    assert webui.script.show(False) is webui.scripts.AlwaysVisible


def test_preload_adds_flags():
    spec = importlib.util.spec_from_file_location("dtg_preload_under_test", ROOT / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    module.preload(parser)
    parsed = parser.parse_args(["--dtg-model-dir", "/m", "--dtg-device", "cuda"])
    assert (parsed.dtg_model_dir, parsed.dtg_device) == ("/m", "cuda")
    assert parsed.dtg_no_llama_build is False
    assert parser.parse_args(["--dtg-no-llama-build"]).dtg_no_llama_build is True


def test_metadata_orders_after_dynamic_prompts():
    config = configparser.ConfigParser()
    assert config.read(ROOT / "metadata.ini", encoding="utf-8")
    assert "sd-dynamic-prompts" in config.get("scripts/dtg.py", "After").split()


def test_ui_builds_in_gradio_blocks(webui):
    gr = pytest.importorskip("gradio")
    with gr.Blocks():
        prompt = gr.Textbox(elem_id="txt2img_prompt")
        webui.script.after_component(prompt, elem_id="txt2img_prompt")
        components = webui.script.ui(False)
        # The host builds its output panel after the scripts' UI.
        info = gr.Textbox(elem_id="generation_info_txt2img", visible=False)
        webui.script.after_component(info, elem_id="generation_info_txt2img")
    assert len(components) == len(ARG_NAMES)
    assert all(c.elem_id.startswith("dtg-txt2img-") for c in components)
    # One getter per panel value, and the preview box, which a paste empties.
    assert len(webui.script.infotext_fields) == len(ARG_NAMES) + 1
    assert webui.script.preview.wired and webui.script.reuse.wired


def test_stub_does_not_leak_into_other_tests():
    leaked = [
        name
        for name, module in sys.modules.items()
        if _is_webui_module(name) and str(STUB) in (getattr(module, "__file__", None) or "")
    ]
    assert leaked == []
    assert str(STUB) not in sys.path


def test_the_api_infotext_field_does_not_expand_the_expansion_again(webui):
    """The API reads the paste getters without running infotext_pasted callbacks, so
    its prompt is the image's expansion: DTG must stay off for it."""
    processed = webui.run(webui.txt2img(on(target="very_short"), prompt="1girl", seed=3))
    parsed = webui.infotext_utils.parse_generation_parameters(processed.infotexts[0])
    assert parsed["Prompt"] == "1girl, dtg 3"
    assert _paste_getters(webui)[0](parsed) is False
    # A paste in the UI runs the callbacks: original prompt back, DTG on.
    pasted = webui.paste(processed.infotexts[0])
    assert pasted["Prompt"] == "1girl" and _paste_getters(webui)[0](pasted) is True


def test_paste_without_a_recorded_original_leaves_dtg_off(webui):
    processed = webui.run(webui.txt2img(on(), prompt="1girl", seed=3))
    text = processed.infotexts[0].replace(ORIGINAL_KEY, "Not DTG")
    pasted = webui.paste(text)
    assert pasted["Prompt"] == "1girl, dtg 3"
    assert _paste_getters(webui)[0](pasted) is False


def test_the_infotext_names_no_folder_of_this_machine(webui, tmp_path, monkeypatch):
    # Saved images carry the infotext: an error naming a model file says where it is
    # relative to the model folder, never the folder itself.
    models_root = tmp_path / "webui-models"
    monkeypatch.setattr(importlib.import_module("modules.paths"), "models_path", str(models_root))
    folder = models_root / "dtg"
    missing = folder / "nowhere.gguf"

    def failing(prompts, settings, seeds, width=1024, height=1024):
        raise RuntimeError(f"cannot read {missing}")

    webui.engine.upsample_many = failing
    processed = webui.run(webui.txt2img(on(), prompt="1girl", seed=1))
    error = params(processed.infotexts[0])[ERROR_KEY]
    assert "nowhere.gguf" in error
    assert str(tmp_path) not in error and "<model folder>" in error

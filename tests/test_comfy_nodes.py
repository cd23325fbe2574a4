"""The ComfyUI node pack, loaded and run as ComfyUI does, through tests/comfy_stub."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_lookup import FakeLookup

from dtg_lib import model_selection
from dtg_lib.backends import BackendCache
from dtg_lib.errors import DtgError
from dtg_lib.settings import UpsampleSettings
from dtg_lib.upsampler import Upsampler

REPO_ROOT = Path(__file__).resolve().parent.parent
STUB = REPO_ROOT / "tests" / "comfy_stub"
WORKFLOW = REPO_ROOT / "examples" / "api" / "dtg_workflow.json"  # for POST /prompt
TEMPLATE = REPO_ROOT / "examples" / "dtg_workflow.json"  # the page's format (its Templates)
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")
STUB_MODULES = ("folder_paths", "comfy", "comfy.model_management", "comfy.utils")


class CountingUpsampler(Upsampler):
    """The real engine, counting its calls and unloads."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []
        self.unloads = 0

    def upsample_many(self, prompts, settings, seeds, *args, **kwargs):
        self.calls.append((list(prompts), list(seeds)))
        return super().upsample_many(prompts, settings, seeds, *args, **kwargs)

    def unload(self):
        self.unloads += 1
        super().unload()


@pytest.fixture
def pack(tmp_path, monkeypatch):
    """ComfyUI's modules (the stand-in), a models folder, and the pack loaded from the
    repository root; yields (mappings, display names, engines made, models/dtg)."""
    monkeypatch.setenv("DTG_COMFY_INSTALL", "0")
    monkeypatch.syspath_prepend(str(STUB))
    for name in STUB_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import folder_paths

    folder_paths.reset(str(tmp_path / "models"))
    from comfy_stub.host import load_custom_node

    mappings, names = load_custom_node(REPO_ROOT)
    from dtg_comfy import engine

    cache = BackendCache()
    made = []

    def factory(model_dir):
        made.append(
            CountingUpsampler(
                model_dir=model_dir, lookup=FakeLookup(), backends=cache, allow_download=False
            )
        )
        return made[-1]

    engine.set_factory(factory)
    dtg_folder = tmp_path / "models" / "dtg"
    dtg_folder.mkdir(parents=True)
    yield mappings, names, made, dtg_folder
    engine.set_factory(None)
    cache.unload()
    sys.modules.pop(REPO_ROOT.name, None)
    for name in STUB_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def dtg_gguf(pack, tiny_model):
    pytest.importorskip("llama_cpp")
    shutil.copy(tiny_model.gguf_f16, pack[3] / "tiny-dtg-f16.gguf")
    return "tiny-dtg-f16.gguf"


def defaults(node_class):
    """The node's widget values as ComfyUI's frontend starts them."""
    spec = node_class.INPUT_TYPES()["required"]
    values = {}
    for name, (kind, options) in spec.items():
        if "forceInput" not in options:
            values[name] = options.get("default", kind[0] if isinstance(kind, list) else None)
    return values


def run_upsample(mappings, **given):
    node = mappings["DTGUpsample"]
    values = {**defaults(node), **given}
    return node().expand(**{k: v if isinstance(v, list) else [v] for k, v in values.items()})


# --- loading -------------------------------------------------------------------


def test_pack_loads_like_comfyui_with_typed_inputs_and_tooltips(pack):
    mappings, names, _, _ = pack
    assert names == {"DTGUpsample": "DTG Upsample", "DTGFormat": "DTG Format", "DTGTipo": "TIPO"}
    for node in mappings.values():
        spec = node.INPUT_TYPES()
        for name, (_, options) in {**spec["required"], **spec.get("optional", {})}.items():
            assert options.get("tooltip"), f"{node.__name__}.{name} has no tooltip"
        assert len(node.RETURN_NAMES) == len(node.RETURN_TYPES)
    upsample = mappings["DTGUpsample"].INPUT_TYPES()
    assert upsample["required"]["seed"][1]["control_after_generate"] is True
    assert upsample["required"]["device"][1]["default"] == "cpu"
    assert upsample["optional"]["latent"][0] == "LATENT"
    assert mappings["DTGUpsample"].RETURN_NAMES == ("final prompt", "new tags", "original prompt")
    assert "sentences" in mappings["DTGTipo"].RETURN_NAMES


def test_models_dtg_is_registered_after_extra_model_paths(pack, tiny_model, tmp_path):
    mappings, _, _, dtg_folder = pack
    import folder_paths

    extra = tmp_path / "elsewhere"
    extra.mkdir()
    shutil.copy(tiny_model.gguf_f16, extra / "mine.gguf")
    folder_paths.reset(folder_paths.models_dir)
    folder_paths.add_model_folder_path("dtg", str(extra))  # as extra_model_paths.yaml does
    choices = mappings["DTGUpsample"].INPUT_TYPES()["required"]["model"][0]
    assert folder_paths.get_folder_paths("dtg") == [str(extra), str(dtg_folder)]
    assert "mine.gguf" in choices and "delta-rev2" in choices and "delta-rev2:hf" in choices
    assert not any(name.startswith("tipo") for name in choices)


def test_root_init_imports_nothing_heavy_and_serves_only_its_comfyui_script(tmp_path):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])\n"
        "from comfy_stub.host import load_custom_node\nfrom pathlib import Path\n"
        "load_custom_node(Path(sys.argv[1]))\n"
        "heavy = ('torch', 'transformers', 'llama_cpp', 'gradio')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy, sys.modules[Path(sys.argv[1]).name].WEB_DIRECTORY)\n"
    )
    env = {**os.environ, "DTG_COMFY_INSTALL": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO_ROOT), str(REPO_ROOT / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    heavy, web = done.stdout.split()
    assert heavy == "[]"
    # What ComfyUI serves to its page: the nodes' text script, none of the webui's javascript/.
    served = sorted(p.name for p in (REPO_ROOT / web).resolve().rglob("*.js"))
    assert served == ["dtg_text.js"]


# --- settings ------------------------------------------------------------------


def test_default_inputs_are_the_engines_defaults(pack):
    from dtg_comfy import inputs

    mappings = pack[0]
    settings = inputs.settings_from(defaults(mappings["DTGUpsample"]))
    assert settings == UpsampleSettings()
    tipo = inputs.settings_from(defaults(mappings["DTGTipo"]))
    assert (tipo.model, tipo.nl_length, tipo.caption) == ("tipo-200m-ft2", "long", False)


def test_custom_format_latent_size_and_bad_values(pack):
    from dtg_comfy import inputs

    given = {"format": ["custom"], "custom_format": ["<|general|> | <|quality|>"]}
    assert inputs.settings_from(given).format == "<|general|> | <|quality|>"
    assert isinstance(inputs.settings_from({"custom_format": "x", "format": "custom"}), DtgError)
    bad = inputs.settings_from({"temperature": ["hot"]})  # a linked input of another type
    assert isinstance(bad, DtgError) and "temperature" in str(bad)

    class Samples:
        shape = (1, 4, 152, 104)

    assert inputs.size_from({"latent": [{"samples": Samples()}], "width": [512]}) == (832, 1216)
    assert inputs.size_from({"width": [640], "height": [768]}) == (640, 768)


def test_is_changed_is_keyed_on_inputs_seed_and_model_file(pack, tiny_model):
    mappings, _, _, dtg_folder = pack
    shutil.copy(tiny_model.gguf_f16, dtg_folder / "m.gguf")
    node = mappings["DTGUpsample"]
    given = {**defaults(node), "model": "m.gguf", "seed": 5}
    key = node.IS_CHANGED(**given)
    assert node.IS_CHANGED(**given) == key
    assert node.IS_CHANGED(**{**given, "seed": 6}) != key
    assert node.IS_CHANGED(**{**given, "prompt": "1boy"}) != key
    shutil.copy(tiny_model.gguf_f32, dtg_folder / "m.gguf")  # the file replaced
    assert node.IS_CHANGED(**given) != key


# --- failures ------------------------------------------------------------------


def test_missing_model_keeps_the_prompt_and_says_why(pack, caplog):
    mappings = pack[0]
    out = run_upsample(mappings, prompt="1girl, solo", model="no-such-model.gguf")
    assert out["result"] == (["1girl, solo"], [""], ["1girl, solo"])
    reason = out["ui"]["text"][0]
    assert reason.startswith("DTG: prompt left unchanged:") and "no-such-model" in reason
    assert any("prompt left unchanged" in record.getMessage() for record in caplog.records)
    with pytest.raises(DtgError, match="no-such-model"):
        run_upsample(mappings, prompt="1girl", model="no-such-model.gguf", strict=True)


def test_corrupt_model_keeps_the_prompt(pack):
    mappings, _, _, dtg_folder = pack
    (dtg_folder / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    out = run_upsample(mappings, prompt="1girl", model="broken.gguf")
    assert out["result"][0] == ["1girl"]
    assert out["ui"]["text"][0].startswith("DTG: prompt left unchanged:")


def test_missing_backend_keeps_the_prompt(pack, dtg_gguf, monkeypatch):
    monkeypatch.setattr(model_selection, "llama_cpp_available", lambda: False)
    monkeypatch.setattr(model_selection, "torch_available", lambda: False)
    out = run_upsample(pack[0], prompt="1girl, smile", model=dtg_gguf)
    assert out["result"][0] == ["1girl, smile"]
    assert "pip install llama-cpp-python" in out["ui"]["text"][0]


# --- runs on the tiny model ---------------------------------------------------------


@pytest.mark.slow
def test_example_workflow_runs_in_dependency_order(pack, dtg_gguf):
    import comfy.utils
    from comfy_stub.host import run_workflow

    mappings = pack[0]
    prompt = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    # Users get the default registry model (a download); the test runs the tiny one. Only
    # the pack's nodes: each shows its own text (ComfyUI's history holds it too).
    assert prompt["1"]["inputs"]["model"] == "delta-rev2"
    assert {node["class_type"] for node in prompt.values()} <= set(mappings)
    prompt["1"]["inputs"]["model"] = dtg_gguf
    done = run_workflow(prompt, mappings)
    (final, new, original), ui = done["1"]
    assert original == ["1girl, solo, long hair, smile"]
    assert new[0] and all(tag in final[0] for tag in new[0].split(", "))
    assert ui == [{"text": [final[0]]}]
    (formatted,), format_ui = done["2"]
    assert format_ui == [{"text": formatted}]
    assert "\n" not in formatted[0] and formatted[0].startswith("1girl, solo")
    assert all(tag in formatted[0] for tag in new[0].split(", "))
    assert comfy.utils.updates and comfy.utils.updates[-1][0] == comfy.utils.updates[-1][1]


def api_from_page_format(workflow, mappings):
    """The API prompt a page-format workflow stands for, as ComfyUI's page sends it: each
    widget's value by input name (a seed's control value follows it), each link as
    [source node, output index]; inputs without widget or link are left out."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        spec = mappings[node["type"]].INPUT_TYPES()
        linked = {i["name"]: i["link"] for i in node["inputs"] if i.get("link") is not None}
        values = iter(node["widgets_values"])
        inputs = {}
        for name, (kind, options) in {**spec["required"], **spec.get("optional", {})}.items():
            if name in linked:
                _, source, slot, *_ = links[linked[name]]
                inputs[name] = [str(source), slot]
            elif (isinstance(kind, list) or kind in WIDGET_KINDS) and "forceInput" not in options:
                inputs[name] = next(values)
                if options.get("control_after_generate"):
                    assert next(values) == "fixed", "the example's seed stays as given"
        assert next(values, None) is None, f"{node['type']} has values left over"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_the_page_template_is_the_api_example(pack):
    """examples/ is what ComfyUI lists under Templates (it loads the page's format only);
    examples/api/ holds the same workflow for POST /prompt."""
    template = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    api = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    assert api_from_page_format(template, pack[0]) == {
        node_id: {"class_type": node["class_type"], "inputs": node["inputs"]}
        for node_id, node in api.items()
    }


@pytest.mark.slow
def test_a_list_of_prompts_expands_together_in_one_call(pack, dtg_gguf):
    mappings, _, made, _ = pack
    prompts = ["1girl, solo", "1boy, outdoors", "cat, no humans"]
    out = run_upsample(mappings, prompt=prompts, seed=[7], model=dtg_gguf, target="short")
    finals, news, originals = out["result"]
    assert originals == prompts and len(finals) == len(news) == 3
    assert made[0].calls == [(prompts, [7, 7, 7])]
    for prompt, final in zip(prompts, finals):
        assert final.startswith(prompt.split(",")[0])


@pytest.mark.slow
def test_lists_pair_item_by_item_and_a_shorter_list_repeats_its_last_value(pack, dtg_gguf):
    mappings, _, made, _ = pack
    prompts = ["1girl, solo", "1boy, outdoors", "cat, no humans"]
    out = run_upsample(mappings, prompt=prompts, seed=[11, 12], model=dtg_gguf, target="short")
    assert made[0].calls == [(prompts, [11, 12, 12])]  # one batch; the last seed repeats
    assert out["result"][2] == prompts
    # One prompt and several seeds: one item per seed, the prompt repeated.
    out = run_upsample(mappings, prompt="1girl", seed=[1, 2, 3], model=dtg_gguf, target="short")
    assert made[0].calls[-1] == (["1girl"] * 3, [1, 2, 3])
    assert len(out["result"][0]) == 3 and len(out["ui"]["text"]) == 3


@pytest.mark.slow
def test_a_setting_given_per_item_splits_the_batch_and_keeps_the_order(pack, dtg_gguf):
    mappings, _, made, _ = pack
    prompts = ["1girl, solo", "1boy, outdoors", "cat, no humans"]
    out = run_upsample(
        mappings, prompt=prompts, seed=[5], model=dtg_gguf, target=["very_short", "long"]
    )
    finals, news, originals = out["result"]
    # Items 2 and 3 share "long" (the last target repeats), so they expand together.
    assert made[0].calls == [([prompts[0]], [5]), (prompts[1:], [5, 5])]
    assert originals == prompts
    for prompt, final in zip(prompts, finals):
        assert final.startswith(prompt.split(",")[0])
    assert len(news[0].split(", ")) < len(news[1].split(", "))


def test_an_empty_list_of_prompts_expands_nothing(pack):
    mappings = pack[0]
    node = mappings["DTGUpsample"]
    values = {k: [v] for k, v in defaults(node).items()}
    out = node().expand(**{**values, "prompt": []})
    assert out["result"] == ([], [], [])
    assert "nothing to expand" in out["ui"]["text"][0]
    assert pack[2] == [] or all(not engine.calls for engine in pack[2])


def test_budget_and_gen_meta_inputs_reach_the_settings(pack):
    mappings = pack[0]
    from dtg_comfy import inputs

    assert "budget" in mappings["DTGUpsample"].INPUT_TYPES()["optional"]
    tipo_optional = mappings["DTGTipo"].INPUT_TYPES()["optional"]
    assert {"budget", "gen_meta"} <= set(tipo_optional)
    assert inputs.settings_from({"budget": ["chunks:1"]}).budget == "chunks:1"
    assert inputs.settings_from({}).budget == UpsampleSettings.budget
    tipo = inputs.settings_from({"nl_length": ["short"], "gen_meta": [True]})
    assert tipo.gen_meta is True and tipo.nl_length == "short"
    assert isinstance(inputs.settings_from({"budget": ["chunks:x"]}), DtgError)


@pytest.mark.slow
def test_a_chunk_budget_keeps_the_final_prompt_in_one_chunk(pack, dtg_gguf):
    from dtg_lib import budget
    from dtg_lib.clip_tokens import ClipVocabularyMissing

    try:
        budget.require_vocabulary("chunks:1")
    except ClipVocabularyMissing as missing:
        pytest.skip(str(missing))

    mappings = pack[0]
    prompt = ", ".join(f"tag{i}" for i in range(20))  # about 60 of the 75 tokens
    given = dict(prompt=prompt, seed=4, model=dtg_gguf, target="very_long")
    unbounded = run_upsample(mappings, **given)["result"][0][0]
    bounded = run_upsample(mappings, budget="chunks:1", **given)["result"][0][0]
    assert budget.count(unbounded).tokens > 75  # without the budget it spills over
    assert budget.count(bounded).tokens <= 75 and bounded.startswith(prompt)


@pytest.mark.slow
def test_a_bad_item_keeps_its_prompt_and_the_others_still_expand(pack, dtg_gguf):
    mappings = pack[0]
    prompts = ["1girl, solo", "1boy, outdoors"]
    out = run_upsample(
        mappings, prompt=prompts, model=[dtg_gguf, "no-such-model.gguf"], target="short"
    )
    finals, news, _ = out["result"]
    assert news[0] and finals[0] != prompts[0]
    assert finals[1] == prompts[1] and news[1] == ""
    reason, *shown = out["ui"]["text"]
    assert reason.startswith("DTG: prompt left unchanged:") and "no-such-model" in reason
    assert shown == finals


@pytest.mark.slow
def test_comfyui_unload_request_frees_the_model(pack, dtg_gguf):
    import comfy.model_management as model_management

    mappings, _, made, _ = pack
    run_upsample(mappings, prompt="1girl", model=dtg_gguf, target="very_short")
    assert made[0].backends._backend is not None
    model_management.unload_all_models()
    model_management.unload_all_models()
    assert made[0].unloads == 2 and made[0].backends._backend is None
    assert model_management.unloads == ["comfy", "comfy"]  # ComfyUI's own still runs


@pytest.mark.slow
def test_cancel_in_comfyui_stops_the_node_with_its_own_exception(pack, dtg_gguf):
    import comfy.model_management as model_management

    model_management.interrupt_current_processing(True)
    with pytest.raises(model_management.InterruptProcessingException):
        run_upsample(pack[0], prompt="1girl", model=dtg_gguf)
    assert not model_management.processing_interrupted()


def _interrupt_when(condition):
    """A progress hook as ComfyUI's server sets one: it raises the interrupt once it is
    set; this one also presses Cancel when `condition(value, total)` holds."""
    import comfy.model_management as model_management
    import comfy.utils

    seen = []

    def hook(value, total, preview):
        seen.append((value, total))
        if condition(value, total):
            model_management.interrupt_current_processing(True)
        model_management.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(hook)
    return seen


@pytest.mark.slow
def test_cancel_during_the_expansion_stops_it_after_the_round_running(pack, dtg_gguf):
    import comfy.model_management as model_management

    mappings, _, made, _ = pack
    rounds_total = UpsampleSettings().max_rounds
    seen = _interrupt_when(lambda value, total: total == rounds_total and value >= 1)
    with pytest.raises(model_management.InterruptProcessingException):
        run_upsample(mappings, prompt="1girl", model=dtg_gguf, target="very_long", seed=3)
    rounds = [value for value, total in seen if total == rounds_total]
    assert rounds == [1], "stopped at the first check after round 1"
    assert not model_management.processing_interrupted()
    # The model stays loaded and the next run goes through.
    _interrupt_when(lambda value, total: False)
    out = run_upsample(mappings, prompt="1girl", model=dtg_gguf, target="short", seed=3)
    assert out["result"][1][0] and len(made) == 1


@pytest.mark.slow
def test_cancel_pressed_at_the_last_step_still_stops_the_workflow(pack, dtg_gguf):
    import comfy.model_management as model_management

    rounds_total = UpsampleSettings().max_rounds
    seen = _interrupt_when(lambda value, total: (value, total) == (rounds_total, rounds_total))
    with pytest.raises(model_management.InterruptProcessingException):
        run_upsample(pack[0], prompt="1girl", model=dtg_gguf, target="very_short", seed=3)
    assert seen[-1] == (rounds_total, rounds_total)


@pytest.mark.slow
def test_tipo_node_writes_tags_and_sentences(pack, tiny_tipo_model):
    pytest.importorskip("llama_cpp")
    mappings, _, _, dtg_folder = pack
    shutil.copy(tiny_tipo_model.gguf_f16, dtg_folder / "tiny-tipo-f16.gguf")
    node = mappings["DTGTipo"]
    assert "tiny-tipo-f16.gguf" in node.INPUT_TYPES()["required"]["model"][0]
    values = {
        **defaults(node),
        "prompt": "1girl, solo",
        "nl_prompt": "a girl in a garden",
        "model": "tiny-tipo-f16.gguf",
        "seed": 3,
    }
    out = node().expand(**{k: [v] for k, v in values.items()})
    final, _, sentences, original = out["result"]
    assert original == ["1girl, solo"] and final[0].startswith("1girl")
    assert sentences[0].startswith("a girl in a garden")
    assert "a girl in a garden" in final[0] and sentences[0] != "a girl in a garden"


# --- install ---------------------------------------------------------------------


def test_first_start_reuses_install_py_with_prebuilt_wheels_only(monkeypatch):
    from dtg_comfy import first_start

    script = first_start.load_install_script()
    seen = []
    monkeypatch.setattr(first_start, "load_install_script", lambda: script)
    monkeypatch.setattr(script, "write_constraints", lambda: None)
    monkeypatch.setattr(script.Installer, "ensure", lambda self, requirement: True)
    monkeypatch.setattr(script, "_install_llama", lambda *a, **k: seen.append(k.get("build")))
    first_start.install_missing({"DTG_COMFY_INSTALL": "0"})
    first_start.install_missing({"DTG_LLAMA_CPP": "skip"})
    assert seen == []
    first_start.install_missing({})
    assert seen == [False]  # never a source build at start-up
    steps = script.llama_steps(script.this_machine(), "auto", build=False)
    assert not any("--no-binary" in step.args for step in steps)


def test_sampling_inputs_stay_inside_the_engines_limits(pack):
    from dtg_lib.settings import SamplingSettings

    required = pack[0]["DTGUpsample"].INPUT_TYPES()["required"]
    for name in ("temperature", "top_p", "top_k", "min_p"):
        options = required[name][1]
        SamplingSettings(**{name: options["min"]})
        SamplingSettings(**{name: options["max"]})

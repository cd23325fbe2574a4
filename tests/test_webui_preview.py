"""The panel's Preview (handler and wiring), the install notice, and javascript/dtg.js."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_webui_script import on, webui  # noqa: F401 (webui is the fixture)
from webui_fakes import ResultEngine

from dtg_webui import engine, install_status, preview_ui

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "javascript" / "dtg.js"


@pytest.fixture
def fake(webui):  # noqa: F811
    made = ResultEngine()
    engine.set_factory(lambda model_dir, embeddings: made)
    return made


def _final(html: str) -> str:
    match = re.search(r'<pre class="dtg-preview-final"[^>]*>(.*?)</pre>', html, re.S)
    assert match, html
    return match.group(1)


def test_preview_expands_with_panel_values_and_seed(fake):
    html = preview_ui.run_preview("1girl, solo", 10, 832, 1216, [], *on(dtg_seed=5, target="short"))
    (call,) = fake.calls
    assert call["prompts"] == ["1girl, solo"] and call["seeds"] == [5]
    assert call["size"] == (832, 1216) and call["settings"].target == "short"
    assert _final(html) == "1girl, solo, dtg 5, smile"
    assert 'class="dtg-preview"' in html, "the engine's coloured rendering"
    assert "2 rounds" in html and "0.25 s" in html
    assert "image seed 10" in html


def test_random_image_seed_is_fixed_and_shown(fake):
    html = preview_ui.run_preview("1girl", -1, 1024, 1024, [], *on())
    (seed,) = fake.calls[0]["seeds"]
    assert seed != -1 and f"image seed {seed}" in html


def test_preview_runs_even_with_the_panel_off(fake):
    args = on()
    args[0] = False
    preview_ui.run_preview("1girl", 1, 1024, 1024, [], *args)
    assert len(fake.calls) == 1


def test_empty_prompt_asks_for_one(fake):
    html = preview_ui.run_preview("  ", 1, 1024, 1024, [], *on())
    assert "prompt box is empty" in html and fake.calls == []


def test_invalid_settings_are_shown(fake):
    html = preview_ui.run_preview("1girl", 1, 1024, 1024, [], *on(temperature=0.0))
    assert "Invalid settings" in html and fake.calls == []


def test_engine_failure_is_shown_escaped(fake):
    fake.fail = RuntimeError("no <model> here")
    html = preview_ui.run_preview("1girl", 1, 1024, 1024, [], *on())
    assert "Preview failed: RuntimeError: no &lt;model&gt; here" in html


def test_prompt_text_is_escaped(fake):
    html = preview_ui.run_preview("<b>1girl</b>", 1, 1024, 1024, [], *on())
    assert "<b>" not in _final(html) and "&lt;b&gt;1girl&lt;/b&gt;" in _final(html)


def test_bad_size_falls_back(fake):
    preview_ui.run_preview("1girl", 1, None, "x", [], *on())
    assert fake.calls[0]["size"] == (1024, 1024)


@pytest.mark.parametrize(
    ("elem_id", "field"),
    [
        ("txt2img_prompt", "prompt"),
        ("img2img_seed", "seed"),
        ("txt2img_width", "width"),
        ("txt2img_neg_prompt", None),
        ("extras_prompt", None),
        (None, None),
    ],
)
def test_host_fields(elem_id, field):
    assert preview_ui.host_field(elem_id) == field


class FakeButton:
    def __init__(self) -> None:
        self.clicks: list[dict] = []

    def click(self, **kwargs) -> None:
        self.clicks.append(kwargs)


def test_wired_once_with_every_host_box():
    pytest.importorskip("gradio")  # the wiring imports it, as its neighbours do
    wiring = preview_ui.PreviewWiring()
    button, copy, output, state, panel = FakeButton(), FakeButton(), "out", "state", ["a", "b"]
    for name, _ in preview_ui.HOST_INPUTS:
        wiring.saw_component(f"<{name}>", f"txt2img_{name}")
    wiring.set_controls(button, output, panel, copy, state)
    wiring.saw_component("<late>", "txt2img_prompt")  # nothing wires twice
    (click,) = button.clicks
    assert click["fn"] is preview_ui.preview and click["outputs"] == [output, state]
    assert click["inputs"] == [f"<{n}>" for n, _ in preview_ui.HOST_INPUTS] + panel
    (copied,) = copy.clicks
    assert copied["fn"] is preview_ui.styles_after_copy
    assert copied["inputs"] == [state, "<styles>"] and copied["outputs"] == ["<styles>"]


def test_wired_at_the_prompt_box_when_the_panel_comes_first(monkeypatch):
    gr = pytest.importorskip("gradio")
    monkeypatch.setattr(gr, "State", lambda value: ("state", value))
    wiring = preview_ui.PreviewWiring()
    button, copy = FakeButton(), FakeButton()
    wiring.set_controls(button, "out", ["a"], copy, "state")
    wiring.saw_component("<prompt>", "txt2img_prompt")
    (click,) = button.clicks
    assert click["inputs"][0] == "<prompt>" and click["inputs"][-1] == "a"
    assert ("state", ()) in click["inputs"], "the styles box not seen yet: no styles"
    assert copy.clicks == [], "no styles box to clear"


def test_no_prompt_box_no_wiring():
    wiring = preview_ui.PreviewWiring()
    button = FakeButton()
    wiring.set_controls(button, object(), [], FakeButton(), object())
    wiring.saw_component(object(), "txt2img_seed")
    assert button.clicks == [] and not wiring.wired


@pytest.mark.parametrize(("applied", "after"), [(True, []), (False, ["q"]), (None, ["q"])])
def test_use_in_prompt_clears_the_styles_only_when_the_text_holds_them(applied, after):
    assert preview_ui.styles_after_copy(applied, ["q"]) == after


def test_ui_wires_preview_to_the_prompt_box(webui):  # noqa: F811
    gr = pytest.importorskip("gradio")
    with gr.Blocks():
        prompt = gr.Textbox(elem_id="txt2img_prompt")
        webui.script.after_component(prompt, elem_id="txt2img_prompt")
        components = webui.script.ui(False)
    assert webui.script.preview.wired
    button, output, panel, copy, _ = webui.script.preview.controls
    assert button.elem_id == "dtg-txt2img-preview-run"
    assert copy.elem_id == "dtg-txt2img-copy"
    assert output.elem_id == "dtg-txt2img-preview"
    assert panel == components


def test_install_notice(tmp_path, monkeypatch):
    path = tmp_path / "status.json"
    assert install_status.install_notice(path) is None
    path.write_text(json.dumps({"llama_cpp": False, "message": "could not install it"}))
    monkeypatch.setattr(install_status, "_llama_present", lambda: False)
    assert install_status.install_notice(path) == "could not install it"
    monkeypatch.setattr(install_status, "_llama_present", lambda: True)
    assert install_status.install_notice(path) is None, "installed by hand since"
    path.write_text("{broken")
    assert install_status.install_notice(path) is None


def test_panel_shows_the_install_notice(webui, tmp_path, monkeypatch):  # noqa: F811
    gr = pytest.importorskip("gradio")
    path = tmp_path / "status.json"
    path.write_text(json.dumps({"llama_cpp": False, "message": "no <llama>"}))
    monkeypatch.setattr(install_status, "STATUS_FILE", path)
    monkeypatch.setattr(install_status, "_llama_present", lambda: False)
    with gr.Blocks() as blocks:
        webui.script.ui(False)
    html = [b.value for b in blocks.blocks.values() if isinstance(b, gr.HTML)]
    assert any("no &lt;llama&gt;" in (value or "") for value in html)


# --- javascript/dtg.js ------------------------------------------------------------

NODE = shutil.which("node")
# A page reduced to what dtg.js touches: elements found by id, closest() and querySelector().
HARNESS = r"""
const fs = require("fs"), vm = require("vm");
function el(id, extra) { return Object.assign({id, parent: null, closest(sel) {
    for (let e = this; e; e = e.parent) { if (e.id && e.id.startsWith("dtg-")) return e; }
    return null; }, querySelector() { return null; }}, extra || {}); }
const textarea = {value: "old"};
const finalEl = {textContent: "1girl, new tag"};
const els = {
  "dtg-txt2img-copy": el("dtg-txt2img-copy"),
  "dtg-txt2img-preview": el("dtg-txt2img-preview", {querySelector: () => finalEl}),
  "txt2img_prompt": el("txt2img_prompt", {querySelector: () => textarea}),
  "dtg-img2img-copy": el("dtg-img2img-copy"),
};
const icon = el(""); icon.parent = els["dtg-txt2img-copy"];
let listener = null, updated = [];
const root = {getElementById: (id) => els[id] || null,
              addEventListener: (type, fn) => { listener = fn; }};
const ctx = {window: {}, document: root, gradioApp: () => root,
             onUiLoaded: (fn) => fn(), updateInput: (e) => updated.push(e)};
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx);
listener({target: icon});
const copied = textarea.value === "1girl, new tag" && updated.length === 1;
listener({target: els["dtg-img2img-copy"]});   // no preview, no prompt box on that tab
listener({target: el("txt2img_generate")});    // not ours
listener({target: null});
const untouched = updated.length === 1;
console.log(JSON.stringify({copied, untouched}));
"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_js_parses():
    subprocess.run([NODE, "--check", str(JS)], check=True, capture_output=True)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_js_copies_into_the_prompt_box_and_ignores_the_rest(tmp_path):
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    done = subprocess.run(
        [NODE, str(harness), str(JS)], check=True, capture_output=True, text=True, timeout=30
    )
    assert json.loads(done.stdout) == {"copied": True, "untouched": True}


def test_js_selects_only_our_elements():
    text = JS.read_text(encoding="utf-8")
    selectors = re.findall(r"(?:byId|querySelector(?:All)?|closest)\(([^)]*)\)", text)
    for selector in selectors:
        literal = re.findall(r'"([^"]*)"', selector) + re.findall(r"'([^']*)'", selector)
        for part in literal:
            # "#" + id is byId's fallback; tab + "_prompt" is the one foreign box it writes.
            allowed = ("dtg-", ".dtg-", "[id^='dtg-'", "-", "_prompt", "textarea", "#")
            assert part.startswith(allowed) or part == "", part

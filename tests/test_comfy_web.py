"""The pack's ComfyUI page script (dtg_comfy/web/dtg_text.js), run in Node against a
stand-in of the two page modules it imports, laid out as ComfyUI serves them
(/extensions/<pack>/dtg_text.js imports /scripts/app.js and /scripts/widgets.js)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "dtg_comfy" / "web" / "dtg_text.js"

APP = """
export const app = {
  extensions: [],
  registerExtension(extension) { this.extensions.push(extension); },
};
"""
# ComfyWidgets.STRING as ComfyUI's page has it: adds a widget to the node, returns it.
WIDGETS = """
export const ComfyWidgets = {
  STRING(node, name, inputData, app) {
    const widget = { name, value: "", options: { multiline: inputData[1].multiline },
                     element: { readOnly: false, style: {} } };
    (node.widgets ??= []).push(widget);
    return { widget };
  },
};
"""
RUN = """
import { app } from "./scripts/app.js";
await import("./extensions/dtg/dtg_text.js");
const report = {};
for (const name of ["DTGUpsample", "DTGTipo", "DTGFormat", "KSampler"]) {
  const calls = [];
  class Node {
    constructor() { this.widgets = [{ name: "prompt", value: "1girl" }]; this.size = [300, 100]; }
    onExecuted(message) { calls.push(message); }
    computeSize() { return [200, 100 + 60 * this.widgets.length]; }
    setSize(size) { this.size = size; }
  }
  for (const extension of app.extensions) await extension.beforeRegisterNodeDef?.(Node, { name });
  const node = new Node();
  node.onExecuted({ text: ["DTG: a notice", "1girl, solo, smile"] });
  const first = node.widgets.at(-1).value;
  node.onExecuted({ text: ["1girl, solo, blush"] });
  const shown = node.widgets.filter((widget) => widget.name !== "prompt");
  report[name] = { first, calls: calls.length, size: node.size, widgets: shown.map((widget) => ({
    value: widget.value, readOnly: widget.element.readOnly, serialize: widget.serialize,
    sent: widget.options.serialize, multiline: widget.options.multiline })) };
}
console.log(JSON.stringify({ names: app.extensions.map((e) => e.name), report }));
"""


@pytest.fixture
def page(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    (tmp_path / "package.json").write_text('{"type": "module"}', encoding="utf-8")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(APP, encoding="utf-8")
    (tmp_path / "scripts" / "widgets.js").write_text(WIDGETS, encoding="utf-8")
    (tmp_path / "extensions" / "dtg").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp_path / "extensions" / "dtg" / "dtg_text.js")
    (tmp_path / "run.js").write_text(RUN, encoding="utf-8")
    done = subprocess.run(
        [node, "run.js"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_each_pack_node_shows_its_latest_text_read_only_and_unsent(page):
    assert len(page["names"]) == 1
    for name in ("DTGUpsample", "DTGTipo", "DTGFormat"):
        shown = page["report"][name]
        assert shown["calls"] == 2, "the node's own onExecuted still runs"
        assert shown["first"] == "DTG: a notice\n\n1girl, solo, smile"
        assert shown["widgets"] == [
            {
                "value": "1girl, solo, blush",
                "readOnly": True,
                "serialize": False,
                "sent": False,
                "multiline": True,
            }
        ], "one box, holding the latest run's text only"
        assert shown["size"][1] == 100 + 60 * 2, "grown once for the box, not at every run"


def test_other_nodes_are_left_alone(page):
    assert page["report"]["KSampler"]["widgets"] == []
    assert page["report"]["KSampler"]["first"] == "1girl"


def test_the_script_names_every_node_of_the_pack():
    from dtg_comfy.nodes import NODE_CLASS_MAPPINGS

    text = SCRIPT.read_text(encoding="utf-8")
    declared = text.split("TEXT_NODES = [", 1)[1].split("]", 1)[0]
    assert sorted(json.loads(f"[{declared}]")) == sorted(NODE_CLASS_MAPPINGS)

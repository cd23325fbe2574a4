// Shows what a DanTagGen node returned ({"ui": {"text": [...]}}) on the node itself:
// ComfyUI's page does not show a node's text output by itself. Served by ComfyUI from the
// pack's WEB_DIRECTORY (the root __init__.py); the webui never loads this folder.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

// The pack's node classes that return text (NODE_CLASS_MAPPINGS in dtg_comfy/nodes.py).
const TEXT_NODES = ["DTGUpsample", "DTGTipo", "DTGFormat"];
const WIDGET_NAME = "dtg_text";
const SEPARATOR = "\n\n";

function shownText(message) {
  const text = message?.text;
  if (Array.isArray(text)) return text.join(SEPARATOR);
  return text == null ? "" : String(text);
}

// A read-only multi-line box, added once per node; never sent with the prompt nor saved
// with the workflow, so the node's inputs and its cache key stay its own.
function textWidget(node) {
  const known = node.widgets?.find((widget) => widget.name === WIDGET_NAME);
  if (known) return known;
  const options = ["STRING", { multiline: true }];
  const widget = ComfyWidgets.STRING(node, WIDGET_NAME, options, app).widget;
  const element = widget.element ?? widget.inputEl;
  if (element) {
    element.readOnly = true;
    element.style.opacity = "0.85";
  }
  widget.label = "DTG result";
  widget.serialize = false;
  widget.options = { ...widget.options, serialize: false, read_only: true };
  return widget;
}

// The box shares the node's free height with the other text boxes: a new box gets room
// for a few lines of its own; later runs keep the size the user gave the node.
const NEW_BOX_ROOM = 100;

function fitHeight(node, roomToAdd) {
  const wanted = node.computeSize();
  const height = Math.max(node.size[1] + roomToAdd, wanted[1]);
  node.setSize([Math.max(node.size[0], wanted[0]), height]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "DanTagGen.NodeText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.includes(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const isNew = !this.widgets?.some((widget) => widget.name === WIDGET_NAME);
      textWidget(this).value = shownText(message);
      fitHeight(this, isNew ? NEW_BOX_ROOM : 0);
    };
  },
});

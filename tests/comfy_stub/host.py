"""How ComfyUI loads a custom node folder and runs a workflow, in small.

`load_custom_node`: import the folder's __init__.py as a module named after the folder
(nodes.py load_custom_node) and read NODE_CLASS_MAPPINGS. `run_workflow`: an API-format
prompt ({"id": {"class_type", "inputs"}}) executed in dependency order (execution.py):
a link is [node id, output index]; a node with INPUT_IS_LIST gets every input as a list,
any other is called once per item of its longest list input (shorter lists repeat their
last item); OUTPUT_IS_LIST outputs are joined, others collected one per call.
"""

import importlib.util
import sys
from pathlib import Path


def load_custom_node(folder: Path):
    name = folder.name
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.NODE_CLASS_MAPPINGS, getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {})


def input_values(inputs, outputs):
    """Each input as a list: a literal as [value], a link as the output it names."""
    return {
        name: outputs[value[0]][value[1]] if _is_link(value) else [value]
        for name, value in inputs.items()
    }


def map_over_lists(node_class, values, method):
    function = getattr(node_class(), method) if method != "IS_CHANGED" else node_class.IS_CHANGED
    if getattr(node_class, "INPUT_IS_LIST", False):
        return [function(**values)]
    length = max((len(v) for v in values.values()), default=1)
    return [
        function(**{k: v[min(i, len(v) - 1)] for k, v in values.items() if v})
        for i in range(length)
    ]


def run_node(node_class, values):
    """(outputs as lists, ui dicts)."""
    returned = map_over_lists(node_class, values, node_class.FUNCTION)
    count = len(node_class.RETURN_TYPES)
    is_list = getattr(node_class, "OUTPUT_IS_LIST", (False,) * count)
    outputs = [[] for _ in range(count)]
    uis = []
    for one in returned:
        if isinstance(one, dict):
            uis.append(one.get("ui", {}))
            one = one["result"]
        for index, value in enumerate(one):
            outputs[index].extend(value) if is_list[index] else outputs[index].append(value)
    return outputs, uis


def run_workflow(prompt, mappings):
    """{node id: (outputs, ui dicts)}, each node run after the nodes it links to."""
    done = {}
    outputs = {}
    for node_id in _order(prompt):
        node = prompt[node_id]
        node_class = mappings[node["class_type"]]
        outputs[node_id], uis = run_node(node_class, input_values(node["inputs"], outputs))
        done[node_id] = (outputs[node_id], uis)
    return done


def _is_link(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _order(prompt):
    ordered = []

    def visit(node_id, seen=()):
        if node_id in ordered:
            return
        if node_id in seen:
            raise ValueError(f"cycle at node {node_id}")
        for value in prompt[node_id]["inputs"].values():
            if _is_link(value):
                visit(value[0], (*seen, node_id))
        ordered.append(node_id)

    for node_id in prompt:
        visit(node_id)
    return ordered

"""How `/sdapi/v1/txt2img` and `img2img` turn `alwayson_scripts` into a job's script args.

As webui 1.10 and Forge do it: every script's positions first hold the values of the
components its `ui()` returns (built inside a `gr.Blocks`); then each named always-on
script's request `args` are copied into its positions one value per position, from
`args_from`, for as many values as both the request and the script have. A value is
copied as it is, whatever it is (a JSON object lands in one position whole); positions
the request does not reach keep the UI's values. The job then gets them as
`p.script_args`, and each hook receives its script's slice.
"""

from __future__ import annotations

from typing import Any


class ApiError(ValueError):
    """What the host answers with HTTP 422."""


def init_default_script_args(script_runner: Any) -> list[Any]:
    import gradio as gr

    last = max([1, *(script.args_to for script in script_runner.alwayson_scripts)])
    script_args: list[Any] = [None] * last
    with gr.Blocks():  # the host builds the components again, only to read their values
        for script in script_runner.alwayson_scripts:
            components = script.ui(script.is_img2img)
            if components:
                script_args[script.args_from : script.args_to] = [c.value for c in components]
    return script_args


def init_script_args(
    alwayson_scripts: dict[str, Any] | None, default_script_args: list[Any], script_runner: Any
) -> list[Any]:
    script_args = list(default_script_args)
    for name, entry in (alwayson_scripts or {}).items():
        script = get_script(name, script_runner)
        if "args" not in entry:
            continue
        given = entry["args"]
        for index in range(min(script.args_to - script.args_from, len(given))):
            script_args[script.args_from + index] = given[index]
    return script_args


def get_script(name: str, script_runner: Any) -> Any:
    """By title, ignoring case, as the host looks a script up."""
    for script in script_runner.alwayson_scripts:
        if script.title().lower() == name.lower():
            return script
    raise ApiError(f"always on script {name} not found")

"""The Settings page's part that builds one setting's field, as the host does."""

from __future__ import annotations

from typing import Any

from modules import ui_common
from modules.shared import opts


def create_setting_component(key: str) -> Any:
    """The field for `key`: its component (or one chosen by the default's type) called with
    label, value, elem_id and the component args; a refresh button where `refresh` is set."""
    import gradio as gr

    info = opts.data_labels[key]
    args = info.component_args() if callable(info.component_args) else info.component_args
    if info.component is not None:
        component = info.component
    else:
        component = {str: gr.Textbox, int: gr.Number, bool: gr.Checkbox}[type(info.default)]
    elem_id = f"setting_{key}"
    made = component(label=info.label, value=getattr(opts, key), elem_id=elem_id, **(args or {}))
    if info.refresh is not None:
        ui_common.create_refresh_button(made, info.refresh, info.component_args, f"refresh_{key}")
    return made


def get_value_for_setting(key: str) -> Any:
    """What each page load sends to the field: its value and its args, read again."""
    import gradio as gr

    info = opts.data_labels[key]
    args = info.component_args() if callable(info.component_args) else info.component_args or {}
    args = {k: v for k, v in args.items() if k not in {"precision"}}
    return gr.update(value=getattr(opts, key), **args)

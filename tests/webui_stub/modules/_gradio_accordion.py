"""The gradio-backed `InputAccordion` of the stand-in.

A module of its own, with the class at top level: gradio 4 reads a
component class's source when the class is created, and cannot read one
defined inside an `if` block.
"""

from __future__ import annotations

from typing import Any

import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value: bool, **kwargs: Any) -> None:
        label = kwargs.get("label", "")
        super().__init__(value=value, **kwargs)
        self.accordion = gr.Accordion(label, open=bool(value))

    def __enter__(self) -> InputAccordion:
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.accordion.__exit__(*exc)


class ToolButton(gr.Button):
    """The webui's small one-emoji button (modules.ui_components.ToolButton)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        classes = kwargs.pop("elem_classes", [])
        super().__init__(*args, elem_classes=["tool", *classes], **kwargs)

"""`InputAccordion`: a checkbox that is also an accordion.

With gradio installed it is a real gradio Checkbox whose `with` block opens an
Accordion, enough to build the script's UI; without gradio, a plain value holder.
"""

from __future__ import annotations

from typing import Any

try:
    import gradio as gr
except ImportError:
    gr = None


if gr is not None:

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

else:

    class InputAccordion:  # type: ignore[no-redef]
        def __init__(self, value: bool, **kwargs: Any) -> None:
            self.value = value
            self.kwargs = kwargs

        def __enter__(self) -> InputAccordion:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

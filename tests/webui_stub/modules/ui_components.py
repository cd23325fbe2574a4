"""`InputAccordion`: a checkbox that is also an accordion; `ToolButton`: a small emoji button.

With gradio installed it is a real gradio Checkbox whose `with` block opens an
Accordion, enough to build the script's UI; without gradio, a plain value holder.
"""

from __future__ import annotations

import importlib.util
from typing import Any

if importlib.util.find_spec("gradio") is not None:
    from modules._gradio_accordion import InputAccordion, ToolButton
else:

    class InputAccordion:  # type: ignore[no-redef]
        def __init__(self, value: bool, **kwargs: Any) -> None:
            self.value = value
            self.kwargs = kwargs

        def __enter__(self) -> InputAccordion:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    class ToolButton:  # type: ignore[no-redef]
        def __init__(self, value: str = "", **kwargs: Any) -> None:
            self.value = value
            self.kwargs = kwargs

        def click(self, *args: Any, **kwargs: Any) -> None:
            return None

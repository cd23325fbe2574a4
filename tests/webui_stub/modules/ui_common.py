"""`create_refresh_button`: what a setting's refresh button does when pressed."""

from __future__ import annotations

from typing import Any

# elem_id -> the button's click handler, so tests can press it.
refresh_buttons: dict[str, Any] = {}


def create_refresh_button(component: Any, refresh_method: Any, refreshed_args: Any, elem_id: str):
    """As the host does: call `refresh_method`, read the args again (calling them when they
    are a callable), set them on the component and send them to the page in a gr.update()."""
    import gradio as gr

    def refresh() -> Any:
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        for key, value in args.items():
            setattr(component, key, value)
        return gr.update(**(args or {}))

    refresh_buttons[elem_id] = refresh
    return refresh

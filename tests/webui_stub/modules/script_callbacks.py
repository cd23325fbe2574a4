"""The callback lists the script registers with, and the calls the host makes on them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_ui_settings: list[Callable[[], None]] = []
_infotext_pasted: list[Callable[[str, dict[str, Any]], None]] = []
_app_started: list[Callable[[Any, Any], None]] = []
_before_ui: list[Callable[[], None]] = []


def on_ui_settings(callback: Callable[[], None]) -> None:
    _ui_settings.append(callback)


def on_infotext_pasted(callback: Callable[[str, dict[str, Any]], None]) -> None:
    _infotext_pasted.append(callback)


def on_app_started(callback: Callable[[Any, Any], None]) -> None:
    """Called with the gradio Blocks (None when API-only) and the FastAPI app."""
    _app_started.append(callback)


def on_before_ui(callback: Callable[[], None]) -> None:
    _before_ui.append(callback)


def ui_settings_callback() -> None:
    for callback in _ui_settings:
        callback()


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    for callback in _infotext_pasted:
        callback(infotext, params)


def app_started_callback(demo: Any, app: Any) -> None:
    for callback in _app_started:
        callback(demo, app)


def before_ui_callback() -> None:
    for callback in _before_ui:
        callback()


def clear_callbacks() -> None:
    for callbacks in (_ui_settings, _infotext_pasted, _app_started, _before_ui):
        callbacks.clear()

"""The two callback lists the script registers with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_ui_settings: list[Callable[[], None]] = []
_infotext_pasted: list[Callable[[str, dict[str, Any]], None]] = []


def on_ui_settings(callback: Callable[[], None]) -> None:
    _ui_settings.append(callback)


def on_infotext_pasted(callback: Callable[[str, dict[str, Any]], None]) -> None:
    _infotext_pasted.append(callback)


def ui_settings_callback() -> None:
    for callback in _ui_settings:
        callback()


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    for callback in _infotext_pasted:
        callback(infotext, params)


def clear_callbacks() -> None:
    _ui_settings.clear()
    _infotext_pasted.clear()

"""DanTagGen axes for the webui's X/Y/Z plot script.

The X/Y/Z script copies the job once per cell and calls each axis's `apply(p, value,
values)` on the copy; ours record the value in `p.dtg_overrides`, which the hooks
lay over the panel's values (`apply_overrides`). An axis also turns DTG on for the
cell: plotting a DTG value with DTG off would draw identical images.

The script is found the way other extensions find it: among the loaded scripts, by
its file name, at `before_ui` (its axis list is read when its UI is built). Without
it, nothing happens.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtg_lib.settings import TARGETS

from . import host, tipo_panel
from .args import ScriptArgs

log = logging.getLogger("dtg")

OVERRIDES_ATTR = "dtg_overrides"
XYZ_FILES = ("xyz_grid.py", "xy_grid.py")


@dataclass(frozen=True)
class Axis:
    label: str
    field: str  # a ScriptArgs field
    kind: type
    choices: Callable[[], list[str]] | None = None
    # The X/Y/Z script varies costly axes slowest (as it does its checkpoint axis), so a
    # model is loaded once per value, not once per cell.
    cost: float = 0.0


AXES: tuple[Axis, ...] = (
    Axis("[DTG] Target length", "target", str, lambda: list(TARGETS)),
    Axis("[DTG] Temperature", "temperature", float),
    Axis("[DTG] Top p", "top_p", float),
    Axis("[DTG] Seed", "dtg_seed", int),
    # TIPO models: the sentences' length (a DTG model ignores it, so its cells match).
    Axis("[DTG] NL length", "nl_length", str, lambda: list(TARGETS)),
    # DTG and TIPO models side by side; a TIPO cell reads the panel's natural-language
    # prompt when the panel shows it (its own model is TIPO), a DTG cell never does
    # (tipo_panel.nl_prompt_for). The choices are the panel dropdown's (registry names,
    # the model folder's files), read again at each asking.
    Axis("[DTG] Model", "model", str, lambda: host.model_choices(), cost=1.0),
)


def apply_overrides(p: Any, args: ScriptArgs) -> ScriptArgs:
    """The panel's values with this job's X/Y/Z values laid over them."""
    overrides = getattr(p, OVERRIDES_ATTR, None)
    if not overrides:
        return args
    if "model" in overrides and not tipo_panel.is_tipo(args.model):
        # The panel hides its natural-language box for a DTG model: what stays in the
        # hidden box is not read, by a TIPO cell of a Model axis either.
        overrides = {**overrides, "nl_prompt": ""}
    return dataclasses.replace(args, enabled=True, **overrides)


def make_apply(field: str) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, value: Any, _values: Any) -> None:
        # A new dict each time: the X/Y/Z script shallow-copies `p` per cell, so
        # mutating a shared dict would leak one cell's value into the next.
        current = getattr(p, OVERRIDES_ATTR, None) or {}
        setattr(p, OVERRIDES_ATTR, {**current, field: value})

    return apply


def find_xyz_module(scripts_data: Iterable[Any]) -> Any | None:
    """The loaded X/Y/Z plot module, or None (script disabled, renamed or absent)."""
    for data in scripts_data:
        path = getattr(data, "path", None) or ""
        if Path(path).name in XYZ_FILES and getattr(data, "module", None) is not None:
            return data.module
    return None


def add_axes(xyz: Any) -> int:
    """Append our axes to `xyz.axis_options`; returns how many were added (0 if present)."""
    options = getattr(xyz, "axis_options", None)
    axis_option = getattr(xyz, "AxisOption", None)
    if options is None or axis_option is None:
        log.warning("DTG: the X/Y/Z plot script has no axis_options; DTG axes not added")
        return 0
    present = {getattr(option, "label", None) for option in options}
    added = 0
    for axis in AXES:
        if axis.label in present:  # the UI was reloaded: our axes are still there
            continue
        options.append(
            axis_option(
                axis.label,
                axis.kind,
                make_apply(axis.field),
                cost=axis.cost,
                choices=axis.choices,
            )
        )
        added += 1
    return added


def register_axes() -> None:
    """The `on_before_ui` callback."""
    from modules import scripts

    xyz = find_xyz_module(getattr(scripts, "scripts_data", ()))
    if xyz is None:
        log.info("DTG: X/Y/Z plot script not found; DTG axes not added")
        return
    add_axes(xyz)

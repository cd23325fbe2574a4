"""Stand-in for the webui's X/Y/Z plot script module (scripts/xyz_grid.py).

What extensions rely on: `AxisOption(label, type, apply, ..., choices=None)` objects in
the module-level `axis_options` list, and one shallow copy of `p` per cell, on which
every axis's `apply(p, value, values)` is called before the cell's job runs.
"""

from __future__ import annotations

from copy import copy
from typing import Any


class AxisOption:
    def __init__(
        self,
        label: str,
        type: Any,
        apply: Any,
        format_value: Any = None,
        confirm: Any = None,
        cost: float = 0.0,
        choices: Any = None,
        prepare: Any = None,
    ) -> None:
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.choices = choices
        self.prepare = prepare


def _apply_nothing(p: Any, x: Any, xs: Any) -> None:
    pass


axis_options: list[AxisOption] = [
    AxisOption("Nothing", str, _apply_nothing),
    AxisOption("Seed", int, lambda p, x, xs: setattr(p, "seed", x)),
]


def option(label: str) -> AxisOption:
    return next(o for o in axis_options if o.label == label)


def cells(p: Any, axes: list[tuple[AxisOption, list[Any]]]) -> list[Any]:
    """The per-cell copies of `p` for a grid of the given axes (x varies fastest)."""
    grid: list[list[tuple[AxisOption, Any, list[Any]]]] = [[]]
    for axis, values in axes:
        grid = [[*cell, (axis, value, values)] for value in values for cell in grid]
    jobs = []
    for cell in grid:
        pc = copy(p)
        for axis, value, values in cell:
            axis.apply(pc, axis.type(value), values)
        jobs.append(pc)
    return jobs

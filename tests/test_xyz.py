"""DTG axes in the X/Y/Z plot, through the stand-in webui and a stand-in xyz_grid module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_webui_script import ScriptArgs, on, webui  # noqa: F401 (webui is the fixture)

from dtg_webui import xyz

STUB = Path(__file__).resolve().parent / "webui_stub"
LABELS = [
    "[DTG] Target length",
    "[DTG] Temperature",
    "[DTG] Top p",
    "[DTG] Seed",
    "[DTG] NL length",
    "[DTG] Model",
]


@pytest.fixture
def grid(webui):  # noqa: F811
    """The stand-in X/Y/Z module, loaded as the host loads scripts and listed in scripts_data."""
    path = STUB / "xyz_grid.py"
    spec = importlib.util.spec_from_file_location("xyz_grid.py", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = webui.scripts.ScriptClassData(object, str(path), str(STUB), module)
    webui.scripts.scripts_data.append(data)
    return module


def _labels(grid_module) -> list[str]:
    return [o.label for o in grid_module.axis_options]


def test_axes_registered_before_ui_once(webui, grid):  # noqa: F811
    webui.callbacks.before_ui_callback()
    assert _labels(grid)[-len(LABELS) :] == LABELS
    webui.callbacks.before_ui_callback()  # "Reload UI" runs it again
    assert _labels(grid).count("[DTG] Seed") == 1
    assert grid.option("[DTG] Target length").choices() == [
        "very_short",
        "short",
        "long",
        "very_long",
    ]


def test_absent_xyz_script_is_no_error(webui, caplog):  # noqa: F811
    webui.callbacks.before_ui_callback()
    assert xyz.find_xyz_module([]) is None


def test_xyz_without_axis_options_is_no_error():
    class Data:
        path = "/webui/scripts/xyz_grid.py"
        module = object()

    assert xyz.add_axes(xyz.find_xyz_module([Data()])) == 0


def _run_cells(webui, grid, args, axes, **job):  # noqa: F811
    p = webui.txt2img(args, prompt="1girl", seed=10, **job)
    results = []
    for cell in grid.cells(p, axes):
        # As in the host, the cells are shallow copies sharing p.extra_generation_params.
        results.append(webui.run(cell))
    return results


def test_temperature_and_target_axes_reach_the_settings(webui, grid):  # noqa: F811
    webui.callbacks.before_ui_callback()
    axes = [
        (grid.option("[DTG] Temperature"), ["0.5", "1.8"]),
        (grid.option("[DTG] Target length"), ["short", "very_long"]),
    ]
    _run_cells(webui, grid, on(top_p=0.8), axes)
    seen = [(c["settings"].sampling.temperature, c["settings"].target) for c in webui.engine.calls]
    assert seen == [(0.5, "short"), (1.8, "short"), (0.5, "very_long"), (1.8, "very_long")]
    assert {c["settings"].sampling.top_p for c in webui.engine.calls} == {0.8}, "panel kept"


def test_seed_and_top_p_axes(webui, grid):  # noqa: F811
    webui.callbacks.before_ui_callback()
    axes = [(grid.option("[DTG] Seed"), ["0", "100"]), (grid.option("[DTG] Top p"), ["0.5"])]
    results = _run_cells(webui, grid, on(), axes)
    assert [r.all_prompts for r in results] == [["1girl, dtg 0"], ["1girl, dtg 100"]]
    assert {c["settings"].sampling.top_p for c in webui.engine.calls} == {0.5}


def test_an_axis_turns_dtg_on_for_its_cells(webui, grid):  # noqa: F811
    webui.callbacks.before_ui_callback()
    off = [getattr(ScriptArgs(), name) for name in ScriptArgs.__dataclass_fields__]
    results = _run_cells(webui, grid, off, [(grid.option("[DTG] Temperature"), ["0.7"])])
    assert results[0].all_prompts == ["1girl, dtg 10"]


def test_cells_do_not_share_overrides(webui, grid):  # noqa: F811
    webui.callbacks.before_ui_callback()
    p = webui.txt2img(on(), prompt="1girl", seed=1)
    first, second = grid.cells(p, [(grid.option("[DTG] Temperature"), ["0.5", "0.9"])])
    assert first.dtg_overrides == {"temperature": 0.5}
    assert second.dtg_overrides == {"temperature": 0.9}
    assert not hasattr(p, "dtg_overrides")


def test_job_without_overrides_uses_the_panel():
    class Job:
        pass

    args = ScriptArgs(temperature=0.9)
    assert xyz.apply_overrides(Job(), args) is args


def test_before_timing_honours_the_override(webui, grid):  # noqa: F811
    webui.callbacks.before_ui_callback()
    _run_cells(webui, grid, on(timing="before"), [(grid.option("[DTG] Temperature"), ["0.4"])])
    assert webui.engine.calls[0]["settings"].sampling.temperature == 0.4

"""The webui script's arguments: one API object read by name, and the same defaults on
every face (the panel, the webui API, the HTTP routes, the command line)."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Any

import pytest
from test_webui_script import params, webui  # noqa: F401 (the fixture)

from dtg_lib.cli import build_parser, settings_from_args
from dtg_lib.http_api import parse_request
from dtg_lib.settings import SettingsError, UpsampleSettings
from dtg_webui import host
from dtg_webui.args import ARG_NAMES, FROM_SETTINGS, ScriptArgs, slider_range
from dtg_webui.infotext import ERROR_KEY, PARAMS_KEY

SETTINGS_PAGE = {option.key: option.default for option in host.OPTIONS}


def _drift(settings: UpsampleSettings) -> dict[str, Any]:
    """The values that differ from the engine's defaults: {name: (this face, engine)}."""
    ours, engine = settings.to_dict(), UpsampleSettings().to_dict()
    ours.update(ours.pop("sampling"))
    engine.update(engine.pop("sampling"))
    return {name: (ours[name], engine[name]) for name in engine if ours[name] != engine[name]}


def test_every_face_starts_from_the_engine_defaults(tmp_path):
    # The panel: its defaults, with the Settings page's backend and device behind "".
    panel = ScriptArgs().settings(
        backend=SETTINGS_PAGE["dtg_backend"], device=SETTINGS_PAGE["dtg_device"]
    )
    faces = {
        "webui panel": panel,
        "command line": settings_from_args(build_parser().parse_args(["1girl"])),
        "HTTP, no settings": parse_request({"prompt": "1girl"}, tmp_path).settings,
        "HTTP, empty settings": parse_request(
            {"prompt": "1girl", "settings": {}}, tmp_path
        ).settings,
    }
    drifted = {face: _drift(settings) for face, settings in faces.items() if _drift(settings)}
    assert drifted == {}
    assert SETTINGS_PAGE["dtg_default_model"] == UpsampleSettings().model
    assert ScriptArgs().enabled is False and ScriptArgs().dtg_seed == -1


# ---------------------------------------------------------------- reading by name


def test_a_named_object_is_read_by_name():
    args = ScriptArgs.from_args([{"enabled": True, "target": "short", "ban_tags": "hat"}])
    assert args == ScriptArgs(enabled=True, target="short", ban_tags="hat")
    assert args.is_enabled() is True


def test_named_values_replace_the_positions_the_host_filled():
    """The host puts the object in the first position and its UI defaults after it."""
    host_filled = [
        getattr(ScriptArgs(model="my-model.gguf", backend=FROM_SETTINGS), name)
        for name in ARG_NAMES
    ]
    args = ScriptArgs.from_args([{"enabled": True, "temperature": 0.7}, *host_filled[1:]])
    assert args == ScriptArgs(
        enabled=True, temperature=0.7, model="my-model.gguf", backend=FROM_SETTINGS
    )


def test_a_named_object_without_enabled_leaves_dtg_off():
    assert ScriptArgs.from_args([{"target": "short"}]).is_enabled() is False


def test_positional_args_still_work():
    values = [True, "very_short", "hat", 5]
    assert ScriptArgs.from_args(values) == ScriptArgs(
        enabled=True, target="very_short", ban_tags="hat", dtg_seed=5
    )


def test_an_unknown_name_is_an_error_naming_it_and_the_known_ones():
    args = ScriptArgs.from_args([{"enabled": True, "targte": "short"}])
    with pytest.raises(SettingsError, match=r"unknown DTG arg name.*'targte'.*target") as caught:
        args.is_enabled()
    assert "\n" not in str(caught.value)
    with pytest.raises(SettingsError, match="targte"):
        args.settings(backend="auto", device="cpu")
    # An X/Y/Z cell turns DTG on over the panel's values; the problem stays.
    with pytest.raises(SettingsError, match="targte"):
        dataclasses.replace(args, enabled=True).is_enabled()


def test_the_problem_field_is_no_positional_argument():
    assert "problem" not in ARG_NAMES and len(ARG_NAMES) == 19
    assert ScriptArgs.from_args([{"problem": "x"}]).problem.startswith("unknown DTG arg")


# ---------------------------------------------------------------- through a job


def test_named_job_expands_with_the_named_values(webui):  # noqa: F811
    named = {"enabled": True, "target": "short", "ban_tags": "hat"}
    processed = webui.run(webui.txt2img([named], prompt="1girl", seed=2))
    assert processed.all_prompts == ["1girl, dtg 2"]
    settings = webui.engine.calls[0]["settings"]
    assert settings.target == "short" and settings.ban_tags == "hat"
    assert _drift(settings).keys() == {"target", "ban_tags"}


@pytest.mark.parametrize(
    "named",
    [
        {"enabled": True, "targte": "short"},
        {"enabeld": True},  # a typo in the switch must not read as "off" in silence
    ],
)
def test_unknown_name_keeps_the_prompt_and_says_so(webui, caplog, named):  # noqa: F811
    p = webui.txt2img([named], prompt="1girl, solo", seed=3, batch_size=2)
    with caplog.at_level(logging.ERROR, logger="dtg"):
        processed = webui.run(p)
    assert processed.all_prompts == ["1girl, solo"] * 2
    assert webui.engine.calls == []
    (bad,) = set(named) - set(ARG_NAMES)
    assert len(caplog.records) == 1 and repr(bad) in caplog.records[0].getMessage()
    info = params(processed.infotexts[1])
    assert f"unknown DTG arg name(s) {bad!r}" in info[ERROR_KEY]
    assert PARAMS_KEY not in info


@pytest.mark.parametrize(
    ("named", "message"),
    [
        ({"enabled": True, "target": "medium"}, "invalid settings: unknown target 'medium'"),
        ({"enabled": "maybe"}, "enabled must be true or false"),
        ({"enabled": True, "dtg_seed": "seven"}, "DTG seed must be"),
    ],
)
def test_wrong_named_values_are_reported_like_positional_ones(webui, named, message):  # noqa: F811
    processed = webui.run(webui.txt2img([named], prompt="1girl", seed=3))
    assert processed.all_prompts == ["1girl"]
    assert message in params(processed.infotexts[0])[ERROR_KEY]


def test_named_enabled_word_false_is_off(webui):  # noqa: F811
    processed = webui.run(webui.txt2img([{"enabled": "false"}], prompt="1girl", seed=3))
    assert processed.all_prompts == ["1girl"] and webui.engine.calls == []
    assert ERROR_KEY not in params(processed.infotexts[0])


# ---------------------------------------------------------------- as /sdapi/v1/txt2img does it


def _api_job(webui, alwayson: dict[str, Any], **job: Any) -> Any:  # noqa: F811
    """A txt2img job as the host's API makes it: the panel's UI values in every position,
    then the request's `args` copied over them one by one."""
    pytest.importorskip("gradio")
    api = importlib.import_module("modules.api.api")
    runner = webui.runner([None] * len(ARG_NAMES))  # the positions the UI gave the script
    defaults = api.init_default_script_args(runner)
    p = webui.processing.StableDiffusionProcessingTxt2Img(scripts=runner, **job)
    p.script_args = tuple(api.init_script_args(alwayson, defaults, runner))
    return p


def test_host_api_named_args(webui):  # noqa: F811
    named = {"enabled": True, "target": "short", "ban_tags": "hat"}
    p = _api_job(webui, {"dantaggen": {"args": [named]}}, prompt="1girl", seed=4)
    assert isinstance(p.script_args[0], dict), "the host hands the object over whole"
    processed = webui.run(p)
    assert processed.all_prompts == ["1girl, dtg 4"]
    assert _drift(webui.engine.calls[0]["settings"]).keys() == {"target", "ban_tags"}


def test_host_api_positional_args(webui):  # noqa: F811
    p = _api_job(webui, {"DanTagGen": {"args": [True, "very_short"]}}, prompt="1girl", seed=4)
    processed = webui.run(p)
    assert processed.all_prompts == ["1girl, dtg 4"]
    assert _drift(webui.engine.calls[0]["settings"]).keys() == {"target"}


def test_host_api_defaults_are_the_engine_defaults(webui):  # noqa: F811
    """What the host fills in for positions a request leaves out: the panel's UI values."""
    p = _api_job(webui, {"DanTagGen": {"args": [True]}}, prompt="1girl", seed=4)
    webui.run(p)
    assert _drift(webui.engine.calls[0]["settings"]) == {}


def test_host_api_unknown_name_keeps_the_prompt(webui):  # noqa: F811
    p = _api_job(webui, {"DanTagGen": {"args": [{"enabled": True, "seed": 5}]}}, prompt="1girl")
    processed = webui.run(p)
    assert processed.all_prompts == ["1girl"] and webui.engine.calls == []
    assert "unknown DTG arg name(s) 'seed'" in params(processed.infotexts[0])[ERROR_KEY]


@pytest.mark.parametrize(
    ("name", "bad"),
    [("temperature", 9.0), ("temperature", 2.6), ("top_k", 501), ("top_p", 0.0), ("min_p", 1.0)],
)
def test_the_engine_refuses_what_the_panel_cannot_offer(name, bad):
    # One set of limits: the API once accepted temperature 9.0 where the panel stops at 2.5.
    with pytest.raises(SettingsError, match=name):
        UpsampleSettings.from_dict({name: bad})


@pytest.mark.parametrize(
    ("name", "step"), [("temperature", 0.05), ("top_p", 0.01), ("top_k", 1), ("min_p", 0.01)]
)
def test_the_panel_sliders_span_the_engine_limits(name, step):
    low, high = slider_range(name, step)
    UpsampleSettings.from_dict({name: low})  # both ends are values the engine accepts
    UpsampleSettings.from_dict({name: high})
    with pytest.raises(SettingsError):
        UpsampleSettings.from_dict({name: high + step})

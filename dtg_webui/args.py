"""The script's arguments, as one typed object.

The order of `ARG_NAMES` is the order `ui()` returns its components in, and so
the order of `"alwayson_scripts": {"DanTagGen": {"args": [...]}}` in the API.
Changing it breaks API callers: only ever append.

An API caller may instead send one object, `"args": [{"enabled": true, "target":
"short"}]`, read by these names. The webui copies the request's `args` into the
job's positions one by one, so that object arrives as the first positional value,
followed by the panel's defaults in the positions after it.

The defaults are `UpsampleSettings`'s, so the panel, the webui API, the HTTP routes
and the command line start from the same values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dtg_lib.assemble import FORMAT_PRESETS
from dtg_lib.limits import MAX_NL_PROMPT_CHARS
from dtg_lib.settings import (
    DEFAULT_MODEL,
    SAMPLING_LIMITS,
    SamplingSettings,
    SettingsError,
    UpsampleSettings,
)

CUSTOM_FORMAT = "custom"
FORMAT_CHOICES = (*FORMAT_PRESETS, CUSTOM_FORMAT)
RANDOM_SEED = -1
# The panel's Backend/Device choice that defers to the Settings page ("" from the API).
FROM_SETTINGS = "from settings"
SEED_RANGE = 2**32
_SWITCH_WORDS = {"true": True, "false": False, "1": True, "0": False, "on": True, "off": False}
# Marks the one ScriptArgs field that is no positional argument.
_NOT_POSITIONAL = "not positional"


@dataclass(frozen=True)
class ScriptArgs:
    """What the UI (or an API caller) chose; field order (`problem` aside) is the
    positional order."""

    enabled: bool = False
    # The engine's own defaults (class attributes of the settings dataclasses), so that
    # they are written down once.
    target: str = UpsampleSettings.target
    ban_tags: str = UpsampleSettings.ban_tags
    dtg_seed: int = RANDOM_SEED
    timing: str = UpsampleSettings.timing
    model: str = UpsampleSettings.model
    temperature: float = SamplingSettings.temperature
    top_p: float = SamplingSettings.top_p
    top_k: int = SamplingSettings.top_k
    min_p: float = SamplingSettings.min_p
    format: str = UpsampleSettings.format
    custom_format: str = ""
    # Empty: the Settings page's choice (which --dtg-device overrides).
    backend: str = ""
    device: str = ""
    # Appended last so that positional API callers keep working.
    budget: str = UpsampleSettings.budget
    # TIPO models only (appended after the budget, as above): the natural-language prompt,
    # its length, the caption and the meta lines. A DTG model ignores them all.
    nl_prompt: str = ""
    nl_length: str = UpsampleSettings.nl_length
    caption: bool = UpsampleSettings.caption
    gen_meta: bool = UpsampleSettings.gen_meta
    # Not an argument: why the caller's named args could not be read, raised by
    # is_enabled() so the hooks report it where they report any other bad value.
    problem: str = dataclasses.field(default="", metadata={_NOT_POSITIONAL: True})

    @classmethod
    def from_args(cls, args: tuple[Any, ...] | list[Any]) -> ScriptArgs:
        """Positional values, or a named object in the first position.

        Missing trailing values keep their defaults, so older API callers keep working.
        """
        values = dict(zip(ARG_NAMES, args))
        if args and isinstance(args[0], Mapping):
            named = args[0]
            values.pop("enabled")  # the object itself sits in that position
            unknown = [key for key in named if key not in ARG_NAMES]
            if unknown:
                return cls(problem=_unknown_names_message(unknown))
            values.update(named)
        return cls(**values)

    def settings(self, *, backend: str, device: str) -> UpsampleSettings:
        """Raises SettingsError with a message meant for the user."""
        self._check_readable()
        seed = self.seed()
        if isinstance(seed, bool) or not isinstance(seed, int) or not -1 <= seed < SEED_RANGE:
            raise SettingsError(f"DTG seed must be -1 or a whole number below 2**32, got {seed!r}")
        self.nl_text()  # checked with the rest, though it is no setting
        return UpsampleSettings.from_dict(
            {
                "target": self.target,
                "ban_tags": self.ban_tags or "",
                "format": self.format_text(),
                "model": self.model or DEFAULT_MODEL,
                "backend": _chosen(self.backend) or backend,
                "device": _chosen(self.device) or device,
                "timing": self.timing,
                "temperature": _number(self.temperature),
                "top_p": _number(self.top_p),
                "top_k": _whole(self.top_k),
                "min_p": _number(self.min_p),
                "budget": self.budget or UpsampleSettings.budget,
                "nl_length": self.nl_length or UpsampleSettings.nl_length,
                "caption": _switch("caption", self.caption),
                "gen_meta": _switch("gen_meta", self.gen_meta),
            }
        )

    def nl_text(self) -> str:
        """The natural-language prompt as typed ("" for none); raises SettingsError when it
        is no text or longer than any TIPO model could read."""
        text = "" if self.nl_prompt is None else self.nl_prompt
        if not isinstance(text, str):
            raise SettingsError(f"nl_prompt must be text, got {text!r}")
        if len(text) > MAX_NL_PROMPT_CHARS:
            raise SettingsError(
                f"the natural-language prompt is {len(text)} characters; at most "
                f"{MAX_NL_PROMPT_CHARS} fit a TIPO model's context"
            )
        return text

    def is_enabled(self) -> bool:
        """The checkbox's value; an API caller's "false" must not read as on."""
        self._check_readable()
        return _switch("enabled", self.enabled)

    def _check_readable(self) -> None:
        if self.problem:
            raise SettingsError(self.problem)

    def format_text(self) -> str:
        # An API caller may put a template straight into `format`; dtg_lib validates it.
        if self.format == CUSTOM_FORMAT:
            return self.custom_format or "default"
        return self.format or "default"

    def seed(self) -> int:
        return _whole(self.dtg_seed)

    @classmethod
    def from_settings(
        cls, settings: UpsampleSettings, dtg_seed: int, nl_prompt: str = ""
    ) -> ScriptArgs:
        """The UI values that rebuild `settings` (and the natural-language prompt a TIPO
        model read); used when an infotext is pasted."""
        preset = settings.format in FORMAT_PRESETS
        return cls(
            enabled=True,
            target=settings.target,
            ban_tags=settings.ban_tags,
            dtg_seed=dtg_seed,
            timing=settings.timing,
            model=settings.model,
            temperature=settings.sampling.temperature,
            top_p=settings.sampling.top_p,
            top_k=settings.sampling.top_k,
            min_p=settings.sampling.min_p,
            format=settings.format if preset else CUSTOM_FORMAT,
            custom_format="" if preset else settings.format,
            backend=settings.backend,
            device=settings.device,
            budget=settings.budget,
            nl_prompt=nl_prompt,
            nl_length=settings.nl_length,
            caption=settings.caption,
            gen_meta=settings.gen_meta,
        )


ARG_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ScriptArgs) if not f.metadata.get(_NOT_POSITIONAL)
)


def _unknown_names_message(unknown: list[Any]) -> str:
    listed = ", ".join(repr(key) for key in unknown)
    return f"unknown DTG arg name(s) {listed}: the names are {', '.join(ARG_NAMES)}"


def _switch(name: str, value: Any) -> bool:
    """A checkbox's value: a bool, 0/1, or an API caller's word ("false" must not read as on)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _SWITCH_WORDS:
        return _SWITCH_WORDS[word]
    raise SettingsError(f"DTG {name} must be true or false, got {value!r}")


def _chosen(value: Any) -> Any:
    return "" if value in (None, "", FROM_SETTINGS) else value


def _number(value: Any) -> Any:
    # gradio hands sliders back as int or float depending on the step; keep bad values for
    # dtg_lib to reject with its own message.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _whole(value: Any) -> Any:
    # gr.Number and sliders return floats such as 100.0; anything else is left for validation.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def slider_range(name: str, step: float) -> tuple[float, float]:
    """A panel slider's (minimum, maximum) for a sampling setting: the engine's own limits."""
    return SAMPLING_LIMITS[name].ui_range(step)

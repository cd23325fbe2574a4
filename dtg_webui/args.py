"""The script's positional arguments, as one typed object.

The order of `ARG_NAMES` is the order `ui()` returns its components in, and so
the order of `"alwayson_scripts": {"DanTagGen": {"args": [...]}}` in the API.
Changing it breaks API callers: only ever append.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dtg_lib.assemble import FORMAT_PRESETS
from dtg_lib.settings import DEFAULT_MODEL, SettingsError, UpsampleSettings

CUSTOM_FORMAT = "custom"
FORMAT_CHOICES = (*FORMAT_PRESETS, CUSTOM_FORMAT)
RANDOM_SEED = -1
# The panel's Backend/Device choice that defers to the Settings page ("" from the API).
FROM_SETTINGS = "from settings"
SEED_RANGE = 2**32
_SWITCH_WORDS = {"true": True, "false": False, "1": True, "0": False, "on": True, "off": False}


@dataclass(frozen=True)
class ScriptArgs:
    """What the UI (or an API caller) chose; field order is the positional order."""

    enabled: bool = False
    target: str = "long"
    ban_tags: str = ""
    dtg_seed: int = RANDOM_SEED
    timing: str = "after"
    model: str = DEFAULT_MODEL
    temperature: float = 1.35
    top_p: float = 0.95
    top_k: int = 100
    min_p: float = 0.0
    format: str = "default"
    custom_format: str = ""
    # Empty: the Settings page's choice (which --dtg-device overrides).
    backend: str = ""
    device: str = ""

    @classmethod
    def from_args(cls, args: tuple[Any, ...] | list[Any]) -> ScriptArgs:
        """Missing trailing values keep their defaults, so older API callers keep working."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = dict(zip(names, args))
        return cls(**values)

    def settings(self, *, backend: str, device: str) -> UpsampleSettings:
        """Raises SettingsError with a message meant for the user."""
        seed = self.seed()
        if isinstance(seed, bool) or not isinstance(seed, int) or not -1 <= seed < SEED_RANGE:
            raise SettingsError(f"DTG seed must be -1 or a whole number below 2**32, got {seed!r}")
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
            }
        )

    def is_enabled(self) -> bool:
        """The checkbox's value; an API caller's "false" must not read as on."""
        value = self.enabled
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        word = value.strip().lower() if isinstance(value, str) else None
        if word in _SWITCH_WORDS:
            return _SWITCH_WORDS[word]
        raise SettingsError(f"DTG enabled must be true or false, got {value!r}")

    def format_text(self) -> str:
        # An API caller may put a template straight into `format`; dtg_lib validates it.
        if self.format == CUSTOM_FORMAT:
            return self.custom_format or "default"
        return self.format or "default"

    def seed(self) -> int:
        return _whole(self.dtg_seed)

    @classmethod
    def from_settings(cls, settings: UpsampleSettings, dtg_seed: int) -> ScriptArgs:
        """The UI values that rebuild `settings`; used when an infotext is pasted."""
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
        )


ARG_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ScriptArgs))


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

"""The one typed settings object that crosses every boundary.

The webui UI, the webui API, the infotext, the HTTP routes and the command
line all build an `UpsampleSettings` (through `from_dict`) and the engine
only ever reads that. Validation lives here, once, with messages meant for
people.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import CALLER_MISTAKE, DtgError

TARGETS: dict[str, int] = {"very_short": 8, "short": 16, "long": 32, "very_long": 48}
BACKENDS = ("auto", "llama.cpp", "torch")
TIMINGS = ("after", "before")
DEFAULT_MODEL = "delta-rev2"
# The devices a UI offers; "cuda:N" (one GPU of several) and "gpu" (CUDA) are accepted too.
DEVICES = ("cpu", "cuda", "mps")


class SettingsError(DtgError, ValueError):
    """A setting is out of range or unknown; the message says which and why."""

    http_status = CALLER_MISTAKE


@dataclass(frozen=True)
class Limit:
    """The range a number setting accepts; every face (the webui's sliders too) uses it."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def ui_range(self, step: float) -> tuple[float, float]:
        """(minimum, maximum) for a slider or number box: the limit itself, one step inside
        an open end (temperature accepts anything above 0; a slider needs a first stop)."""
        low = self.low + step if self.low_open else self.low
        high = self.high - step if self.high_open else self.high
        return low, high


# The one set of sampling limits. temperature above 2.5 only turns DTG's output into noise,
# and top_k above 500 is no filter on a 32k vocabulary.
SAMPLING_LIMITS: dict[str, Limit] = {
    "temperature": Limit(0.0, 2.5, low_open=True),
    "top_p": Limit(0.0, 1.0, low_open=True),
    "top_k": Limit(0, 500),
    "min_p": Limit(0.0, 1.0, high_open=True),
    "repetition_penalty": Limit(0.0, 10.0, low_open=True),
    "max_new_tokens": Limit(1, 2048),
}


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling parameters shared by both backends."""

    temperature: float = 1.35
    top_p: float = 0.95
    top_k: int = 100
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            limit = SAMPLING_LIMITS[name]
            _check_float(
                name,
                getattr(self, name),
                limit.low,
                limit.high,
                low_open=limit.low_open,
                high_open=limit.high_open,
            )
        for name in ("top_k", "max_new_tokens"):
            limit = SAMPLING_LIMITS[name]
            _check_int(name, getattr(self, name), int(limit.low), int(limit.high))


@dataclass(frozen=True)
class UpsampleSettings:
    """Everything that decides one expansion, besides the prompt, seed and size."""

    target: str = "long"
    ban_tags: str = ""
    format: str = "default"
    model: str = DEFAULT_MODEL
    backend: str = "auto"
    device: str = "cpu"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    max_rounds: int = 20
    timing: str = "after"
    # TIPO models only (DTG models ignore them): the length of the sentences TIPO
    # writes (`target` stays the tag length), and whether to also write a caption.
    nl_length: str = "long"
    caption: bool = False
    # TIPO models only: let the last pass also write meta lines (artist, characters, ...),
    # whose new tags join the result like the general ones.
    gen_meta: bool = False
    # The CLIP token budget of the final prompt: "none", "fill" or "chunks:N" (see budget).
    budget: str = "none"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise SettingsError(
                f"unknown target {self.target!r}: choose one of {', '.join(TARGETS)}"
            )
        if self.backend not in BACKENDS:
            raise SettingsError(
                f"unknown backend {self.backend!r}: choose one of {', '.join(BACKENDS)}"
            )
        if self.nl_length not in TARGETS:
            raise SettingsError(
                f"unknown nl_length {self.nl_length!r}: choose one of {', '.join(TARGETS)}"
            )
        for name in ("caption", "gen_meta"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise SettingsError(f"{name} must be true or false, got {value!r}")
        if self.timing not in TIMINGS:
            raise SettingsError(f"unknown timing {self.timing!r}: choose 'after' or 'before'")
        if not isinstance(self.model, str) or not self.model.strip():
            raise SettingsError("model must be a registry name or a local path")
        if not isinstance(self.format, str):
            raise SettingsError("format must be text")
        if not isinstance(self.ban_tags, str):
            raise SettingsError("ban_tags must be text: comma-separated entries")
        _check_device(self.device)
        _check_budget(self.budget)
        _check_int("max_rounds", self.max_rounds, 1, 100)
        _check_text_setting("ban_tags", self.ban_tags)
        _check_text_setting("format", self.format)

    @property
    def target_tags(self) -> int:
        return TARGETS[self.target]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UpsampleSettings:
        """Build from plain data (JSON, UI values); sampling keys may be flat or nested."""
        if not isinstance(data, dict):
            raise SettingsError("settings must be a JSON object")
        own = {f.name for f in fields(cls)} - {"sampling"}
        sampling_keys = {f.name for f in fields(SamplingSettings)}
        nested = data.get("sampling") or {}
        if not isinstance(nested, dict):
            raise SettingsError("sampling must be a JSON object")
        unknown = set(data) - own - sampling_keys - {"sampling"} | set(nested) - sampling_keys
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        sampling = {k: v for k, v in data.items() if k in sampling_keys}
        sampling.update(nested)
        try:
            return cls(
                sampling=SamplingSettings(**sampling),
                **{k: v for k, v in data.items() if k in own},
            )
        except TypeError as exc:  # a value of the wrong type reached a comparison
            raise SettingsError(str(exc)) from exc

    @classmethod
    def from_json(cls, text: str) -> UpsampleSettings:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"settings are not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def normalize_device(device: Any) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'mps'; 'gpu' means CUDA. The one place a device is checked."""
    text = str(device).strip().lower()
    if text == "gpu":
        return "cuda"
    if text in DEVICES or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise SettingsError(f"unknown device {device!r}: use cpu, cuda, cuda:N, gpu or mps")


def _check_device(device: Any) -> None:
    if not isinstance(device, str):
        raise SettingsError(f"device must be text such as 'cpu' or 'cuda', got {device!r}")
    normalize_device(device)


def _check_budget(budget: Any) -> None:
    from .budget import BudgetError, check_budget

    try:
        check_budget(budget)
    except BudgetError as exc:
        raise SettingsError(str(exc)) from exc


def _check_text_setting(name: str, value: str) -> None:
    # Imported here: both modules are light, but settings must not depend on them at import.
    from .assemble import FormatError, resolve_format
    from .ban import BanListError, compile_ban_list

    try:
        if name == "ban_tags":
            compile_ban_list(value)
        else:
            resolve_format(value)
    except (BanListError, FormatError) as exc:
        raise SettingsError(str(exc)) from exc


def _check_float(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SettingsError(f"{name} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise SettingsError(f"{name} must be in {left}{low}, {high}{right}, got {value}")


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")

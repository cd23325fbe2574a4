"""A node's inputs, as ComfyUI hands them over, into items for the engine.

The upsample nodes take their inputs as lists (INPUT_IS_LIST), so that a list of prompts
expands together. How lists pair up, as ComfyUI pairs the lists of a node that is called
once per item:

- the job has as many items as the longest list input;
- item i takes the i-th value of every input; a shorter list repeats its last value, so
  a single value (a widget) is the same for every item;
- so every input may vary per item (prompt, seed, natural-language prompt, size or a
  LATENT, target, model, sampling, format, ...), except `strict`, which is one switch
  for the whole node (its first value).

Items whose settings and size are the same expand together in one `upsample_many`
call (one batch); the others run as further calls, in the order they first appear.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dtg_lib.assemble import FORMAT_PRESETS
from dtg_lib.errors import DtgError
from dtg_lib.settings import SamplingSettings, SettingsError, UpsampleSettings

CUSTOM_FORMAT = "custom"
FORMAT_CHOICES = (*FORMAT_PRESETS, CUSTOM_FORMAT)
LATENT_SCALE = 8  # a LATENT's samples are [batch, channels, height / 8, width / 8]
NODE_WIDE = ("strict",)  # one value for the whole node, not one per item


@dataclass(frozen=True)
class JobItem:
    """One prompt to expand, with everything that decides its expansion."""

    prompt: str
    seed: int
    nl_prompt: str
    width: int
    height: int
    settings: UpsampleSettings | DtgError  # the error says which input is wrong


@dataclass(frozen=True)
class JobRequest:
    items: list[JobItem]
    strict: bool


def first(value: Any) -> Any:
    """One value of an input that came as a list."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def item_count(given: Mapping[str, Any]) -> int:
    """The length of the longest list input (at least one item), or 0 when the prompts
    came as an empty list (an upstream list node that gave nothing): no expansion of ""."""
    if given.get("prompt") == []:
        return 0
    lengths = [len(as_list(value)) for name, value in given.items() if name not in NODE_WIDE]
    return max([1, *lengths])


def item_values(given: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Item `index`'s value of every input: a shorter list repeats its last value."""
    values = {}
    for name, value in given.items():
        listed = as_list(value)
        if listed:
            values[name] = listed[min(index, len(listed) - 1)]
    return values


def format_text(values: Mapping[str, Any]) -> str:
    chosen = first(values.get("format")) or "default"
    if chosen == CUSTOM_FORMAT:
        return first(values.get("custom_format")) or "default"
    return chosen


def settings_from(values: Mapping[str, Any]) -> UpsampleSettings | DtgError:
    """One item's settings, or the error that says which input is wrong (for the node's
    text). A list input counts with its first value here."""
    data = {
        "target": first(values.get("target")) or UpsampleSettings.target,
        "ban_tags": first(values.get("ban_tags")) or "",
        "format": format_text(values),
        "model": first(values.get("model")) or UpsampleSettings.model,
        "backend": first(values.get("backend")) or UpsampleSettings.backend,
        "device": first(values.get("device")) or UpsampleSettings.device,
        "temperature": first(values.get("temperature", SamplingSettings.temperature)),
        "top_p": first(values.get("top_p", SamplingSettings.top_p)),
        "top_k": first(values.get("top_k", SamplingSettings.top_k)),
        "min_p": first(values.get("min_p", SamplingSettings.min_p)),
    }
    if "nl_length" in values:
        data["nl_length"] = first(values["nl_length"])
        data["caption"] = bool(first(values.get("caption", False)))
        data["gen_meta"] = bool(first(values.get("gen_meta", False)))
    if first(values.get("budget")):
        data["budget"] = first(values["budget"])
    try:
        data.update(_numbers(data))
        return UpsampleSettings.from_dict(data)
    except DtgError as exc:
        return exc


def _numbers(data: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling inputs as numbers; a linked input of another type is a clear error."""
    kinds = {"temperature": float, "top_p": float, "top_k": int, "min_p": float}
    converted = {}
    for name, kind in kinds.items():
        try:
            converted[name] = kind(data[name])
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{name} must be a number, got {data[name]!r}") from exc
    return converted


def size_from(values: Mapping[str, Any]) -> tuple[int, int]:
    """Width and height: the LATENT's when one is connected, else the INT inputs."""
    latent = first(values.get("latent"))
    shape = getattr(latent.get("samples"), "shape", None) if isinstance(latent, dict) else None
    if shape is not None and len(shape) >= 2:
        return int(shape[-1]) * LATENT_SCALE, int(shape[-2]) * LATENT_SCALE
    return int(first(values.get("width", 1024))), int(first(values.get("height", 1024)))


def item_from(values: Mapping[str, Any]) -> JobItem:
    width, height = size_from(values)
    return JobItem(
        prompt=str(first(values.get("prompt")) or ""),
        seed=int(first(values.get("seed")) or 0),
        nl_prompt=str(first(values.get("nl_prompt")) or ""),
        width=width,
        height=height,
        settings=settings_from(values),
    )


def request_from(given: Mapping[str, Any]) -> JobRequest:
    """The node's inputs (each a list, INPUT_IS_LIST) as one item per prompt."""
    items = [item_from(item_values(given, index)) for index in range(item_count(given))]
    return JobRequest(items=items, strict=bool(first(given.get("strict", False))))


def inputs_key(given: Mapping[str, Any], model_files: str = "") -> str:
    """IS_CHANGED's answer: a digest of every input (seed included) and of the local
    model files' sizes and times, so the node re-runs when one of them changes."""
    shown = {name: _plain(value) for name, value in sorted(given.items())}
    text = json.dumps([shown, model_files], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):  # a LATENT: only its size matters here
        return {key: list(getattr(item, "shape", ())) for key, item in value.items()}
    return value

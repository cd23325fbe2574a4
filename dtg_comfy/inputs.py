"""A node's inputs, as ComfyUI hands them over, into the engine's `UpsampleSettings`.

The upsample nodes take their inputs as lists (INPUT_IS_LIST), so that a list of prompts
expands together: the prompts, seeds and natural-language prompts are spread as ComfyUI
spreads lists (a shorter list repeats its last item); every other input is one value,
its first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from dtg_lib.assemble import FORMAT_PRESETS
from dtg_lib.errors import DtgError
from dtg_lib.settings import SamplingSettings, UpsampleSettings

from .engine import JobRequest

CUSTOM_FORMAT = "custom"
FORMAT_CHOICES = (*FORMAT_PRESETS, CUSTOM_FORMAT)
LATENT_SCALE = 8  # a LATENT's samples are [batch, channels, height / 8, width / 8]
PER_PROMPT = ("prompt", "seed", "nl_prompt")


def first(value: Any) -> Any:
    """One value of an input that came as a list."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def spread(values: list[Any], length: int) -> list[Any]:
    return [values[min(index, len(values) - 1)] for index in range(length)]


def format_text(inputs: Mapping[str, Any]) -> str:
    chosen = first(inputs.get("format")) or "default"
    if chosen == CUSTOM_FORMAT:
        return first(inputs.get("custom_format")) or "default"
    return chosen


def settings_from(inputs: Mapping[str, Any]) -> UpsampleSettings | DtgError:
    """The settings, or the error that says which input is wrong (for the node's text)."""
    data = {
        "target": first(inputs.get("target")) or UpsampleSettings.target,
        "ban_tags": first(inputs.get("ban_tags")) or "",
        "format": format_text(inputs),
        "model": first(inputs.get("model")) or UpsampleSettings.model,
        "backend": first(inputs.get("backend")) or UpsampleSettings.backend,
        "device": first(inputs.get("device")) or UpsampleSettings.device,
        "temperature": float(first(inputs.get("temperature", SamplingSettings.temperature))),
        "top_p": float(first(inputs.get("top_p", SamplingSettings.top_p))),
        "top_k": int(first(inputs.get("top_k", SamplingSettings.top_k))),
        "min_p": float(first(inputs.get("min_p", SamplingSettings.min_p))),
    }
    if "nl_length" in inputs:
        data["nl_length"] = first(inputs["nl_length"])
        data["caption"] = bool(first(inputs.get("caption", False)))
    try:
        return UpsampleSettings.from_dict(data)
    except DtgError as exc:
        return exc


def size_from(inputs: Mapping[str, Any]) -> tuple[int, int]:
    """Width and height: the LATENT's when one is connected, else the INT inputs."""
    latent = first(inputs.get("latent"))
    shape = getattr(latent.get("samples"), "shape", None) if isinstance(latent, dict) else None
    if shape is not None and len(shape) >= 2:
        return int(shape[-1]) * LATENT_SCALE, int(shape[-2]) * LATENT_SCALE
    return int(first(inputs.get("width", 1024))), int(first(inputs.get("height", 1024)))


def request_from(inputs: Mapping[str, Any]) -> JobRequest:
    lists = {name: as_list(inputs.get(name, "")) for name in PER_PROMPT}
    length = max(len(values) for values in lists.values())
    width, height = size_from(inputs)
    return JobRequest(
        prompts=[str(p) for p in spread(lists["prompt"], length)],
        seeds=[int(s or 0) for s in spread(lists["seed"], length)],
        nl_prompts=[str(t) for t in spread(lists["nl_prompt"], length)],
        width=width,
        height=height,
        strict=bool(first(inputs.get("strict", False))),
    )


def inputs_key(inputs: Mapping[str, Any], model_file: str = "") -> str:
    """IS_CHANGED's answer: a digest of every input (seed included) and of the local
    model file's size and time, so the node re-runs when one of them changes."""
    shown = {name: _plain(value) for name, value in sorted(inputs.items())}
    text = json.dumps([shown, model_file], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):  # a LATENT: only its size matters here
        return {key: list(getattr(item, "shape", ())) for key, item in value.items()}
    return value

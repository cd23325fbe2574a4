"""Writing and reading the infotext's "key: value, key: value" line."""

from __future__ import annotations

import json
from typing import Any

from modules import script_callbacks

_NEEDS_QUOTES = (",", "\n", ":", '"')
_NEGATIVE = "Negative prompt:"


def quote(value: Any) -> str:
    text = str(value)
    if not any(mark in text for mark in _NEEDS_QUOTES):
        return text
    return json.dumps(text, ensure_ascii=False)


def parse_params_line(line: str) -> dict[str, str]:
    """Reads what `quote` wrote: plain values end at ", ", quoted ones are JSON strings."""
    params: dict[str, str] = {}
    decoder = json.JSONDecoder()
    rest = line.strip()
    while rest:
        key, sep, rest = rest.partition(": ")
        if not sep:
            break
        if rest.startswith('"'):
            value, end = decoder.raw_decode(rest)
            rest = rest[end:]
        else:
            value, _, tail = rest.partition(", ")
            rest = ", " + tail if tail else ""
        params[key.strip()] = value
        rest = rest.removeprefix(",").strip()
    return params


def parse_generation_parameters(text: str) -> dict[str, Any]:
    *lines, last = text.strip().split("\n")
    params: dict[str, Any] = parse_params_line(last)
    prompt, negative = [], []
    for line in lines:
        if line.startswith(_NEGATIVE) or negative:
            negative.append(line.removeprefix(_NEGATIVE).strip())
        else:
            prompt.append(line)
    params["Prompt"] = "\n".join(prompt)
    params["Negative prompt"] = "\n".join(negative)
    _read_styles(params)
    params.setdefault("Hires prompt", "")
    return params


def _read_styles(params: dict[str, Any]) -> None:
    """Take the styles' texts out of the prompts, per the "infotext_styles" option.

    As the host does: the hires prompts give up their styles only when they carry the
    same ones as the prompts; otherwise nothing is taken out of any of them.
    """
    from modules import shared

    mode = getattr(shared.opts, "infotext_styles", "Apply if any")
    if mode == "Ignore":
        return
    styles = shared.prompt_styles
    found, prompt, negative = styles.extract_styles_from_prompt(
        params["Prompt"], params["Negative prompt"]
    )
    if "Hires prompt" in params or "Hires negative prompt" in params:
        hr_found, hr_prompt, hr_negative = styles.extract_styles_from_prompt(
            params.get("Hires prompt", params["Prompt"]),
            params.get("Hires negative prompt", params["Negative prompt"]),
        )
        if hr_found != found:
            return
        params["Hires prompt"] = "" if hr_prompt == prompt else hr_prompt
        params["Hires negative prompt"] = "" if hr_negative == negative else hr_negative
    params["Prompt"], params["Negative prompt"] = prompt, negative
    if mode == "Apply" or (mode == "Apply if any" and found):
        params["Styles array"] = found


def paste(text: str) -> dict[str, Any]:
    """What the paste button does before filling components: parse, then run callbacks."""
    params = parse_generation_parameters(text)
    script_callbacks.infotext_pasted_callback(text, params)
    return params


def paste_values(text: str, paste_fields: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """(component, new value) for each paste field, None where it is left alone.

    As the host's paste: parse, run the callbacks, then each field's key is a function of
    the params or a params key; None leaves the component as it is, any other value is
    converted to the type of the component's current value ("False" for a bool is False).
    """
    params = paste(text)
    updates: list[tuple[Any, Any]] = []
    for component, key in paste_fields:
        value = key(params) if callable(key) else params.get(key)
        if value is not None:
            kind = type(getattr(component, "value", ""))
            value = False if kind is bool and value == "False" else kind(value)
        updates.append((component, value))
    return updates

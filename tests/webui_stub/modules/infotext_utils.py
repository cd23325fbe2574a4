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
    return params


def paste(text: str) -> dict[str, Any]:
    """What the paste button does before filling components: parse, then run callbacks."""
    params = parse_generation_parameters(text)
    script_callbacks.infotext_pasted_callback(text, params)
    return params

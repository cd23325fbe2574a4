"""An independent model of the webui's attention weights, for checking the parser.

Written from the webui's documented emphasis rules (`(a)` x1.1, `[a]` /1.1,
`(a:w)` sets w, an unclosed bracket reaches the end of the prompt), in a
different shape from dtg_lib's: it records every bracket as an interval with a
factor, in the order the brackets close, and multiplies afterwards. It knows
nothing of prompt editing, extra networks or AND, so tests feed it prompts
without those.
"""

from __future__ import annotations

import re

_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")


def char_weights(text: str) -> dict[int, float]:
    """Weight of every character that reaches the text encoder, by its index in `text`."""
    seen: list[int] = []  # indices of characters that are text, in order
    intervals: list[tuple[int, int, float]] = []  # (first seen index, end, factor)
    open_round: list[int] = []
    open_square: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 < len(text) and text[i + 1] in "()[]\\":
                seen.append(i + 1)
                i += 2
            else:
                i += 1  # a lone backslash reaches nothing
            continue
        if char == "(":
            open_round.append(len(seen))
        elif char == "[":
            open_square.append(len(seen))
        elif char == ":" and open_round and (m := _WEIGHT_CLOSE.match(text, i)) and _num(m[1]):
            intervals.append((open_round.pop(), len(seen), float(m[1])))
            i = m.end()
            continue
        elif char == ":" and (m := _WEIGHT_CLOSE.match(text, i)):
            seen.extend(range(i, m.end()))  # no bracket to weight: plain text
            i = m.end()
            continue
        elif char == ")" and open_round:
            intervals.append((open_round.pop(), len(seen), 1.1))
        elif char == "]" and open_square:
            intervals.append((open_square.pop(), len(seen), 1 / 1.1))
        else:
            seen.append(i)
        i += 1
    end = len(seen)
    intervals += [(start, end, 1.1) for start in open_round]
    intervals += [(start, end, 1 / 1.1) for start in open_square]
    weights = dict.fromkeys(seen, 1.0)
    for start, stop, factor in intervals:
        for index in seen[start:stop]:
            weights[index] *= factor
    return weights


def _num(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

"""Webui prompt syntax: parse a prompt into items that keep their original text.

A prompt becomes a flat, ordered tuple of `PromptItem`s whose texts, joined,
give back the prompt exactly. Items are split at top-level commas and
newlines (the separators are items too), at BREAK and at AND.

Weights are computed the way the webui computes them, in its order:
extra networks are stripped first, the prompt is split at AND (a trailing
`:w` of each part is that part's weight), prompt editing and alternation
brackets are resolved, and then the attention rules apply: 1.1 per round
bracket, 1/1.1 per square bracket, `(x:w)` sets w, escaped brackets are
text, a closing bracket with no opener is text, and a bracket left open
applies to the rest of its part.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from enum import Enum

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1


class ItemKind(str, Enum):
    TAG = "tag"
    GROUP = "group"  # brackets around several comma-separated tags: (a, b:0.8)
    EXTRA_NETWORK = "extra_network"  # <lora:x:0.7>, <hypernet:...>, <lyco:...>
    BREAK = "break"
    AND = "and"
    PART_WEIGHT = "part_weight"  # the trailing `:w` that weights one AND part
    EDITING = "editing"  # [a:b:0.4], [a:0.4], [a::0.4]
    ALTERNATION = "alternation"  # [a|b]
    WILDCARD = "wildcard"  # __name__, {a|b}: left for a wildcard extension
    EMBEDDING = "embedding"
    TEXT = "text"  # anything else, kept verbatim and never sent to the model
    SEPARATOR = "separator"  # commas, newlines and the spaces around them


@dataclass(frozen=True)
class Tag:
    """One tag as the user wrote it, unescaped (`ganyu (genshin impact)`), with its weight."""

    name: str
    weight: float


@dataclass(frozen=True)
class PromptItem:
    kind: ItemKind
    text: str
    tags: tuple[Tag, ...] = ()

    @property
    def weight(self) -> float | None:
        return self.tags[0].weight if self.kind is ItemKind.TAG else None


@dataclass(frozen=True)
class ParsedPrompt:
    text: str
    items: tuple[PromptItem, ...]

    def render(self) -> str:
        return render(self.items)

    def tags(self) -> Iterator[tuple[PromptItem, Tag]]:
        """Every tag the model may see, with the item that holds it."""
        for item in self.items:
            for tag in item.tags:
                if item.kind in (ItemKind.TAG, ItemKind.GROUP):
                    yield item, tag


def render(items: tuple[PromptItem, ...] | list[PromptItem]) -> str:
    return "".join(item.text for item in items)


# --- spans found before segmentation -------------------------------------
#
# Every pass here is linear in the prompt: prompts come from users and from the
# HTTP API (up to 50,000 characters), so no pass rescans the text from each
# bracket, and no regular expression can backtrack over a long run of text.

_EXTRA_NETWORK_HEAD = re.compile(r"<\w+:")
_AND = re.compile(r"\bAND\b")
_BREAK = re.compile(r"\bBREAK\b")
# A number after a colon: the weight ending an AND part (`:0.7`) or the last field of
# prompt editing (`[a:b:0.4]`). Written so that no digit can be matched two ways.
_NUMBER = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)\s*")
_ESCAPED = re.compile(r"\\(.)", re.S)
# What the editing pass looks at: an escape, a bracket, or an editing mark.
_EDITING_TOKEN = re.compile(r"\\.|[()\[\]:|]", re.S)


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    kind: ItemKind
    neutral: tuple[int, ...]  # positions the attention pass never sees


def _extra_network_spans(text: str) -> list[_Span]:
    """Every `<name:...>`, left to right, as the webui's `<\\w+:[^>]+>` finds them."""
    spans = []
    pos = 0
    next_close = -1  # the first `>` at or after the last place looked at
    while True:
        opener = text.find("<", pos)
        if opener < 0:
            return spans
        head = _EXTRA_NETWORK_HEAD.match(text, opener)
        if head is None:
            pos = opener + 1
            continue
        if next_close < head.end():
            next_close = text.find(">", head.end())
            if next_close < 0:  # no `>` left: nothing further can match
                return spans
        if next_close == head.end():  # `<lora:>`: the name part may not be empty
            pos = opener + 1
            continue
        end = next_close + 1
        spans.append(_Span(opener, end, ItemKind.EXTRA_NETWORK, tuple(range(opener, end))))
        pos = end


def _part_weight_span(part: str) -> tuple[int, int] | None:
    """(start, colon) of the `:w` ending an AND part, its start taking the spaces before it."""
    colon = part.rfind(":")  # the value holds no colon, so only the last one can start it
    if colon < 0 or not _NUMBER.fullmatch(part, colon + 1):
        return None
    start = colon
    while start > 0 and part[start - 1].isspace():
        start -= 1
    return start, colon


def _closed_squares(text: str, blocked: Collection[int]) -> dict[int, tuple[int, list[int]]]:
    """Each `[` closed by a `]`: its closing position and the `:`/`|` directly inside it.

    One pass with a stack. As the webui reads brackets for prompt editing, `(` and `[`
    nest together and a closer closes whatever opened last, so `[a)` closes no square.
    Escaped characters and blocked positions (extra networks, the part weight) are skipped.
    """
    closed: dict[int, tuple[int, list[int]]] = {}
    openers: list[int] = []
    marks: dict[int, list[int]] = {}  # opener -> its marks, for a `[` holding any
    for match in _EDITING_TOKEN.finditer(text):
        pos = match.start()
        char = match.group()
        if pos in blocked or char[0] == "\\":
            continue
        if char in "([":
            openers.append(pos)
        elif char in ")]":
            if openers:
                start = openers.pop()
                inside = marks.pop(start, [])
                if char == "]" and text[start] == "[":
                    closed[start] = (pos, inside)
        elif openers and text[openers[-1]] == "[":
            marks.setdefault(openers[-1], []).append(pos)
    return closed


def _editing_span(text: str, start: int, end: int, marks: list[int]) -> _Span | None:
    bars = [m for m in marks if text[m] == "|"]
    colons = [m for m in marks if text[m] == ":"]
    if bars and not colons:
        return _Span(start, end + 1, ItemKind.ALTERNATION, (start, *bars, end))
    if bars or len(colons) not in (1, 2):
        return None
    if not _NUMBER.fullmatch(text, colons[-1] + 1, end):
        return None
    neutral = (start, *colons, *range(colons[-1] + 1, end), end)
    return _Span(start, end + 1, ItemKind.EDITING, neutral)


def _editing_spans(text: str, blocked: Collection[int]) -> list[_Span]:
    spans = []
    for start, (end, marks) in sorted(_closed_squares(text, blocked).items()):
        span = _editing_span(text, start, end, marks)
        if span is not None:
            spans.append(span)
    return spans


# --- attention weights ---------------------------------------------------

_ATTENTION_TOKEN = re.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
)
# Multiplications the exact weighting may spend; see _run_weights.
EXACT_WEIGHTING_BUDGET = 2_000_000


@dataclass
class _Reach:
    """Text characters in runs that no bracket splits, and the brackets' reaches over them.

    Every character of a run gets the same factors in the same order, so a run's
    weight stands for all of its characters.
    """

    runs: list[list[int]]
    scalings: list[tuple[int, int, float]]  # (first run, end run, factor), in the webui's order
    run_is_open: bool = False

    def add_text(self, positions: list[int]) -> None:
        if not positions:
            return
        if not self.run_is_open:
            self.runs.append([])
            self.run_is_open = True
        self.runs[-1].extend(positions)

    def bracket(self) -> int:
        """Close the current run at a bracket; the index of the next run."""
        self.run_is_open = False
        return len(self.runs)

    def scale(self, first_run: int, factor: float) -> None:
        self.scalings.append((first_run, self.bracket(), factor))


def attention_weights(text: str, neutral: Collection[int] = ()) -> list[float | None]:
    """Weight of every character of one AND part; None for syntax characters.

    Characters at `neutral` positions are skipped, as the webui strips them
    before this pass.
    """
    kept = [i for i in range(len(text)) if i not in neutral]
    visible = "".join(text[i] for i in kept)
    reach = _Reach([], [])
    rounds: list[int] = []
    squares: list[int] = []
    for match in _ATTENTION_TOKEN.finditer(visible):
        token, explicit = match.group(0), match.group(1)
        if token.startswith("\\"):
            reach.add_text(kept[match.start() + 1 : match.end()])
        elif token == "(":
            rounds.append(reach.bracket())
        elif token == "[":
            squares.append(reach.bracket())
        elif explicit is not None and rounds and _is_float(explicit):
            reach.scale(rounds.pop(), float(explicit))
        elif token == ")" and rounds:
            reach.scale(rounds.pop(), ROUND_FACTOR)
        elif token == "]" and squares:
            reach.scale(squares.pop(), SQUARE_FACTOR)
        else:
            reach.add_text(kept[match.start() : match.end()])
    for start in rounds:
        reach.scale(start, ROUND_FACTOR)
    for start in squares:
        reach.scale(start, SQUARE_FACTOR)
    weights: list[float | None] = [None] * len(text)
    for run, weight in zip(reach.runs, _run_weights(len(reach.runs), reach.scalings)):
        for pos in run:
            weights[pos] = weight
    return weights


def _run_weights(count: int, scalings: list[tuple[int, int, float]]) -> list[float]:
    """The weight of each run: 1.0 times each factor that reaches it, in order.

    Done factor by factor, exactly as the webui multiplies, while that costs at most
    EXACT_WEIGHTING_BUDGET multiplications; that is thousands of brackets deep over
    thousands of runs, far beyond any real prompt. Past it (a prompt of nothing but
    nested brackets), the factors of a run are multiplied in another order, in
    O(n log n): the same weights to within float rounding.
    """
    if sum(end - first for first, end, _ in scalings) > EXACT_WEIGHTING_BUDGET:
        return _run_weights_grouped(count, scalings)
    weights = [1.0] * count
    for first, end, factor in scalings:
        weights[first:end] = [weight * factor for weight in weights[first:end]]
    return weights


def _run_weights_grouped(count: int, scalings: list[tuple[int, int, float]]) -> list[float]:
    """Each factor is put on the O(log n) nodes of a segment tree covering its runs;
    a run's weight is the product of the nodes above it."""
    size = 1
    while size < count:
        size *= 2
    node_factor = [1.0] * (2 * size)
    for first, end, factor in scalings:
        low, high = first + size, end + size
        while low < high:
            if low & 1:
                node_factor[low] *= factor
                low += 1
            if high & 1:
                high -= 1
                node_factor[high] *= factor
            low //= 2
            high //= 2
    for node in range(2, 2 * size):
        node_factor[node] *= node_factor[node // 2]
    return node_factor[size : size + count]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- segmentation ----------------------------------------------------------

_TAG_SHAPE = re.compile(
    r"(?P<open>[(\[]*)(?P<name>(?:\\.|[^\\()\[\],])+?)"
    r"(?P<weight>:\s*[+-]?[.\d]+\s*(?=\)))?(?P<close>[)\]]*)",
    re.S,
)
# Danbooru's disambiguated names, written unescaped as on the site: `asuna (sao)`.
# To the webui the parentheses weight "sao"; to the user it is one tag. The base name
# ends on a non-space so that no run of spaces before `(` can be split between it and
# `\s*` in many ways (quadratic backtracking); a base of spaces alone is never a tag.
_QUALIFIED = re.compile(
    r"(?P<open>\(?)(?P<base>[^\\()\[\],:]*?[^\\()\[\],:\s])\s*\((?P<qual>[^\\()\[\],]+)\)"
    r"(?P<weight>:\s*[+-]?[.\d]+\s*)?(?P<close>\)?)"
)
_WILDCARD = re.compile(r"__[^_\s,](?:[^\s,]*?)__|\{[^{}]*\}")
_EMBEDDING_PREFIX = re.compile(r"embedding:\S+", re.I)
_SEPARATOR = re.compile(r"\s*[,\n][\s,]*|\s+")


def parse(text: str, embeddings: Collection[str] = ()) -> ParsedPrompt:
    """Parse a webui prompt. Never raises; `render` gives `text` back exactly."""
    items: list[PromptItem] = []
    for part_start, part_end, and_end in _and_parts(text):
        items.extend(_parse_part(text, part_start, part_end, embeddings))
        if and_end is not None:
            items.append(PromptItem(ItemKind.AND, text[part_end:and_end]))
    return ParsedPrompt(text, tuple(i for i in items if i.text))


def _and_parts(text: str) -> Iterator[tuple[int, int, int | None]]:
    start = 0
    for match in _AND.finditer(text):
        yield start, match.start(), match.end()
        start = match.end()
    yield start, len(text), None


def _parse_part(text: str, start: int, end: int, embeddings: Collection[str]) -> list[PromptItem]:
    part = text[start:end]
    spans = _extra_network_spans(part)
    weight_at = _part_weight_span(part)
    blocked = {p for s in spans for p in s.neutral}
    if weight_at and not any(s.start <= weight_at[0] < s.end for s in spans):
        # From its colon: the space before it may belong to a separator (", :0.7"),
        # which would otherwise run past the start of the span and hide it.
        colon = weight_at[1]
        weight_span = _Span(colon, len(part), ItemKind.PART_WEIGHT, tuple(range(colon, len(part))))
        spans.append(weight_span)
        blocked |= set(weight_span.neutral)
    editing = _editing_spans(part, blocked)
    neutral = blocked | {p for s in editing for p in s.neutral}
    weights = attention_weights(part, neutral)
    atomic = sorted(spans, key=lambda s: s.start)
    return list(_segments(part, weights, atomic, embeddings))


def _segments(
    part: str, weights: list[float | None], atomic: list[_Span], embeddings: Collection[str]
) -> Iterator[PromptItem]:
    """Split one AND part at top-level separators, BREAK and atomic spans."""
    chunk_start = 0
    pos = 0
    depth = 0
    span_at = {s.start: s for s in atomic}
    while pos < len(part):
        span = span_at.get(pos)
        if span is not None and depth == 0:
            yield from _chunk(part, chunk_start, pos, weights, embeddings)
            yield PromptItem(span.kind, part[span.start : span.end])
            pos = chunk_start = span.end
            continue
        char = part[pos]
        if char == "\\":
            pos += 2
            continue
        if span is not None:
            pos = span.end
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}" and depth > 0:
            depth -= 1
        elif depth == 0:
            boundary = _boundary_at(part, pos)
            if boundary is not None:
                kind, stop = boundary
                yield from _chunk(part, chunk_start, pos, weights, embeddings)
                yield PromptItem(kind, part[pos:stop])
                pos = chunk_start = stop
                continue
        pos += 1
    yield from _chunk(part, chunk_start, len(part), weights, embeddings)


def _boundary_at(part: str, pos: int) -> tuple[ItemKind, int] | None:
    if part[pos] in ",\n":
        match = _SEPARATOR.match(part, pos)
        assert match is not None
        return ItemKind.SEPARATOR, match.end()
    if part.startswith("BREAK", pos):
        match = _BREAK.match(part, pos)
        if match and (pos == 0 or not (part[pos - 1].isalnum() or part[pos - 1] == "_")):
            return ItemKind.BREAK, match.end()
    return None


def _chunk(
    part: str, start: int, end: int, weights: list[float | None], embeddings: Collection[str]
) -> Iterator[PromptItem]:
    """Classify the text between two boundaries, splitting off its outer whitespace."""
    text = part[start:end]
    body = text.strip()
    if not body:
        if text:
            yield PromptItem(ItemKind.SEPARATOR, text)
        return
    lead = len(text) - len(text.lstrip())
    if lead:
        yield PromptItem(ItemKind.SEPARATOR, text[:lead])
    yield _classify(body, start + lead, weights, embeddings)
    trail = len(text) - lead - len(body)
    if trail:
        yield PromptItem(ItemKind.SEPARATOR, text[len(text) - trail :])


def _classify(
    body: str, offset: int, weights: list[float | None], embeddings: Collection[str]
) -> PromptItem:
    if _WILDCARD.search(body):
        return PromptItem(ItemKind.WILDCARD, body)
    if _EMBEDDING_PREFIX.fullmatch(body) or body in embeddings:
        return PromptItem(ItemKind.EMBEDDING, body)
    editing = _whole_editing(body)
    if editing is not None:
        return PromptItem(editing, body)
    tag = _tag_in(body, 0, offset, weights)
    if tag is not None:
        if tag.name in embeddings:
            return PromptItem(ItemKind.EMBEDDING, body, (tag,))
        return PromptItem(ItemKind.TAG, body, (tag,))
    qualified = _qualified_in(body, offset, weights)
    if qualified is not None:
        return PromptItem(ItemKind.TAG, body, (qualified,))
    group = _group_in(body, offset, weights)
    if group:
        return PromptItem(ItemKind.GROUP, body, group)
    return PromptItem(ItemKind.TEXT, body)


def _whole_editing(body: str) -> ItemKind | None:
    if not body.startswith("["):
        return None
    closed = _closed_squares(body, ()).get(0)
    if closed is None or closed[0] != len(body) - 1:
        return None
    span = _editing_span(body, 0, *closed)
    return span.kind if span else None


def _tag_in(piece: str, at: int, offset: int, weights: list[float | None]) -> Tag | None:
    """A single tag filling `piece` (brackets and `:w` allowed around it), or None."""
    match = _TAG_SHAPE.fullmatch(piece)
    if match is None:
        return None
    raw = match.group("name")
    name = (_ESCAPED.sub(r"\1", raw) if "\\" in raw else raw).strip()
    if not name or (match.group("weight") and not match.group("close").startswith(")")):
        return None
    if not _is_syntax(match, at, offset, weights):
        return None
    name_start = at + match.start("name")
    positions = [
        offset + name_start + i for i, char in enumerate(raw) if not char.isspace() and char != "\\"
    ]
    found = {weights[p] for p in positions}
    if len(found) != 1 or None in found:
        return None
    return Tag(name, found.pop())  # type: ignore[arg-type]


def _is_syntax(match: re.Match[str], at: int, offset: int, weights: list[float | None]) -> bool:
    """True when the brackets around a tag are brackets to the webui, not literal text."""
    outer = [*range(*match.span("open")), *range(*match.span("close"))]
    return all(weights[offset + at + i] is None for i in outer)


def _qualified_in(body: str, offset: int, weights: list[float | None]) -> Tag | None:
    match = _QUALIFIED.fullmatch(body)
    if match is None or bool(match.group("open")) != bool(match.group("close")):
        return None
    if match.group("weight") and not match.group("open"):
        return None
    base_start = offset + match.start("base")
    found = {weights[base_start + i] for i, c in enumerate(match.group("base")) if not c.isspace()}
    if len(found) != 1 or None in found:
        return None
    name = f"{match.group('base').strip()} ({match.group('qual').strip()})"
    return Tag(name, found.pop())  # type: ignore[arg-type]


def _group_in(body: str, offset: int, weights: list[float | None]) -> tuple[Tag, ...]:
    if body[0] not in "([" or "," not in body:
        return ()
    tags = []
    at = 0
    for piece in _split_commas(body):
        stripped = piece.strip()
        lead = len(piece) - len(piece.lstrip())
        tag = _tag_in(stripped, at + lead, offset, weights) if stripped else None
        if tag is None:
            return ()
        tags.append(tag)
        at += len(piece) + 1
    return tuple(tags)


def _split_commas(body: str) -> list[str]:
    pieces = []
    current = []
    pos = 0
    while pos < len(body):
        char = body[pos]
        if char == "\\" and pos + 1 < len(body):
            current.append(body[pos : pos + 2])
            pos += 2
            continue
        if char == ",":
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
        pos += 1
    pieces.append("".join(current))
    return pieces


# --- writing tags back into webui syntax --------------------------------

_NEEDS_ESCAPE = re.compile(r"([\\()\[\]])")


def escape_tag(name: str) -> str:
    """Escape a tag for the webui: `ganyu (genshin impact)` -> `ganyu \\(genshin impact\\)`."""
    if not _NEEDS_ESCAPE.search(name):
        return name  # most tags: no substitution to set up
    return _NEEDS_ESCAPE.sub(r"\\\1", name)

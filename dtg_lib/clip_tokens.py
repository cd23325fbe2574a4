"""Count a prompt's CLIP tokens the way the AUTOMATIC1111 webui's prompt-box counter does.

The counter (webui 1.10) shows `tokens/target`. To get there the webui:

1. strips extra networks (`<lora:x:1>`, `<hypernet:...>`: any `<word:...>`);
2. for the positive prompt, splits at `AND` and drops each part's trailing `:weight`;
3. expands prompt editing (`[a:b:0.5]`, `[a:5]`, `[a::5]`) and alternation (`[a|b]`)
   into the prompt seen at each sampling step (20 steps unless told);
4. reads every such prompt as weighted fragments (the emphasis brackets are not text,
   `BREAK` ends a chunk), tokenizes each fragment with CLIP's BPE and packs the tokens
   into chunks of 75, moving the tokens after the last comma to the next chunk when a
   chunk fills and that comma is within its last 20 tokens;
5. shows the largest count among those prompts and `ceil(max(count, 1) / 75) * 75`.

A chunk that ends early (at BREAK or at a comma) still counts as 75 tokens: the count
is where the next token would go, which is what a budget needs.

The emphasis parser here is the webui's own fragment parser (its rules differ from
`prompt_syntax`, which keeps the user's text and weights per character): fragments of
equal weight merge before tokenizing, so `(a)(b)` is tokenized as `ab`.

Not modelled: textual-inversion embeddings (the engine does not know the user's
embeddings; an embedding's name is counted as the words it is made of), styles, and the
parts of `ftfy.fix_text` that repair mis-decoded text (mojibake). The tokens themselves
come from `clip_bpe`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

from dtg_lib.errors import DtgError

# Re-exported: callers count and tokenize through this module.
from .clip_bpe import WORD_END, token_id, tokenize
from .clip_bpe import ClipVocabularyMissing as ClipVocabularyMissing
from .clip_bpe import clean_text as clean_text
from .clip_bpe import vocabulary_path as vocabulary_path

log = logging.getLogger("dtg")

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20  # the webui's comma_padding_backtrack default
DEFAULT_STEPS = 20


class PromptWeightError(DtgError, ValueError):
    """A `(text:weight)` whose weight the webui itself cannot read."""


@dataclass(frozen=True)
class TokenCount:
    """What the webui's counter shows (`tokens/target`), and how the tokens fill chunks.

    `chunk_tokens` holds the real tokens in each chunk of the longest step's prompt;
    a chunk that BREAK or a comma ended early holds fewer than 75.
    """

    tokens: int
    chunks: int
    target: int
    chunk_tokens: tuple[int, ...]


# --- the webui's emphasis fragments ---------------------------------------------------

_ATTENTION_PIECE = re.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
)
_BREAK_WORD = re.compile(r"\bBREAK\b")
BREAK_WEIGHT = -1.0
ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1


def attention_fragments(text: str) -> list[tuple[str, float]]:
    """The webui's (text, weight) fragments of one prompt; `("BREAK", -1.0)` ends a chunk."""
    fragments: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _ATTENTION_PIECE.finditer(text):
        piece, weight = match[0], match[1]
        if piece.startswith("\\"):
            fragments.append([piece[1:], 1.0])
        elif piece in "([":
            (open_round if piece == "(" else open_square).append(len(fragments))
        elif weight is not None and open_round:
            scale(open_round.pop(), _read_weight(weight, text))
        elif piece == ")" and open_round:
            scale(open_round.pop(), ROUND_FACTOR)
        elif piece == "]" and open_square:
            scale(open_square.pop(), SQUARE_FACTOR)
        else:
            for index, part in enumerate(_split_breaks(piece)):
                if index:
                    fragments.append(["BREAK", BREAK_WEIGHT])
                fragments.append([part, 1.0])
    for start in open_round:
        scale(start, ROUND_FACTOR)
    for start in open_square:
        scale(start, SQUARE_FACTOR)
    return _merge_equal_weights(fragments or [["", 1.0]])


def _split_breaks(text: str) -> list[str]:
    """`text` split at each BREAK word and the whitespace around it (as the webui's
    `\\s*\\bBREAK\\b\\s*` split does, without its quadratic time on long spaces)."""
    parts: list[str] = []
    taken = 0  # the end of the last split, which its trailing whitespace ends
    for match in _BREAK_WORD.finditer(text):
        if match.start() < taken:
            continue
        start = match.start()
        while start > taken and text[start - 1].isspace():
            start -= 1
        end = match.end()
        while end < len(text) and text[end].isspace():
            end += 1
        parts.append(text[taken:start])
        taken = end
    parts.append(text[taken:])
    return parts


def _read_weight(weight: str, text: str) -> float:
    try:
        return float(weight)
    except ValueError:
        raise PromptWeightError(
            f"the webui cannot read the weight {weight!r} in the prompt {text[:80]!r}"
        ) from None


def _merge_equal_weights(fragments: list[list]) -> list[tuple[str, float]]:
    runs: list[tuple[list[str], float]] = []
    for text, weight in fragments:
        if runs and runs[-1][1] == weight:
            runs[-1][0].append(text)
        else:
            runs.append(([text], weight))
    return [("".join(texts), weight) for texts, weight in runs]


# --- chunks ---------------------------------------------------------------------------


def count_line(text: str) -> TokenCount:
    """Tokens and chunks of one prompt with no AND, editing or alternation left in it."""
    comma = token_id("," + WORD_END)
    chunks: list[int] = []  # real tokens in each finished chunk
    current: list[int] = []
    last_comma = -1
    counted = 0  # tokens before `current`: a finished chunk counts as 75

    def finish(reset: list[int]) -> list[int]:
        nonlocal counted, last_comma
        chunks.append(len(current))
        counted += CHUNK_LENGTH
        last_comma = -1
        return reset

    for fragment, weight in attention_fragments(text):
        if fragment == "BREAK" and weight == BREAK_WEIGHT:
            current = finish([])
            continue
        for token in tokenize(fragment):
            if token == comma:
                last_comma = len(current)
            elif (
                len(current) == CHUNK_LENGTH
                and last_comma != -1
                and CHUNK_LENGTH - last_comma <= COMMA_BACKTRACK
            ):
                moved = current[last_comma + 1 :]
                del current[last_comma + 1 :]
                current = finish(moved)
            if len(current) == CHUNK_LENGTH:
                current = finish([])
            current.append(token)
    if current or not chunks:
        chunks.append(len(current))
        counted += len(current)
    return TokenCount(counted, len(chunks), _target(counted), tuple(chunks))


def _target(tokens: int) -> int:
    return math.ceil(max(tokens, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


# --- AND, prompt editing and alternation ------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"\s*[-+]?(?:\d+\.?|\d*\.\d+)")
_STEP_NUMBER = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*\]")


class _Unparsable(Exception):
    """The webui's schedule grammar rejects the prompt; it then uses the text as it is."""


@dataclass(frozen=True)
class _Edit:
    before: tuple | None  # None: `[after:when]`
    after: tuple
    number: str


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple, ...]


class _ScheduleParser:
    """A reader of the webui's schedule grammar (`[a:b:n]`, `[a|b]`, nested in brackets).

    Inside brackets every bracket must close and `:`/`|` only separate; at the top level
    an unmatched bracket or a colon is text. A `|` outside an alternation, or a backslash
    with nothing after it on its line, makes the whole prompt unparsable. Results are
    memoised by position, so unmatched brackets cost linear time.
    """

    def __init__(self, text: str):
        self.text = text
        self.prompts: dict[int, tuple[tuple, int]] = {}
        self.constructs: dict[int, tuple[tuple, int] | None] = {}

    def parse(self) -> tuple:
        nodes: list = []
        position = 0
        while position < len(self.text):
            char = self.text[position]
            if char == "|":
                raise _Unparsable
            found = self.construct(position) if char in "[(" else None
            if found is not None:
                nodes.extend(found[0])
                position = found[1]
            elif char in "[]():":
                nodes.append(char)
                position += 1
            else:
                inner, position = self.prompt(position)
                nodes.extend(inner)
        return tuple(nodes)

    def prompt(self, start: int) -> tuple[tuple, int]:
        """Plain text and whole constructs from `start` up to a separator or closer."""
        if start in self.prompts:
            return self.prompts[start]
        text = self.text
        nodes: list = []
        plain_from = position = start
        while position < len(text) and text[position] not in "]):|":
            char = text[position]
            if char == "\\":
                if position + 1 >= len(text) or text[position + 1] == "\n":
                    raise _Unparsable
                position += 2
                continue
            if char not in "[(":
                position += 1
                continue
            found = self.construct(position)
            if found is None:
                break
            nodes.append(text[plain_from:position])
            nodes.extend(found[0])
            plain_from = position = found[1]
        nodes.append(text[plain_from:position])
        result = (tuple(node for node in nodes if node != ""), position)
        self.prompts[start] = result
        return result

    def construct(self, start: int) -> tuple[tuple, int] | None:
        if start not in self.constructs:
            if self.text[start] == "(":
                self.constructs[start] = self._round(start)
            else:
                self.constructs[start] = self._square(start)
        return self.constructs[start]

    def _at(self, position: int) -> str:
        return self.text[position] if position < len(self.text) else ""

    def _round(self, start: int) -> tuple[tuple, int] | None:
        inner, end = self.prompt(start + 1)
        if self._at(end) == ")":
            return ("(", *inner, ")"), end + 1
        if self._at(end) != ":":
            return None
        weight, close = self.prompt(end + 1)
        if self._at(close) != ")":
            return None
        return ("(", *inner, ":", *weight, ")"), close + 1

    def _square(self, start: int) -> tuple[tuple, int] | None:
        first, end = self.prompt(start + 1)
        separator = self._at(end)
        if separator == "]":
            return ("[", *first, "]"), end + 1
        if separator == "|":
            return self._alternation(first, end)
        if separator != ":":
            return None
        number = _STEP_NUMBER.match(self.text, end + 1)
        if number:
            return (_Edit(None, first, number[1]),), number.end()
        second, end = self.prompt(end + 1)
        number = _STEP_NUMBER.match(self.text, end + 1) if self._at(end) == ":" else None
        if number:
            return (_Edit(first, second, number[1]),), number.end()
        return None

    def _alternation(self, first: tuple, end: int) -> tuple[tuple, int] | None:
        options = [first]
        while self._at(end) == "|":
            option, end = self.prompt(end + 1)
            options.append(option)
        if self._at(end) != "]":
            return None
        return (_Alternation(tuple(options)),), end + 1


def _edit_step(number: str, steps: int) -> int:
    value = float(number)
    if "." in number:
        value *= steps
    return min(steps, int(value))  # OverflowError for inf: the caller falls back


def _schedule(text: str, steps: int) -> list[str]:
    """The distinct prompts `text` becomes over `steps` sampling steps."""
    try:
        nodes = _ScheduleParser(text).parse()
    except (_Unparsable, RecursionError):
        return [text]
    switch_steps = {steps}
    _collect_steps(nodes, steps, switch_steps)
    return list(dict.fromkeys(_render(nodes, step, steps) for step in sorted(switch_steps)))


def _collect_steps(nodes: tuple, steps: int, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            step = _edit_step(node.number, steps)
            if step >= 1:
                found.add(step)
            _collect_steps(node.before or (), steps, found)
            _collect_steps(node.after, steps, found)
        elif isinstance(node, _Alternation):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, steps, found)


def _render(nodes: tuple, step: int, steps: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, _Edit):
            chosen = node.before or () if step <= _edit_step(node.number, steps) else node.after
            out.append(_render(chosen, step, steps))
        elif isinstance(node, _Alternation):
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            out.append(node)
    return "".join(out)


def step_prompts(prompt: str, *, steps: int = DEFAULT_STEPS, negative: bool = False) -> list[str]:
    """Every prompt the webui's counter measures for `prompt`, in its order."""
    text = _EXTRA_NETWORK.sub("", prompt)
    parts = [text] if negative else list(dict.fromkeys(_and_parts(text)))
    try:
        return [line for part in parts for line in _schedule(part, steps)]
    except OverflowError:
        return [text]  # the counter's own fallback when scheduling fails


def _and_parts(text: str) -> list[str]:
    """The AND parts without their trailing `:weight` and whitespace (the webui's lazy
    regex for this takes quadratic time on long runs of spaces; this is the same rule)."""
    parts = []
    for part in _AND.split(text):
        stripped = part.rstrip()
        colon = stripped.rfind(":")
        if colon >= 0 and _PART_WEIGHT.fullmatch(stripped, colon + 1):
            stripped = stripped[:colon].rstrip()
        parts.append(stripped)
    return parts


def count_tokens(prompt: str, *, steps: int = DEFAULT_STEPS, negative: bool = False) -> TokenCount:
    """What the webui's token counter shows for `prompt`: the longest of its step prompts.

    `negative`: count as the negative prompt box does (no AND splitting).
    Raises ClipVocabularyMissing without open_clip_torch, PromptWeightError for a
    `(text:1.2.3)` weight that the webui itself fails on.
    """
    best: TokenCount | None = None
    for line in step_prompts(prompt, steps=steps, negative=negative):
        counted = count_line(line)
        if best is None or counted.tokens > best.tokens:
            best = counted
    assert best is not None
    return best

"""Writing the final prompt: the user's items plus the model's new tags.

Two modes. Append keeps the user's text verbatim and adds the new tags at
the end (before the first AND, so they join the main part rather than the
last weighted part). Template rearranges the user's items into category
slots of a format string; it only touches the text before the first BREAK
or AND, because moving items across those would change what the webui
conditions on. Everything from that point on is kept verbatim.

Either way every item keeps its exact text (weights, LoRA tags, editing,
escapes), and new tags are escaped for webui syntax.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .categories import Category, raw_key
from .dtg_format import ClassifiedPrompt
from .errors import CALLER_MISTAKE, DtgError
from .prompt_syntax import ItemKind, PromptItem, escape_tag

APPEND = "append"
FORMAT_PRESETS: dict[str, str] = {
    "default": (
        "<|special|>, <|characters|>, <|copyrights|>,\n"
        "<|artist|>,\n\n"
        "<|general|>,\n\n"
        "<|quality|>, <|meta|>, <|rating|>\n\n"
        # TIPO's sentences, after the tags as z-tipo-extension writes them; empty for DTG.
        "<|extended|>\n\n<|generated|>"
    ),
    "one line": (
        "<|special|>, <|characters|>, <|copyrights|>, <|artist|>, "
        "<|general|>, <|quality|>, <|meta|>, <|rating|>"
    ),
    APPEND: APPEND,
}

SLOTS: dict[Category, str] = {
    Category.SPECIAL: "special",
    Category.CHARACTER: "characters",
    Category.COPYRIGHT: "copyrights",
    Category.ARTIST: "artist",
    Category.GENERAL: "general",
    Category.QUALITY: "quality",
    Category.META: "meta",
    Category.RATING: "rating",
}
# Slots for a TIPO model's sentences: the natural-language prompt with its extension
# (`extended`) and the long caption it wrote (`generated`). Written as given, never split.
SENTENCE_SLOTS: tuple[str, ...] = ("extended", "generated")
_PLACEHOLDER = re.compile(r"<\|([A-Za-z_]+)\|>")
# What the webui reads as the weight of a whole AND part when the part ends with it,
# as a new tag such as ":3" or ">:3" would.
_PART_WEIGHT_END = re.compile(r":\s*[-+]?(?:\d+\.?|\d*\.\d+)\s*$")
_SENTENCE_END = "\x01"  # marks a filled slot that ends a sentence
_STRUCTURE = (ItemKind.BREAK, ItemKind.AND, ItemKind.PART_WEIGHT)


class FormatError(DtgError, ValueError):
    """The output format is neither a preset nor a template with a placeholder."""

    http_status = CALLER_MISTAKE


def resolve_format(name_or_template: str) -> str:
    """A preset name, `append`, or a custom template with at least one placeholder.

    Placeholders are the slot names in any case; an unknown one is an error, since a
    typo would otherwise take that slot's tags out of the prompt.
    """
    if name_or_template in FORMAT_PRESETS:
        return FORMAT_PRESETS[name_or_template]
    names = [name.lower() for name in _PLACEHOLDER.findall(name_or_template)]
    if not names:
        raise FormatError(
            f"format {name_or_template!r} is neither a preset ({', '.join(FORMAT_PRESETS)}) "
            "nor a template with placeholders such as <|general|>"
        )
    slots = (*SLOTS.values(), *SENTENCE_SLOTS)
    unknown = sorted({name for name in names if name not in slots})
    if unknown:
        known = ", ".join(f"<|{slot}|>" for slot in slots)
        raise FormatError(
            f"unknown placeholder {', '.join(f'<|{n}|>' for n in unknown)} in the format; "
            f"the placeholders are {known}"
        )
    return _PLACEHOLDER.sub(lambda m: f"<|{m.group(1).lower()}|>", name_or_template)


def new_tags_to_add(prompt: ClassifiedPrompt, new_tags: Sequence[str]) -> list[str]:
    """The new tags not already in the prompt, each once, in order."""
    seen = prompt.known_names()
    kept = []
    for tag in new_tags:
        key = raw_key(tag)
        if key and key not in seen:
            seen.add(key)
            kept.append(tag)
    return kept


def assemble(
    prompt: ClassifiedPrompt,
    new_tags: Sequence[str],
    fmt: str = "default",
    sentences: Mapping[str, str] | None = None,
    categories: Mapping[str, str] | None = None,
) -> str:
    """The final prompt. `sentences` fills the SENTENCE_SLOTS (a TIPO model's texts),
    each written as given: the caller escapes what the model wrote and keeps the
    user's own text with its weights. Append mode adds them after the new tags.

    `categories` names the category (a Category value) of new tags that are not
    general, such as the artists and characters a TIPO model writes with gen_meta:
    a template puts them in their own slot. Others go in the general slot."""
    template = resolve_format(fmt)
    to_add = new_tags_to_add(prompt, new_tags)
    slot_of = {tag: _slot_for((categories or {}).get(tag)) for tag in to_add}
    added = [(escape_tag(t), slot_of[t]) for t in to_add]
    texts = {slot: text for slot, text in (sentences or {}).items() if text.strip()}
    unknown = sorted(set(texts) - set(SENTENCE_SLOTS))
    if unknown:
        raise FormatError(f"unknown sentence slot(s) {', '.join(unknown)}")
    if template == APPEND:
        written = [texts[slot] for slot in SENTENCE_SLOTS if slot in texts]
        return _append(prompt.parsed.items, [text for text, _ in added] + written)
    return _fill_template(prompt, added, template, texts)


def _append(items: Sequence[PromptItem], added: list[str]) -> str:
    if not added:
        return "".join(i.text for i in items)
    stop = next((i for i, it in enumerate(items) if it.kind is ItemKind.AND), len(items))
    stop = _back_over(items, stop, (ItemKind.SEPARATOR, ItemKind.PART_WEIGHT))
    opened_at = first_left_open(items, stop)
    opened = opened_at is not None
    if opened:
        # A bracket left open reaches to the end of its part: the new tags go in front
        # of the item that opens it, out of its reach, and the user's text keeps its weights.
        stop = _back_over(items, opened_at, (ItemKind.SEPARATOR,))
    head = "".join(i.text for i in items[:stop])
    tail = "".join(i.text for i in items[stop:])
    joined = _sealed(", ".join(added), tail)
    if not head.strip():
        # The new tags lead. What separates them from the user's text is written on their
        # side, so that the user's text after them stays exactly as written.
        return f"{head}{joined}{_lead_in(tail, opened)}{tail}"
    return f"{head}, {joined}{tail}"


def _back_over(items: Sequence[PromptItem], stop: int, kinds: tuple[ItemKind, ...]) -> int:
    while stop > 0 and items[stop - 1].kind in kinds:
        stop -= 1
    return stop


def leaves_bracket_open(text: str) -> bool:
    """Whether `text` opens a bracket it does not close (escaped brackets do not count)."""
    return bool(_unclosed(text))


def first_left_open(items: Sequence[PromptItem], stop: int) -> int | None:
    """The first of items[:stop] that opens a bracket nothing up to `stop` closes."""
    owners = [index for index, item in enumerate(items[:stop]) for _ in item.text]
    unclosed = _unclosed("".join(item.text for item in items[:stop]))
    return min(owners[position] for position in unclosed) if unclosed else None


def _unclosed(text: str) -> list[int]:
    """Positions of the brackets `text` leaves open.

    As the webui reads them: each kind closes only its own kind (`)` never closes
    `[`), and a closer with nothing of its kind open is plain text.
    """
    open_at: dict[str, list[int]] = {"(": [], "[": [], "{": []}
    closes = {")": "(", "]": "[", "}": "{"}
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2
            continue
        if char in open_at:
            open_at[char].append(position)
        elif char in closes and open_at[closes[char]]:
            open_at[closes[char]].pop()
        position += 1
    return sorted(p for positions in open_at.values() for p in positions)


_LEADING_SEPARATORS = re.compile(r"[\s,]*")


def _lead_in(tail: str, item_follows: bool) -> str:
    """What goes between new tags written first and the user's `tail`.

    Nothing where the user's own comma follows; a comma where one of the user's items
    follows (a bracket left open); else a space where AND or a part weight follows
    straight after, so that the tags do not run into it.
    """
    lead = _LEADING_SEPARATORS.match(tail).group()  # type: ignore[union-attr]
    if not tail or "," in lead:
        return ""
    if item_follows:
        return "," if lead else ", "
    return "" if lead else " "


def _slot_for(category: str | None) -> str:
    try:
        return SLOTS[Category(category)] if category else "general"
    except ValueError:  # not a category: the tag is still kept, as a general one
        return "general"


def _fill_template(
    prompt: ClassifiedPrompt,
    added: list[tuple[str, str]],
    template: str,
    texts: Mapping[str, str],
) -> str:
    items = prompt.parsed.items
    stop = next((i for i, it in enumerate(items) if it.kind in _STRUCTURE), len(items))
    # Items from one that leaves a bracket open reach to the end of their part: they
    # stay last, as written, so that nothing moves into or out of that bracket's reach.
    opened_at = first_left_open(items, stop)
    kept = "" if opened_at is None else "".join(i.text for i in items[opened_at:stop]).strip()
    slots = _slot_contents(prompt, stop if opened_at is None else opened_at)
    for text, slot in added:
        slots[slot].append(text)
    # Slots the template leaves out still hold the user's items (and the new tags):
    # they go on a last line rather than out of the prompt.
    placeholders = [f"<|{slot}|>" for slot, found in slots.items() if found]
    left_out = [name for name in placeholders if name not in template]
    if left_out:
        template = f"{template}\n{', '.join(left_out)}"
    # Sentences a template leaves out go last, each on its own line.
    for slot in SENTENCE_SLOTS:
        if slot in texts and f"<|{slot}|>" not in template:
            template = f"{template}\n<|{slot}|>"
    contents = {k: ", ".join(v) for k, v in slots.items()}
    contents.update(texts)
    head = _render_template(template, contents)
    tail = "".join(i.text for i in items[stop:]).strip()
    head = _after(head, kept) if kept else _sealed(head, tail)
    if not tail:
        return head
    return f"{head}\n{tail}" if head else tail


def _after(head: str, kept: str) -> str:
    return f"{head}, {kept}" if head else kept


def _sealed(text: str, rest: str) -> str:
    """`text` with a comma after it where it ends an AND part looking like a weight."""
    following = rest.lstrip()
    ends_part = not following or following.startswith("AND")
    return f"{text}," if ends_part and _PART_WEIGHT_END.search(text) else text


def _slot_contents(prompt: ClassifiedPrompt, stop: int) -> dict[str, list[str]]:
    slots: dict[str, list[str]] = {slot: [] for slot in SLOTS.values()}
    categories: dict[int, set[Category]] = {}
    for tag in prompt.tags:
        categories.setdefault(tag.item_index, set()).add(tag.category)
    for index, item in enumerate(prompt.parsed.items[:stop]):
        if item.kind is ItemKind.SEPARATOR:
            continue
        found = categories.get(index, set())
        category = found.pop() if len(found) == 1 else Category.GENERAL
        slots[SLOTS[category]].append(item.text)
    return slots


def _render_template(template: str, contents: dict[str, str]) -> str:
    """Fill placeholders, then drop empty slots with their commas and blank lines."""
    values: list[str] = []

    def mark(match: re.Match[str]) -> str:
        value = contents.get(match.group(1), "")
        if not value:
            return ""
        values.append(value)
        # A sentence that ends with a full stop takes no comma after it (see _join_lines).
        end = _SENTENCE_END if value.rstrip().endswith(".") else "\x00"
        return f"\x00{len(values) - 1}{end}"

    marked = _PLACEHOLDER.sub(mark, template.replace("\x00", "").replace(_SENTENCE_END, ""))
    lines = [_clean_line(line) for line in marked.split("\n")]
    text = _join_lines(lines)
    return re.sub("\x00(\\d+)[\x00\x01]", lambda m: values[int(m.group(1))], text)


def _clean_line(line: str) -> str:
    return ", ".join(piece.strip() for piece in line.split(",") if piece.strip())


def _join_lines(lines: list[str]) -> str:
    """Keep at most one blank line between lines with content; end them with commas."""
    blocks: list[str] = []
    pending_blank = False
    for line in lines:
        if not line:
            pending_blank = bool(blocks)
            continue
        if blocks:
            ends = blocks[-1].endswith(_SENTENCE_END)
            if not ends and not _is_structure(blocks[-1]) and not _is_structure(line):
                blocks[-1] += ","
            blocks.append("\n\n" + line if pending_blank else "\n" + line)
        else:
            blocks.append(line)
        pending_blank = False
    return "".join(blocks)


def _is_structure(line: str) -> bool:
    words = line.strip().split()
    return bool(words) and (words[0] in ("BREAK", "AND") or words[-1] in ("BREAK", "AND"))

"""DTG's input and output text.

`classify_prompt` sorts the tags of a parsed prompt into categories with a
tag lookup, `build_model_input` writes the text DTG was trained on, and
`parse_model_output` turns what the model wrote after `<|input_end|>` back
into tag names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .categories import Category, raw_key
from .prompt_syntax import ParsedPrompt, Tag, escape_tag

INPUT_END = "<|input_end|>"
EMPTY = "<|empty|>"
LENGTH_TOKENS = ("very_short", "short", "long", "very_long")
_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>|</?s>|<unk>|<pad>")


class TagInfoLike(Protocol):
    name: str
    category: Category


class LookupLike(Protocol):
    def classify(self, tag: str) -> TagInfoLike: ...


@dataclass(frozen=True)
class ClassifiedTag:
    item_index: int
    tag: Tag  # as the user wrote it
    name: str  # the name DTG knows it by
    category: Category


@dataclass(frozen=True)
class ClassifiedPrompt:
    parsed: ParsedPrompt
    tags: tuple[ClassifiedTag, ...]

    def names(self, category: Category) -> list[str]:
        """Model names of one category in prompt order, each once."""
        seen: dict[str, None] = {}
        for tag in self.tags:
            if tag.category is category:
                seen.setdefault(tag.name, None)
        return list(seen)

    def known_names(self) -> set[str]:
        """Canonical names of every user tag, for not adding them again."""
        return {raw_key(t.name) for t in self.tags} | {raw_key(t.tag.name) for t in self.tags}


def classify_prompt(parsed: ParsedPrompt, lookup: LookupLike) -> ClassifiedPrompt:
    classified = []
    index_of = {id(item): i for i, item in enumerate(parsed.items)}
    for item, tag in parsed.tags():
        info = lookup.classify(escape_tag(tag.name))  # the lookup reads webui text
        classified.append(ClassifiedTag(index_of[id(item)], tag, info.name, info.category))
    return ClassifiedPrompt(parsed, tuple(classified))


def aspect_ratio(width: int, height: int) -> str:
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    return f"{width / height:.1f}"


def build_model_input(
    prompt: ClassifiedPrompt,
    *,
    width: int = 1024,
    height: int = 1024,
    target: str = "long",
    quality_line: bool = True,
) -> str:
    """The model input, line for line as DTG was trained.

    An optional `quality:` line (the models that take it), then `rating:`, `artist:`,
    `characters:`, `copyrights:` (`<|empty|>` where there is none), `aspect ratio:` with
    one decimal, `target: <|LENGTH|>`, and `general:` with the special tags, a comma and the
    general tags, ended by `<|input_end|>`; the model writes its tags after that.
    """
    if target not in LENGTH_TOKENS:
        raise ValueError(f"unknown target {target!r}: choose one of {', '.join(LENGTH_TOKENS)}")

    def field(category: Category) -> str:
        return ", ".join(prompt.names(category)) or EMPTY

    special = ", ".join(prompt.names(Category.SPECIAL))
    general = ", ".join(prompt.names(Category.GENERAL))
    lines = [
        f"rating: {field(Category.RATING)}",
        f"artist: {field(Category.ARTIST)}",
        f"characters: {field(Category.CHARACTER)}",
        f"copyrights: {field(Category.COPYRIGHT)}",
        f"aspect ratio: {aspect_ratio(width, height)}",
        f"target: <|{target}|>",
        # The ", " even when one side is empty is how DTG's training text was written.
        f"general: {special}, {general}{INPUT_END}",
    ]
    if quality_line:
        quality = ", ".join(prompt.names(Category.QUALITY)) or "masterpiece"
        lines.insert(0, f"quality: {quality}")
    return "\n".join(lines)


def continuation_input(model_input: str, tags: Iterable[str]) -> str:
    """The input for another round: the first input followed by the tags found so far."""
    head = model_input.split(INPUT_END, 1)[0]
    return f"{head}{INPUT_END}{', '.join(tags)}"


def parse_model_output(text: str) -> list[str]:
    """Tag names from generated text: after the last `<|input_end|>`, split on commas."""
    tail = text.rsplit(INPUT_END, 1)[-1]
    tags = []
    for piece in tail.split(","):
        name = _SPECIAL_TOKEN.sub("", piece).strip()
        if name:
            tags.append(name)
    return tags

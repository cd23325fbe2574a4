"""TIPO's input and output text: the format layer, with no model and no loop.

TIPO (DanTagGen's successor by the same author) reads a header of `key: value`
lines, a `target:` line naming the output length and the operation, then the
content sections (`short` caption, `tag` list, `long` caption) in the order the
operation names them. It continues the last section ("expand") or writes the
next one ("generate").

`plan_passes` turns a request into 1-3 passes, `build_model_input` writes the
text of one pass, `parse_model_output` reads the model input plus what the model
wrote back into tags by category and the two texts, and `next_pass_content`
carries one pass's result into the next. Behaviour follows tipo-kgen 0.3.1 and
its webui extension; tests/test_tipo_reference_corpus.py lists where we differ
on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .categories import Category
from .dtg_format import (
    EMPTY,
    LENGTH_TOKENS,
    ClassifiedPrompt,
    LookupLike,
    TagInfoLike,
    aspect_ratio,
)
from .errors import CALLER_MISTAKE, DtgError
from .prompt_syntax import escape_tag

TAG_SECTION = "tag"
SHORT_SECTION = "short"  # a short caption; read back as the "extended" text
LONG_SECTION = "long"  # a long caption; read back as the "generated" text
GEN_META = "<|gen_meta|>"

# The operations TIPO was trained on; None (no operation token) means "tags only".
OPERATIONS: tuple[str, ...] = (
    "short_to_tag",
    "short_to_tag_to_long",
    "tag_to_long",
    "tag_to_long_to_short",
    "tag_to_short",
    "tag_to_short_to_long",
    "long_to_tag",
)

# Header keys in the order TIPO was trained on; special and general tags go in `tag`.
HEADER_CATEGORIES: tuple[tuple[str, Category], ...] = (
    ("meta", Category.META),
    ("rating", Category.RATING),
    ("artist", Category.ARTIST),
    ("characters", Category.CHARACTER),
    ("copyrights", Category.COPYRIGHT),
    ("quality", Category.QUALITY),
)
# Keys of the output that name a tag category, as the reference's tag lists name them.
_CATEGORY_KEYS: dict[str, Category] = {
    **dict(HEADER_CATEGORIES),
    "special": Category.SPECIAL,
    "general": Category.GENERAL,
}


@dataclass(frozen=True)
class TipoTarget:
    """How much one length token asks for: tags, and sentences of a caption."""

    min_tags: int
    max_tags: int
    min_sentences: int
    max_sentences: int | None  # None: no upper bound


TIPO_TARGETS: dict[str, TipoTarget] = {
    "very_short": TipoTarget(6, 18, 1, 2),
    "short": TipoTarget(18, 36, 2, 4),
    "long": TipoTarget(36, 54, 4, 8),
    "very_long": TipoTarget(54, 72, 8, None),
}


@dataclass(frozen=True)
class TipoSampling:
    """The reference loop's sampling defaults (the reference retries with seed + attempt;
    see tipo_run.retry_seed for ours)."""

    temperature: float = 0.35
    min_p: float = 0.1
    top_p: float = 0.95
    top_k: int = 60
    max_new_tokens: int = 512


class TipoFormatError(DtgError, ValueError):
    """A TIPO request or pass is malformed; the message says which value and why."""

    http_status = CALLER_MISTAKE


@dataclass(frozen=True)
class TipoRequest:
    """One upsampling request: the user's tags by category, their text, and the wishes."""

    tags: Mapping[Category, Sequence[str]] = field(default_factory=dict)
    text: str = ""
    tag_length: str = "long"
    text_length: str = "long"
    expand_tags: bool = True
    expand_text: bool = True
    tags_first: bool = True
    caption: bool = True  # also write a caption of the result at the end
    gen_meta: bool = False  # ask the last pass to write meta lines too
    width: int = 1024
    height: int = 1024

    def __post_init__(self) -> None:
        for name in ("tag_length", "text_length"):
            _check_length(name, getattr(self, name))
        aspect_ratio(self.width, self.height)  # raises on a size that is not positive

    @classmethod
    def from_classified(
        cls, prompt: ClassifiedPrompt, text: str = "", **wishes: Any
    ) -> TipoRequest:
        """A request from a prompt split the way the DTG path splits it."""
        tags = {category: tuple(prompt.names(category)) for category in Category}
        return cls(tags={c: names for c, names in tags.items() if names}, text=text, **wishes)

    def names(self, category: Category) -> list[str]:
        """Names of one category in order, each once."""
        return list(dict.fromkeys(n.strip() for n in self.tags.get(category, ()) if n.strip()))

    def tag_section(self) -> list[str]:
        """The tags TIPO reads in its `tag` section: people-count tags first, then general."""
        return list(dict.fromkeys(self.names(Category.SPECIAL) + self.names(Category.GENERAL)))

    def clean_text(self) -> str:
        return clean_text(self.text)


@dataclass(frozen=True)
class TipoPass:
    """One model call: which operation, which length token, and expand or generate."""

    operation: str | None  # None: tags only
    length: str
    expand: bool  # True: continue the last section; False: write the next one
    gen_meta: bool = False

    def __post_init__(self) -> None:
        if self.operation is not None and self.operation not in OPERATIONS:
            raise TipoFormatError(
                f"unknown TIPO operation {self.operation!r}: choose one of {', '.join(OPERATIONS)}"
            )
        _check_length("length", self.length)

    @property
    def sections(self) -> tuple[str, ...]:
        """The content sections in the order this operation writes them."""
        return tuple(self.operation.split("_to_")) if self.operation else (TAG_SECTION,)

    @property
    def output_section(self) -> str:
        return self.sections[-1]

    @property
    def text_section(self) -> str:
        """Where the caption given to this pass goes: `short` if the operation has one."""
        return SHORT_SECTION if SHORT_SECTION in self.sections else LONG_SECTION


@dataclass(frozen=True)
class TipoOutput:
    """What one model text says, read back."""

    tags: dict[Category, tuple[str, ...]]  # header lines and the `tag` section, each name once
    extended: str | None  # the `short` section
    generated: str | None  # the `long` section

    def names(self, category: Category) -> tuple[str, ...]:
        return self.tags.get(category, ())

    def tag_section(self) -> list[str]:
        """Special then general tags: what the next pass's `tag` section gets."""
        return list(self.names(Category.SPECIAL) + self.names(Category.GENERAL))


def plan_passes(request: TipoRequest) -> tuple[TipoPass, ...]:
    """The passes for a request, each fed the previous one's result (`next_pass_content`).

    May be empty: tags and text given, nothing to expand and no caption wanted.
    """
    tags_len, text_len = request.tag_length, request.text_length
    has_tags, has_text = bool(request.tag_section()), bool(request.clean_text())
    caption = TipoPass("tag_to_long", text_len, False)
    if not has_tags and not has_text:
        passes = [TipoPass(None, tags_len, True)]
        # kgen's plan: the caption pass may still add tags before it writes the caption.
        caption = TipoPass("tag_to_long", text_len, True)
    elif not has_text:
        passes = [TipoPass(None, tags_len, True)] if request.expand_tags else []
    elif not has_tags:
        passes = [TipoPass("long_to_tag", tags_len, request.expand_text)]
        caption = TipoPass("short_to_tag_to_long", text_len, False)
    else:
        passes, caption = _plan_tags_and_text(request)
    if request.caption:
        passes.append(caption)
    if passes and request.gen_meta:
        last = passes[-1]
        passes[-1] = TipoPass(last.operation, last.length, last.expand, gen_meta=True)
    return tuple(passes)


def _plan_tags_and_text(request: TipoRequest) -> tuple[list[TipoPass], TipoPass]:
    tags_len, text_len = request.tag_length, request.text_length
    tags_then_caption = TipoPass("short_to_tag_to_long", text_len, False)
    text_then_caption = TipoPass("tag_to_short_to_long", text_len, False)
    if request.expand_tags and request.expand_text:
        if request.tags_first:
            passes = [
                TipoPass("short_to_tag", tags_len, True),
                TipoPass("tag_to_long", text_len, True),
            ]
            return passes, tags_then_caption
        passes = [TipoPass("tag_to_long", text_len, True), TipoPass("long_to_tag", tags_len, True)]
        return passes, text_then_caption
    if request.expand_tags:
        return [TipoPass("short_to_tag", tags_len, True), tags_then_caption], tags_then_caption
    if request.expand_text:
        # The text is a caption, so its length token is the text length (kgen sends the tag one).
        return [TipoPass("tag_to_long", text_len, True), text_then_caption], text_then_caption
    return [], tags_then_caption


def build_model_input(
    request: TipoRequest,
    step: TipoPass,
    *,
    tags: Sequence[str] | None = None,
    text: str | None = None,
) -> str:
    """The text of one pass. `tags` and `text` default to the request's (the first pass);
    later passes get them from `next_pass_content`."""
    tag_text = ", ".join(request.tag_section() if tags is None else _clean_names(tags))
    content = {
        TAG_SECTION: tag_text,
        step.text_section: clean_text(request.text if text is None else text),
    }
    lines = [f"{key}: {value}" for key, value in _header(request) if value]
    lines.append(f"target: {_target(step)}")
    last = len(step.sections) - 1
    for index, section in enumerate(step.sections):
        value = content.get(section, "")
        if value:
            lines.append(f"{section}: {value}")
        elif index < last:
            lines.append(f"{section}: ")  # an empty section keeps its trailing space
    written = "\n".join(lines)
    if step.expand or content.get(step.output_section):
        # A section that already has text is continued, never opened a second time.
        return written.rstrip()
    return f"{written}\n{step.output_section}:"


def _header(request: TipoRequest) -> list[tuple[str, str]]:
    header = [(key, ", ".join(request.names(category))) for key, category in HEADER_CATEGORIES]
    header.append(("aspect_ratio", aspect_ratio(request.width, request.height)))
    return header


def _target(step: TipoPass) -> str:
    tokens = [f"<|{step.length}|>"]
    if step.operation:
        tokens.append(f"<|{step.operation}|>")
    if step.gen_meta:
        tokens.append(GEN_META)
    return " ".join(tokens)


# A line that opens a section: a key without colons, then a colon.
_SECTION = re.compile(r"^([^:\n]+):(.*)$")
_BOUNDARY_TOKEN = re.compile(r"^\s*(?:<s>|</s>)|(?:<s>|</s>)\s*$")
_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>|</?s>|<unk>|<pad>")
_SPACES = re.compile(r"\s+")


def parse_model_output(text: str, lookup: LookupLike) -> TipoOutput:
    """Read the model input followed by what the model wrote.

    Each section's first occurrence counts (a caption's first non-empty one); a header
    line names its tags' category, and `tag` tags are classified with `lookup`.
    """
    tags: dict[Category, list[str]] = {}
    texts: dict[str, str] = {}
    seen: set[str] = set()
    for key, body in split_sections(text):
        if key in (SHORT_SECTION, LONG_SECTION):
            caption = clean_text(_SPECIAL_TOKEN.sub(" ", body))
            if caption and key not in texts:
                texts[key] = caption
            continue
        if key in seen:
            continue
        seen.add(key)
        if key == TAG_SECTION:
            seen.update(_CATEGORY_KEYS)  # later header-style lines are echoes, as in kgen
            for info in _classify(_tag_pieces(body), lookup):
                tags.setdefault(info.category, []).append(info.name)
        elif key in _CATEGORY_KEYS:
            tags.setdefault(_CATEGORY_KEYS[key], []).extend(_tag_pieces(body))
    return TipoOutput(
        tags={c: tuple(dict.fromkeys(names)) for c, names in tags.items() if names},
        extended=texts.get(SHORT_SECTION),
        generated=texts.get(LONG_SECTION),
    )


def split_sections(text: str) -> list[tuple[str, str]]:
    """`key: content` sections in order; a line without `key:` continues the one before."""
    body = _BOUNDARY_TOKEN.sub("", text.strip()).strip()
    sections: list[tuple[str, list[str]]] = []
    for line in body.split("\n"):
        opened = _SECTION.match(line)
        if opened:
            sections.append((opened[1].strip(), [opened[2]]))
        elif sections:
            sections[-1][1].append(line)
    return [(key, "\n".join(lines).strip()) for key, lines in sections]


def _tag_pieces(body: str) -> list[str]:
    pieces = (_SPECIAL_TOKEN.sub("", piece).strip() for piece in body.split(","))
    return [piece for piece in pieces if piece]


def _classify(names: list[str], lookup: LookupLike) -> list[TagInfoLike]:
    # The lookup reads webui text, where "(" is written "\(".
    return [lookup.classify(escape_tag(name)) for name in names]


def next_pass_content(output: TipoOutput, text: str) -> tuple[list[str], str]:
    """The `tag` section and caption the next pass gets: the tags read back, and the
    newest caption (the long one, else the short one, else the text this pass had)."""
    return output.tag_section(), clean_text(output.generated or output.extended or text)


def sentences(text: str | None) -> list[str]:
    """The sentences of a caption, split on full stops, without empty ones."""
    return [part.strip() for part in (text or "").split(".") if part.strip()]


def meets_target(output: TipoOutput, step: TipoPass) -> bool:
    """Whether a pass wrote enough: tags for a `tag` pass, sentences for a caption pass."""
    target = TIPO_TARGETS[step.length]
    if step.output_section == TAG_SECTION:
        return len(output.tag_section()) >= target.min_tags
    caption = output.generated if step.output_section == LONG_SECTION else output.extended
    return len(sentences(caption)) >= target.min_sentences


def cap_new_tags(given: Sequence[str], found: Sequence[str], length: str) -> list[str]:
    """The given tags, then new ones up to the length's tag maximum (never fewer than given)."""
    _check_length("length", length)
    kept = list(dict.fromkeys(given))
    kept_set = set(kept)
    new = [name for name in dict.fromkeys(found) if name not in kept_set]
    room = max(TIPO_TARGETS[length].max_tags - len(kept), 0)
    return kept + new[:room]


def clean_text(text: str) -> str:
    """A caption on one line: a newline inside it could read as a new `key:` section."""
    return _SPACES.sub(" ", text).strip()


def _clean_names(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def _check_length(name: str, value: str) -> None:
    if value not in LENGTH_TOKENS:
        raise TipoFormatError(f"unknown {name} {value!r}: choose one of {', '.join(LENGTH_TOKENS)}")


__all__ = [
    "EMPTY",
    "OPERATIONS",
    "TIPO_TARGETS",
    "TipoFormatError",
    "TipoOutput",
    "TipoPass",
    "TipoRequest",
    "TipoSampling",
    "TipoTarget",
    "build_model_input",
    "cap_new_tags",
    "clean_text",
    "meets_target",
    "next_pass_content",
    "parse_model_output",
    "plan_passes",
    "sentences",
    "split_sections",
]

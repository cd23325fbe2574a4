"""The expanded prompt as HTML a person takes in at a glance (and as plain text).

Every item of the final prompt becomes a chip coloured by its Danbooru
category; the user's items are filled chips in the order the prompt has
them, DTG's new tags are dashed outlines marked "+". Line breaks of the
prompt's template are kept. A TIPO model's sentences can be shown apart
(`render_sentences_html`). Pure string building: the webui and the
standalone page both put the result in an HTML component.

A result may be a `Result` or its JSON form (`http_api.result_to_json`), so
a client of the HTTP API can render the same preview.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from .categories import Category, raw_key
from .prompt_syntax import ItemKind, PromptItem, parse

# Colours readable on both light and dark backgrounds: chips use them as a border
# and as a faint fill, text keeps the page's colour.
CATEGORY_COLOURS: dict[str, str] = {
    Category.SPECIAL.value: "#e67e22",
    Category.CHARACTER.value: "#27ae60",
    Category.COPYRIGHT.value: "#9b59b6",
    Category.ARTIST.value: "#e74c3c",
    Category.GENERAL.value: "#3498db",
    Category.META.value: "#7f8c8d",
    Category.QUALITY.value: "#d4ac0d",
    Category.RATING.value: "#e84393",
}
OTHER = "other"  # LoRA, BREAK, AND, prompt editing, wildcards: kept verbatim, no category
OTHER_COLOUR = "#95a5a6"
_KIND_LABELS = {
    ItemKind.EXTRA_NETWORK: "extra network",
    ItemKind.BREAK: "BREAK",
    ItemKind.AND: "AND",
    ItemKind.PART_WEIGHT: "AND weight",
    ItemKind.EDITING: "prompt editing",
    ItemKind.ALTERNATION: "alternation",
    ItemKind.WILDCARD: "wildcard",
    ItemKind.EMBEDDING: "embedding",
    ItemKind.TEXT: "text",
}
_BOX = (
    "font-family:inherit;line-height:1.9;padding:10px 12px;border-radius:10px;"
    "border:1px solid rgba(127,127,127,.25);"
)
_CHIP = "display:inline-block;margin:2px 3px;padding:0 8px;border-radius:999px;font-size:.92em;"
_SMALL = "font-size:.8em;opacity:.8;"


def _field(result: Any, name: str) -> Any:
    return result[name] if isinstance(result, Mapping) else getattr(result, name)


def token_count_text(result: Any) -> str:
    """The final prompt's CLIP count as the webui's counter shows it, "87/150 tokens
    (2 chunks)"; empty when it was not counted (no open_clip_torch)."""
    read = result.get if isinstance(result, Mapping) else lambda name: getattr(result, name, None)
    tokens, target = read("tokens"), read("token_target")
    if tokens is None or not target:
        return ""
    chunks = target // 75
    return f"{tokens}/{target} tokens ({chunks} chunk{'s' if chunks != 1 else ''})"


def _total_seconds(result: Any) -> float:
    timings = _field(result, "timings")
    return float(timings["total_s"] if isinstance(timings, Mapping) else timings.total_s)


# ---------------------------------------------------------------- classifying items


def classify_items(result: Any) -> list[tuple[PromptItem, str, bool]]:
    """(item, category or "other", is_new) for each item of the final prompt, in order."""
    categories = {raw_key(k): v for k, v in _field(result, "tag_categories").items()}
    # New is what the model added and the user's prompt does not hold: a TIPO result's
    # categories name its new tags too (gen_meta's artists have their own). A client's
    # own JSON may leave the prompt out; then every listed new tag counts.
    prompt = (result.get("prompt") or "") if isinstance(result, Mapping) else result.prompt
    own = {raw_key(tag.name) for item in parse(prompt).items for tag in item.tags}
    new = {raw_key(t) for t in _field(result, "new_tags")} - own
    rows = []
    for item in parse(_field(result, "final_prompt")).items:
        if item.kind is ItemKind.SEPARATOR:
            rows.append((item, "", False))
        elif item.kind in (ItemKind.TAG, ItemKind.GROUP) and item.tags:
            names = [raw_key(t.name) for t in item.tags]
            is_new = all(n in new for n in names)
            rows.append((item, categories.get(names[0]) or Category.GENERAL.value, is_new))
        else:
            rows.append((item, OTHER, False))
    return rows


# ---------------------------------------------------------------- HTML


def _chip(item: PromptItem, category: str, is_new: bool) -> str:
    colour = CATEGORY_COLOURS.get(category, OTHER_COLOUR)
    label = _KIND_LABELS.get(item.kind, category) if category == OTHER else category
    title = f"{label}, added by DTG" if is_new else label
    if is_new:
        style = f"{_CHIP}border:1.5px dashed {colour};background:transparent;"
        text = f'<b style="color:{colour}">+</b>&#8202;{escape(item.text.strip())}'
    else:
        style = f"{_CHIP}border:1.5px solid {colour};background:{colour}2e;"
        text = escape(item.text.strip())
    classes = f"dtg-tag dtg-cat-{category}" + (" dtg-new" if is_new else " dtg-user")
    return (
        f'<span class="{classes}" data-category="{escape(category)}" '
        f'title="{escape(title)}" style="{style}">{text}</span>'
    )


def _separator(item: PromptItem) -> str:
    # Template line breaks show the structure (characters / artist / general / quality).
    breaks = min(item.text.count("\n"), 2)
    return '<br class="dtg-break">' * breaks


def _tags_html(rows: list[tuple[PromptItem, str, bool]]) -> str:
    parts = [_separator(i) if i.kind is ItemKind.SEPARATOR else _chip(i, c, n) for i, c, n in rows]
    return f'<div class="dtg-preview-tags">{"".join(parts)}</div>'


def _legend_html(rows: list[tuple[PromptItem, str, bool]]) -> str:
    present = {c for i, c, _ in rows if i.kind is not ItemKind.SEPARATOR}
    entries = [
        f'<span style="{_CHIP}border:1.5px solid {colour};background:{colour}2e;">'
        f"{escape(name)}</span>"
        for name, colour in [*CATEGORY_COLOURS.items(), (OTHER, OTHER_COLOUR)]
        if name in present
    ]
    if any(n for _, _, n in rows):
        entries.append(f'<span style="{_CHIP}border:1.5px dashed {OTHER_COLOUR};">+ new</span>')
    return f'<div class="dtg-legend" style="{_SMALL}margin-top:6px">{"".join(entries)}</div>'


def _summary(result: Any) -> str:
    new_count = len(_field(result, "new_tags"))
    rounds = _field(result, "rounds")
    parts = [
        f"{new_count} new tag{'s' if new_count != 1 else ''}",
        f"{rounds} round{'s' if rounds != 1 else ''}",
        f"{_total_seconds(result):.2f} s",
        f"seed {_field(result, 'seed')}",
    ]
    if counted := token_count_text(result):
        parts.insert(0, counted)
    model, backend = _field(result, "model"), _field(result, "backend")
    if model:
        parts.append(f"{model} ({backend})" if backend else str(model))
    return " · ".join(escape(str(p)) for p in parts)


def _notices_html(result: Any) -> str:
    notices = _field(result, "notices")
    return "".join(
        f'<div class="dtg-notice" style="{_SMALL}color:#d35400">{escape(n)}</div>' for n in notices
    )


def render_preview_html(result: Any) -> str:
    """One result as a self-contained HTML block (inline styles, every text escaped)."""
    rows = classify_items(result)
    return (
        f'<div class="dtg-preview" style="{_BOX}">'
        f'<div class="dtg-summary" style="{_SMALL}margin-bottom:4px">{_summary(result)}</div>'
        f"{_notices_html(result)}{_tags_html(rows)}{_legend_html(rows)}</div>"
    )


def render_preview_grid(results: Sequence[Any]) -> str:
    """Several results side by side (one column each), such as one prompt with N seeds."""
    cards = "".join(
        f'<div class="dtg-preview-card" style="flex:1 1 320px;min-width:0">'
        f"{render_preview_html(r)}</div>"
        for r in results
    )
    style = "display:flex;flex-wrap:wrap;gap:10px"
    return f'<div class="dtg-preview-grid" style="{style}">{cards}</div>'


# (result field, CSS class, label) of a TIPO model's sentences: `extended` is the
# natural-language prompt made longer, `generated` the caption the model wrote.
SENTENCE_FIELDS = (
    ("extended", "dtg-extended", "Extended text"),
    ("generated", "dtg-generated", "Generated caption"),
)
_SENTENCE = "border-left:3px solid #16a085;padding:2px 10px;margin:6px 0;"


def render_sentences_html(result: Any, note: str = "") -> str:
    """A TIPO model's sentences, apart from the tag chips, each under its label (followed
    by `note`, such as ", seed 5"); empty for a result without any (a DTG model's)."""
    rows = [
        f'<div class="dtg-sentence {css_class}" style="{_SENTENCE}">'
        f'<div class="dtg-sentence-label" style="{_SMALL}">{escape(label + note)}</div>'
        f"{escape(text)}</div>"
        for field, css_class, label in SENTENCE_FIELDS
        if (text := _field(result, field))
    ]
    return f'<div class="dtg-sentences">{"".join(rows)}</div>' if rows else ""


def render_preview_text(result: Any) -> str:
    """The same information as plain text: final prompt, new tags, rounds and time."""
    new_tags = ", ".join(_field(result, "new_tags")) or "(none)"
    lines = [
        _field(result, "final_prompt"),
        "",
        f"new: {new_tags}",
        f"{_field(result, 'rounds')} rounds, {_total_seconds(result):.2f} s, "
        f"seed {_field(result, 'seed')}",
        *([counted] if (counted := token_count_text(result)) else []),
        *(f"note: {n}" for n in _field(result, "notices")),
    ]
    return "\n".join(lines)

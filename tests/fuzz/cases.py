"""Prompt strategies and the invariants every expansion must keep.

Shared by the quick property tests in the regular suite (tests/test_fuzz.py)
and the long run (python -m tests.fuzz.run_fuzz).
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from dtg_lib.prompt_syntax import ItemKind, escape_tag, parse

# Pieces of webui prompt syntax, so that random prompts hit the parser's corners
# (unbalanced brackets, weights, escapes, BREAK/AND, networks, wildcards) far more
# often than uniformly random text would.
PIECES = (
    "1girl",
    "solo",
    "long hair",
    "hatsune miku",
    "by wlop",
    "artist:foo",
    "masterpiece",
    "smile",
    "blue eyes",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "(a:1.2)",
    "((b))",
    "[c]",
    ":",
    ":0.5",
    "|",
    ",",
    ", ",
    " ",
    "\\(",
    "\\)",
    "\\",
    "BREAK",
    " BREAK ",
    "AND",
    " AND ",
    " AND:0.5 ",
    "<lora:x:0.6>",
    "<hypernet:y:1>",
    "<lora:",
    ">",
    "__wild__",
    "{a|b}",
    "[a:b:0.4]",
    "[a|b]",
    "embedding",
    "<|empty|>",
    "</s>",
    "<s>",
    "asuna (sao)",
    "_",
    "\n",
    "\t",
    "ß",
    "日本語",
    "🙂",
    "\u200b",
    "\x00",
)

syntax_prompts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
any_text = st.text(max_size=200)
lora_only = st.lists(st.sampled_from(["<lora:a:1>", "<lora:b:0.3>", "<lyco:c:1>"]), max_size=6).map(
    ", ".join
)
break_only = st.lists(st.sampled_from(["BREAK", " BREAK ", ",", " "]), max_size=10).map("".join)
long_prompts = st.integers(min_value=200, max_value=1500).map(
    lambda n: ", ".join(f"tag {i}" for i in range(n))
)
prompts = st.one_of(syntax_prompts, any_text, lora_only, break_only, st.just(""), long_prompts)

SPECIAL_MARKS = ("<|", "|>", "</s>", "<s>")


def user_texts(prompt: str) -> list[str]:
    """The text of every item the user wrote (what must survive expansion)."""
    return [i.text for i in parse(prompt).items if i.kind is not ItemKind.SEPARATOR and i.text]


def check(prompt: str, final: str) -> None:
    """Raise AssertionError when `final` breaks an invariant for `prompt`."""
    for text in user_texts(prompt):
        # Whitespace around an item may be normalised; the item itself may not change.
        assert text.strip() in final, f"user text {text!r} missing from {final!r}"
    for mark in SPECIAL_MARKS:
        # Only what the user wrote may carry a special-token marker.
        assert final.count(mark) <= prompt.count(mark), f"{mark!r} added to {final!r}"


# --- `append` keeps the user's prompt byte for byte --------------------------------

# What came before the insertion point in the prompts that lost their whitespace.
LEADS = ("", " ", "  ", "\t", "\r\n", "\n", "\u2029", "\u3000", "\xa0", ", ", " ,\t", ",,")
append_prompts = st.tuples(st.sampled_from(LEADS), prompts, st.sampled_from(LEADS)).map("".join)


def inserted_text(prompt: str, final: str) -> str | None:
    """X where final == prompt[:i] + X + prompt[i:] for some i, else None."""
    if len(final) < len(prompt):
        return None
    prefix = 0
    while prefix < len(prompt) and final[prefix] == prompt[prefix]:
        prefix += 1
    rest = len(prompt) - prefix  # what must close `final`, as written
    if final[len(final) - rest :] != prompt[prefix:]:
        return None
    return final[prefix : len(final) - rest]


def check_verbatim(prompt: str, final: str, new_tags: Sequence[str]) -> None:
    """The prompt is unchanged around one insertion, and that insertion is new tags."""
    added = inserted_text(prompt, final)
    assert added is not None, f"{prompt!r} is not verbatim in {final!r}"
    pieces = {piece.strip() for piece in added.split(",")} - {""}
    assert pieces <= {escape_tag(tag) for tag in new_tags}, (prompt, added)

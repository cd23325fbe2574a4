"""The ban list: tags the model must never add.

Entries are comma-separated. Each is a plain tag (`hat`), a wildcard
pattern with `*` (`*hat`, `hat *`), or a regular expression between
slashes (`/.*(hat|cap)$/`, commas allowed inside). Every entry matches the
whole tag, case-insensitively, with underscores and spaces equal. So `hat`
bans only "hat"; `*hat` also bans "witch hat"; `hat*` bans "hat ornament".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The `regex` package, unlike `re`, can give up on a match: a user pattern with
# catastrophic backtracking (`/(a+)+b/`) must not hang the webui.
import regex

from .categories import canonical, raw_key

log = logging.getLogger("dtg")

MAX_PATTERN_LENGTH = 500
# Seconds one pattern may spend on one tag; real patterns need microseconds.
MATCH_TIMEOUT_S = 0.05


class BanListError(ValueError):
    pass


@dataclass(frozen=True)
class BanList:
    entries: tuple[str, ...]
    _patterns: tuple[Any, ...]  # compiled `regex` patterns

    def bans(self, tag: str) -> bool:
        key = raw_key(tag)
        forms = {key, key.replace(" ", "_")}
        return any(_matches(p, form) for p in self._patterns for form in forms)

    def __bool__(self) -> bool:
        return bool(self._patterns)


def _matches(pattern: Any, text: str) -> bool:
    try:
        return pattern.fullmatch(text, timeout=MATCH_TIMEOUT_S) is not None
    except TimeoutError:
        # Too slow to decide: the tag is kept rather than the job stalled.
        log.warning(
            "ban pattern /%s/ took too long on %r; the tag was not banned", pattern.pattern, text
        )
        return False


def compile_ban_list(text: str) -> BanList:
    entries = tuple(_entries(text))
    return BanList(entries, tuple(_compile(entry) for entry in entries))


def _entries(text: str) -> Iterator[str]:
    """Split on commas, except inside /regex/ entries."""
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in ", \t\n":
            pos += 1
        if pos >= len(text):
            return
        if text[pos] == "/":
            end = _regex_end(text, pos)
            yield text[pos:end].strip()
            pos = end
        else:
            end = text.find(",", pos)
            end = len(text) if end == -1 else end
            yield text[pos:end].strip()
            pos = end


def _regex_end(text: str, start: int) -> int:
    """End of a /regex/ entry: the first unescaped `/` followed by a comma or the end."""
    pos = start + 1
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
            continue
        rest = text[pos + 1 :].lstrip(" \t\n")
        if text[pos] == "/" and (not rest or rest.startswith(",")):
            return pos + 1
        pos += 1
    raise BanListError(f"ban list entry {text[start:]!r} starts a /regex/ but has no closing /")


def _compile(entry: str) -> Any:
    if len(entry) > MAX_PATTERN_LENGTH:
        raise BanListError(f"ban list entry is longer than {MAX_PATTERN_LENGTH} characters")
    if len(entry) >= 2 and entry.startswith("/") and entry.endswith("/"):
        source = entry[1:-1]
        try:
            return regex.compile(source, regex.IGNORECASE)
        except regex.error as exc:
            raise BanListError(f"ban list entry {entry!r} is not a valid regex: {exc}") from exc
    # Written as Danbooru spells the tag (`\m/`) or as a webui prompt escapes it
    # (`ganyu \(genshin impact\)`): either spelling bans it.
    keys = dict.fromkeys((raw_key(entry), canonical(entry)))
    forms = (".*".join(re.escape(piece) for piece in key.split("*")) for key in keys)
    return regex.compile("|".join(f"(?:{form})" for form in forms), regex.IGNORECASE)

"""The ban list: tags the model must never add.

Entries are comma-separated. Each is a plain tag (`hat`), a wildcard
pattern with `*` (`*hat`, `hat *`), or a regular expression between
slashes (`/.*(hat|cap)$/`, commas allowed inside). Every entry matches the
whole tag, case-insensitively, with underscores and spaces equal. So `hat`
bans only "hat"; `*hat` also bans "witch hat"; `hat*` bans "hat ornament".
A /regex/ entry that would be costly to compile (its counted repeats, written
out, over 10,000 characters, or nested over 20 deep) is refused with a BanListError.
"""

from __future__ import annotations

import functools
import logging
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The `regex` package, unlike `re`, can give up on a match: a user pattern with
# catastrophic backtracking (`/(a+)+b/`) must not hang the webui.
import regex

from .categories import canonical, raw_key
from .errors import CALLER_MISTAKE, DtgError

log = logging.getLogger("dtg")

MAX_PATTERN_LENGTH = 500
# Seconds one pattern may spend on one tag; real patterns need microseconds.
MATCH_TIMEOUT_S = 0.05


class BanListError(DtgError, ValueError):
    """A ban pattern is invalid or too costly to match; the message names it."""

    http_status = CALLER_MISTAKE


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


# A whole list is bounded too: each entry alone may be cheap while thousands of them
# are not (1,500 entries of `/(?:a{90}){100}N/` once took 2.3 GB). Past 1,000 entries a
# list is no ban list but a mistake, and the /regex/ entries together may write out to
# at most 20,000 characters (about 15 MB and 0.1 s to compile at the costliest).
MAX_ENTRIES = 1_000
MAX_LIST_WRITTEN_OUT_LENGTH = 20_000


@functools.lru_cache(maxsize=16)
def compile_ban_list(text: str) -> BanList:
    """The compiled list; the same text (checked in settings, used by the loop) compiles once."""
    entries = tuple(_entries(text))
    if len(entries) > MAX_ENTRIES:
        raise BanListError(f"the ban list has {len(entries):,} entries; at most {MAX_ENTRIES:,}")
    _check_list_cost(entries)
    return BanList(entries, tuple(_compile(entry) for entry in entries))


def _check_list_cost(entries: tuple[str, ...]) -> None:
    """Refuse a list whose /regex/ entries together cost too much, before compiling any."""
    total = 0
    for entry in entries:
        if _is_regex_entry(entry) and len(entry) <= MAX_PATTERN_LENGTH:
            try:
                total += regex_written_out_length(entry[1:-1])
            except _TooCostly:
                continue  # that entry's own error comes when it is compiled
        if total > MAX_LIST_WRITTEN_OUT_LENGTH:
            raise BanListError(
                "the ban list's /regex/ entries are too complex together: their repeat counts, "
                f"multiplied out, pass {MAX_LIST_WRITTEN_OUT_LENGTH:,} characters"
            )


def _is_regex_entry(entry: str) -> bool:
    return len(entry) >= 2 and entry.startswith("/") and entry.endswith("/")


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
    if _is_regex_entry(entry):
        return _compile_regex(entry, entry[1:-1])
    # Written as Danbooru spells the tag (`\m/`) or as a webui prompt escapes it
    # (`ganyu \(genshin impact\)`): either spelling bans it.
    keys = dict.fromkeys((raw_key(entry), canonical(entry)))
    forms = (".*".join(re.escape(piece) for piece in key.split("*")) for key in keys)
    return regex.compile("|".join(f"(?:{form})" for form in forms), regex.IGNORECASE)


def _compile_regex(entry: str, source: str) -> Any:
    problem = regex_cost_problem(source)
    if problem:
        raise BanListError(f"ban list entry {_shown(entry)} is too complex: {problem}")
    try:
        return regex.compile(source, regex.IGNORECASE)
    except (regex.error, ValueError) as exc:  # ValueError: e.g. both (?V0) and (?V1)
        raise BanListError(f"ban list entry {entry!r} is not a valid regex: {exc}") from exc
    except (MemoryError, OverflowError, RecursionError) as exc:
        # Past the checks above, but the engine still gave up: refuse the entry, not the job.
        raise BanListError(
            f"ban list entry {_shown(entry)} is too complex for the regex engine "
            f"({type(exc).__name__})"
        ) from exc


def _shown(entry: str) -> str:
    return entry if len(entry) <= 80 else f"{entry[:60]}…{entry[-10:]}"


# ------------------------------------------------------------ what a regex costs to compile
#
# The `regex` engine lays out code for every counted repeat, multiplied through nesting:
# `(a{1000}){1000}` takes 0.35 s and 260 MB to compile, `(a{65535}){65535}` 5 GB and
# `((a{65535}){65535}){65535}` all memory there is, and the match timeout cannot stop it.
# So a /regex/ entry is measured before it is compiled: its length with every repeat
# written out in full (`a{3}` as `aaa`). Measured with regex 2026, compiling costs at
# most ~0.75 KB per character written out (`\R`, any line break, is the costliest piece),
# so the limit keeps a compile under ~10 MB and ~50 ms; real ban patterns
# (`/.{3,20}_ears/`) write out to under a hundred characters.
MAX_WRITTEN_OUT_LENGTH = 10_000
# Groups and version-1 nested [sets] deep; the engine's parser recurses per level
# (`(?V1)` and 240 `[` already overflow Python's stack). Real patterns nest 1 to 3 deep.
MAX_NESTING = 20

_DIGITS = frozenset("0123456789")
_ALNUM = frozenset(string.ascii_letters + string.digits)
_POSIX_NAME = _ALNUM | frozenset(" &_-.")
_POSIX_VALUE = _POSIX_NAME | frozenset("/")
_SET_OPERATORS = ("||", "~~", "&&", "--")
_FLAG_LETTERS = frozenset("abefiLmprsuwx")


def regex_cost_problem(source: str) -> str | None:
    """Why compiling `source` with `regex` would cost too much, or None.

    Reads the pattern as the engine's parser does (escapes, [sets] and POSIX classes,
    (?x) verbose regions and # comments, (?#...), group kinds, {n}, {n,}, {,m}, {n,m})
    and errs high where a pattern is malformed, which the engine then refuses anyway.
    Version 1 (`(?V1)`, or a host's default) reads [sets] differently: both are measured.
    """
    try:
        regex_written_out_length(source)
    except _TooCostly as exc:
        return str(exc)
    return None


def regex_written_out_length(source: str) -> int:
    """`source`'s length with every counted repeat written out (the larger of the two
    readings); raises _TooCostly past the limits."""
    return max(_Reading(source, version1).measure() for version1 in (False, True))


class _TooCostly(Exception):
    pass


@dataclass
class _Group:
    """A group being read: its written-out length so far, split off the last item."""

    verbose: bool
    # Flags set inside (?|...) and a lookaround conditional's branches outlive the group.
    keeps_flags: bool = False
    before_last: int = 0
    last: int = 0  # what a quantifier that follows repeats

    @property
    def size(self) -> int:
        return self.before_last + self.last

    def add(self, size: int) -> None:
        self.before_last += self.last
        self.last = size

    def repeat(self, factor: int, quantifier_length: int) -> None:
        self.last = self.last * factor + quantifier_length

    def branch(self) -> None:
        self.before_last += self.last + 1
        self.last = 0


class _Reading:
    """One pass over a pattern; `problem()` says what is over the limits."""

    def __init__(self, text: str, version1: bool) -> None:
        self.text = text
        self.version1 = version1
        self.pos = 0
        self.groups = [_Group(verbose=False)]

    def measure(self) -> int:
        """The written-out length; raises _TooCostly past the limits."""
        while self._more():
            self._step()
        while len(self.groups) > 1:  # unclosed: the engine refuses it, but measure it
            self._close()
        self._check_size(self.groups[0].size)
        return self.groups[0].size

    def _step(self) -> None:
        start, char = self.pos, self.text[self.pos]
        self.pos += 1
        group = self.groups[-1]
        if char == "\\":  # the escaped character is read as is, even in verbose mode
            self.pos = min(self.pos + 1, len(self.text))
            group.add(self.pos - start)
        elif char == "[":
            self.pos = self._set_end()
            group.add(self.pos - start)
        elif char == "(":
            self._open(start)
        elif char == ")" and len(self.groups) > 1:
            self._close()
        elif char == "|":
            group.branch()
        elif char in "*+?":
            group.repeat(1, 1)
        elif char == "{" and (factor := self._counted_repeat()) is not None:
            group.repeat(factor, self.pos - start)
            self._check_size(group.last)
        else:
            group.add(1)

    # ---- reading helpers

    def _more(self) -> bool:
        """Skip what verbose mode ignores here (white space, # comments); any pattern left?"""
        text = self.text
        if self.groups[-1].verbose:
            while self.pos < len(text):
                if text[self.pos].isspace():
                    self.pos += 1
                elif text[self.pos] == "#":
                    end = text.find("\n", self.pos)
                    self.pos = len(text) if end < 0 else end
                else:
                    break
        return self.pos < len(text)

    def _next_is(self, chars: str) -> bool:
        return self._more() and self.text[self.pos] in chars

    def _number(self) -> str:
        digits = []
        while self._more() and self.text[self.pos] in _DIGITS:
            digits.append(self.text[self.pos])
            self.pos += 1
        return "".join(digits)

    def _skip_name(self) -> None:
        """Past a group's name or number and the `>` or `)` that ends it."""
        while self._more() and self.text[self.pos] not in ")>":
            self.pos += 1
        self.pos = min(self.pos + 1, len(self.text))

    def _check_size(self, size: int) -> None:
        if size > MAX_WRITTEN_OUT_LENGTH:
            raise _TooCostly(
                f"its repeat counts, multiplied out, make it longer than "
                f"{MAX_WRITTEN_OUT_LENGTH:,} characters; use smaller counts, or * and +"
            )

    def _check_nesting(self, extra: int = 0) -> None:
        depth = len(self.groups) - 1 + extra
        if depth > MAX_NESTING:
            raise _TooCostly(f"it nests more than {MAX_NESTING} levels deep")

    # ---- quantifiers

    def _counted_repeat(self) -> int | None:
        """After `{`: how many times `{n}`, `{n,}`, `{,m}` or `{n,m}` repeats, else None."""
        start = self.pos
        low = self._number()
        if self._next_is(","):
            self.pos += 1
            high = self._number()
        elif low:
            high = low
        else:
            high = None
        if high is None or not self._next_is("}"):
            self.pos = start  # a literal `{`, or a fuzzy constraint such as {e<=1}
            return None
        self.pos += 1
        # `{n,}` costs as `{n}` does; the larger count bounds either.
        return max(int(low or 0), int(high or 0), 1)

    # ---- groups

    def _push(self, start: int, *, verbose: bool | None = None, keeps_flags: bool = False):
        parent = self.groups[-1]
        flag = parent.verbose if verbose is None else verbose
        self.groups.append(_Group(flag, keeps_flags, before_last=self.pos - start))
        self._check_nesting()

    def _close(self) -> None:
        child = self.groups.pop()
        parent = self.groups[-1]
        parent.add(child.size + 1)
        if child.keeps_flags:
            parent.verbose = child.verbose
        self._check_size(parent.last)

    def _open(self, start: int) -> None:
        text = self.text
        if text.startswith("?", self.pos):
            self.pos += 1
            self._open_extension(start)
        elif text.startswith("*", self.pos) and self._verb():
            self.groups[-1].add(self.pos - start)
        else:
            self._push(start)

    def _open_extension(self, start: int) -> None:
        """After `(?`: the character right after the `?` says what follows."""
        kind = self.text[self.pos : self.pos + 1]
        if kind == "#":
            self._skip_comment()
        elif kind and kind in "=!>:|":
            self.pos += 1
            self._push(start, keeps_flags=kind == "|")
        elif kind == "<":
            self.pos += 1
            if self._next_is("=!"):
                self.pos += 1  # a lookbehind
            else:
                self._skip_name()
            self._push(start)
        elif kind == "P":
            self.pos += 1
            if self._next_is("<"):
                self.pos += 1
                self._skip_name()
                self._push(start)
            else:  # (?P=name) or (?P>name): one item
                self._skip_name()
                self.groups[-1].add(self.pos - start)
        elif kind == "(":
            self.pos += 1
            self._open_condition(start)
        elif kind and (kind in "R&" or kind in _DIGITS or self._relative_call(kind)):
            self._skip_name()  # a call to a group: one item
            self.groups[-1].add(self.pos - start)
        else:
            self._flags(start)

    def _relative_call(self, kind: str) -> bool:
        if kind not in "+-":
            return False
        start = self.pos
        self.pos += 1
        digit = self._next_is("0123456789")
        self.pos = start
        return digit

    def _open_condition(self, start: int) -> None:
        """After `(?(`: a group number or name, or a lookaround, then yes|no."""
        if self._next_is("?"):
            self.pos += 1
            self._push(start, keeps_flags=True)
            if self._next_is("<"):
                self.pos += 1
            if self._next_is("=!"):
                self.pos += 1
            self._push(self.pos)
        else:
            self._push(start)
            self._skip_name()

    def _flags(self, start: int) -> None:
        """`(?x)` turns verbose mode on to the group's end, `(?-x:...)` off inside."""
        verbose, turning_on = self.groups[-1].verbose, True
        while self._more():
            char = self.text[self.pos]
            if char == "V":  # V0 or V1, the engine's version
                self.pos += 1
                if self._next_is("01"):
                    self.pos += 1
                continue
            if char == "-" and turning_on:
                turning_on = False
            elif char in _FLAG_LETTERS:
                verbose = turning_on if char == "x" else verbose
            else:
                break
            self.pos += 1
        if self._next_is(":"):
            self.pos += 1
            self._push(start, verbose=verbose)
        elif self._next_is(")"):
            self.pos += 1
            self.groups[-1].verbose = verbose
        else:
            self._push(start)  # not a flag group: the engine refuses it

    def _verb(self) -> bool:
        """After `(`, at `*`: a control verb such as (*PRUNE)? Then past it."""
        start = self.pos
        self.pos += 1
        word = []
        while self._more() and self.text[self.pos] not in ")>":
            word.append(self.text[self.pos])
            self.pos += 1
        if word and word[0].isalpha():
            self.pos = min(self.pos + 1, len(self.text))
            return True
        self.pos = start
        return False

    def _skip_comment(self) -> None:
        """At the `#` of `(?#...)`: past its `)`; a backslash hides the character after it."""
        text, pos = self.text, self.pos + 1
        while pos < len(text) and text[pos] != ")":
            pos += 2 if text[pos] == "\\" else 1
        self.pos = min(pos + 1, len(text))

    # ---- [sets]

    def _set_end(self) -> int:
        """After `[`: the position past the set's `]`. Read as is: verbose mode stops here.

        A `]` that starts an item is a member; version 1 nests sets and has the operators
        `|| ~~ && --`, after which a `]` starts an item too.
        """
        text, pos, depth = self.text, self._past_caret(self.pos), 1
        item_next = True
        while pos < len(text):
            if not item_next and text[pos] == "]":
                depth, pos = depth - 1, pos + 1
                if depth == 0:
                    return pos
                continue
            if not item_next and self.version1 and text.startswith(_SET_OPERATORS, pos):
                pos, item_next = pos + 2, True
                continue
            item_next = False
            if text[pos] == "\\":
                pos += 2
            elif posix_end := _posix_class_end(text, pos):
                pos = posix_end
            elif self.version1 and text[pos] == "[":
                depth, pos, item_next = depth + 1, self._past_caret(pos + 1), True
                self._check_nesting(depth)
            else:
                pos += 1
        return len(text)

    def _past_caret(self, pos: int) -> int:
        return pos + 1 if self.text.startswith("^", pos) else pos


def _posix_class_end(text: str, pos: int) -> int:
    """The end of a POSIX class such as `[:alpha:]` or `[:^digit:]` at `pos`, or 0."""
    if not text.startswith("[:", pos):
        return 0
    pos = _past(text, pos + 2 + text.startswith("^", pos + 2), _POSIX_NAME)
    if text[pos : pos + 1] in (":", "="):
        value_end = _past(text, pos + 1, _POSIX_VALUE)
        if text[pos + 1 : value_end].strip():
            pos = value_end
    return pos + 2 if text.startswith(":]", pos) else 0


def _past(text: str, pos: int, chars: frozenset[str]) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos

"""Which category a tag belongs to, answered from an on-disk SQLite index.

DTG needs every tag of the user's prompt sorted into artist, character,
copyright, meta and general lines. The reference loads ~950k names into
Python sets (about 120 MB and a slow start); here they are indexed once into a
SQLite file and each lookup reads a few pages of it.

Tag names come from the sources of `tag_sources` (kgen's lists, then
tagcomplete CSVs); `tag_index` keeps them in the SQLite file.

Classification order for one tag:

1. the built-in classes (rating, quality, special) of ``categories``;
2. ``by NAME`` / ``artist:NAME`` when NAME is a known artist;
3. the exact canonical name;
4. an alias, resolved to its tag;
5. otherwise general and unknown.

Exact names always beat aliases, since some tagcomplete aliases are also real
tag names.

A page of the index that goes bad while it is in use is rebuilt, every time it
happens; if a rebuild fails, tags read as general (with a notice, see
`TagLookup.notices`) until a later attempt works.

This module also re-exports the public names of `tag_sources` and `tag_index`,
so callers can keep importing them from here.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .categories import BUILTIN_CLASSES, Category, canonical
from .tag_index import (
    _SQL_ALIAS,
    _SQL_EXACT,
    CACHE_DIR_ENV,
    DEAD_WRITER_TEMP_S,
    INDEX_NAME,
    KEEP_INDEXES,
    MAX_UNUSED_S,
    SCHEMA_VERSION,
    STALE_TEMP_S,
    _connect,
    _fingerprint,
    default_index_path,
    mark_used,
    sweep_cache,
)
from .tag_sources import (
    _CATEGORY_OF,
    KGEN_FILES,
    SOURCE_KINDS,
    TagSource,
    default_sources,
    find_tagcomplete_csvs,
    kgen_tag_list_dir,
)

__all__ = [
    "CACHE_DIR_ENV",
    "DEAD_WRITER_TEMP_S",
    "INDEX_NAME",
    "KEEP_INDEXES",
    "KGEN_FILES",
    "MAX_UNUSED_S",
    "REBUILD_RETRY_S",
    "SCHEMA_VERSION",
    "SOURCE_KINDS",
    "STALE_TEMP_S",
    "TagInfo",
    "TagLookup",
    "TagSource",
    "default_index_path",
    "default_sources",
    "find_tagcomplete_csvs",
    "get_lookup",
    "kgen_tag_list_dir",
    "mark_used",
    "sweep_cache",
]

log = logging.getLogger("dtg")

_ARTIST_PREFIX = re.compile(r"^\s*(?:by[\s_]+|artist:)(?P<name>.+)$", re.IGNORECASE | re.DOTALL)
# After a failed rebuild, how long lookups answer "unknown" before the next attempt:
# one attempt (and one log line) per interval rather than per tag.
REBUILD_RETRY_S = 60.0


@dataclass(frozen=True)
class TagInfo:
    name: str
    category: Category
    known: bool


def _builtin(key: str) -> TagInfo | None:
    builtin = BUILTIN_CLASSES.get(key)
    return None if builtin is None else TagInfo(builtin[1], builtin[0], True)


# --- the lookup ---------------------------------------------------------------


class TagLookup:
    """Classifies tags against an index; safe to share between threads."""

    def __init__(self, sources: Sequence[TagSource], index_path: Path) -> None:
        self.sources = tuple(sources)
        self.index_path = index_path
        self.problems: list[str] = []
        self._fingerprint = _fingerprint(self.sources)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # Set while no index can be had: why, and when to try rebuilding again.
        self._broken: str | None = None
        self._retry_at = 0.0

    @classmethod
    def open(cls, sources: Sequence[TagSource], index_path: Path | None = None) -> TagLookup:
        sources = tuple(sources)
        lookup = cls(sources, Path(index_path) if index_path else default_index_path(sources))
        lookup._attach(rebuild=False)
        sweep_cache(lookup.index_path)
        return lookup

    def _attach(self, *, rebuild: bool) -> None:
        conn = _connect(self.index_path, self.sources, self._fingerprint, rebuild=rebuild)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'problems'").fetchone()
        except sqlite3.Error:
            conn.close()
            raise
        self.problems = json.loads(row[0]) if row else []
        self._conn = conn
        mark_used(self.index_path)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def notices(self) -> tuple[str, ...]:
        """What a result classified now should tell the user: empty unless lookups fail."""
        with self._lock:
            if self._broken is None:
                return ()
            return (
                f"The tag index is unusable ({self._broken}), so artist, character and "
                "copyright tags were not recognised and went in as general tags; "
                "the expansion may suffer until the index can be rebuilt.",
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> TagLookup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def classify(self, tag: str) -> TagInfo:
        return self.classify_many((tag,))[0]

    def classify_many(self, tags: Iterable[str]) -> list[TagInfo]:
        with self._lock:
            if self._closed:
                raise RuntimeError("TagLookup is closed")
            if self._broken is not None and time.monotonic() >= self._retry_at:
                self._rebuild()
            return [self._classify(tag) for tag in tags]

    def _classify(self, tag: str) -> TagInfo:
        key = canonical(tag)
        builtin = _builtin(key)
        if builtin is not None:
            return builtin
        artist = self._artist_reference(tag)
        if artist is not None:
            return artist
        found = self._find(key)
        if found is not None:
            # An alias of a built-in tag ("1girls") takes the built-in's class, not the
            # CSV's (which files special tags as general).
            return _builtin(found.name) or found
        return TagInfo(key, Category.GENERAL, False)

    def _artist_reference(self, tag: str) -> TagInfo | None:
        match = _ARTIST_PREFIX.match(tag)
        if match is None:
            return None
        found = self._find(canonical(match["name"]))
        if found is None or found.category is not Category.ARTIST:
            return None
        return found

    def _find(self, key: str) -> TagInfo | None:
        if not key or self._conn is None:  # no index (see _degrade): every name is unknown
            return None
        row = self._fetch(_SQL_EXACT, key) or self._fetch(_SQL_ALIAS, key)
        if row is None:
            return None
        return TagInfo(row[0], _CATEGORY_OF[row[1]], True)

    def _fetch(self, sql: str, key: str) -> tuple[str, int] | None:
        if self._conn is None:  # degraded by an earlier fetch of this same name
            return None
        try:
            return self._conn.execute(sql, (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            return self._recover(exc, sql, key)

    def _recover(self, exc: sqlite3.DatabaseError, sql: str, key: str) -> tuple[str, int] | None:
        """A page went bad after the open-time checks passed: rebuild, as often as it happens."""
        log.warning("tag index %s failed (%s); rebuilding it", self.index_path, exc)
        if not self._rebuild():
            return None
        assert self._conn is not None
        try:
            return self._conn.execute(sql, (key,)).fetchone()
        except sqlite3.DatabaseError as again:
            self._degrade(f"it failed again right after a rebuild: {again}")
            return None

    def _rebuild(self) -> bool:
        """Replace the connection with one to a fresh index; False (degraded) when that fails."""
        self._drop_connection()
        try:
            self._attach(rebuild=True)
        except (sqlite3.Error, OSError) as exc:
            self._degrade(f"rebuilding it failed: {exc}")
            return False
        if self._broken is not None:
            log.info("tag index %s works again", self.index_path)
        self._broken = None
        return True

    def _degrade(self, reason: str) -> None:
        """Answer every name as unknown until REBUILD_RETRY_S from now; says so once."""
        self._drop_connection()
        self._broken = reason
        self._retry_at = time.monotonic() + REBUILD_RETRY_S
        log.error(
            "tag index %s is unusable (%s); tags read as general until a rebuild works "
            "(next try in %.0f s)",
            self.index_path,
            reason,
            REBUILD_RETRY_S,
        )


_LOOKUPS: dict[tuple[tuple[TagSource, ...], Path | None], TagLookup] = {}
_LOOKUPS_LOCK = threading.Lock()


def get_lookup(
    sources: Sequence[TagSource] | None = None, index_path: Path | None = None
) -> TagLookup:
    """The shared lookup for these sources, opened (and built) on first use.

    The lock is held while building so that two threads never build the same
    index at once.
    """
    key_sources = tuple(default_sources() if sources is None else sources)
    key = (key_sources, Path(index_path) if index_path else None)
    with _LOOKUPS_LOCK:
        lookup = _LOOKUPS.get(key)
        if lookup is None or lookup.closed:
            lookup = TagLookup.open(key_sources, index_path)
            _LOOKUPS[key] = lookup
        return lookup

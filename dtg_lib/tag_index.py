"""The on-disk SQLite index of the tag sources: building it, opening it, tidying its folder.

The index lives in the user cache directory (``DTG_CACHE_DIR`` overrides it),
is written to a temporary file and renamed into place, and is rebuilt when a
source's size or mtime changes or when the file at the path does not prove
itself complete. Sources are written in the order given, each adding only the
names and aliases not known yet (see `tag_sources` for why that order matters).

Each open tidies the index's folder: temporary files of builds that died are
removed, and so are other source sets' indexes beyond the few most recently
used or unused for a month (see `sweep_cache`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from .tag_sources import KGEN_FILES, TagSource, _SourceReader

log = logging.getLogger("dtg")

# Bump whenever the tables or the way names are keyed change, so old indexes
# are rebuilt instead of being read with the wrong meaning.
SCHEMA_VERSION = 1
CACHE_DIR_ENV = "DTG_CACHE_DIR"
_BUILD_CACHE_KIB = 64 * 1024

# Cache housekeeping (see sweep_cache). A build's temporary file is named
# ".<index name>.<writer pid>.<random>.tmp" (before the pid was added, without it).
INDEX_NAME = re.compile(r"^tag-index-[0-9a-f]{16}\.sqlite$")
_TEMP_NAME = re.compile(r"^\.(?P<index>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]+\.tmp$")
STALE_TEMP_S = 3600.0
# A dead writer's file waits this long anyway: a cache folder shared between
# containers sees pids of other namespaces as dead.
DEAD_WRITER_TEMP_S = 300.0
KEEP_INDEXES = 4
MAX_UNUSED_S = 30 * 24 * 3600.0

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE tags (name TEXT PRIMARY KEY, cat INTEGER NOT NULL, spelling TEXT) WITHOUT ROWID;
CREATE TABLE aliases (alias TEXT PRIMARY KEY, target TEXT NOT NULL) WITHOUT ROWID;
"""
_SQL_EXACT = "SELECT coalesce(spelling, name), cat FROM tags WHERE name = ?"
_SQL_ALIAS = (
    "SELECT coalesce(t.spelling, t.name), t.cat FROM aliases AS a"
    " JOIN tags AS t ON t.name = a.target WHERE a.alias = ?"
)


def default_index_path(sources: Sequence[TagSource]) -> Path:
    """Cache file for this set of sources; different sets never share a file."""
    import hashlib  # only needed here; keeps the import of this module cheap

    cache_dir = os.environ.get(CACHE_DIR_ENV)
    if not cache_dir:
        import platformdirs

        cache_dir = platformdirs.user_cache_dir("dtg-upsampler", appauthor=False)
    ident = json.dumps([[s.kind, str(s.path.resolve())] for s in sources])
    digest = hashlib.sha256(ident.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / f"tag-index-{digest}.sqlite"


# --- building and validating the index ----------------------------------------


def _fingerprint(sources: Sequence[TagSource]) -> str:
    """Schema version plus size and mtime of every file the sources read."""
    entries: list[object] = [SCHEMA_VERSION]
    for source in sources:
        files = (
            [source.path / name for name, _ in KGEN_FILES]
            if source.kind == "kgen-dir"
            else [source.path]
        )
        entries.append([source.kind, str(source.path.resolve()), [_stat(f) for f in files]])
    return json.dumps(entries)


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _fill(conn: sqlite3.Connection, sources: Sequence[TagSource], fingerprint: str) -> list[str]:
    """Write all sources into an empty database; returns the problems met."""
    # Nothing to protect until the file is renamed into place, so skip the journal.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    # Names arrive in no particular order; a large page cache keeps the random
    # B-tree inserts in memory (SQLite frees it when the build connection closes).
    conn.execute(f"PRAGMA cache_size = -{_BUILD_CACHE_KIB}")
    conn.executescript(_SCHEMA)
    problems: list[str] = []
    with conn:
        for source in sources:
            reader = _SourceReader(source)
            conn.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?, ?)", reader.rows())
            conn.executemany("INSERT OR IGNORE INTO aliases VALUES (?, ?)", reader.aliases)
            problems.extend(reader.problems)
        meta = {
            "schema": str(SCHEMA_VERSION),
            "fingerprint": fingerprint,
            "problems": json.dumps(problems),
        }
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        # Written last in the same transaction: its presence proves the rest is there.
        conn.execute("INSERT INTO meta VALUES ('complete', '1')")
    for problem in problems:
        log.warning("%s", problem)
    return problems


def _build_index(target: Path, sources: Sequence[TagSource], fingerprint: str) -> None:
    """Build into a temporary file beside `target`, then rename it into place."""
    import tempfile  # only builds need it; keeps the import of this module cheap

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent
    )
    os.close(handle)
    tmp = Path(tmp_name)
    started = time.perf_counter()
    try:
        conn = sqlite3.connect(tmp)
        try:
            _fill(conn, sources, fingerprint)
        finally:
            conn.close()
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("built tag index %s in %.1f s", target, time.perf_counter() - started)


def _index_defect(conn: sqlite3.Connection, path: Path, fingerprint: str) -> str | None:
    """Why the opened index cannot be trusted, or None when it can."""
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    if page_count * page_size != path.stat().st_size:
        return "file size does not match its page count (truncated or half-written)"
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("complete") != "1":
        return "build never finished"
    if meta.get("schema") != str(SCHEMA_VERSION):
        return "built by another version"
    if meta.get("fingerprint") != fingerprint:
        return "tag sources changed"
    # Reads the table roots, so a garbled file fails now rather than mid-prompt.
    conn.execute(_SQL_ALIAS, ("",)).fetchone()
    return None


def _open_index(path: Path, fingerprint: str) -> sqlite3.Connection | None:
    """A read-only connection to a valid index at `path`, or None (with the reason logged)."""
    if not path.is_file():
        return None
    conn = None
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        defect = _index_defect(conn, path, fingerprint)
    except (sqlite3.Error, OSError) as exc:
        defect = f"unreadable ({exc})"
    if defect is None:
        return conn
    if conn is not None:
        conn.close()
    log.info("tag index %s will be rebuilt: %s", path, defect)
    return None


def _memory_index(sources: Sequence[TagSource], fingerprint: str) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    _fill(conn, sources, fingerprint)
    return conn


def _connect(
    path: Path, sources: Sequence[TagSource], fingerprint: str, *, rebuild: bool
) -> sqlite3.Connection:
    conn = None if rebuild else _open_index(path, fingerprint)
    if conn is not None:
        return conn
    try:
        _build_index(path, sources, fingerprint)
        conn = _open_index(path, fingerprint)
    except (OSError, sqlite3.Error) as exc:
        log.warning("cannot write tag index %s (%s); keeping it in memory", path, exc)
    return conn if conn is not None else _memory_index(sources, fingerprint)


# --- keeping the cache folder tidy ---------------------------------------------


def sweep_cache(index_path: Path, now: float | None = None) -> list[Path]:
    """Remove dead builds' temporary files and unused indexes beside `index_path`.

    Policy: a temporary file goes once it is an hour old, or five minutes old
    with its writer process gone. Of the other indexes (``tag-index-*.sqlite``,
    one per source set), those unused for 30 days go, and of the rest only the
    most recently used ones are kept, `KEEP_INDEXES` counting the one in use.
    "Used" is the later of a file's mtime and atime; opening an index sets its
    atime (`mark_used`). Returns what was removed.
    """
    now = time.time() if now is None else now
    try:
        entries = list(index_path.parent.iterdir())
    except OSError:
        return []
    doomed = [p for p in entries if _is_stale_temp(p, index_path.name, now)]
    doomed += _unwanted_indexes(index_path, entries, now)
    removed = []
    for path in doomed:
        try:
            path.unlink()
        except OSError as exc:  # in use (Windows), already gone, or not ours to delete
            log.debug("could not remove %s from the tag index cache: %s", path, exc)
            continue
        removed.append(path)
    if removed:
        log.info(
            "removed %d stale file(s) from %s: %s",
            len(removed),
            index_path.parent,
            ", ".join(p.name for p in removed),
        )
    return removed


def mark_used(path: Path) -> None:
    """Set the atime of an index to now, keeping its mtime; see `sweep_cache`."""
    try:
        stat = path.stat()
        os.utime(path, ns=(time.time_ns(), stat.st_mtime_ns))
    except OSError as exc:  # a read-only cache still works, it just is not tidied
        log.debug("could not mark tag index %s as used: %s", path, exc)


def _is_stale_temp(path: Path, index_name: str, now: float) -> bool:
    match = _TEMP_NAME.match(path.name)
    if match is None:
        return False
    if match["index"] != index_name and not INDEX_NAME.match(match["index"]):
        return False  # not a tag index build: leave it alone
    age = now - _last_used(path)
    if age > STALE_TEMP_S:
        return True
    writer = match["pid"]
    return writer is not None and age > DEAD_WRITER_TEMP_S and not _process_exists(int(writer))


def _process_exists(pid: int) -> bool:
    """Whether a process with this pid runs here; True when that cannot be told."""
    if os.name != "posix" or pid <= 0:
        return True  # on Windows, os.kill(pid, 0) would send CTRL+C, not probe
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def _unwanted_indexes(index_path: Path, entries: list[Path], now: float) -> list[Path]:
    others = [p for p in entries if INDEX_NAME.match(p.name) and p.name != index_path.name]
    others.sort(key=_last_used, reverse=True)
    kept = others[: max(KEEP_INDEXES - 1, 0)]
    unwanted = others[len(kept) :]
    return unwanted + [p for p in kept if now - _last_used(p) > MAX_UNUSED_S]


def _last_used(path: Path) -> float:
    try:
        stat = path.stat()
    except OSError:
        return float("inf")  # gone already: nothing to remove
    return max(stat.st_mtime, stat.st_atime)

"""Which category a tag belongs to, answered from an on-disk SQLite index.

DTG needs every tag of the user's prompt sorted into artist, character,
copyright, meta and general lines. The reference loads ~950k names into
Python sets (about 120 MB and a slow start); here they are indexed once into a
SQLite file and each lookup reads a few pages of it.

Sources, in the order given:

* ``kgen-dir``: the tag lists shipped in the tipo-kgen wheel (``artist.txt``,
  ``characters.txt``, ``copyrights.txt``, ``meta.txt``; one name a line, spaces
  for underscores). These are what DTG was trained with.
* ``tagcomplete``: a CSV in the format of the tag autocomplete extension,
  ``name,category,post_count,"alias1,alias2"``; it adds names DTG's lists lack
  and, above all, aliases.

Conflicts: the first source that names a tag decides its category, and the
first source that defines an alias decides its target; later sources only add
names and aliases that are not known yet. That is why ``default_sources`` puts
the kgen lists first. Exact names always beat aliases, since some
tagcomplete aliases are also real tag names.

Classification order for one tag:

1. the built-in classes (rating, quality, special) of ``categories``;
2. ``by NAME`` / ``artist:NAME`` when NAME is a known artist;
3. the exact canonical name;
4. an alias, resolved to its tag;
5. otherwise general and unknown.

The index lives in the user cache directory (``DTG_CACHE_DIR`` overrides it),
is written to a temporary file and renamed into place, and is rebuilt when a
source's size or mtime changes or when the file at the path does not prove
itself complete. A page that goes bad while the index is in use is rebuilt too,
every time it happens; if a rebuild fails, tags read as general (with a notice,
see `TagLookup.notices`) until a later attempt works.

Each open tidies the index's folder: temporary files of builds that died are
removed, and so are other source sets' indexes beyond the few most recently
used or unused for a month (see `sweep_cache`).
"""

from __future__ import annotations

import csv
import errno
import importlib.util
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .categories import BUILTIN_CLASSES, Category, canonical, raw_key

log = logging.getLogger("dtg")

# Bump whenever the tables or the way names are keyed change, so old indexes
# are rebuilt instead of being read with the wrong meaning.
SCHEMA_VERSION = 1
SOURCE_KINDS = ("kgen-dir", "tagcomplete")
CACHE_DIR_ENV = "DTG_CACHE_DIR"

KGEN_FILES: tuple[tuple[str, Category], ...] = (
    ("artist.txt", Category.ARTIST),
    ("characters.txt", Category.CHARACTER),
    ("copyrights.txt", Category.COPYRIGHT),
    ("meta.txt", Category.META),
)

# The tagcomplete numbering doubles as the stored code, so the CSV needs no
# translation table of its own.
_CODE_OF: dict[Category, int] = {
    Category.GENERAL: 0,
    Category.ARTIST: 1,
    Category.COPYRIGHT: 3,
    Category.CHARACTER: 4,
    Category.META: 5,
}
_CATEGORY_OF: dict[int, Category] = {code: cat for cat, code in _CODE_OF.items()}

_ARTIST_PREFIX = re.compile(r"^\s*(?:by[\s_]+|artist:)(?P<name>.+)$", re.IGNORECASE | re.DOTALL)
# Danbooru keeps underscores in names of up to 3 characters (see `canonical`),
# while the kgen lists spell every underscore as a space.
_SHORT_NAME = 3
_BUILD_CACHE_KIB = 64 * 1024
# After a failed rebuild, how long lookups answer "unknown" before the next attempt:
# one attempt (and one log line) per interval rather than per tag.
REBUILD_RETRY_S = 60.0

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


@dataclass(frozen=True)
class TagSource:
    path: Path
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(
                f"unknown tag source kind {self.kind!r}; expected one of {SOURCE_KINDS}"
            )
        # Callers often pass strings; a Path keeps equality and hashing stable.
        object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class TagInfo:
    name: str
    category: Category
    known: bool


def _builtin(key: str) -> TagInfo | None:
    builtin = BUILTIN_CLASSES.get(key)
    return None if builtin is None else TagInfo(builtin[1], builtin[0], True)


# --- locating sources ---------------------------------------------------------


def kgen_tag_list_dir() -> Path | None:
    """The tag-list folder of an installed tipo-kgen, found without importing kgen."""
    try:
        spec = importlib.util.find_spec("kgen")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "tag-list"
        if (folder / KGEN_FILES[0][0]).is_file():
            return folder
    return None


def find_tagcomplete_csvs(extensions_dir: Path) -> list[Path]:
    """danbooru.csv of every installed copy of the tag autocomplete extension."""
    try:
        folders = sorted(p for p in Path(extensions_dir).iterdir() if _is_tagcomplete_dir(p))
    except OSError:
        return []
    return [f / "tags" / "danbooru.csv" for f in folders if (f / "tags" / "danbooru.csv").is_file()]


def _is_tagcomplete_dir(path: Path) -> bool:
    # Forks and manual installs rename the folder (sd-webui-tagcomplete, ...-main).
    return "tagcomplete" in path.name.lower() and path.is_dir()


def default_sources(
    extra_csv: Sequence[Path] = (), extensions_dir: Path | None = None
) -> list[TagSource]:
    """kgen lists first (DTG's own vocabulary), then tagcomplete CSVs, then extra CSVs."""
    sources: list[TagSource] = []
    kgen_dir = kgen_tag_list_dir()
    if kgen_dir is not None:
        sources.append(TagSource(kgen_dir, "kgen-dir"))
    csvs = [*(find_tagcomplete_csvs(extensions_dir) if extensions_dir else []), *extra_csv]
    seen: set[Path] = set()
    for path in csvs:
        resolved = Path(path).resolve()
        if resolved not in seen:
            seen.add(resolved)
            sources.append(TagSource(Path(path), "tagcomplete"))
    return sources


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


# --- reading sources ----------------------------------------------------------


def _name_key(raw: str) -> str:
    """Key of a name as stored in a list (not as typed in a prompt).

    List names may hold literal backslashes (``\\konata``) that `canonical`
    would read as webui escapes; doubling them makes it keep them.
    """
    name = raw.strip()
    # Nearly every list name is already canonical; this check is ten times
    # cheaper than `canonical` and matters for the ~950k names of a build.
    if (
        name == name.lower()
        and name.isprintable()
        and "_" not in name
        and "\\" not in name
        and "  " not in name
    ):
        return name
    return raw_key(raw)


def _short_name_alias(key: str) -> str | None:
    """The other spelling of a short name: ``^_^`` <-> ``^ ^``."""
    if len(key) > _SHORT_NAME:
        return None
    if "_" in key:
        return key.replace("_", " ")
    if " " in key:
        return key.replace(" ", "_")
    return None


_Row = tuple[str, int, str | None]


class _SourceReader:
    """Streams (key, code, spelling) rows of one source; collects its aliases and problems.

    `spelling` is only set where the name DTG was trained with differs from
    the key: the kgen lists spell short names such as ``m_k`` as ``m k``.
    """

    def __init__(self, source: TagSource) -> None:
        self.source = source
        self.aliases: list[tuple[str, str]] = []
        self.problems: list[str] = []

    def rows(self) -> Iterator[_Row]:
        if self.source.kind == "kgen-dir":
            yield from self._kgen_rows()
        else:
            yield from self._csv_file_rows(self.source.path)

    def _problem(self, message: str) -> None:
        self.problems.append(f"tag source {self.source.path}: {message}")

    def _row(self, key: str, code: int, spelling: str | None = None) -> _Row:
        other = _short_name_alias(key)
        if other is not None:
            self.aliases.append((other, key))
        return key, code, spelling

    def _kgen_rows(self) -> Iterator[_Row]:
        folder = self.source.path
        if not folder.is_dir():
            self._problem("not a folder; skipped")
            return
        for filename, category in KGEN_FILES:
            yield from self._kgen_file_rows(folder / filename, _CODE_OF[category])

    def _kgen_file_rows(self, path: Path, code: int) -> Iterator[_Row]:
        bad = 0
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if "\ufffd" in line:
                        bad += 1
                    elif row := self._kgen_row(line.strip(), code):
                        yield row
        except OSError as exc:
            self._problem(f"cannot read {path.name} ({exc}); skipped")
            return
        if bad:
            self._problem(f"{path.name}: skipped {bad} lines that are not UTF-8")

    def _kgen_row(self, name: str, code: int) -> _Row | None:
        if len(name) > _SHORT_NAME:
            return self._row(_name_key(name), code)
        # Danbooru names have no spaces, so a space in a short kgen name was an
        # underscore; key it like the Danbooru name and keep kgen's spelling.
        key = _name_key(name.replace(" ", "_"))
        if not key:
            return None
        return self._row(key, code, key.replace("_", " ") if " " in name else None)

    def _csv_file_rows(self, path: Path) -> Iterator[_Row]:
        counter = _Malformed()
        try:
            with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
                for line, fields in _csv_records(handle, counter):
                    parsed = _parse_csv_fields(fields)
                    if parsed is None:
                        counter.add(line)
                    elif parsed[1] in _CATEGORY_OF:
                        yield self._csv_row(*parsed)
        except OSError as exc:
            self._problem(f"cannot read ({exc}); skipped")
            return
        if counter.count:
            self._problem(
                f"skipped {counter.count} malformed rows (first at line {counter.first_line})"
            )

    def _csv_row(self, name: str, code: int, aliases: list[str]) -> _Row:
        key = _name_key(name)
        for alias in aliases:
            alias_key = _name_key(alias)
            if alias_key and alias_key != key:
                self.aliases.append((alias_key, key))
        return self._row(key, code)


class _Malformed:
    """Counts malformed rows of one file; only the total and the first line are reported."""

    def __init__(self) -> None:
        self.count = 0
        self.first_line = 0

    def add(self, line: int) -> None:
        if not self.count:
            self.first_line = line
        self.count += 1


def _csv_records(handle: Iterable[str], counter: _Malformed) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each row; rows the csv module rejects are counted, not fatal."""
    reader = csv.reader(handle)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error:
            counter.add(reader.line_num)
            continue
        if fields:
            yield reader.line_num, fields


def _parse_csv_fields(fields: list[str]) -> tuple[str, int, list[str]] | None:
    """(name, category code, aliases) of one tagcomplete row, or None when malformed."""
    if len(fields) < 2 or len(fields) > 4 or any("\ufffd" in f for f in fields):
        return None
    name = fields[0].strip()
    try:
        code = int(fields[1])
    except ValueError:
        return None
    if not name:
        return None
    aliases = fields[3].split(",") if len(fields) == 4 else []
    return name, code, [a.strip() for a in aliases if a.strip()]


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

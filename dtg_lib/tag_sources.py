"""Where DTG's tag names come from, and how each source is read.

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
the kgen lists first.

The index that stores what these sources say is in `tag_index`; the lookup
that answers from it is in `tag_lookup`.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .categories import Category, raw_key

SOURCE_KINDS = ("kgen-dir", "tagcomplete")

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

# Danbooru keeps underscores in names of up to 3 characters (see `canonical`),
# while the kgen lists spell every underscore as a space.
_SHORT_NAME = 3


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

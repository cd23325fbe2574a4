"""Tag-type lookup: classification rules, source formats, and the on-disk index."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dtg_lib import tag_index, tag_lookup, tag_sources
from dtg_lib.categories import Category, canonical
from dtg_lib.tag_lookup import (
    TagInfo,
    TagLookup,
    TagSource,
    default_index_path,
    default_sources,
    find_tagcomplete_csvs,
    get_lookup,
    kgen_tag_list_dir,
)

REPO = Path(__file__).resolve().parent.parent

KGEN_LISTS = {
    "artist.txt": ["wlop", "ask (askzy)", "m k", "\\konata", "shared name"],
    "characters.txt": ["ganyu (genshin impact)", "hatsune miku"],
    "copyrights.txt": ["genshin impact", "vocaloid"],
    "meta.txt": ["highres", "absurdres"],
}

CSV_ROWS = [
    'long_hair,0,4677240,"/lh,longhair"',
    'breasts,0,3696374,"boobs,oppai"',
    # kgen already calls this an artist: the CSV must not change that.
    'shared_name,0,500,""',
    # An alias onto a tag that only kgen names as a character.
    'hatsune_miku,4,400000,"miku"',
    'new_artist,1,10,"na_alias"',
    # The alias "dog" collides with the real tag "dog" below: the real tag wins.
    'cat,0,300,"dog,kitty"',
    "dog,0,200,",
    # Danbooru files special and rating tags as general; their aliases must not be.
    '1girl,0,6421189,"1girls,sole_female"',
    'masterpiece,0,10,"master_piece"',
    "^_^,0,1000,",
    # Category 2 is unused on Danbooru: the row is skipped, not reported.
    "unused_category,2,5,",
    '"quoted ""name""",0,7,',
]


def write_kgen_dir(folder: Path, lists: dict[str, list[str]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for filename, names in (KGEN_LISTS if lists is None else lists).items():
        # The real lists have CRLF line endings.
        (folder / filename).write_bytes(("\r\n".join(names) + "\r\n").encode("utf-8"))
    return folder


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def kgen_source(tmp_path: Path) -> TagSource:
    return TagSource(write_kgen_dir(tmp_path / "tag-list"), "kgen-dir")


@pytest.fixture
def csv_source(tmp_path: Path) -> TagSource:
    return TagSource(write_csv(tmp_path / "danbooru.csv", CSV_ROWS), "tagcomplete")


@pytest.fixture
def lookup(tmp_path: Path, kgen_source: TagSource, csv_source: TagSource):
    with TagLookup.open([kgen_source, csv_source], tmp_path / "index.sqlite") as opened:
        yield opened


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every index build."""
    calls: list[Path] = []
    real = tag_index._build_index

    def counting(target, sources, fingerprint):
        calls.append(target)
        real(target, sources, fingerprint)

    monkeypatch.setattr(tag_index, "_build_index", counting)
    return calls


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may write into the real user cache.
    monkeypatch.setenv("DTG_CACHE_DIR", str(tmp_path / "cache"))


def info(name: str, category: Category, known: bool = True) -> TagInfo:
    return TagInfo(name, category, known)


# --- classification -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["hatsune miku", "Hatsune_Miku", "HATSUNE MIKU", "  hatsune   miku ", "hatsune_miku"],
)
def test_case_and_underscores_do_not_matter(lookup: TagLookup, text: str) -> None:
    assert lookup.classify(text) == info("hatsune miku", Category.CHARACTER)


@pytest.mark.parametrize(
    "text", [r"ganyu \(genshin impact\)", "ganyu_(genshin_impact)", "Ganyu (Genshin Impact)"]
)
def test_webui_escaped_parentheses(lookup: TagLookup, text: str) -> None:
    assert lookup.classify(text) == info("ganyu (genshin impact)", Category.CHARACTER)


@pytest.mark.parametrize(
    "text", ["by wlop", "By WLOP", "by_wlop", "artist:wlop", "ARTIST: wlop", "artist:Wlop "]
)
def test_artist_prefixes(lookup: TagLookup, text: str) -> None:
    assert lookup.classify(text) == info("wlop", Category.ARTIST)


def test_artist_prefix_with_escaped_name(lookup: TagLookup) -> None:
    assert lookup.classify(r"by ask_\(askzy\)") == info("ask (askzy)", Category.ARTIST)
    assert lookup.classify("artist:new artist") == info("new artist", Category.ARTIST)


@pytest.mark.parametrize("text", ["by hatsune miku", "by nobody at all", "artist:"])
def test_artist_prefix_needs_a_known_artist(lookup: TagLookup, text: str) -> None:
    # Not an artist: the whole text is looked up as an ordinary tag.
    assert lookup.classify(text) == info(canonical(text), Category.GENERAL, known=False)


def test_categories_from_kgen_lists(lookup: TagLookup) -> None:
    assert lookup.classify("wlop").category is Category.ARTIST
    assert lookup.classify("genshin impact").category is Category.COPYRIGHT
    assert lookup.classify("absurdres") == info("absurdres", Category.META)


def test_csv_names_use_spaces(lookup: TagLookup) -> None:
    assert lookup.classify("long hair") == info("long hair", Category.GENERAL)
    assert lookup.classify("new_artist") == info("new artist", Category.ARTIST)
    assert lookup.classify('quoted "name"') == info('quoted "name"', Category.GENERAL)


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("boobs", info("breasts", Category.GENERAL)),
        ("/lh", info("long hair", Category.GENERAL)),
        ("LongHair", info("long hair", Category.GENERAL)),
        ("na_alias", info("new artist", Category.ARTIST)),
        ("kitty", info("cat", Category.GENERAL)),
        # An alias from the CSV onto a name kgen classified.
        ("miku", info("hatsune miku", Category.CHARACTER)),
        # Aliases of the built-in special and quality tags take the built-in class.
        ("1girls", info("1girl", Category.SPECIAL)),
        ("sole_female", info("1girl", Category.SPECIAL)),
        ("master_piece", info("masterpiece", Category.QUALITY)),
    ],
)
def test_aliases_resolve_to_their_tag(lookup: TagLookup, alias: str, expected: TagInfo) -> None:
    assert lookup.classify(alias) == expected


def test_exact_name_beats_alias(lookup: TagLookup) -> None:
    assert lookup.classify("dog") == info("dog", Category.GENERAL)


def test_artist_prefix_resolves_artist_aliases(lookup: TagLookup) -> None:
    assert lookup.classify("by na_alias") == info("new artist", Category.ARTIST)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("masterpiece", info("masterpiece", Category.QUALITY)),
        ("Best_Quality", info("best quality", Category.QUALITY)),
        ("score_9", info("score_9", Category.QUALITY)),
        ("score 8 up", info("score_8_up", Category.QUALITY)),
        ("1girl", info("1girl", Category.SPECIAL)),
        ("Multiple_Boys", info("multiple boys", Category.SPECIAL)),
        ("NSFW", info("nsfw", Category.RATING)),
    ],
)
def test_builtin_classes(lookup: TagLookup, text: str, expected: TagInfo) -> None:
    assert lookup.classify(text) == expected


def test_builtin_classes_beat_sources(tmp_path: Path) -> None:
    source = TagSource(write_csv(tmp_path / "t.csv", ["general,3,1,", "1girl,4,1,"]), "tagcomplete")
    with TagLookup.open([source], tmp_path / "i.sqlite") as lookup:
        assert lookup.classify("general") == info("general", Category.RATING)
        assert lookup.classify("1girl") == info("1girl", Category.SPECIAL)


def test_unknown_tags_are_general(lookup: TagLookup) -> None:
    assert lookup.classify("Some_Made_Up tag") == info(
        "some made up tag", Category.GENERAL, known=False
    )
    assert lookup.classify("unused category") == info(
        "unused category", Category.GENERAL, known=False
    )


def test_short_names_match_either_spelling(lookup: TagLookup) -> None:
    # kgen spells Danbooru's m_k as "m k"; DTG must get kgen's spelling.
    assert lookup.classify("m_k") == info("m k", Category.ARTIST)
    assert lookup.classify("m k") == info("m k", Category.ARTIST)
    assert lookup.classify("by m_k") == info("m k", Category.ARTIST)
    # Danbooru keeps the underscore of a short general tag.
    assert lookup.classify("^_^") == info("^_^", Category.GENERAL)
    assert lookup.classify("^ ^") == info("^_^", Category.GENERAL)


def test_literal_backslash_in_a_list_name(lookup: TagLookup) -> None:
    # In a webui prompt a literal backslash is written escaped.
    assert lookup.classify("\\\\konata") == info("\\konata", Category.ARTIST)


def test_classify_many_keeps_order(lookup: TagLookup) -> None:
    tags = ["1girl", "boobs", "by wlop", "nothing known", "vocaloid"]
    assert lookup.classify_many(iter(tags)) == [lookup.classify(t) for t in tags]
    assert [i.category for i in lookup.classify_many(tags)] == [
        Category.SPECIAL,
        Category.GENERAL,
        Category.ARTIST,
        Category.GENERAL,
        Category.COPYRIGHT,
    ]


# --- several sources ----------------------------------------------------------


def test_first_source_wins_over_kgen_order(lookup: TagLookup) -> None:
    assert lookup.classify("shared name") == info("shared name", Category.ARTIST)


@pytest.mark.parametrize("reverse", [False, True])
def test_first_source_wins_between_csvs(tmp_path: Path, reverse: bool) -> None:
    one = write_csv(tmp_path / "one.csv", ['clash,0,1,"same_alias"', "only_one,0,1,"])
    two = write_csv(tmp_path / "two.csv", ['clash,3,1,""', 'other,4,1,"same_alias"'])
    paths = [two, one] if reverse else [one, two]
    sources = [TagSource(p, "tagcomplete") for p in paths]
    with TagLookup.open(sources, tmp_path / "i.sqlite") as lookup:
        if reverse:
            assert lookup.classify("clash") == info("clash", Category.COPYRIGHT)
            assert lookup.classify("same alias") == info("other", Category.CHARACTER)
        else:
            assert lookup.classify("clash") == info("clash", Category.GENERAL)
            assert lookup.classify("same alias") == info("clash", Category.GENERAL)
        # Later sources still add the names the earlier ones lack.
        assert lookup.classify("only one").known
        assert lookup.classify("other").category is Category.CHARACTER


def test_no_sources_still_classifies_builtins(tmp_path: Path) -> None:
    with TagLookup.open([], tmp_path / "i.sqlite") as lookup:
        assert lookup.classify("masterpiece").category is Category.QUALITY
        assert lookup.classify("wlop") == info("wlop", Category.GENERAL, known=False)
        assert lookup.problems == []


# --- bad sources ----------------------------------------------------------------


def test_malformed_csv_rows_are_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"good_one,0,1,\n"
        b"only_a_name\n"
        b"bad_category,x,1,\n"
        b'too,0,1,"many",fields\n'
        b"\xff\xfe_not_utf8,0,1,\n"
        b",0,1,\n" + b"huge," + b"x" * 200_000 + b",1,\n"
        b'good_two,1,1,"gt"\n'
    )
    with caplog.at_level(logging.WARNING, logger="dtg"):
        lookup = TagLookup.open([TagSource(path, "tagcomplete")], tmp_path / "i.sqlite")
    with lookup:
        assert lookup.classify("good one") == info("good one", Category.GENERAL)
        assert lookup.classify("gt") == info("good two", Category.ARTIST)
        assert not lookup.classify("only a name").known
        assert len(lookup.problems) == 1
        assert str(path) in lookup.problems[0]
        assert "6 malformed rows" in lookup.problems[0]
        assert "first at line 2" in lookup.problems[0]
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 1


def test_unreadable_sources_are_skipped_and_reported(tmp_path: Path, kgen_source) -> None:
    missing = TagSource(tmp_path / "missing.csv", "tagcomplete")
    a_folder = TagSource(tmp_path, "tagcomplete")
    no_dir = TagSource(tmp_path / "no-such-dir", "kgen-dir")
    sources = [missing, a_folder, no_dir, kgen_source]
    with TagLookup.open(sources, tmp_path / "i.sqlite") as lookup:
        assert lookup.classify("wlop").category is Category.ARTIST
        assert len(lookup.problems) == 3
        assert any("missing.csv" in p and "cannot read" in p for p in lookup.problems)
        assert any(str(tmp_path / "no-such-dir") in p for p in lookup.problems)


def test_kgen_dir_with_a_missing_list(tmp_path: Path) -> None:
    folder = write_kgen_dir(tmp_path / "kgen", {"artist.txt": ["wlop"], "meta.txt": ["highres"]})
    with TagLookup.open([TagSource(folder, "kgen-dir")], tmp_path / "i.sqlite") as lookup:
        assert lookup.classify("highres").category is Category.META
        assert sorted("characters.txt" in p or "copyrights.txt" in p for p in lookup.problems) == [
            True,
            True,
        ]


def test_problems_survive_index_reuse(tmp_path: Path, builds: list[Path]) -> None:
    source = TagSource(write_csv(tmp_path / "t.csv", ["ok,0,1,", "broken"]), "tagcomplete")
    index = tmp_path / "i.sqlite"
    with TagLookup.open([source], index) as first:
        problems = first.problems
    with TagLookup.open([source], index) as second:
        assert second.problems == problems
        assert len(problems) == 1
    assert len(builds) == 1


# --- the index file ---------------------------------------------------------------


def open_twice(sources: list[TagSource], index: Path) -> tuple[int, int]:
    """Inode and mtime of the index after the first and after a second open."""
    TagLookup.open(sources, index).close()
    return index.stat().st_ino, index.stat().st_mtime_ns


def test_index_is_reused_while_sources_are_unchanged(
    tmp_path: Path, kgen_source: TagSource, builds: list[Path]
) -> None:
    index = tmp_path / "i.sqlite"
    before = open_twice([kgen_source], index)
    with TagLookup.open([kgen_source], index) as lookup:
        assert lookup.classify("wlop").category is Category.ARTIST
    assert (index.stat().st_ino, index.stat().st_mtime_ns) == before
    assert len(builds) == 1


def test_index_is_rebuilt_when_a_source_changes(
    tmp_path: Path, csv_source: TagSource, builds: list[Path]
) -> None:
    index = tmp_path / "i.sqlite"
    TagLookup.open([csv_source], index).close()
    with csv_source.path.open("a", encoding="utf-8") as handle:
        handle.write("added_later,3,1,\n")
    with TagLookup.open([csv_source], index) as lookup:
        assert lookup.classify("added later") == info("added later", Category.COPYRIGHT)
    assert len(builds) == 2


def test_index_is_rebuilt_when_only_the_mtime_changes(
    tmp_path: Path, kgen_source: TagSource, builds: list[Path]
) -> None:
    index = tmp_path / "i.sqlite"
    TagLookup.open([kgen_source], index).close()
    meta = kgen_source.path / "meta.txt"
    stat = meta.stat()
    os.utime(meta, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    TagLookup.open([kgen_source], index).close()
    assert len(builds) == 2


def test_index_is_rebuilt_when_a_source_appears(
    tmp_path: Path, kgen_source: TagSource, builds: list[Path]
) -> None:
    index = tmp_path / "i.sqlite"
    (kgen_source.path / "meta.txt").unlink()
    with TagLookup.open([kgen_source], index) as lookup:
        assert not lookup.classify("highres").known
    write_kgen_dir(kgen_source.path)
    with TagLookup.open([kgen_source], index) as lookup:
        assert lookup.classify("highres").category is Category.META
    assert len(builds) == 2


def garbage(index: Path) -> None:
    index.write_bytes(os.urandom(64 * 1024))


def truncate(index: Path) -> None:
    with index.open("r+b") as handle:
        handle.truncate(index.stat().st_size // 2)


def empty(index: Path) -> None:
    index.write_bytes(b"")


def _edit_meta(index: Path, sql: str) -> None:
    conn = sqlite3.connect(index)
    with conn:
        conn.execute(sql)
    conn.close()


def unfinished(index: Path) -> None:
    _edit_meta(index, "DELETE FROM meta WHERE key = 'complete'")


def old_schema(index: Path) -> None:
    _edit_meta(index, "UPDATE meta SET value = '0' WHERE key = 'schema'")


def half_written(index: Path) -> None:
    # A valid SQLite header followed by pages that never got written.
    data = index.read_bytes()
    index.write_bytes(data[:4096] + b"\0" * (len(data) - 4096))


@pytest.mark.parametrize("damage", [garbage, truncate, empty, unfinished, old_schema, half_written])
def test_damaged_index_is_rebuilt(
    tmp_path: Path, kgen_source: TagSource, csv_source: TagSource, builds: list[Path], damage
) -> None:
    index = tmp_path / "i.sqlite"
    sources = [kgen_source, csv_source]
    TagLookup.open(sources, index).close()
    damage(index)
    with TagLookup.open(sources, index) as lookup:
        assert lookup.classify("wlop") == info("wlop", Category.ARTIST)
        assert lookup.classify("boobs") == info("breasts", Category.GENERAL)
    assert len(builds) == 2
    # The rebuilt file is trusted again.
    TagLookup.open(sources, index).close()
    assert len(builds) == 2


def test_damage_found_while_in_use_triggers_one_rebuild(tmp_path: Path, builds: list[Path]) -> None:
    # Enough names for the tags B-tree to have child pages that can go bad.
    rows = [f"name_{i:05d},1,1," for i in range(20_000)]
    source = TagSource(write_csv(tmp_path / "big.csv", rows), "tagcomplete")
    index = tmp_path / "i.sqlite"
    with TagLookup.open([source], index) as lookup:
        page_size = 4096
        with index.open("r+b") as handle:
            # Pages 1-4 hold the schema and the table roots; ruin every other page.
            handle.seek(4 * page_size)
            handle.write(b"\xff" * (index.stat().st_size - 4 * page_size))
        assert lookup.classify("name_12345") == info("name 12345", Category.ARTIST)
        assert lookup.classify("name 00001").known
    assert len(builds) == 2


@pytest.mark.parametrize("pages", [-8, 8])
def test_index_of_the_wrong_size_is_rebuilt_on_open(
    tmp_path: Path, builds: list[Path], pages: int
) -> None:
    # Cut or grown at a page boundary, past the schema and the table roots,
    # so that only the size tells that this is not the file that was written.
    rows = [f"name_{i:05d},1,1," for i in range(20_000)]
    source = TagSource(write_csv(tmp_path / "big.csv", rows), "tagcomplete")
    index = tmp_path / "i.sqlite"
    TagLookup.open([source], index).close()
    with index.open("r+b") as handle:
        handle.truncate(index.stat().st_size + pages * 4096)
    with TagLookup.open([source], index) as lookup:
        assert len(builds) == 2
        assert lookup.classify("name_19999") == info("name 19999", Category.ARTIST)


def test_no_temporary_files_are_left(tmp_path: Path, kgen_source: TagSource) -> None:
    folder = tmp_path / "cache-dir"
    TagLookup.open([kgen_source], folder / "i.sqlite").close()
    assert [p.name for p in folder.iterdir()] == ["i.sqlite"]


def test_failed_build_keeps_the_previous_index(
    tmp_path: Path, csv_source: TagSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cache-dir"
    index = folder / "i.sqlite"
    TagLookup.open([csv_source], index).close()
    before = index.read_bytes()
    with csv_source.path.open("a", encoding="utf-8") as handle:
        handle.write("added,0,1,\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tag_index, "_fill", interrupted)
    with pytest.raises(KeyboardInterrupt):
        TagLookup.open([csv_source], index)
    assert index.read_bytes() == before
    assert [p.name for p in folder.iterdir()] == ["i.sqlite"]


def test_unwritable_index_location_falls_back_to_memory(
    tmp_path: Path, kgen_source: TagSource
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with TagLookup.open([kgen_source], blocker / "i.sqlite") as lookup:
        assert lookup.classify("by wlop") == info("wlop", Category.ARTIST)


def test_default_index_path_follows_cache_dir_and_sources(
    tmp_path: Path, kgen_source: TagSource, csv_source: TagSource
) -> None:
    one = default_index_path([kgen_source])
    both = default_index_path([kgen_source, csv_source])
    assert one.parent == both.parent == tmp_path / "cache"
    assert one != both
    assert one == default_index_path([TagSource(str(kgen_source.path), "kgen-dir")])
    with TagLookup.open([kgen_source]) as lookup:
        assert lookup.index_path == one
    assert one.is_file()


def test_closed_lookup_refuses_to_classify(lookup: TagLookup) -> None:
    lookup.close()
    assert lookup.closed
    with pytest.raises(RuntimeError):
        lookup.classify("wlop")


# --- threads ----------------------------------------------------------------------


def test_threads_classify_concurrently(lookup: TagLookup) -> None:
    tags = ["by wlop", "boobs", "1girl", "miku", "made up", "vocaloid", "m_k", "dog"]
    expected = [lookup.classify(t) for t in tags]
    start = threading.Barrier(8)

    def work(_: int) -> bool:
        start.wait()
        return all(lookup.classify_many(tags) == expected for _ in range(200))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))


def test_get_lookup_shares_one_instance(
    tmp_path: Path, kgen_source: TagSource, builds: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A private cache for this test: the process-wide one must not keep its lookups.
    monkeypatch.setattr(tag_lookup, "_LOOKUPS", {})
    index = tmp_path / "shared.sqlite"
    start = threading.Barrier(6)

    def get(_: int) -> TagLookup:
        start.wait()
        return get_lookup([kgen_source], index)

    with ThreadPoolExecutor(6) as pool:
        found = list(pool.map(get, range(6)))
    assert all(f is found[0] for f in found)
    assert len(builds) == 1
    assert get_lookup((kgen_source,), index) is found[0]
    assert get_lookup([kgen_source], tmp_path / "other.sqlite") is not found[0]
    found[0].close()
    reopened = get_lookup([kgen_source], index)
    assert reopened is not found[0]
    assert reopened.classify("wlop").category is Category.ARTIST


# --- locating sources -------------------------------------------------------------


def test_find_tagcomplete_csvs(tmp_path: Path) -> None:
    extensions = tmp_path / "extensions"
    wanted = []
    for name in ["a1111-sd-webui-tagcomplete", "sd-webui-TagComplete-main"]:
        wanted.append(write_csv(_tags_dir(extensions / name) / "danbooru.csv", ["a,0,1,"]))
    write_csv(_tags_dir(extensions / "other-extension") / "danbooru.csv", ["a,0,1,"])
    _tags_dir(extensions / "a1111-sd-webui-tagcomplete-empty")
    assert find_tagcomplete_csvs(extensions) == sorted(wanted)
    assert find_tagcomplete_csvs(tmp_path / "nowhere") == []


def _tags_dir(extension: Path) -> Path:
    folder = extension / "tags"
    folder.mkdir(parents=True)
    return folder


def test_default_sources_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kgen_dir = write_kgen_dir(tmp_path / "kgen")
    monkeypatch.setattr(tag_sources, "kgen_tag_list_dir", lambda: kgen_dir)
    extensions = tmp_path / "extensions"
    found = write_csv(_tags_dir(extensions / "a1111-sd-webui-tagcomplete") / "danbooru.csv", [])
    extra = write_csv(tmp_path / "extra.csv", [])
    sources = default_sources([extra, found], extensions)
    assert sources == [
        TagSource(kgen_dir, "kgen-dir"),
        TagSource(found, "tagcomplete"),
        TagSource(extra, "tagcomplete"),
    ]


def test_default_sources_without_kgen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tag_sources.importlib.util, "find_spec", lambda name: None)
    assert kgen_tag_list_dir() is None
    assert default_sources([tmp_path / "x.csv"]) == [TagSource(tmp_path / "x.csv", "tagcomplete")]


def test_unknown_source_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        TagSource(tmp_path, "json")


def test_import_is_light() -> None:
    code = (
        "import sys; import dtg_lib.tag_lookup as t; t.kgen_tag_list_dir(); "
        "heavy = {'modules', 'gradio', 'torch', 'kgen', 'transformers'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"


# --- keys -------------------------------------------------------------------------


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=12))
# Lower-case names that only the fast path's underscore and double-space checks
# send to the general rule, and a short name that keeps its underscore; random
# text seldom hits them.
@example("long_hair")
@example("two  spaces")
@example("^_^")
def test_list_name_key_matches_canonical(raw: str) -> None:
    # The fast path of _name_key must agree with the general rule.
    assert tag_sources._name_key(raw) == canonical(raw.replace("\\", "\\\\"))


# --- the installed tipo-kgen lists ------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(kgen_tag_list_dir() is None, reason="tipo-kgen is not installed")
def test_installed_kgen_lists(tmp_path: Path) -> None:
    source = TagSource(kgen_tag_list_dir(), "kgen-dir")
    with TagLookup.open([source], tmp_path / "kgen.sqlite") as lookup:
        assert lookup.problems == []
        assert lookup.classify(r"ganyu \(genshin impact\)") == info(
            "ganyu (genshin impact)", Category.CHARACTER
        )
        assert lookup.classify("Genshin_Impact").category is Category.COPYRIGHT
        assert lookup.classify("by wlop") == info("wlop", Category.ARTIST)
        assert lookup.classify("highres").category is Category.META
        assert lookup.classify("long hair") == info("long hair", Category.GENERAL, known=False)
        count = lookup._conn.execute("SELECT count(*) FROM tags").fetchone()[0]
        assert count > 900_000

"""Cost of classifying one prompt: the SQLite tag index against the kgen-style sets.

Builds the index once (timed), then measures each approach in fresh Python
processes, since start-up is the cost that matters for a webui extension:

* index: import dtg_lib.tag_lookup, open the built index, classify 30 tags;
* sets:  read the kgen tag lists into Python sets (the way kgen.formatter
  does) and classify the same 30 tags.

Budget for the index: under 50 ms and under 30 MB of added resident memory.

    python benchmarks/bench_tag_lookup.py [--runs 5] [--with-csv [PATH]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_CSV = Path("/work/shared/data/danbooru-tags-2025-05-01.csv")
BUDGET_MS = 50.0
BUDGET_MB = 30.0

PROMPT_TAGS = [
    "masterpiece",
    "best quality",
    "newest",
    "1girl",
    "solo",
    r"ganyu \(genshin impact\)",
    "genshin impact",
    "by wlop",
    "artist:ask_(askzy)",
    "Long_Hair",
    "blue hair",
    "horns",
    "looking at viewer",
    "smile",
    "upper body",
    "bare shoulders",
    "detached sleeves",
    "bell",
    "neck bell",
    "purple eyes",
    "outdoors",
    "cloud",
    "sky",
    "day",
    "blush",
    "highres",
    "absurdres",
    "boobs",
    "sensitive",
    "some made up tag",
]


# --- children (each runs in a fresh interpreter) ------------------------------


def _rss_kib() -> int:
    """Resident set size now, from /proc; falls back to the peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child_index(index_path: str, sources_json: str) -> dict[str, object]:
    rss0, t0 = _rss_kib(), time.perf_counter()
    from dtg_lib.tag_lookup import TagLookup, TagSource

    t_import = time.perf_counter()
    sources = [TagSource(Path(p), kind) for p, kind in json.loads(sources_json)]
    lookup = TagLookup.open(sources, Path(index_path))
    t_open = time.perf_counter()
    infos = lookup.classify_many(PROMPT_TAGS)
    t_done = time.perf_counter()
    return {
        "import_ms": (t_import - t0) * 1e3,
        "open_ms": (t_open - t_import) * 1e3,
        "classify_ms": (t_done - t_open) * 1e3,
        "total_ms": (t_done - t0) * 1e3,
        "rss_mb": (_rss_kib() - rss0) / 1024,
        "known": sum(i.known for i in infos),
    }


def _load_sets(folder: Path, builtins: dict[str, set[str]]) -> dict[str, set[str]]:
    # Text mode turns the lists' CRLF into "\n", exactly as kgen reads them.
    sets = {
        path.stem: set(path.read_text(encoding="utf-8").strip().split("\n"))
        for path in sorted(folder.glob("*.txt"))
    }
    # kgen.formatter adds its built-in lists after the files, as here.
    return sets | builtins


def _classify_with_sets(sets: dict[str, set[str]], tag: str) -> str:
    for category, names in sets.items():
        if tag in names or tag.replace("_", " ") in names:
            return category
    return "general"


def _child_sets(folder: str) -> dict[str, object]:
    # Imported before the clock starts: only the list loading is measured.
    from dtg_lib.categories import QUALITY_TAGS, RATING_TAGS, SPECIAL_TAGS

    builtins = {
        "special": set(SPECIAL_TAGS),
        "quality": set(QUALITY_TAGS),
        "rating": set(RATING_TAGS),
    }
    rss0, t0 = _rss_kib(), time.perf_counter()
    sets = _load_sets(Path(folder), builtins)
    t_open = time.perf_counter()
    found = [_classify_with_sets(sets, tag.strip()) for tag in PROMPT_TAGS]
    t_done = time.perf_counter()
    return {
        "import_ms": 0.0,
        "open_ms": (t_open - t0) * 1e3,
        "classify_ms": (t_done - t_open) * 1e3,
        "total_ms": (t_done - t0) * 1e3,
        "rss_mb": (_rss_kib() - rss0) / 1024,
        "known": sum(c != "general" for c in found),
    }


# --- parent -------------------------------------------------------------------


def _run_child(*args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout)


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = ("import_ms", "open_ms", "classify_ms", "total_ms", "rss_mb")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        "total_ms_max": max(r["total_ms"] for r in runs),
        "rss_mb_max": max(r["rss_mb"] for r in runs),
        "known": runs[0]["known"],
    }


def _print_table(rows: dict[str, dict[str, float]], n_runs: int) -> None:
    print(f"\nmedian of {n_runs} fresh processes, {len(PROMPT_TAGS)} tags")
    header = ("approach", "import", "open/load", "classify", "total", "max total", "RSS", "known")
    print("{:<10} {:>9} {:>10} {:>9} {:>9} {:>10} {:>9} {:>6}".format(*header))
    for name, s in rows.items():
        print(
            f"{name:<10} {s['import_ms']:>7.1f}ms {s['open_ms']:>8.1f}ms {s['classify_ms']:>7.2f}ms"
            f" {s['total_ms']:>7.1f}ms {s['total_ms_max']:>8.1f}ms {s['rss_mb']:>6.1f}MB"
            f" {s['known']:>6}"
        )


def _build(sources: list, index_path: Path) -> float:
    from dtg_lib.tag_lookup import TagLookup

    started = time.perf_counter()
    TagLookup.open(sources, index_path).close()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--with-csv",
        nargs="?",
        const=SHARED_CSV,
        type=Path,
        help=f"also index a tagcomplete CSV (default {SHARED_CSV})",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = _child_index(*rest) if kind == "index" else _child_sets(*rest)
        print(json.dumps(result))
        return 0
    return _bench(args.runs, args.with_csv)


def _bench(n_runs: int, csv_path: Path | None) -> int:
    sys.path.insert(0, str(REPO))
    from dtg_lib.tag_lookup import TagSource, kgen_tag_list_dir

    kgen_dir = kgen_tag_list_dir()
    if kgen_dir is None:
        print("tipo-kgen is not installed (pip install --no-deps tipo-kgen)")
        return 1
    sources = [TagSource(kgen_dir, "kgen-dir")]
    if csv_path is not None:
        sources.append(TagSource(csv_path, "tagcomplete"))
    with tempfile.TemporaryDirectory() as tmp:
        index_path = Path(tmp) / "tag-index.sqlite"
        build_s = _build(sources, index_path)
        size_mb = index_path.stat().st_size / 1e6
        print(f"sources: {', '.join(f'{s.kind}:{s.path}' for s in sources)}")
        print(f"index build: {build_s:.2f} s, {size_mb:.1f} MB on disk")
        sources_json = json.dumps([[str(s.path), s.kind] for s in sources])
        index_runs = [_run_child("index", str(index_path), sources_json) for _ in range(n_runs)]
    set_runs = [_run_child("sets", str(kgen_dir)) for _ in range(n_runs)]
    rows = {"index": _summary(index_runs), "sets": _summary(set_runs)}
    _print_table(rows, n_runs)
    ok = rows["index"]["total_ms"] < BUDGET_MS and rows["index"]["rss_mb"] < BUDGET_MB
    print(f"\nbudget (<{BUDGET_MS:.0f} ms, <{BUDGET_MB:.0f} MB): {'met' if ok else 'MISSED'}")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())

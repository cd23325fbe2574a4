"""What loading the weights into memory costs, against memory-mapping them.

Both backends read the model into memory of their own (llama.cpp with
use_mmap=False, torch by copying the tensors safetensors maps: see
dtg_lib/backends/llama_params.py and torch_backend.own_weights), because a
mapped file truncated under a running model kills the process with SIGBUS.
This measures the price on the full-size model, A/B interleaved (each pair runs
both variants, alternating which goes first), every trial in a fresh process:

* load s         constructing the backend
* first gen s    the first generate() (8 new tokens): a mapped model reads its
                 pages here, so load + first gen is the fair total
* peak RSS MB    the process's peak resident memory (ru_maxrss)
* anon / file MB resident private memory and resident file pages after the first
                 generation (/proc/self/status RssAnon, RssFile): a mapped model's
                 weights count as file pages, which the kernel shares between
                 processes and may drop under pressure

The file is in the page cache for every trial after the first (a warm cache:
dropping it would disturb everything else on the machine); medians with the
range over the pairs.

    python benchmarks/make_full_size_model.py --out /tmp/dtg-full
    python benchmarks/bench_mmap.py --model-dir /tmp/dtg-full [--pairs 5] [--only llama|torch]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.fresh_process import median_cell, status_mb, trial  # noqa: E402

DEFAULT_MODEL_DIR = REPO / ".cache" / "bench-model"
PROMPT = "1girl, solo, long hair, smile"
NEW_TOKENS = 8
# (backend, variant): the variant the engine uses first, then what it used to do.
ROWS = (
    ("llama.cpp", "read"),
    ("llama.cpp", "mmap"),
    ("torch", "read"),
    ("torch", "mmap"),
)


def _load(kind: str, variant: str, model: Path) -> Any:
    if kind == "llama.cpp":
        from dtg_lib.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(model, use_mmap=variant == "mmap")
    from dtg_lib.backends import torch_backend

    if variant == "mmap":  # keep the tensors safetensors maps, as transformers hands them over
        torch_backend.own_weights = lambda torch, model: 0
    return torch_backend.TorchBackend(model, dtype="fp32")


def child(kind: str, variant: str, model: Path) -> dict[str, Any]:
    """One trial, in this (fresh) process."""
    from dtg_lib.backends.llama_cpp import import_llama_cpp
    from dtg_lib.backends.torch_backend import import_torch_stack
    from dtg_lib.settings import SamplingSettings

    # The libraries' own import time is the same either way: keep it out of "load".
    if kind == "llama.cpp":
        import_llama_cpp()
    else:
        import_torch_stack()
    started = time.perf_counter()
    backend = _load(kind, variant, model)
    loaded = time.perf_counter()
    backend.generate(PROMPT, SamplingSettings(max_new_tokens=NEW_TOKENS), seed=1)
    generated = time.perf_counter()
    row = {
        "load_s": loaded - started,
        "first_gen_s": generated - loaded,
        "total_s": generated - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_mb": status_mb("RssAnon"),
        "file_mb": status_mb("RssFile"),
    }
    backend.close()
    return row


def _trial(kind: str, variant: str, model: Path) -> dict[str, Any] | None:
    return trial(__file__, kind, variant, str(model))


def _model_for(kind: str, model_dir: Path, gguf: str) -> Path:
    return model_dir / f"dtg-bench-{gguf}.gguf" if kind == "llama.cpp" else model_dir / "hf"


def run(model_dir: Path, pairs: int, kinds: list[str], gguf: str) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for kind in kinds:
        model = _model_for(kind, model_dir, gguf)
        variants = [v for k, v in ROWS if k == kind]
        for pair in range(pairs):
            order = variants if pair % 2 == 0 else variants[::-1]
            for variant in order:
                row = _trial(kind, variant, model)
                if row is not None:
                    results.setdefault(f"{kind} {variant}", []).append(row)
                    print(f"  pair {pair + 1} {kind} {variant}: {json.dumps(_rounded(row))}")
    return results


def _rounded(row: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in row.items()}


def report(results: dict[str, list[dict]]) -> None:
    columns = (
        ("load_s", 2),
        ("first_gen_s", 2),
        ("total_s", 2),
        ("peak_rss_mb", 0),
        ("anon_mb", 0),
        ("file_mb", 0),
    )
    print("\nmedian (min-max) over", max(len(v) for v in results.values()), "trials")
    print(f"{'row':<16}" + "".join(f"{name:>22}" for name, _ in columns))
    for name, rows in results.items():
        cells = [median_cell([row[key] for row in rows], digits) for key, digits in columns]
        print(f"{name:<16}" + "".join(f"{cell:>22}" for cell in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--only", choices=("llama", "torch"))
    parser.add_argument("--gguf", default="Q8_0", help="which GGUF of the model dir (f16, Q8_0)")
    parser.add_argument("--json", type=Path, help="also write every trial here")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "VARIANT", "MODEL"))
    args = parser.parse_args(argv)
    if args.child:
        kind, variant, model = args.child
        print(json.dumps(child(kind, variant, Path(model))))
        return 0
    kinds = {"llama": ["llama.cpp"], "torch": ["torch"]}.get(args.only, ["llama.cpp", "torch"])
    print(f"model dir {args.model_dir}; {args.pairs} pairs; {os.cpu_count()} cores")
    results = run(args.model_dir, args.pairs, kinds, args.gguf)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

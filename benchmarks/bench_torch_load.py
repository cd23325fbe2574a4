"""What loading a Hugging Face folder with the torch backend costs, by dtype.

The backend reads the safetensors weights itself, a tensor at a time, converting
each to the asked dtype (torch_backend.read_weights), and hands them to
transformers as a state dict. Before, transformers loaded the folder: it maps the
whole file and keeps its pages resident until the load ends, so a bf16 or fp16
load of an fp32 file peaked at the fp32 file plus the converted weights, and an
fp32 load at the mapped file plus the copy own_weights makes of it.

Both variants run A/B interleaved (each pair runs both, alternating which goes
first), every trial in a fresh process, with the file in the page cache:

* load s        constructing the backend (the imports of torch and transformers excluded)
* peak RSS MB   the process's peak resident memory (ru_maxrss), file pages included
* anon MB       resident private memory after the load (/proc/self/status RssAnon)
* copies        tensors own_weights still had to copy after the load (before: the
                fp32 ones that were views of the file)

    python benchmarks/make_full_size_model.py --hf-only --out /tmp/dtype-model
    python benchmarks/bench_torch_load.py --model /tmp/dtype-model/hf [--pairs 5]
                                          [--dtypes fp32,bf16,fp16]
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

DEFAULT_MODEL = REPO / ".cache" / "bench-model" / "hf"
# "after" is the backend as it is; "before" loads through transformers as it used to.
VARIANTS = ("after", "before")
COLUMNS = (("load_s", 2), ("peak_rss_mb", 0), ("anon_mb", 0), ("copies", 0))


def _load_through_transformers(self: Any, common: dict[str, Any]) -> Any:
    """The loader before read_weights: transformers reads (maps) the folder itself."""
    from dtg_lib.backends.torch_backend import dtype_keyword

    transformers = self._transformers
    return transformers.AutoModelForCausalLM.from_pretrained(
        self.model_path,
        use_safetensors=True,
        **{dtype_keyword(transformers): self.dtype},
        **common,
    )


def child(variant: str, dtype: str, model: Path) -> dict[str, Any]:
    """One trial, in this (fresh) process."""
    from dtg_lib.backends import torch_backend

    torch_backend.import_torch_stack()  # its import time is the same either way
    if variant == "before":
        torch_backend.TorchBackend._load_model = _load_through_transformers
    counted = torch_backend.own_weights
    copies = []

    def own_weights_counted(torch: Any, model: Any) -> int:
        copies.append(counted(torch, model))
        return copies[-1]

    torch_backend.own_weights = own_weights_counted
    started = time.perf_counter()
    backend = torch_backend.TorchBackend(model, dtype=dtype)
    loaded = time.perf_counter()
    row = {
        "load_s": loaded - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_mb": status_mb("RssAnon"),
        "copies": float(sum(copies)),
        "dtype": str(next(backend._model.parameters()).dtype),
    }
    backend.close()
    return row


def _trial(variant: str, dtype: str, model: Path) -> dict[str, Any] | None:
    return trial(__file__, variant, dtype, str(model))


def run(model: Path, pairs: int, dtypes: list[str]) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for pair in range(pairs):
        for dtype in dtypes:
            order = VARIANTS if pair % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                row = _trial(variant, dtype, model)
                if row is None:
                    continue
                results.setdefault(f"{dtype} {variant}", []).append(row)
                shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
                print(f"  pair {pair + 1} {dtype} {variant}: {json.dumps(shown)}", flush=True)
    return results


def report(results: dict[str, list[dict]]) -> None:
    print("\nmedian (min-max) over", max(len(v) for v in results.values()), "trials")
    print(f"{'row':<14}" + "".join(f"{name:>22}" for name, _ in COLUMNS))
    for name in sorted(results):
        rows = results[name]
        cells = [median_cell([row[key] for row in rows], digits) for key, digits in COLUMNS]
        print(f"{name:<14}" + "".join(f"{cell:>22}" for cell in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a HF model folder")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--json", type=Path, help="also write every trial here")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "DTYPE", "MODEL"))
    args = parser.parse_args(argv)
    if args.child:
        variant, dtype, model = args.child
        print(json.dumps(child(variant, dtype, Path(model))))
        return 0
    size = sum(f.stat().st_size for f in args.model.glob("*.safetensors")) / 1e6
    print(f"model {args.model} ({size:.0f} MB of safetensors); {args.pairs} pairs; ", end="")
    print(f"{os.cpu_count()} cores")
    results = run(args.model, args.pairs, args.dtypes.split(","))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if results:
        report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

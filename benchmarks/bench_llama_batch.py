"""Milliseconds per decoding step of llama.cpp rows decoded together (DTG_LLAMA_BATCH).

    python benchmarks/bench_llama_batch.py MODEL.gguf [--sizes 1 2 4 8] [--repeats 5]
                                                     [--new-tokens 64]

Each repeat runs every batch size once, in turn (interleaved, so load on the
machine hits every size alike), on copies of one DTG prompt with different
seeds; a step is one llama_decode for all live rows. Prints the median and the
range of ms per step and of ms per generated token for each size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMPT = (
    "quality: masterpiece\nrating: safe\nartist: <|empty|>\ncharacters: <|empty|>\n"
    "copyrights: <|empty|>\naspect ratio: 1.0\ntarget: <|long|>\n"
    "general: 1girl, solo, dragon girl, dragon horns, dragon tail<|input_end|>"
)


def one_run(backend, size: int, new_tokens: int, seed: int) -> tuple[float, float]:
    from dtg_lib.settings import SamplingSettings

    sampling = SamplingSettings(temperature=1.0, max_new_tokens=new_tokens)
    started = time.perf_counter()
    got = backend.generate_batch([PROMPT] * size, sampling, [seed + i for i in range(size)])
    wall = time.perf_counter() - started
    steps = max(g.completion_tokens for g in got)
    tokens = sum(g.completion_tokens for g in got)
    return 1000 * wall / steps, 1000 * wall / tokens


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ["DTG_LLAMA_BATCH"] = "1"
    from dtg_lib.backends import load_backend
    from dtg_lib.backends.llama_batch import BatchingLlamaCppBackend

    backend = load_backend("llama.cpp", args.model)
    if not isinstance(backend, BatchingLlamaCppBackend):
        sys.exit("this llama-cpp-python cannot decode rows together (see the log)")
    per_step: dict[int, list[float]] = {size: [] for size in args.sizes}
    per_token: dict[int, list[float]] = {size: [] for size in args.sizes}
    try:
        for repeat in range(args.repeats):
            for size in args.sizes:
                step_ms, token_ms = one_run(backend, size, args.new_tokens, 1000 * repeat)
                per_step[size].append(step_ms)
                per_token[size].append(token_ms)
    finally:
        backend.close()
    print(f"{args.model.name}: {args.repeats} interleaved repeats, median (range)")
    print("rows   ms/step              ms/token")
    for size in args.sizes:
        print(f"{size:4d}  {cell(per_step[size])}  {cell(per_token[size])}")


if __name__ == "__main__":
    main()

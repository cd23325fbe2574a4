"""One expansion on a quiet machine against the same with a competing CPU load.

The competing load is a child process multiplying 512x512 matrices in a loop on one
core (pinned to the last CPU this process may use, BLAS on one thread), as a webui
running Stable Diffusion on the same CPU would be. Rows: our default thread choice
("auto", see dtg_lib/backends/threads.py) and all logical CPUs (DTG_THREADS = their
count, what the backend used before). Quiet and busy runs alternate, with the order
swapped every pair. Before each timed run the load is switched, the machine left
--settle seconds in that state and one 1-token generation made, so the thread choice
has seen it, as it would with a load that lasts (a webui busy with SD keeps being busy).

Printed per row: seconds for one expansion quiet and busy (median, range), the busy/quiet
slowdown per pair (target: at most 2x), and the thread count the backend last used.

    python benchmarks/bench_contention.py [--model .cache/bench-model/dtg-bench-Q8_0.gguf]
        [--pairs 5] [--target short] [--max-new-tokens 32] [--max-rounds 4] [--settle 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_upsample import chosen_model, settings  # noqa: E402  (the same run settings)
from benchmarks.fresh_process import median_cell  # noqa: E402  (needs the path above)

DEFAULT_MODEL = REPO / ".cache" / "bench-model" / "dtg-bench-Q8_0.gguf"
PROMPT = "1girl, solo, dragon girl, dragon horns, dragon tail, masterpiece"
_LOAD = """
import os, sys
import numpy as np
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {int(sys.argv[1])})
a = np.random.default_rng(0).random((512, 512))
b = a.copy()
print("ready", flush=True)
while True:
    a = a @ b
    a /= a.max()
"""
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def competing_cpu() -> int:
    getter = getattr(os, "sched_getaffinity", None)
    return max(getter(0)) if getter else (os.cpu_count() or 1) - 1


@contextlib.contextmanager
def competing_load(cpu: int) -> Iterator[None]:
    """A numpy matmul loop pinned to `cpu` while in the block."""
    child = subprocess.Popen(
        [sys.executable, "-c", _LOAD, str(cpu)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **_ONE_THREAD},
    )
    try:
        if child.stdout is None or child.stdout.readline().strip() != "ready":
            raise RuntimeError("the competing load did not start")
        yield
    finally:
        child.terminate()
        child.wait()


@contextlib.contextmanager
def thread_setting(value: str | None) -> Iterator[None]:
    """DTG_THREADS set to `value` (None: unset, i.e. auto) while in the block."""
    from dtg_lib.backends.threads import THREADS_ENV

    before = os.environ.pop(THREADS_ENV, None)
    if value is not None:
        os.environ[THREADS_ENV] = value
    try:
        yield
    finally:
        os.environ.pop(THREADS_ENV, None)
        if before is not None:
            os.environ[THREADS_ENV] = before


def settle(upsampler: Any, seconds: float) -> None:
    """Let the machine sit in its new state, then make one 1-token generation."""
    from dtg_lib.settings import SamplingSettings

    time.sleep(seconds)
    backend = upsampler.backends.current
    backend.generate("rating: safe", SamplingSettings(max_new_tokens=1), 0)


def expansion_seconds(upsampler: Any, chosen: Any, seed: int) -> tuple[float, str]:
    started = time.perf_counter()
    result = upsampler.upsample(PROMPT, chosen, seed)
    return time.perf_counter() - started, result.final_prompt


def threads_now(upsampler: Any) -> Any:
    policy = getattr(upsampler.backends.current, "threads", None)  # LlamaCppBackend's
    return policy.current if policy is not None else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a GGUF file, or 'tiny'")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--target", default="short")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before each run")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    model = chosen_model(parser, args.model)
    from dtg_lib.backends import BackendCache
    from dtg_lib.upsampler import Upsampler

    logical = str(os.cpu_count() or 1)
    rows = {"auto": None, f"all {logical} logical": logical}
    chosen = settings(model, args)
    cpu = competing_cpu()
    print(f"{logical} logical CPUs; model {model.name}; competing load on CPU {cpu}; "
          f"target {args.target}, max_new_tokens {args.max_new_tokens}")  # fmt: skip
    upsamplers = {}
    for name, value in rows.items():
        with thread_setting(value):
            upsamplers[name] = Upsampler(backends=BackendCache(), allow_download=False)
            expansion_seconds(upsamplers[name], chosen, args.seed)  # load and warm up
    times: dict[tuple[str, str], list[float]] = {}
    threads: dict[tuple[str, str], Any] = {}
    finals: set[str] = set()
    for pair in range(args.pairs):
        for name, value in rows.items():
            order = ("quiet", "busy") if pair % 2 == 0 else ("busy", "quiet")
            for state in order:
                load = competing_load(cpu) if state == "busy" else contextlib.nullcontext()
                with thread_setting(value), load:
                    settle(upsamplers[name], args.settle)
                    seconds, final = expansion_seconds(upsamplers[name], chosen, args.seed)
                    threads[name, state] = threads_now(upsamplers[name])
                times.setdefault((name, state), []).append(seconds)
                finals.add(final)
    for upsampler in upsamplers.values():
        upsampler.unload()
    print(f"{args.pairs} interleaved pairs; seconds per expansion, median (min-max)")
    print(f"{'threads':<20}{'quiet s':>22}{'busy s':>22}{'busy/quiet':>22}{'used':>10}")
    for name in rows:
        quiet, busy = times[name, "quiet"], times[name, "busy"]
        ratios = [b / q for q, b in zip(quiet, busy)]
        used = f"{threads[name, 'quiet']}/{threads[name, 'busy']}"
        print(
            f"{name:<20}{median_cell(quiet, 2):>22}{median_cell(busy, 2):>22}"
            f"{median_cell(ratios, 2):>22}{used:>10}"
        )
    print("same expansion in every run" if len(finals) == 1 else "EXPANSIONS DIFFER")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

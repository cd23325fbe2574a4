"""Batched torch expansion on the CPU: one prompt vs a webui batch through upsample_many.

    python benchmarks/bench_batched_cpu.py [--batch 8] [--max-new-tokens 32] [--max-rounds 2]

Uses the full-size random model (benchmarks/make_full_size_model.py), fp32. The
target is very_long so no expansion stops before the round limit; the random
model rarely emits EOS, so every round generates about max-new-tokens tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_backends import DEFAULT_MODEL_DIR  # noqa: E402
from benchmarks.bench_upsample import PROMPTS  # noqa: E402


def timed(upsampler, prompts, settings) -> tuple[float, int, list]:
    started = time.perf_counter()
    results = upsampler.upsample_many(prompts, settings, list(range(len(prompts))))
    seconds = time.perf_counter() - started
    return seconds, sum(r.completion_tokens for r in results), results


def main(argv: list[str] | None = None) -> int:
    from dtg_lib.backends import BackendCache
    from dtg_lib.settings import SamplingSettings, UpsampleSettings
    from dtg_lib.upsampler import Upsampler

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-rounds", type=int, default=2)
    args = parser.parse_args(argv)
    settings = UpsampleSettings(
        model=str(args.model_dir / "hf"),
        backend="torch",
        target="very_long",
        max_rounds=args.max_rounds,
        sampling=SamplingSettings(max_new_tokens=args.max_new_tokens),
    )
    upsampler = Upsampler(backends=BackendCache(), allow_download=False)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    upsampler.upsample_many(prompts[:1], settings, [0])  # load + warm-up
    one_s, one_tokens, _ = timed(upsampler, prompts[:1], settings)
    batch_s, batch_tokens, results = timed(upsampler, prompts, settings)
    alone = [upsampler.upsample(p, settings, i) for i, p in enumerate(prompts)]
    same = sum(a.new_tags == b.new_tags for a, b in zip(results, alone))
    print(f"1 prompt: {one_s:.2f} s, {one_tokens} tokens, {one_tokens / one_s:.1f} tok/s")
    print(
        f"batch of {args.batch}: {batch_s:.2f} s, {batch_tokens} tokens, "
        f"{batch_tokens / batch_s:.1f} tok/s, {batch_s / one_s:.2f}x the time of one"
    )
    one_by_one = sum(r.timings.total_s for r in alone)
    print(f"the same {args.batch} one by one: {one_by_one:.2f} s")
    print(f"batched results equal to one-by-one: {same}/{args.batch}")
    upsampler.unload()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Whole expansions: our upsample loop against raw llama.cpp and the reference library.

For each prompt, one expansion with the same settings and seed by

* ours              Upsampler.upsample_many (the model stays loaded across jobs;
                    the first job's load time is reported on its own)
* ours, no reuse    the same with the prefix cache disabled (each round evaluates
                    the whole DTG input again); its output must equal "ours", since
                    the prompt is batched the same way either way
* raw llama.cpp     the exact round prompts ours fed, through Llama.create_completion
                    with max_tokens = the tokens ours generated in that round (its own
                    prompt cache on, as a plain user of the library would have it)
* kgen              kgen.executor.dtg.tag_gen with a llama_cpp.Llama on the same file

and prints time per expansion, rounds, prompt tokens evaluated / fed, new
tokens, the lookup time and the overhead of ours over raw llama.cpp decoding
the same tokens (target: at most 5%).

A random-weight model never writes commas or EOS, so on the full-size model
each round runs to max_new_tokens and finds one "tag": --max-new-tokens and
--max-rounds keep a run short. --model tiny uses the project's tiny trained
model instead, whose rounds look like real ones.

    python benchmarks/bench_upsample.py [--model .cache/bench-model/dtg-bench-f16.gguf]
        [--max-new-tokens 64] [--max-rounds 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_MODEL = REPO / ".cache" / "bench-model" / "dtg-bench-f16.gguf"
PROMPTS = (
    "1girl, solo, dragon girl, dragon horns, dragon tail, masterpiece",
    "2girls, school uniform, cherry blossoms, outdoors, smile",
    "1boy, armor, sword, night, moon, cape",
    "1girl, witch hat, long hair, book, indoors, sitting",
)


@dataclass
class Recorder:
    """Wraps a backend and remembers every call, so rounds can be replayed and counted."""

    inner: Any
    calls: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def model_path(self) -> Path:
        return self.inner.model_path

    @property
    def context(self) -> int:
        return self.inner.context

    @property
    def notices(self) -> tuple[str, ...]:
        return self.inner.notices

    def generate(self, prompt: str, sampling: Any, seed: int) -> Any:
        out = self.inner.generate(prompt, sampling, seed)
        self.calls.append((prompt, out))
        return out

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def close(self) -> None:
        self.inner.close()


def settings(model: Path, args: argparse.Namespace) -> Any:
    from dtg_lib.settings import SamplingSettings, UpsampleSettings

    return UpsampleSettings(
        target="long",
        model=str(model),
        backend="llama.cpp",
        max_rounds=args.max_rounds,
        sampling=SamplingSettings(max_new_tokens=args.max_new_tokens),
    )


def make_upsampler() -> tuple[Any, list[Recorder]]:
    from dtg_lib.backends import BackendCache, load_backend
    from dtg_lib.upsampler import Upsampler

    made: list[Recorder] = []

    def loader(*args: Any, **kwargs: Any) -> Recorder:
        made.append(Recorder(load_backend(*args, **kwargs)))
        return made[-1]

    return Upsampler(backends=BackendCache(loader), allow_download=False), made


def run_ours(model: Path, args: argparse.Namespace, reuse: bool) -> tuple[list[Any], Recorder]:
    """One job per prompt (as the webui sends them), on one loaded model."""
    from dtg_lib.backends import llama_cpp as module

    original = module.reusable_prefix
    if not reuse:
        module.reusable_prefix = lambda *_: 0  # benchmark-only switch
    try:
        upsampler, made = make_upsampler()
        chosen = settings(model, args)
        results = [upsampler.upsample(p, chosen, args.seed) for p in PROMPTS]
        upsampler.unload()
    finally:
        module.reusable_prefix = original
    return results, made[0]


def open_raw(model: Path) -> Any:
    import llama_cpp

    threads = os.cpu_count() or 1
    return llama_cpp.Llama(
        model_path=str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
        verbose=False,
    )  # fmt: skip


def replay_raw(model: Path, calls: list[tuple[str, Any]], args: argparse.Namespace) -> list[dict]:
    """Per prompt of ours: time raw llama.cpp generating the same rounds' token counts."""
    llm = open_raw(model)
    per_prompt, current = [], []
    base = None
    for prompt, generation in calls:
        head = prompt.split("<|input_end|>", 1)[0]
        if head != base and current:
            per_prompt.append(current)
            current = []
        base = head
        current.append(raw_round(llm, prompt, generation.completion_tokens, args))
    per_prompt.append(current)
    llm.close()
    return [
        {"total_s": sum(r[0] for r in rounds), "new_tokens": sum(r[1] for r in rounds)}
        for rounds in per_prompt
    ]


def raw_round(llm: Any, prompt: str, tokens: int, args: argparse.Namespace) -> tuple[float, int]:
    started = time.perf_counter()
    out = llm.create_completion(
        prompt, max_tokens=tokens, temperature=1.35, top_p=0.95, top_k=100, seed=args.seed
    )
    return time.perf_counter() - started, out["usage"]["completion_tokens"]


def run_kgen(model: Path, results: list[Any], args: argparse.Namespace) -> list[dict]:
    """kgen's loop on our prepared model inputs; it runs until its own stop rules."""
    from kgen.executor.dtg import tag_gen

    llm = open_raw(model)
    rows = []
    for result in results:
        started = time.perf_counter()
        rounds = 0
        for _, _, rounds in tag_gen(  # noqa: B007  (the last yield has the count)
            llm, None, result.model_input, [], 32, [], temperature=1.35, top_p=0.95,
            top_k=100, max_new_tokens=args.max_new_tokens, max_retry=args.max_rounds - 1,
            seed=args.seed,
        ):  # fmt: skip
            pass
        rows.append({"total_s": time.perf_counter() - started, "rounds": rounds})
    llm.close()
    return rows


def evaluated_tokens(recorder: Recorder) -> list[tuple[int, int]]:
    return [(g.prompt_tokens - g.reused_prompt_tokens, g.prompt_tokens) for _, g in recorder.calls]


def job_rows(results: list[Any], no_reuse: list[Any], raw: list[dict], kgen: list[dict]) -> list:
    rows = []
    for r, n, w, k in zip(results, no_reuse, raw, kgen):
        rows.append(
            {
                "rounds": r.rounds,
                "new": r.completion_tokens,
                "lookup_ms": 1000 * r.timings.lookup_s,
                "load_s": r.timings.load_s,
                "ours_s": r.timings.total_s - r.timings.load_s,
                "no_reuse_s": n.timings.total_s - n.timings.load_s,
                "raw_s": w["total_s"],
                "kgen_s": k.get("total_s", float("nan")),
                "kgen_rounds": k.get("rounds", 0),
                "same": r.final_prompt == n.final_prompt,
            }
        )
    return rows


def median_rows(repeats: list[list[dict]]) -> list[dict]:
    """Per job, the median of every timing over the repeats (the machine is shared)."""
    merged = []
    for runs in zip(*repeats):
        row = dict(runs[0])
        for key in ("lookup_ms", "load_s", "ours_s", "no_reuse_s", "raw_s", "kgen_s"):
            row[key] = statistics.median(r[key] for r in runs)
        row["same"] = all(r["same"] for r in runs)
        merged.append(row)
    return merged


def print_rows(rows: list[dict]) -> None:
    header = (
        f"{'job':<4}{'rounds':>7}{'new tok':>8}{'lookup ms':>10}{'load s':>8}{'ours s':>8}"
        f"{'no-reuse s':>11}{'raw s':>8}{'overhead':>9}{'kgen s':>8}{'kgen rnd':>9}{'same':>6}"
    )
    print(header)
    print("-" * len(header))
    for i, r in enumerate(rows):
        print(
            f"{i:<4}{r['rounds']:>7}{r['new']:>8}{r['lookup_ms']:>10.1f}{r['load_s']:>8.2f}"
            f"{r['ours_s']:>8.2f}{r['no_reuse_s']:>11.2f}{r['raw_s']:>8.2f}"
            f"{100 * (r['ours_s'] / r['raw_s'] - 1):>8.1f}%{r['kgen_s']:>8.2f}"
            f"{r['kgen_rounds']:>9}{'yes' if r['same'] else 'NO':>6}"
        )
    ours, raw = sum(r["ours_s"] for r in rows), sum(r["raw_s"] for r in rows)
    print(
        f"all jobs: ours {ours:.2f} s, raw llama.cpp {raw:.2f} s ({100 * (ours / raw - 1):+.1f}%)"
    )


def print_prefix_counts(with_reuse: Recorder, without: Recorder) -> None:
    pairs = zip(evaluated_tokens(with_reuse), evaluated_tokens(without))
    print("prompt tokens evaluated per round (with reuse / without), first 8 rounds:")
    print("  " + "  ".join(f"{a[0]}/{b[0]}" for a, b in list(pairs)[:8]))
    total_with = sum(a for a, _ in evaluated_tokens(with_reuse))
    total_without = sum(a for a, _ in evaluated_tokens(without))
    print(f"  total: {total_with} / {total_without} evaluated")
    ms_with = sum(g.prompt_eval_s for _, g in with_reuse.calls)
    ms_without = sum(g.prompt_eval_s for _, g in without.calls)
    print(f"  prompt time: {ms_with:.2f} s / {ms_without:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a GGUF file, or 'tiny'")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-kgen", action="store_true")
    args = parser.parse_args(argv)
    model = Path(args.model)
    if args.model == "tiny":
        from dtg_dev.tiny_model import tiny_model_cached

        model = tiny_model_cached(REPO / ".cache" / "tiny-model").gguf_f16
    print(f"{os.cpu_count()} cores; model {model.name}; {len(PROMPTS)} jobs, one expansion each")
    print(f"timings: medians of {args.repeat} repeats (other work shares this machine)")
    repeats = []
    for _ in range(args.repeat):
        results, recorder = run_ours(model, args, reuse=True)
        no_reuse, plain = run_ours(model, args, reuse=False)
        raw = replay_raw(model, recorder.calls, args)
        kgen = [{} for _ in results] if args.no_kgen else run_kgen(model, results, args)
        repeats.append(job_rows(results, no_reuse, raw, kgen))
    print_rows(median_rows(repeats))
    print_prefix_counts(recorder, plain)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

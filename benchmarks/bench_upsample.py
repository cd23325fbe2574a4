"""Whole expansions on llama.cpp: ours against raw llama-cpp-python, and jobs of N images.

Two tables, each measured in interleaved pairs (the order of A and B alternates from
pair to pair, so a slow spell of a shared machine hits both), as medians with ranges:

1. One expansion, ours against raw llama-cpp-python on the same tokens. Each job is one
   prompt through `Upsampler.upsample` (the model stays loaded across jobs, as in a
   webui). Raw replays the exact round prompts ours fed through `Llama.create_completion`
   with max_tokens = the tokens ours generated in that round, its own prompt cache on
   (as a plain user of the library would have it), twice:
   * raw, lib defaults: `Llama(model_path)` with the library's own thread count and
     create_completion's own sampling defaults (min_p 0.05, top_k 40, ...);
   * raw, as ours: our thread count and our sampling (min_p 0, top_k 100, ...), and
     llama.cpp's extra CPU buffer types off as ours are (with them, Q8_0 and Q6_K
     segfault on AMX CPUs, llama.cpp #20824: a child process tries the defaults first,
     and the row says so instead of ending the run).
   "ours / raw" is the ratio per pair (the target is at most 1.00).
2. Jobs of 1, 2, 4 and 8 images (--batches): `upsample_many` on the whole job against
   the same prompts one by one (`upsample` in a loop), "same" saying whether both gave
   the same expansions, and "x one image" the job's time over the 1-image job's.

The full-size random model writes a comma every few tokens (see make_full_size_model.py),
so rounds find tags and the target is reached in a few rounds; EOS is never written, so
every round uses its max_new_tokens. --model tiny uses the project's tiny trained model.

    python benchmarks/bench_upsample.py [--model .cache/bench-model/dtg-bench-Q8_0.gguf]
        [--pairs 5] [--batches 1,2,4,8] [--target long] [--max-new-tokens 64]
        [--max-rounds 4] [--skip-raw] [--skip-batches]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.fresh_process import median_cell  # noqa: E402  (needs the path above)

DEFAULT_MODEL = REPO / ".cache" / "bench-model" / "dtg-bench-Q8_0.gguf"
PROMPTS = (
    "1girl, solo, dragon girl, dragon horns, dragon tail, masterpiece",
    "2girls, school uniform, cherry blossoms, outdoors, smile",
    "1boy, armor, sword, night, moon, cape",
    "1girl, witch hat, long hair, book, indoors, sitting",
    "1girl, maid, apron, tray, cafe, looking at viewer",
    "scenery, mountain, lake, sunset, clouds, no humans",
    "1boy, 1girl, umbrella, rain, city, street",
    "1girl, kimono, festival, lantern, night, fireworks",
)
SINGLE_JOBS = 4  # the prompts table 1 expands, one job each


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


def chosen_model(parser: argparse.ArgumentParser, name: str) -> Path:
    """The --model GGUF: a file, or "tiny" (the tiny trained model, built when missing)."""
    model = Path(name)
    if name == "tiny":
        from dtg_dev.tiny_model import tiny_model_cached

        model = tiny_model_cached(REPO / ".cache" / "tiny-model").gguf_f16
    if not model.is_file():
        parser.error(f"no model at {model}: run benchmarks/make_full_size_model.py")
    return model


def settings(model: Path, args: argparse.Namespace) -> Any:
    from dtg_lib.settings import SamplingSettings, UpsampleSettings

    return UpsampleSettings(
        target=args.target,
        model=str(model),
        backend="llama.cpp",
        max_rounds=args.max_rounds,
        sampling=SamplingSettings(max_new_tokens=args.max_new_tokens),
    )


def make_upsampler(record: bool) -> tuple[Any, list[Any]]:
    """An Upsampler on its own cache; `record` wraps its backend in a Recorder."""
    from dtg_lib.backends import BackendCache, load_backend
    from dtg_lib.upsampler import Upsampler

    made: list[Any] = []

    def loader(*args: Any, **kwargs: Any) -> Any:
        backend = load_backend(*args, **kwargs)
        made.append(Recorder(backend) if record else backend)
        return made[-1]

    return Upsampler(backends=BackendCache(loader), allow_download=False), made


def job_seconds(results: list[Any]) -> float:
    """The job's time without the model load (only the first job of a model pays it)."""
    return sum(r.timings.total_s - r.timings.load_s for r in results)


# ---------------------------------------------------------------- table 1: ours vs raw


def rounds_of(model: Path, args: argparse.Namespace) -> tuple[list[list[tuple]], list[str]]:
    """Per job, the (prompt, new tokens) of each round ours runs, and the final prompts."""
    upsampler, made = make_upsampler(record=True)
    chosen = settings(model, args)
    finals, per_job = [], []
    for number, prompt in enumerate(PROMPTS[:SINGLE_JOBS]):
        before = len(made[0].calls) if made else 0
        finals.append(upsampler.upsample(prompt, chosen, args.seed + number).final_prompt)
        per_job.append([(p, g.completion_tokens) for p, g in made[0].calls[before:]])
    upsampler.unload()
    return per_job, finals


def open_raw(model: Path, as_ours: bool) -> Any:
    import llama_cpp

    from dtg_lib.backends.llama_params import model_params
    from dtg_lib.backends.threads import ThreadPolicy

    if not as_ours:
        return llama_cpp.Llama(model_path=str(model), n_ctx=2048, verbose=False)
    threads = ThreadPolicy().at_load
    # As ours: extra CPU buffer types off too (they crash Q8_0/Q6_K on AMX CPUs).
    with model_params(llama_cpp, extra_buffers=False):
        return llama_cpp.Llama(
            model_path=str(model),
            n_ctx=2048,
            verbose=False,
            n_threads=threads,
            n_threads_batch=threads,
        )


def library_defaults_crash(model: Path) -> str | None:
    """Why llama-cpp-python with its defaults cannot run `model` here, found in a child
    process (with them, Q8_0/Q6_K segfault on AMX CPUs: llama.cpp #20824), or None."""
    probe = (
        "import sys, llama_cpp\n"
        "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, verbose=False)\n"
        "llm.create_completion('1girl', max_tokens=2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(model)], capture_output=True, text=True, timeout=600
    )
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        return f"crashed (signal {-done.returncode}; llama.cpp #20824 on AMX CPUs?)"
    return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:100]


def raw_job(llm: Any, rounds: list[tuple], sampling: Any, seed: int, as_ours: bool) -> tuple:
    """Seconds and new tokens for raw llama.cpp generating one job's rounds."""
    ours = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "repeat_penalty": sampling.repetition_penalty,
    }
    started = time.perf_counter()
    tokens = 0
    for number, (prompt, count) in enumerate(rounds):
        out = llm.create_completion(
            prompt, max_tokens=count, seed=seed + number, **(ours if as_ours else {})
        )
        tokens += out["usage"]["completion_tokens"]
    return time.perf_counter() - started, tokens


def ours_vs_raw(model: Path, args: argparse.Namespace) -> None:
    import llama_cpp

    per_job, finals = rounds_of(model, args)
    chosen = settings(model, args)
    upsampler, _ = make_upsampler(record=False)
    upsampler.upsample(PROMPTS[0], chosen, args.seed)  # load and warm up
    raws = {"as ours": open_raw(model, True)}
    crash = library_defaults_crash(model)
    if crash is None:
        raws["defaults"] = open_raw(model, False)
    for llm in raws.values():
        raw_job(llm, per_job[0][:1], chosen.sampling, args.seed, False)  # warm up
    threads = {k: llama_cpp.llama_n_threads(llm.ctx) for k, llm in raws.items()}
    sides = ["ours", *raws]
    times: dict[str, list[float]] = {side: [] for side in sides}
    tokens: dict[str, int] = {}
    same = True
    for pair in range(args.pairs):
        shift = pair % len(sides)
        for side in sides[shift:] + sides[:shift]:
            if side == "ours":
                results = [
                    upsampler.upsample(p, chosen, args.seed + n)
                    for n, p in enumerate(PROMPTS[:SINGLE_JOBS])
                ]
                same = same and [r.final_prompt for r in results] == finals
                times[side].append(job_seconds(results))
                tokens[side] = sum(r.completion_tokens for r in results)
                continue
            spent, made = 0.0, 0
            for n, rounds in enumerate(per_job):
                seconds, count = raw_job(raws[side], rounds, chosen.sampling, args.seed + n,
                                         side == "as ours")  # fmt: skip
                spent, made = spent + seconds, made + count
            times[side].append(spent)
            tokens[side] = made
    upsampler.unload()
    for llm in raws.values():
        llm.close()
    rounds = [len(r) for r in per_job]
    print(f"\n1. one expansion: {SINGLE_JOBS} jobs of one prompt, rounds per job {rounds}, "
          f"{args.pairs} interleaved pairs; seconds for all jobs, median (min-max)")  # fmt: skip
    print(
        f"   ours: {median_cell(times['ours'], 2)} s, {tokens['ours']} new tokens, "
        f"{'same expansions every pair' if same else 'EXPANSIONS DIFFER between pairs'}"
    )
    if crash is not None:
        print(f"   raw llama-cpp-python, defaults: {crash}")
    for side in raws:
        ratios = [a / b for a, b in zip(times["ours"], times[side])]
        print(f"   raw llama-cpp-python, {side:<8} ({threads[side]} threads): "
              f"{median_cell(times[side], 2)} s, {tokens[side]} new tokens; "
              f"ours / raw {median_cell(ratios, 3)}")  # fmt: skip


# ---------------------------------------------------------------- table 2: jobs of N images


def batches(model: Path, args: argparse.Namespace) -> None:
    chosen = settings(model, args)
    upsampler, made = make_upsampler(record=False)
    upsampler.upsample(PROMPTS[0], chosen, args.seed)  # load and warm up
    sizes = [int(n) for n in args.batches.split(",")]
    rows: dict[int, dict[str, list]] = {n: {"job": [], "one by one": [], "same": []} for n in sizes}
    for pair in range(args.pairs):
        for n in sizes:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
            seeds = [args.seed + i for i in range(n)]
            finals = {}
            order = ("job", "one by one") if pair % 2 == 0 else ("one by one", "job")
            for way in order:
                started = time.perf_counter()
                if way == "job":
                    results = upsampler.upsample_many(prompts, chosen, seeds)
                else:
                    results = [upsampler.upsample(p, chosen, s) for p, s in zip(prompts, seeds)]
                rows[n][way].append(time.perf_counter() - started)
                finals[way] = [r.final_prompt for r in results]
            rows[n]["same"].append(finals["job"] == finals["one by one"])
            rows[n].setdefault("tokens", sum(r.completion_tokens for r in results))
            rows[n].setdefault("rounds", [r.rounds for r in results])
    threads = getattr(made[0], "threads", None)
    upsampler.unload()
    print(f"\n2. jobs of N images, upsample_many against upsample one by one, "
          f"{args.pairs} interleaved pairs; seconds, median (min-max)")  # fmt: skip
    if threads is not None:
        print(f"   (llama.cpp threads at the last call: {threads.current})")
    header = f"   {'N':>3}{'job s':>22}{'one by one s':>22}{'one/job':>8}{'x one image':>12}"
    print(header + f"{'new tok':>8}{'same':>6}  rounds")
    one_image = statistics.median(rows[sizes[0]]["job"]) if sizes[0] == 1 else None
    for n in sizes:
        row = rows[n]
        job, apart = row["job"], row["one by one"]
        ratio = statistics.median(b / a for a, b in zip(job, apart))
        times_one = f"{statistics.median(job) / one_image:.2f}" if one_image else "-"
        print(
            f"   {n:>3}{median_cell(job, 2):>22}{median_cell(apart, 2):>22}{ratio:>8.2f}"
            f"{times_one:>12}{row['tokens']:>8}{'yes' if all(row['same']) else 'NO':>6}"
            f"  {row['rounds']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a GGUF file, or 'tiny'")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--batches", default="1,2,4,8", help="job sizes (default 1,2,4,8)")
    parser.add_argument("--target", default="long")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-raw", action="store_true", help="only the jobs of N images")
    parser.add_argument("--skip-batches", action="store_true", help="only ours against raw")
    args = parser.parse_args(argv)
    model = chosen_model(parser, args.model)
    print(f"{os.cpu_count()} logical CPUs; model {model.name}; target {args.target}, "
          f"max_new_tokens {args.max_new_tokens}, max_rounds {args.max_rounds}")  # fmt: skip
    if not args.skip_raw:
        ours_vs_raw(model, args)
    if not args.skip_batches:
        batches(model, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

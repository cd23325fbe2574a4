"""Decode speed of our backends against the libraries they wrap, on the full-size model.

Each row runs in its own process (a clean peak RSS, and a llama.cpp crash,
such as the Q8_0/Q6_K segfault on some AMX CPUs, becomes "crashed" instead of
ending the run). Every row decodes the same ~80-token DTG prompt and up to
128 new tokens (a random-weight model almost never samples EOS), after one
short warm-up. The rows take turns: --pairs rounds, each measuring every row
once (a fresh process each, --runs generations, their median) with the order
rotated from round to round, so a slow spell of a shared machine hits all rows
alike; each cell is the median over the rounds with its range:

* ours llama.cpp     dtg_lib LlamaCppBackend.generate (its own thread choice)
* raw llama.cpp, lib defaults   llama_cpp.Llama as a plain user makes it: the
                     library's own n_threads and sampling defaults (min_p 0.05 ...)
* raw llama.cpp, as ours        our thread count, our sampling (min_p 0) and, as
                     ours, llama.cpp's extra CPU buffer types off (with them, Q8_0
                     and Q6_K segfault on AMX CPUs: llama.cpp #20824; the defaults
                     row then says "crashed")
                     (both raw rows reset the KV cache before each run, so the
                     prompt is evaluated in full)
* ours torch fp32/bf16   dtg_lib TorchBackend.generate
* raw transformers fp32/bf16   model.generate(min_new_tokens=128)

"floor" is the time to stream every weight read per token once (all tensors
but the embedding table, of which one row is read) at the machine's read
bandwidth: on the CPU, numpy summing a 1 GiB array split across one thread per
allowed CPU, the best of 7 runs (decoding only reads weights, so a copy's
write traffic is not counted); on --device cuda, a torch copy in the GPU's own
memory. "x floor" = decode ms/token / floor ms.

    python benchmarks/make_full_size_model.py      # once, ~1 minute
    python benchmarks/bench_backends.py [--pairs 5] [--runs 1] [--only llama|torch]
        [--kinds Q8_0] [--dtypes fp32] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.fresh_process import median_cell  # noqa: E402  (needs the path above)

DEFAULT_MODEL_DIR = REPO / ".cache" / "bench-model"
PROMPT_TOKENS = 80
NEW_TOKENS = 128
GGUF_KINDS = ("f16", "Q8_0", "Q6_K")
TORCH_DTYPES = ("fp32", "bf16")
_FILLER = ("long hair", "smile", "blue eyes", "skirt", "looking at viewer", "outdoors", "sky")


def sampling() -> Any:
    from dtg_lib.settings import SamplingSettings

    return SamplingSettings(temperature=1.0, top_p=0.95, top_k=100, max_new_tokens=NEW_TOKENS)


def dtg_prompt(count_tokens: Any, wanted: int = PROMPT_TOKENS) -> str:
    """A DTG input whose general line is padded with tags until it has `wanted` tokens."""
    head = (
        "quality: masterpiece\nrating: safe\nartist: <|empty|>\ncharacters: <|empty|>\n"
        "copyrights: <|empty|>\naspect ratio: 1.0\ntarget: <|long|>\ngeneral: 1girl, solo"
    )
    tags: list[str] = []
    while count_tokens(f"{head}, {', '.join(tags)}<|input_end|>") < wanted:
        tags.append(_FILLER[len(tags) % len(_FILLER)])
    return f"{head}, {', '.join(tags)}<|input_end|>"


# ---------------------------------------------------------------- measurements


def memory_bandwidth(device: str = "cpu", size_mib: int = 1024, tries: int = 7) -> float:
    """Bytes per second the CPU can read (or the GPU copy), the best of `tries` runs."""
    if device.startswith("cuda"):
        return gpu_memory_bandwidth(device)
    return read_bandwidth(size_mib, tries)


def read_bandwidth(size_mib: int = 1024, tries: int = 7, threads: int | None = None) -> float:
    """Read-only bandwidth: one thread per allowed CPU sums its slice of one large array.

    numpy's reductions release the GIL, so the threads read in parallel, as llama.cpp's
    do. The best run, not the median: a floor is what the memory can do, and every
    disturbance (another process, a page fault) only makes a run slower.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    if threads is None:
        getter = getattr(os, "sched_getaffinity", None)
        threads = len(getter(0)) if getter else os.cpu_count() or 1
    data = np.ones(size_mib * 1024 * 1024 // 8, dtype=np.float64)  # written: pages present
    slices = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, slices))  # warm-up: threads started, pages touched
        for _ in range(tries):
            started = time.perf_counter()
            total = sum(pool.map(np.sum, slices))
            best = min(best, time.perf_counter() - started)
    if total != data.size:  # the sums must really have read every element
        raise RuntimeError(f"read check failed: {total} != {data.size}")
    return data.nbytes / best


def gpu_memory_bandwidth(device: str) -> float:
    import torch

    source = torch.ones(1024 * 1024 * 1024 // 4, dtype=torch.float32, device=device)  # 1 GiB
    target = torch.empty_like(source)
    target.copy_(source)  # first touch
    times = []
    for _ in range(5):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    bandwidth = 2 * source.numel() * source.element_size() / statistics.median(times)
    del source, target
    torch.cuda.empty_cache()
    return bandwidth


def gguf_bytes_per_token(path: Path) -> int:
    import gguf

    reader = gguf.GGUFReader(path)
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")


def hf_bytes_per_token(model: Any) -> int:
    return sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if "embed_tokens" not in name
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def summarize(runs: list[tuple[float, float, int, int]]) -> dict[str, float]:
    """Medians of (prompt_s, decode_s, prompt tokens, new tokens) runs."""
    return {
        "prompt_tokens": runs[0][2],
        "new_tokens": statistics.median(r[3] for r in runs),
        "prompt_ms": 1000 * statistics.median(r[0] for r in runs),
        # The first new token comes with the prompt pass; the rest cost one decode each.
        "decode_ms": 1000 * statistics.median(r[1] / max(r[3] - 1, 1) for r in runs),
    }


# ---------------------------------------------------------------- the engines


def ours(kind: str, path: Path, device: str, dtype: str | None, runs: int) -> dict:
    from dtg_lib.backends import load_backend

    started = time.perf_counter()
    backend = load_backend(kind, path, device, dtype=dtype)
    load_s = time.perf_counter() - started
    prompt = dtg_prompt(backend.count_tokens)
    backend.generate(prompt, sampling().__class__(max_new_tokens=8), 0)  # warm-up
    samples = []
    for seed in range(runs):
        # Another prompt first, so the llama.cpp backend's prefix reuse cannot skip the
        # prompt evaluation this row measures (the raw rows reset their cache too).
        backend.generate("rating: safe", sampling().__class__(max_new_tokens=1), 0)
        out = backend.generate(prompt, sampling(), seed + 1)
        samples.append(
            (out.prompt_eval_s, out.generation_s, out.prompt_tokens, out.completion_tokens)
        )
    if kind == "llama.cpp":
        weight_bytes = gguf_bytes_per_token(path)
        threads = backend.threads.current  # what its thread policy chose last
    else:
        weight_bytes = hf_bytes_per_token(backend._model)  # benchmark-only peek
        threads = torch_threads()
    return {"load_s": load_s, "weight_bytes": weight_bytes, "threads": threads,
            **summarize(samples)}  # fmt: skip


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def raw_llama(path: Path, device: str, runs: int, *, as_ours: bool) -> dict:
    """llama-cpp-python used directly: with its own defaults, or with our threads/sampling."""
    import llama_cpp

    from dtg_lib.backends.llama_params import model_params
    from dtg_lib.backends.threads import ThreadPolicy

    chosen = {}
    if as_ours:
        threads = ThreadPolicy().at_load
        chosen = {"n_threads": threads, "n_threads_batch": threads}
    started = time.perf_counter()
    # As ours: llama.cpp's extra CPU buffers off too (they crash Q8_0/Q6_K on AMX CPUs).
    with model_params(llama_cpp, extra_buffers=False) if as_ours else contextlib.nullcontext():
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=2048,
            n_gpu_layers=0 if device == "cpu" else -1,
            verbose=False,
            **chosen,
        )
    load_s = time.perf_counter() - started

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode(), add_bos=True, special=True))

    prompt = dtg_prompt(count)
    one_completion(llm, prompt, 0, 8, as_ours)  # warm-up
    samples = [one_completion(llm, prompt, seed + 1, NEW_TOKENS, as_ours) for seed in range(runs)]
    samples = [(p, d, count(prompt), n) for p, d, n in samples]
    return {
        "load_s": load_s,
        "weight_bytes": gguf_bytes_per_token(path),
        "threads": llm.context_params.n_threads,
        **summarize(samples),
    }


def one_completion(
    llm: Any, prompt: str, seed: int, tokens: int, as_ours: bool
) -> tuple[float, float, int]:
    llm.reset()  # create_completion would otherwise reuse the cached prompt
    s = sampling()
    ours = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p}
    started = time.perf_counter()
    first = None
    count = 0
    stream = llm.create_completion(
        prompt, max_tokens=tokens, seed=seed, stream=True, **(ours if as_ours else {})
    )
    for _ in stream:
        first = first or time.perf_counter()
        count += 1
    ended = time.perf_counter()
    first = first or ended
    # The stream ends with a chunk that only carries finish_reason; do not count it.
    return first - started, ended - first, min(count, tokens)


def raw_transformers(path: Path, device: str, dtype: str, runs: int) -> dict:
    import torch
    import transformers

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    started = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    from dtg_lib.backends.torch_backend import dtype_keyword

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, **{dtype_keyword(transformers): torch_dtype}
    )
    model = model.to(device).eval()
    load_s = time.perf_counter() - started
    prompt = dtg_prompt(lambda text: len(tokenizer(text)["input_ids"]))
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    hf_generate(model, ids, 0, 8)  # warm-up
    samples = [hf_generate(model, ids, seed + 1, NEW_TOKENS) for seed in range(runs)]
    samples = [(p, d, ids.shape[1], n) for p, d, n in samples]
    return {
        "load_s": load_s,
        "weight_bytes": hf_bytes_per_token(model),
        "threads": torch.get_num_threads(),
        **summarize(samples),
    }


def hf_generate(model: Any, ids: Any, seed: int, tokens: int) -> tuple[float, float, int]:
    import torch
    from transformers.generation.streamers import BaseStreamer

    marks: list[float] = []

    class Clock(BaseStreamer):
        def put(self, value: Any) -> None:
            marks.append(time.perf_counter())  # first call: the prompt; then one per token

        def end(self) -> None:
            """Nothing buffered."""

    torch.manual_seed(seed)
    s = sampling()
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=2,
            streamer=Clock(),
        )
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    ended = time.perf_counter()
    first = marks[1] if len(marks) > 1 else ended
    return first - started, ended - first, int(out.shape[1] - ids.shape[1])


# ---------------------------------------------------------------- orchestration


RAW_DEFAULTS = "raw llama.cpp (lib defaults)"
RAW_AS_OURS = "raw llama.cpp (as ours)"


def plan(model_dir: Path, only: str | None, kinds: tuple[str, ...], dtypes: tuple[str, ...]):
    rows = []
    if only in (None, "llama"):
        for kind in kinds:
            path = str(model_dir / f"dtg-bench-{kind}.gguf")
            for engine in ("ours llama.cpp", RAW_DEFAULTS, RAW_AS_OURS):
                rows.append({"engine": engine, "model": kind, "path": path})
    if only in (None, "torch"):
        for dtype in dtypes:
            path = str(model_dir / "hf")
            rows.append({"engine": "ours torch", "model": dtype, "path": path})
            rows.append({"engine": "raw transformers", "model": dtype, "path": path})
    return rows


def run_child(row: dict) -> dict:
    path, device, runs = Path(row["path"]), row["device"], row["runs"]
    engine, model = row["engine"], row["model"]
    if engine == "ours llama.cpp":
        result = ours("llama.cpp", path, device, None, runs)
    elif engine in (RAW_DEFAULTS, RAW_AS_OURS):
        result = raw_llama(path, device, runs, as_ours=engine == RAW_AS_OURS)
    elif engine == "ours torch":
        result = ours("torch", path, device, model, runs)
    else:
        result = raw_transformers(path, device, model, runs)
    return {**result, "peak_rss_mb": peak_rss_mb()}


def measure(row: dict, timeout: float) -> dict:
    command = [sys.executable, __file__, "--child", json.dumps(row)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timed out"}
    if done.returncode < 0:
        return {"status": f"crashed (signal {-done.returncode})"}
    if done.returncode != 0:
        return {"status": "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:80]}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def measure_interleaved(rows: list[dict], pairs: int, timeout: float) -> list[list[dict]]:
    """Per row, its trials: `pairs` rounds over all rows, each round's order rotated by one."""
    trials: list[list[dict]] = [[] for _ in rows]
    for round_number in range(pairs):
        shift = round_number % len(rows)
        for index in [*range(shift, len(rows)), *range(shift)]:
            trials[index].append(measure(rows[index], timeout))
            row = rows[index]
            status = trials[index][-1]["status"]
            print(
                f"  round {round_number + 1}: {row['engine']} {row['model']}: {status}", flush=True
            )
    return trials


def print_table(rows: list[dict], trials: list[list[dict]], bandwidth: float) -> None:
    print(f"read bandwidth (all allowed CPUs, best of 7): {bandwidth / 1e9:.1f} GB/s")
    print("cells: median (min-max) over the rounds")
    header = (
        f"{'engine':<29}{'model':<6}{'thr':>4}{'load s':>18}{'prompt':>7}{'eval ms':>18}"
        f"{'ms/tok':>20}{'floor ms':>9}{'x floor':>18}{'RSS MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for row, runs in zip(rows, trials):
        ok = [r for r in runs if r["status"] == "ok"]
        if not ok:
            print(f"{row['engine']:<29}{row['model']:<6}  {runs[-1]['status']}")
            continue
        floor_ms = 1000 * ok[0]["weight_bytes"] / bandwidth
        decode = [r["decode_ms"] for r in ok]
        failed = f"  ({len(runs) - len(ok)} failed)" if len(ok) < len(runs) else ""
        print(
            f"{row['engine']:<29}{row['model']:<6}{ok[0]['threads']:>4}"
            f"{median_cell([r['load_s'] for r in ok], 2):>18}{ok[0]['prompt_tokens']:>7}"
            f"{median_cell([r['prompt_ms'] for r in ok], 0):>18}{median_cell(decode, 1):>20}"
            f"{floor_ms:>9.1f}{median_cell([d / floor_ms for d in decode], 2):>18}"
            f"{max(r['peak_rss_mb'] for r in ok):>8.0f}{failed}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--pairs", type=int, default=5, help="rounds over all rows (default 5)")
    parser.add_argument("--runs", type=int, default=1, help="generations per trial (median)")
    parser.add_argument("--only", choices=("llama", "torch"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kinds", help="GGUF rows, comma-separated (default f16,Q8_0,Q6_K)")
    parser.add_argument("--dtypes", help="torch rows, comma-separated (default fp32,bf16)")
    parser.add_argument("--floor-mib", type=int, default=1024, help="array size for the floor")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    if not (args.model_dir / "build-info.json").is_file():
        parser.error(f"no model in {args.model_dir}: run benchmarks/make_full_size_model.py")
    print(f"{os.cpu_count()} cores, device {args.device}, {args.pairs} rounds, {args.runs} runs")
    bandwidth = memory_bandwidth(args.device, args.floor_mib)
    kinds = tuple(args.kinds.split(",")) if args.kinds else GGUF_KINDS
    dtypes = tuple(args.dtypes.split(",")) if args.dtypes else TORCH_DTYPES
    rows = plan(args.model_dir, args.only, kinds, dtypes)
    for row in rows:
        row.update(device=args.device, runs=args.runs)
    trials = measure_interleaved(rows, args.pairs, args.timeout)
    print_table(rows, trials, bandwidth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

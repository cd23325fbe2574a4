"""Decode speed of our backends against the libraries they wrap, on the full-size model.

Each row runs in its own process (a clean peak RSS, and a llama.cpp crash,
such as the Q8_0/Q6_K segfault on some AMX CPUs, becomes "crashed" instead of
ending the run). Every row decodes the same ~80-token DTG prompt and up to
128 new tokens (a random-weight model almost never samples EOS), after one
short warm-up, and reports medians over --runs:

* ours llama.cpp     dtg_lib LlamaCppBackend.generate
* raw llama.cpp      llama_cpp.Llama.create_completion, n_threads = cores, KV cache
                     reset before each run so the prompt is evaluated in full
* ours torch fp32/bf16   dtg_lib TorchBackend.generate
* raw transformers fp32/bf16   model.generate(min_new_tokens=128)

"floor" is the time to stream every weight read per token once (all tensors
but the embedding table, of which one row is read) at the memory bandwidth of
a large copy (numpy on the CPU, torch on --device cuda: the GPU's own memory);
"x floor" = decode ms/token / floor ms.

    python benchmarks/make_full_size_model.py      # once, ~1 minute
    python benchmarks/bench_backends.py [--runs 3] [--only llama|torch] [--device cuda]
"""

from __future__ import annotations

import argparse
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


def memory_bandwidth(device: str = "cpu") -> float:
    """Bytes per second of a large copy (read + write) in the device's memory, median of 5."""
    if device.startswith("cuda"):
        return gpu_memory_bandwidth(device)
    import numpy as np

    source = np.ones(256 * 1024 * 1024 // 8, dtype=np.float64)  # 256 MiB, past any cache
    target = np.empty_like(source)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - started)
    return 2 * source.nbytes / statistics.median(times)


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
    else:
        weight_bytes = hf_bytes_per_token(backend._model)  # benchmark-only peek
    return {"load_s": load_s, "weight_bytes": weight_bytes, **summarize(samples)}


def raw_llama(path: Path, device: str, runs: int) -> dict:
    import llama_cpp

    threads = os.cpu_count() or 1
    started = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0 if device == "cpu" else -1,
        verbose=False,
    )
    load_s = time.perf_counter() - started

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode(), add_bos=True, special=True))

    prompt = dtg_prompt(count)
    one_completion(llm, prompt, 0, 8)  # warm-up
    samples = [one_completion(llm, prompt, seed + 1, NEW_TOKENS) for seed in range(runs)]
    samples = [(p, d, count(prompt), n) for p, d, n in samples]
    return {"load_s": load_s, "weight_bytes": gguf_bytes_per_token(path), **summarize(samples)}


def one_completion(llm: Any, prompt: str, seed: int, tokens: int) -> tuple[float, float, int]:
    llm.reset()  # create_completion would otherwise reuse the cached prompt
    s = sampling()
    started = time.perf_counter()
    first = None
    count = 0
    stream = llm.create_completion(
        prompt,
        max_tokens=tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=seed,
        stream=True,
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
    return {"load_s": load_s, "weight_bytes": hf_bytes_per_token(model), **summarize(samples)}


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


def plan(model_dir: Path, only: str | None, dtypes: tuple[str, ...]) -> list[dict]:
    rows = []
    if only in (None, "llama"):
        for kind in GGUF_KINDS:
            path = str(model_dir / f"dtg-bench-{kind}.gguf")
            rows.append({"engine": "ours llama.cpp", "model": kind, "path": path})
            rows.append({"engine": "raw llama.cpp", "model": kind, "path": path})
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
    elif engine == "raw llama.cpp":
        result = raw_llama(path, device, runs)
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


def print_table(rows: list[dict], bandwidth: float) -> None:
    print(f"memory bandwidth (large copy, read+write): {bandwidth / 1e9:.1f} GB/s")
    header = (
        f"{'engine':<18}{'model':<6}{'load s':>8}{'prompt':>8}{'eval ms':>9}"
        f"{'new':>5}{'ms/tok':>8}{'tok/s':>7}{'floor ms':>9}{'x floor':>8}{'RSS MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["status"] != "ok":
            print(f"{row['engine']:<18}{row['model']:<6}  {row['status']}")
            continue
        floor_ms = 1000 * row["weight_bytes"] / bandwidth
        print(
            f"{row['engine']:<18}{row['model']:<6}{row['load_s']:>8.2f}{row['prompt_tokens']:>8}"
            f"{row['prompt_ms']:>9.0f}{row['new_tokens']:>5.0f}{row['decode_ms']:>8.1f}"
            f"{1000 / row['decode_ms']:>7.1f}{floor_ms:>9.1f}{row['decode_ms'] / floor_ms:>8.2f}"
            f"{row['peak_rss_mb']:>8.0f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("llama", "torch"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", help="torch rows, comma-separated (default fp32,bf16)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    if not (args.model_dir / "build-info.json").is_file():
        parser.error(f"no model in {args.model_dir}: run benchmarks/make_full_size_model.py")
    print(f"{os.cpu_count()} cores, device {args.device}, {args.runs} runs per row (medians)")
    bandwidth = memory_bandwidth(args.device)
    rows = []
    dtypes = tuple(args.dtypes.split(",")) if args.dtypes else TORCH_DTYPES
    for row in plan(args.model_dir, args.only, dtypes):
        row.update(device=args.device, runs=args.runs)
        rows.append({**row, **measure(row, args.timeout)})
        print(f"  measured {row['engine']} {row['model']}: {rows[-1]['status']}", flush=True)
    print_table(rows, bandwidth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

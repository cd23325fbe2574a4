"""GPU figures for a lent H100/H200: decode speed, and what batching would buy.

UNTESTED: written on a machine without a GPU. Run it on a CUDA machine with the
full-size model built (benchmarks/make_full_size_model.py):

    python benchmarks/bench_backends_gpu.py [--batches 1,4,8,16] [--dtype fp16]

It prints

1. bench_backends.py --device cuda --only torch (ours vs raw transformers, fp16
   and bf16), and the GGUF rows when llama-cpp-python was built with CUDA
   (the PyPI source build is CPU-only unless CMAKE_ARGS="-DGGML_CUDA=on");
2. raw transformers generate() of one batch of N DTG prompts, 128 new tokens
   each: seconds per batch and tokens/s over the batch;
3. our torch backend per decode mode (eager: transformers' forward; static: our
   fixed-shape step; graph: that step replayed as a CUDA graph): the first call's
   seconds (graph capture included), then ms per token for a batch of 1 and of
   each N, and the batch's time over the single prompt's;
4. our `upsample_many` on N prompts, 1 round each: on torch it expands a job's
   prompts together (one generate_batch call per round, each row with its own
   seed), so "ours upsample_many (batched)" compares with the raw batch row of
   the same N; "ours one by one" is the same prompts through `upsample`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_backends import DEFAULT_MODEL_DIR, NEW_TOKENS, dtg_prompt  # noqa: E402
from benchmarks.bench_upsample import PROMPTS  # noqa: E402

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def backend_table(model_dir: Path) -> None:
    script = REPO / "benchmarks" / "bench_backends.py"
    common = [sys.executable, str(script), "--model-dir", str(model_dir), "--device", "cuda"]
    subprocess.run([*common, "--only", "torch", "--dtypes", "fp16,bf16"], check=False)
    subprocess.run([*common, "--only", "llama"], check=False)


def load(model_dir: Path, dtype: str) -> tuple[Any, Any]:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir / "hf")
    tokenizer.padding_side = "left"  # generation continues from the right edge
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir / "hf", dtype=getattr(torch, DTYPES[dtype])
    )
    return tokenizer, model.to("cuda").eval()


def batched_generate(tokenizer: Any, model: Any, batch: int) -> tuple[float, int]:
    import torch

    prompt = dtg_prompt(lambda text: len(tokenizer(text)["input_ids"]))
    inputs = tokenizer([prompt] * batch, return_tensors="pt", padding=True).to("cuda")
    torch.manual_seed(0)
    torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=1.0,
            top_p=0.95,
            top_k=100,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            pad_token_id=2,
        )
    torch.cuda.synchronize()
    new = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
    return time.perf_counter() - started, new


def batch_table(model_dir: Path, dtype: str, batches: list[int]) -> None:
    import torch

    tokenizer, model = load(model_dir, dtype)
    batched_generate(tokenizer, model, 1)  # warm-up: kernels, allocator
    print(f"\nraw transformers generate, one batch, {dtype}, {NEW_TOKENS} new tokens each")
    print(f"{'batch':>6}{'seconds':>10}{'tok/s':>10}{'GPU MB':>10}")
    for batch in batches:
        torch.cuda.reset_peak_memory_stats()
        seconds, new = batched_generate(tokenizer, model, batch)
        peak = torch.cuda.max_memory_allocated() / 1e6
        print(f"{batch:>6}{seconds:>10.2f}{new / seconds:>10.1f}{peak:>10.0f}")


def batched_upsample(model_dir: Path, dtype: str, count: int) -> None:
    import torch

    from dtg_lib.backends import BackendCache, load_backend
    from dtg_lib.settings import SamplingSettings, UpsampleSettings
    from dtg_lib.upsampler import Upsampler

    def loader(*args: Any, **kwargs: Any) -> Any:
        return load_backend(*args, **{**kwargs, "dtype": dtype})

    upsampler = Upsampler(backends=BackendCache(loader), allow_download=False)
    chosen = UpsampleSettings(
        model=str(model_dir / "hf"),
        backend="torch",
        device="cuda",
        max_rounds=1,
        sampling=SamplingSettings(max_new_tokens=NEW_TOKENS),
    )
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    seeds = list(range(count))
    upsampler.upsample_many(prompts[:2], chosen, seeds[:2])  # load + warm-up
    runs = {
        "upsample_many (batched)": lambda: upsampler.upsample_many(prompts, chosen, seeds),
        "one by one": lambda: [upsampler.upsample(p, chosen, s) for p, s in zip(prompts, seeds)],
    }
    for label, run in runs.items():
        torch.cuda.synchronize()
        started = time.perf_counter()
        results = run()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        new = sum(r.completion_tokens for r in results)
        print(f"ours {label}, {count} prompts, 1 round each:")
        print(f"  {seconds:.2f} s, {new / seconds:.1f} tok/s")
    upsampler.unload()


def decode_mode_table(model_dir: Path, dtype: str, batches: list[int]) -> None:
    import torch

    from dtg_lib.backends.torch_backend import TorchBackend
    from dtg_lib.settings import SamplingSettings

    sampling = SamplingSettings(max_new_tokens=NEW_TOKENS)
    print(f"\nours torch by decode mode, {dtype}, up to {NEW_TOKENS} new tokens a prompt")
    print(f"{'mode':>7}{'first s':>9}{'batch':>6}{'seconds':>9}{'ms/tok':>8}{'x one':>7}")
    for mode in ("eager", "static", "graph"):
        backend = TorchBackend(model_dir / "hf", "cuda", dtype=dtype, decode=mode)
        prompt = dtg_prompt(backend.count_tokens)
        started = time.perf_counter()
        backend.generate(prompt, sampling, 0)
        first = time.perf_counter() - started
        single = None
        for batch in [1, *batches]:
            backend.generate_batch([prompt] * batch, sampling, list(range(batch)))  # capture
            torch.cuda.synchronize()
            started = time.perf_counter()
            made = backend.generate_batch([prompt] * batch, sampling, list(range(batch)))
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            steps = max(g.completion_tokens for g in made)
            single = single or seconds
            print(
                f"{mode:>7}{first:>9.2f}{batch:>6}{seconds:>9.2f}"
                f"{1000 * seconds / steps:>8.2f}{seconds / single:>7.2f}"
            )
        backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        parser.error("no CUDA device: this script is for a GPU machine")
    print(torch.cuda.get_device_name(0))
    backend_table(args.model_dir)
    batches = [int(b) for b in args.batches.split(",")]
    batch_table(args.model_dir, args.dtype, batches)
    decode_mode_table(args.model_dir, args.dtype, batches)
    for count in batches:
        batched_upsample(args.model_dir, args.dtype, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

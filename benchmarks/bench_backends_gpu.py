"""GPU figures for a lent H100/H200: decode speed, and what batching buys.

Run it on a CUDA machine with the full-size model built
(benchmarks/make_full_size_model.py, or `--hf-only` where there is no gguf):

    python benchmarks/bench_backends_gpu.py [--batches 1,4,8,16] [--dtype fp16]

`--device cpu --dtype fp32 --model-dir .cache/tiny-model` runs every table on
the CPU with the tiny test model: a check that the script works, not figures
(there is no "graph" mode on a CPU, so "static" stands in for it).

It prints

1. bench_backends.py --device cuda (ours vs raw transformers, fp16 and bf16,
   and the GGUF rows: on the GPU only with a CUDA build of llama-cpp-python,
   CMAKE_ARGS="-DGGML_CUDA=on"); its floor uses the GPU's copy bandwidth;
2. raw transformers generate() of one batch of N DTG prompts, 128 new tokens
   each: seconds per batch and tokens/s over the batch;
3. our torch backend per decode mode (eager: transformers' forward; static: our
   fixed-shape step; graph: that step replayed as a CUDA graph): the first call's
   seconds (graph capture included), then ms per token for a batch of 1 and of
   each N, and the batch's time over the single prompt's;
4. our `upsample_many` on N prompts, 1 round each: on torch it expands a job's
   prompts together (one generate_batch call per round, each row with its own
   seed); "one by one" is the same prompts through `upsample`;
5. the issue's GPU targets, judged from tables 2 and 3.
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
SPEEDUP_TARGET = 5.0  # single stream, per token, over transformers' eager generate
WARM_UP_TARGET_S = 2.0
BATCH_OF_8_TARGET = 1.5  # a batch of 8 over one prompt's time


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 1e6 if device.startswith("cuda") else 0.0


def backend_table(model_dir: Path, device: str) -> None:
    script = REPO / "benchmarks" / "bench_backends.py"
    common = [sys.executable, str(script), "--model-dir", str(model_dir), "--device", device]
    subprocess.run([*common, "--only", "torch", "--dtypes", "fp16,bf16"], check=False)
    subprocess.run([*common, "--only", "llama"], check=False)


def load(model_dir: Path, dtype: str, device: str) -> tuple[Any, Any]:
    import torch
    import transformers

    from dtg_lib.backends.torch_backend import dtype_keyword

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir / "hf")
    tokenizer.padding_side = "left"  # generation continues from the right edge
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir / "hf", **{dtype_keyword(transformers): getattr(torch, DTYPES[dtype])}
    )
    return tokenizer, model.to(device).eval()


def batched_generate(tokenizer: Any, model: Any, batch: int, device: str) -> tuple[float, int]:
    """Seconds for one generate() of `batch` prompts, and new tokens per prompt."""
    import torch

    prompt = dtg_prompt(lambda text: len(tokenizer(text)["input_ids"]))
    inputs = tokenizer([prompt] * batch, return_tensors="pt", padding=True).to(device)
    torch.manual_seed(0)
    sync(device)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=inputs["input_ids"],  # older tokenizers add token_type_ids too
            attention_mask=inputs["attention_mask"],
            do_sample=True,
            temperature=1.0,
            top_p=0.95,
            top_k=100,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            pad_token_id=2,
        )
    sync(device)
    return time.perf_counter() - started, out.shape[1] - inputs["input_ids"].shape[1]


def batch_table(model_dir: Path, dtype: str, device: str, batches: list[int]) -> dict[int, float]:
    """Raw generate per batch size; returns ms per token (per prompt) by batch size."""
    tokenizer, model = load(model_dir, dtype, device)
    batched_generate(tokenizer, model, 1, device)  # warm-up: kernels, allocator
    print(f"\nraw transformers generate, one batch, {dtype}, {NEW_TOKENS} new tokens each")
    print(f"{'batch':>6}{'seconds':>10}{'ms/tok':>8}{'tok/s':>10}{'GPU MB':>10}")
    ms_per_token = {}
    for batch in dict.fromkeys([1, *batches]):
        reset_peak(device)
        seconds, new = batched_generate(tokenizer, model, batch, device)
        ms_per_token[batch] = 1000 * seconds / new
        print(
            f"{batch:>6}{seconds:>10.2f}{ms_per_token[batch]:>8.2f}"
            f"{new * batch / seconds:>10.1f}{peak_mb(device):>10.0f}"
        )
    del model
    return ms_per_token


def decode_mode_table(
    model_dir: Path, dtype: str, device: str, batches: list[int]
) -> dict[str, dict[str, Any]]:
    """Our backend per decode mode: first call seconds, and seconds by batch size."""
    from dtg_lib.backends.torch_backend import TorchBackend
    from dtg_lib.settings import SamplingSettings

    sampling = SamplingSettings(max_new_tokens=NEW_TOKENS)
    modes = ("eager", "static", "graph") if device.startswith("cuda") else ("eager", "static")
    print(f"\nours torch by decode mode, {dtype}, up to {NEW_TOKENS} new tokens a prompt")
    print(
        f"{'mode':>7}{'first s':>9}{'batch':>6}{'seconds':>9}{'ms/tok':>8}{'x one':>7}{'GPU MB':>8}"
    )
    figures: dict[str, dict[str, Any]] = {}
    for mode in modes:
        backend = TorchBackend(model_dir / "hf", device, dtype=dtype, decode=mode)
        prompt = dtg_prompt(backend.count_tokens)
        started = time.perf_counter()
        backend.generate(prompt, sampling, 0)
        sync(device)
        mode_figures: dict[str, Any] = {"first_s": time.perf_counter() - started, "by_batch": {}}
        for batch in dict.fromkeys([1, *batches]):
            seeds = list(range(batch))
            backend.generate_batch([prompt] * batch, sampling, seeds)  # capture
            reset_peak(device)
            sync(device)
            started = time.perf_counter()
            made = backend.generate_batch([prompt] * batch, sampling, seeds)
            sync(device)
            seconds = time.perf_counter() - started
            steps = max(g.completion_tokens for g in made)
            mode_figures["by_batch"][batch] = (seconds, 1000 * seconds / steps)
            single = mode_figures["by_batch"][1][0]
            print(
                f"{mode:>7}{mode_figures['first_s']:>9.2f}{batch:>6}{seconds:>9.2f}"
                f"{1000 * seconds / steps:>8.2f}{seconds / single:>7.2f}{peak_mb(device):>8.0f}"
            )
        figures[mode] = mode_figures
        backend.close()
    return figures


def batched_upsample(model_dir: Path, dtype: str, device: str, count: int) -> None:
    from dtg_lib.backends import BackendCache, load_backend
    from dtg_lib.settings import SamplingSettings, UpsampleSettings
    from dtg_lib.upsampler import Upsampler

    def loader(*args: Any, **kwargs: Any) -> Any:
        return load_backend(*args, **{**kwargs, "dtype": dtype})

    upsampler = Upsampler(backends=BackendCache(loader), allow_download=False)
    chosen = UpsampleSettings(
        model=str(model_dir / "hf"),
        backend="torch",
        device=device,
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
        sync(device)
        started = time.perf_counter()
        results = run()
        sync(device)
        seconds = time.perf_counter() - started
        new = sum(r.completion_tokens for r in results)
        print(f"ours {label}, {count} prompts, 1 round each:")
        print(f"  {seconds:.2f} s, {new / seconds:.1f} tok/s")
    upsampler.unload()


def judge_targets(raw_ms: dict[int, float], modes: dict[str, dict[str, Any]]) -> list[str]:
    """One line per GPU target: the figure, the target, and met or missed."""
    fast = "graph" if "graph" in modes else "static"
    by_batch = modes[fast]["by_batch"]
    single_s, single_ms = by_batch[1]
    speedup = raw_ms[1] / single_ms
    warm_up = modes[fast]["first_s"] - single_s

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [
        f"single stream ({fast}): {single_ms:.2f} ms/token vs raw generate {raw_ms[1]:.2f}: "
        f"{speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x) {verdict(speedup >= SPEEDUP_TARGET)}",
        f"one-time warm-up ({fast}, first call minus a warm one): {warm_up:.2f} s "
        f"(target <= {WARM_UP_TARGET_S:g} s) {verdict(warm_up <= WARM_UP_TARGET_S)}",
    ]
    if 8 in by_batch:
        ratio = by_batch[8][0] / single_s
        lines.append(
            f"batch of 8 ({fast}): {ratio:.2f}x one prompt's time "
            f"(target <= {BATCH_OF_8_TARGET:g}x) {verdict(ratio <= BATCH_OF_8_TARGET)}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a check")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device: this script is for a GPU machine (or pass --device cpu)")
    if not (args.model_dir / "hf").is_dir():
        parser.error(f"no model in {args.model_dir}: run benchmarks/make_full_size_model.py")
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"{name}, torch {torch.__version__}", flush=True)  # before the child's tables
    backend_table(args.model_dir, args.device)
    batches = [int(b) for b in args.batches.split(",")]
    raw_ms = batch_table(args.model_dir, args.dtype, args.device, batches)
    modes = decode_mode_table(args.model_dir, args.dtype, args.device, batches)
    for count in batches:
        batched_upsample(args.model_dir, args.dtype, args.device, count)
    print(f"\ntargets on {name}, {args.dtype}:")
    for line in judge_targets(raw_ms, modes):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

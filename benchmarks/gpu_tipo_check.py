"""TIPO on a lent GPU: do graph and eager decoding agree, and what do batching and
graphs buy at TIPO's lengths (up to 512 new tokens a call, 1-3 passes an expansion)?

    python benchmarks/gpu_tipo_check.py                  # CUDA: TIPO-200M-shaped model
    python benchmarks/gpu_tipo_check.py --device cpu --new-tokens 32 --batches 1,2

It prints

1. the agreement check: 8 TIPO expansions (tags only, text only, both; with a
   caption pass) on the tiny TIPO model in fp32, run with eager and with graph
   decoding (on a CPU "static", the same fixed-shape step uncaptured, stands in
   for graph), as a batch of 1 and of 8: every row's new tags and sentences must
   be the same in every run. The exit status is 1 when they are not;
2. the speed table, per decode mode and batch size: the first pass's TIPO inputs,
   `--new-tokens` new tokens each (TIPO's sampling; a random model rarely draws
   EOS, so calls run to the limit), ms per decode step, tokens/s, the share of
   the call spent on the prompt (what keeping a prompt's KV across retries could
   save at most), and the batch's time over one prompt's;
3. ratios: eager over graph per batch, batch N over batch 1 per mode;
4. `upsample_many` of the 8 expansions (1 try a pass) batched against one by one.

The speed model is `--shape tipo-200m` (default on CUDA): TIPO-200M's published
shape (LLaMA, hidden 768, MLP 2304, 20 layers, 12 heads, 32013-token vocabulary,
2048 positions) with random weights, built in seconds into --build-dir with the
tiny TIPO model's tokenizer (ids it lacks decode to nothing: speed does not depend
on text); or `--shape tiny`, the tiny TIPO model itself (default on a CPU).

Needs torch, transformers, safetensors and the tiny TIPO model in
.cache/tiny-tipo-model (python -m dtg_dev.tiny_model builds it); no gguf, no
platformdirs, no network.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dtg_lib.categories import BUILTIN_CLASSES, Category, canonical  # noqa: E402

TINY_TIPO = REPO / ".cache" / "tiny-tipo-model" / "hf"
ROWS: tuple[tuple[str, str], ...] = (  # (tags, natural-language prompt)
    ("1girl, solo, long hair", ""),
    ("", "a girl reading in a library"),
    ("1boy, hat", "a boy walking in the rain"),
    ("", ""),
    ("1girl, dragon girl, horns, smile", ""),
    ("", "two cats asleep on a warm windowsill"),
    ("1girl, 1boy, school uniform", "they talk after class"),
    ("scenery, sky, clouds", ""),
)
SEEDS = tuple(range(11, 11 + len(ROWS)))
TIPO_200M = {  # KBlueLeaf/TIPO-200M's config.json
    "vocab_size": 32013,
    "hidden_size": 768,
    "intermediate_size": 2304,
    "num_hidden_layers": 20,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "max_position_embeddings": 2048,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


class PlainLookup:
    """Built-in classes (people counts, quality, rating), the rest general: no index."""

    notices: tuple[str, ...] = ()

    def classify(self, tag: str) -> Any:
        from types import SimpleNamespace

        key = canonical(tag)
        category, name = BUILTIN_CLASSES.get(key, (Category.GENERAL, key))
        return SimpleNamespace(name=name, category=category, known=key in BUILTIN_CLASSES)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fast_mode(device: str) -> str:
    return "graph" if device.startswith("cuda") else "static"


def build_shaped_model(
    out: Path, tokenizer_dir: Path = TINY_TIPO, shape: dict[str, Any] | None = None
) -> Path:
    """TIPO-200M's shape (or `shape`) with random weights and the tiny TIPO tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(tokenizer_dir, out, ignore=shutil.ignore_patterns("*.safetensors", "*.json"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**(shape or TIPO_200M)))
    model.save_pretrained(out, safe_serialization=True)
    count = sum(p.numel() for p in model.parameters())
    print(
        f"built a TIPO-200M-shaped model ({count / 1e6:.1f}M parameters) in "
        f"{time.perf_counter() - started:.1f} s at {out}",
        flush=True,
    )
    return out


def backend_for(model_dir: Path, device: str, dtype: str, decode: str) -> Any:
    from dtg_lib.backends.torch_backend import TorchBackend

    return TorchBackend(model_dir, device, dtype=dtype, decode=decode)


def upsampler_for(model_dir: Path, device: str, dtype: str, decode: str) -> Any:
    from dtg_lib.backends import BackendCache
    from dtg_lib.upsampler import Upsampler

    cache = BackendCache(lambda kind, path, dev, **_: backend_for(path, dev, dtype, decode))
    return Upsampler(
        model_dir=model_dir.parent, lookup=PlainLookup(), backends=cache, allow_download=False
    )


def expansion_settings(model_dir: Path, device: str, new_tokens: int, **given: Any) -> Any:
    from dtg_lib.settings import SamplingSettings, UpsampleSettings

    return UpsampleSettings(
        model=str(model_dir),
        backend="torch",
        device=device,
        target="very_short",
        nl_length="very_short",
        caption=True,
        sampling=SamplingSettings(max_new_tokens=new_tokens),
        **given,
    )


def _shown(result: Any) -> tuple[Any, ...]:
    return (result.new_tags, result.extended, result.generated)


def agreement(tiny_dir: Path, device: str, batches: Sequence[int], new_tokens: int) -> bool:
    """Eager and graph (static on a CPU), batch 1 and N: the same tags and sentences."""
    prompts, texts = [p for p, _ in ROWS], [t for _, t in ROWS]
    settings = expansion_settings(tiny_dir, device, new_tokens)
    print(
        f"\nagreement, tiny TIPO model, fp32, {len(ROWS)} expansions, up to "
        f"{new_tokens} new tokens a call"
    )
    print(f"{'mode':>7}{'batch':>6}{'calls':>7}{'same as eager batch 1':>23}")
    reference: list[tuple[Any, ...]] | None = None
    same_everywhere = True
    for mode in ("eager", fast_mode(device)):
        upsampler = upsampler_for(tiny_dir, device, "fp32", mode)
        for batch in batches:
            shown: list[tuple[Any, ...]] = []
            calls = 0
            for first in range(0, len(ROWS), batch):
                rows = slice(first, first + batch)
                results = upsampler.upsample_many(
                    prompts[rows], settings, list(SEEDS[rows]), nl_prompts=texts[rows]
                )
                shown += [_shown(r) for r in results]
                calls += sum(r.rounds for r in results)
            if reference is None:
                reference = shown
            same = shown == reference
            same_everywhere &= same
            differing = [i for i, (a, b) in enumerate(zip(shown, reference)) if a != b]
            verdict = "yes" if same else f"NO (rows {differing})"
            print(f"{mode:>7}{batch:>6}{calls:>7}{verdict:>23}", flush=True)
        upsampler.unload()
    return same_everywhere


def tipo_inputs(count: int) -> list[str]:
    """The first pass's input of the first `count` rows (repeated past eight)."""
    from dtg_lib.dtg_format import classify_prompt
    from dtg_lib.prompt_syntax import parse
    from dtg_lib.settings import UpsampleSettings
    from dtg_lib.tipo_loop import first_model_input, tipo_request

    settings = UpsampleSettings(target="long", nl_length="long", caption=True)
    inputs = []
    for index in range(count):
        tags, text = ROWS[index % len(ROWS)]
        classified = classify_prompt(parse(tags), PlainLookup())
        inputs.append(first_model_input(tipo_request(classified, text, settings, 832, 1216)))
    return inputs


def speed(
    model_dir: Path, device: str, dtype: str, batches: Sequence[int], new_tokens: int
) -> dict[str, dict[int, float]]:
    """ms per decode step by mode and batch size, printed as a table."""
    from dtg_lib.settings import SamplingSettings
    from dtg_lib.tipo_loop import tipo_sampling

    sampling = tipo_sampling(SamplingSettings(max_new_tokens=new_tokens))
    print(f"\nspeed, {model_dir}, {dtype}, up to {new_tokens} new tokens a row")
    print(
        f"{'mode':>7}{'batch':>6}{'seconds':>9}{'steps':>7}{'ms/step':>9}{'tok/s':>9}"
        f"{'prompt %':>10}{'x one':>7}"
    )
    figures: dict[str, dict[int, float]] = {}
    for mode in ("eager", fast_mode(device)):
        backend = backend_for(model_dir, device, dtype, mode)
        figures[mode] = {}
        single_s = None
        for batch in dict.fromkeys([1, *batches]):
            prompts, seeds = tipo_inputs(batch), list(range(batch))
            backend.generate_batch(prompts, sampling, seeds)  # warm-up; graph capture
            sync(device)
            started = time.perf_counter()
            made = backend.generate_batch(prompts, sampling, seeds)
            sync(device)
            seconds = time.perf_counter() - started
            single_s = single_s or seconds
            steps = max(g.completion_tokens for g in made)
            tokens = sum(g.completion_tokens for g in made)
            prompt_share = 100 * sum(g.prompt_eval_s for g in made) / seconds
            figures[mode][batch] = 1000 * seconds / steps
            print(
                f"{mode:>7}{batch:>6}{seconds:>9.2f}{steps:>7}{figures[mode][batch]:>9.2f}"
                f"{tokens / seconds:>9.1f}{prompt_share:>9.1f}%{seconds / single_s:>7.2f}",
                flush=True,
            )
        backend.close()
    return figures


def ratio_lines(figures: dict[str, dict[int, float]]) -> list[str]:
    """Eager over the fast mode per batch, and batch N over batch 1 per mode."""
    eager, (fast, fast_ms) = (
        figures["eager"],
        next((mode, ms) for mode, ms in figures.items() if mode != "eager"),
    )
    lines = [
        f"eager / {fast}, batch {batch}: {eager[batch] / fast_ms[batch]:.2f}x"
        for batch in fast_ms
        if batch in eager
    ]
    for mode, by_batch in figures.items():
        lines += [
            f"{mode} batch {batch} / batch 1, per step: {ms / by_batch[1]:.2f}x"
            for batch, ms in by_batch.items()
            if batch != 1
        ]
    return lines


def expansions(model_dir: Path, device: str, dtype: str, count: int, new_tokens: int) -> None:
    """upsample_many of `count` expansions, one try a pass, batched vs one by one."""
    mode = fast_mode(device)
    upsampler = upsampler_for(model_dir, device, dtype, mode)
    settings = expansion_settings(model_dir, device, new_tokens, max_rounds=1)
    prompts = [ROWS[i % len(ROWS)][0] for i in range(count)]
    texts = [ROWS[i % len(ROWS)][1] for i in range(count)]
    seeds = list(range(count))
    upsampler.upsample_many(prompts[:2], settings, seeds[:2], nl_prompts=texts[:2])  # warm-up
    runs = {
        "batched": lambda: upsampler.upsample_many(prompts, settings, seeds, nl_prompts=texts),
        "one by one": lambda: [
            upsampler.upsample(p, settings, s, nl_prompt=t)
            for p, t, s in zip(prompts, texts, seeds)
        ],
    }
    print(f"\nupsample_many, {count} TIPO expansions, {mode}, {dtype}, 1 try a pass")
    took = {}
    for label, run in runs.items():
        sync(device)
        started = time.perf_counter()
        results = run()
        sync(device)
        took[label] = time.perf_counter() - started
        tokens = sum(r.completion_tokens for r in results)
        calls = sum(r.rounds for r in results)
        print(f"  {label}: {took[label]:.2f} s, {calls} calls, {tokens / took[label]:.1f} tok/s")
    print(f"  one by one / batched: {took['one by one'] / took['batched']:.2f}x")
    upsampler.unload()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a check")
    parser.add_argument("--shape", choices=("tipo-200m", "tiny"), default=None)
    parser.add_argument("--dtype", default=None, help="speed tables: fp16 on CUDA, fp32 on a CPU")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--tiny", type=Path, default=TINY_TIPO, help="the tiny TIPO model's hf")
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/tipo-200m-shaped"))
    args = parser.parse_args(argv)
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("no CUDA device: this script is for a GPU machine (or pass --device cpu)")
    if not (args.tiny / "config.json").is_file():
        parser.error(f"no tiny TIPO model in {args.tiny}: python -m dtg_dev.tiny_model")
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"{name}, torch {torch.__version__}", flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    same = agreement(args.tiny, args.device, batches, args.new_tokens)
    shape = args.shape or ("tipo-200m" if cuda else "tiny")
    model_dir = build_shaped_model(args.build_dir, args.tiny) if shape == "tipo-200m" else args.tiny
    dtype = args.dtype or ("fp16" if cuda else "fp32")
    figures = speed(model_dir, args.device, dtype, batches, args.new_tokens)
    print("\nratios (ms per decode step):")
    for line in ratio_lines(figures):
        print(f"  {line}")
    expansions(model_dir, args.device, dtype, max(batches), args.new_tokens)
    print(f"\ngraph and eager agree on every row: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

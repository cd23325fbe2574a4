"""Local quantization of a TIPO-sized F16 model: how long it takes, and what it buys.

TIPO publishes F16 GGUF files only; `tipo-500m:Q8_0` is made on the user's machine from
the F16 file (dtg_lib.models.quantize). This script

1. writes a random-weight LLaMA F16 GGUF of TIPO-500M's size with the full-size maker's
   functions (benchmarks/make_full_size_model.py: its padded 32006-token vocabulary,
   dtg_dev.tiny_model.write_gguf), once, into --out;
2. times `make_local_quant` (the engine's own path: a child process running llama.cpp's
   quantizer, validation, rename) from that file to Q8_0, once (a fresh file each run);
3. measures decode ms/token of the F16 file against the local Q8_0 file, in --pairs
   interleaved pairs (the order swapped every pair, so that a slow spell of a shared
   machine hits both alike), each a median over --runs runs of --tokens decode steps
   after a 64-token prompt; it reports medians and ranges, and the F16/Q8_0 ratio of
   every pair.

The shape: TIPO-200M's published config is LLaMA, hidden 768, intermediate 2304, 20
layers, 12 heads (head size 64), vocabulary 32013, SiLU, untied embeddings. TIPO-500M's
config is not at hand here, so its shape is assumed: the same 20 layers and head size,
widened to hidden 1280 / intermediate 3840 / 20 heads, which gives ~508M parameters with
the 32006-token vocabulary (the 7 tokens less change nothing measurable). Override with
--hidden/--intermediate/--layers/--heads.

    python benchmarks/bench_local_quant.py                  # TIPO-500M-sized (writes ~1 GB)
    python benchmarks/bench_local_quant.py --small --pairs 5 --tokens 16   # a quick check

Targets (issue 16): the quantization under a minute, and Q8_0 decoding at least 1.6x as
fast as F16 (on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import make_full_size_model as full  # noqa: E402  (needs the path above)
from dtg_dev import tiny_model as tm  # noqa: E402

DEFAULT_OUT = REPO / ".cache" / "bench-tipo500m"
PROMPT_TOKENS = 64
QUANT_TARGET_S = 60.0
SPEEDUP_TARGET = 1.6
RECIPE = 1


@dataclass(frozen=True)
class Shape:
    hidden: int = 1280
    intermediate: int = 3840
    layers: int = 20
    heads: int = 20

    def parameters(self, vocab: int) -> int:
        per_layer = 4 * self.hidden**2 + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return 2 * vocab * self.hidden + self.layers * per_layer + self.hidden


SMALL = Shape(hidden=256, intermediate=768, layers=4, heads=4)


def llama_config(shape: Shape, vocab: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=1024,  # TIPO's context
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=False,
    )


def random_state(config: Any, seed: int) -> dict[str, Any]:
    """LLaMA weights drawn directly (a transformers model of this size inits much slower)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size

    def draw(*size: int) -> Any:
        return torch.randn(*size, generator=generator) * 0.02

    state = {"model.embed_tokens.weight": draw(v, h)}
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{prefix}self_attn.{name}.weight"] = draw(h, h)
        state[f"{prefix}mlp.gate_proj.weight"] = draw(i, h)
        state[f"{prefix}mlp.up_proj.weight"] = draw(i, h)
        state[f"{prefix}mlp.down_proj.weight"] = draw(h, i)
        state[f"{prefix}input_layernorm.weight"] = torch.ones(h)
        state[f"{prefix}post_attention_layernorm.weight"] = torch.ones(h)
    state["model.norm.weight"] = torch.ones(h)
    state["lm_head.weight"] = draw(v, h)
    return state


def build_f16(out: Path, shape: Shape, seed: int) -> Path:
    """The F16 file, written once per (shape, seed, recipe)."""
    path = out / "tipo-bench-F16.gguf"
    info_path = out / "build-info.json"
    wanted = {"recipe": RECIPE, "seed": seed, "shape": asdict(shape)}
    built = info_path.is_file() and json.loads(info_path.read_text(encoding="utf-8"))
    if path.is_file() and built == wanted:
        return path
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vocab = full.padded_vocab(seed)
    config = llama_config(shape, vocab.size)
    print(
        f"writing {path.name}: {shape}, vocab {vocab.size}, "
        f"{shape.parameters(vocab.size) / 1e6:.0f}M parameters"
    )
    tm.write_gguf(path, random_state(config, seed), config, vocab, "f16", name="tipo-bench")
    info_path.write_text(json.dumps(wanted) + "\n", encoding="utf-8")
    print(f"written in {time.perf_counter() - started:.0f} s")
    return path


def time_quantization(f16: Path) -> tuple[Path, float]:
    from dtg_lib.models import make_local_quant

    target = f16.with_name("tipo-bench-Q8_0.local-quant.gguf")
    target.unlink(missing_ok=True)  # measure a real quantization every run
    started = time.perf_counter()
    make_local_quant(f16, target, "Q8_0")
    return target, time.perf_counter() - started


def load(path: Path, threads: int | None) -> Any:
    """Loaded as the engine loads GGUF files: read into memory, and without llama.cpp's
    extra CPU buffers (their AMX path segfaults on Q8_0 on some CPUs, this one included)."""
    import llama_cpp

    from dtg_lib.backends.llama_params import extra_buffers_wanted, model_params

    kwargs: dict[str, Any] = {"n_ctx": 512, "verbose": False, "use_mmap": False}
    if threads is not None:
        kwargs["n_threads"] = threads
    with model_params(llama_cpp, extra_buffers=extra_buffers_wanted()):
        return llama_cpp.Llama(model_path=str(path), **kwargs)


def decode_ms_per_token(llm: Any, tokens: int, runs: int) -> float:
    """Median over `runs` of the time per decode step after a fixed prompt; which token is
    fed does not change the work, so every step feeds the same one."""
    prompt = [1, *range(100, 100 + PROMPT_TOKENS - 1)]
    times = []
    for _ in range(runs):
        llm.reset()
        llm.eval(prompt)
        started = time.perf_counter()
        for _ in range(tokens):
            llm.eval([150])
        times.append((time.perf_counter() - started) * 1000 / tokens)
    return statistics.median(times)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def compare(f16: Path, q8: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    models = {"F16": load(f16, args.threads), "Q8_0": load(q8, args.threads)}
    threads = models["F16"].n_threads
    print(
        f"decode: {args.pairs} pairs x {args.runs} runs x {args.tokens} tokens, {threads} threads"
    )
    for llm in models.values():  # warm-up: first-touch of every weight page
        decode_ms_per_token(llm, 4, 1)
    found: dict[str, list[float]] = {"F16": [], "Q8_0": []}
    for pair in range(args.pairs):
        order = ["F16", "Q8_0"] if pair % 2 == 0 else ["Q8_0", "F16"]
        for name in order:
            found[name].append(decode_ms_per_token(models[name], args.tokens, args.runs))
        print(
            f"  pair {pair + 1}: F16 {found['F16'][-1]:.2f}  Q8_0 {found['Q8_0'][-1]:.2f} ms/token"
        )
    for llm in models.values():
        llm.close()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help=f"default {DEFAULT_OUT} (-small with --small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="a small shape, to check the script")
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: its own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = SMALL if args.small else Shape()
    shape = Shape(
        hidden=args.hidden or base.hidden,
        intermediate=args.intermediate or base.intermediate,
        layers=args.layers or base.layers,
        heads=args.heads or base.heads,
    )
    out = args.out or (
        DEFAULT_OUT.with_name(DEFAULT_OUT.name + "-small") if args.small else DEFAULT_OUT
    )
    f16 = build_f16(out, shape, args.seed)
    q8, seconds = time_quantization(f16)
    sizes = {p.name: p.stat().st_size / 1e6 for p in (f16, q8)}
    print(
        f"quantization to Q8_0: {seconds:.1f} s (target under {QUANT_TARGET_S:.0f} s); "
        + ", ".join(f"{name} {mb:.0f} MB" for name, mb in sizes.items())
    )
    found = compare(f16, q8, args)
    ratios = [a / b for a, b in zip(found["F16"], found["Q8_0"])]
    print(f"{'file':<8}{'ms/token, median (range)':>30}")
    for name, values in found.items():
        print(f"{name:<8}{spread(values):>30}")
    print(f"F16 / Q8_0 per pair: {spread(ratios)} (target at least {SPEEDUP_TARGET})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

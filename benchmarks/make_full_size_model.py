"""A full-size DTG-shaped model with random weights, for speed measurements.

Speed does not depend on weight values or on tokenizer quality, so this builds
the real DanTagGen architecture (its published config: hidden 1024, intermediate
3072, 24 layers, 16 heads, vocab 32006, mish, 2048 positions, untied) with
transformers' random initialisation and writes it the ways the real repos ship:

    OUT/hf/                    safetensors + tokenizer (torch backend)
    OUT/dtg-bench-f16.gguf     numpy -> GGUF (norms f32, as llama.cpp's converter)
    OUT/dtg-bench-Q8_0.gguf    quantized with gguf.quants (numpy)
    OUT/dtg-bench-Q6_K.gguf    quantized by llama.cpp from the f16 file, because
                               gguf.quants has no Q6_K quantizer (NotImplementedError)

The tokenizer is the tiny model's sentencepiece recipe padded with unused
dummy pieces to 32000, then DTG's six added tokens (ids 32000-32005 as in the
real vocabulary), so the embedding and output matrices have the real size.

    python benchmarks/make_full_size_model.py [--out .cache/bench-model] [--seed 0]
                                              [--hf-only]

--hf-only writes OUT/hf alone: enough for the torch rows, and needs neither the
gguf package nor llama-cpp-python (a lent GPU machine has neither).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dtg_dev import tiny_model as tm  # noqa: E402  (needs the path above)

log = logging.getLogger("dtg")

DEFAULT_OUT = REPO / ".cache" / "bench-model"
SP_PIECES = 32000  # LLaMA's sentencepiece size; DTG adds 6 tokens on top
_UNUSED = 5  # gguf.TokenType.UNUSED: never produced by the tokenizer
EXPECTED_PARAMS = 392.8e6
RECIPE = 1


def full_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=SP_PIECES + len(tm.ADDED_TOKENS),
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="mish",
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def padded_vocab(seed: int) -> Any:
    """The tiny model's vocabulary with dummy pieces inserted before the added tokens."""
    samples, _ = tm._corpus(seed, tm.TRAIN_SAMPLES)
    small = tm._vocab_from_sentencepiece(tm._train_sentencepiece(samples, tm.SP_VOCAB_SIZE))
    added = len(tm.ADDED_TOKENS)
    base = small.size - added
    dummies = SP_PIECES - base
    return tm._Vocab(
        pieces=(
            *small.pieces[:base],
            *(f"<dummy{i:05d}>" for i in range(dummies)),
            *small.pieces[base:],
        ),
        scores=(*small.scores[:base], *([-1e9] * dummies), *small.scores[base:]),
        types=(*small.types[:base], *([_UNUSED] * dummies), *small.types[base:]),
        sp_model=small.sp_model,
    )


def random_model(seed: int) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(full_config())
    return model.eval()


def build(out: Path, seed: int, *, hf_only: bool = False) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    vocab = padded_vocab(seed)
    tm._save_tokenizer(out / "hf", vocab, tm.build_hf_tokenizer(vocab))
    model = random_model(seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params:,} ({params / 1e6:.1f}M; DTG: ~{EXPECTED_PARAMS / 1e6:.1f}M)")
    tm._save_hf(model, out / "hf")
    with torch.no_grad():
        state = dict(model.state_dict())
    files: dict[str, Path] = {}
    for kind in () if hf_only else ("f16", "Q8_0"):
        path = out / f"dtg-bench-{kind}.gguf"
        tm.write_gguf(path, state, model.config, vocab, kind, name="dtg-bench-random")
        files[kind] = path
    if not hf_only:
        files["Q6_K"] = out / "dtg-bench-Q6_K.gguf"
        tm.quantize_gguf(files["f16"], files["Q6_K"], "Q6_K")
    info = {
        "recipe": RECIPE,
        "seed": seed,
        "parameters": params,
        "build_seconds": round(time.perf_counter() - started, 1),
        "files": {k: p.name for k, p in files.items()},
    }
    (out / "build-info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-only", action="store_true", help="skip the GGUF files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = build(args.out, args.seed, hf_only=args.hf_only)
    print(f"{'file':<28}{'MB':>10}")
    for name in [*info["files"].values(), "hf/model.safetensors"]:
        print(f"{name:<28}{(args.out / name).stat().st_size / 1e6:>10.1f}")
    print(f"built in {info['build_seconds']} s at {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

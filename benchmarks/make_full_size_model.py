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

Random weights alone give a flat distribution over all 32006 tokens: almost
every sampled token is a dummy piece (no text) and a comma is one draw in tens
of thousands, so no round would ever finish a tag. The weights are therefore
given a "comma channel" (see `add_comma_channel`): a residual dimension that
every token's embedding sets to a large constant and no layer writes to, which
the output matrix reads as a fixed logit bias: up for the comma, far down for
every token that is not a plain text piece (dummies, controls, bytes, the added
tokens, EOS); a second one, set by the comma's embedding alone, keeps a comma
from following a comma. Rounds then write a short made-up tag every few
tokens, as the real model does, on every backend alike (it is in the weights).

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
RECIPE = 2  # 2: the comma channel
_NORMAL = 1  # gguf.TokenType.NORMAL: a plain text piece
# The comma channel (see add_comma_channel): which residual dimension carries it, how
# much larger than the rest of the residual it is, and the logit biases it gives.
COMMA_DIMS = (-1, -2)
CHANNEL_OVER_REST = 4.0
COMMA_LOGIT = 4.5  # at temperature 1.35 and top_k 100: about one token in four
BANNED_LOGIT = -30.0
NO_SECOND_COMMA_LOGIT = -20.0


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


def residual_norm(model: Any, vocab: Any) -> float:
    """The median length of the residual the final norm receives, over a short prompt."""
    import torch

    real = [i for i, kind in enumerate(vocab.types) if kind == _NORMAL]
    ids = torch.tensor([real[:: max(1, len(real) // 48)][:48]])
    seen: list[Any] = []
    hook = model.model.norm.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        with torch.no_grad():
            model.model(ids)
    finally:
        hook.remove()
    return float(seen[0][0].norm(dim=-1).median())


def add_comma_channel(model: Any, vocab: Any) -> dict[str, Any]:
    """Give the random model commas every few tokens and plain text pieces only (see above).

    Two residual dimensions carry fixed values past every layer: no attention or MLP
    output writes to them and no layer norm passes them on, so they reach the final norm
    as the token's embedding set them. The first is c for every token, the second c for
    the comma only. With c several times the rest of the residual, the final norm maps c
    to about sqrt(hidden), and an output row's weight at a dimension is that row's logit
    bias through it: from the first, up for the comma and far down for every token that
    is not a plain text piece; from the second, the comma far down right after a comma.
    """
    import torch

    comma = vocab.pieces.index(",")
    rest = residual_norm(model, vocab)
    hidden = model.config.hidden_size
    always, after_comma = (d % hidden for d in COMMA_DIMS)
    level = CHANNEL_OVER_REST * rest
    at_final_norm = hidden**0.5 * level / (level**2 + rest**2) ** 0.5
    banned = [i for i, kind in enumerate(vocab.types) if kind != _NORMAL]
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, always] = level
        embed[:, after_comma] = 0.0
        embed[comma, after_comma] = level
        for layer in model.model.layers:
            for d in (always, after_comma):
                layer.self_attn.o_proj.weight[d, :] = 0.0
                layer.mlp.down_proj.weight[d, :] = 0.0
                layer.input_layernorm.weight[d] = 0.0
                layer.post_attention_layernorm.weight[d] = 0.0
        model.model.norm.weight[[always, after_comma]] = 1.0
        output = model.lm_head.weight
        output[:, [always, after_comma]] = 0.0
        output[banned, always] = BANNED_LOGIT / at_final_norm
        output[comma, always] = COMMA_LOGIT / at_final_norm
        output[comma, after_comma] = NO_SECOND_COMMA_LOGIT / at_final_norm
    print(f"comma channel: dims {always}, {after_comma}; level {level:.2f} over a residual "
          f"of {rest:.2f}; comma token {comma}; {len(banned)} tokens banned")  # fmt: skip
    return {"dims": [always, after_comma], "token": comma, "level": round(level, 4),
            "banned": len(banned)}  # fmt: skip


def build(out: Path, seed: int, *, hf_only: bool = False) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    vocab = padded_vocab(seed)
    tm._save_tokenizer(out / "hf", vocab, tm.build_hf_tokenizer(vocab))
    model = random_model(seed)
    comma = add_comma_channel(model, vocab)
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
        "comma_channel": comma,
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

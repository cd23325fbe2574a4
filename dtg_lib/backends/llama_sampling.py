"""One llama.cpp sampler chain per row, built as `Llama.generate` builds its own.

The chain has the same samplers in the same order with the same arguments as
llama-cpp-python's `Llama.generate` (penalties over the last 64 tokens, top-k,
typical 1.0, top-p, min-p, temperature, then a seeded draw), so a row sampled
from the same logits with the same seed draws the same tokens as that path did
before rows were batched: a seed keeps the tags it gave.

`llama_sampler_sample(chain, ctx, i)` reads the logits of batch entry i and
feeds the drawn token back into the chain (the penalty window), so each row
keeps its own history and its own random stream.
"""

from __future__ import annotations

from typing import Any

from ..settings import SamplingSettings
from .base import fold_seed

# llama-cpp-python's default `last_n_tokens_size`: the window its penalties see.
PENALTY_WINDOW = 64
# Arguments after the window that leave the penalty off: frequency 0, presence 0.
_NO_FREQUENCY_PENALTY = 0.0
_NO_PRESENCE_PENALTY = 0.0
# Typical sampling at 1.0 keeps every token; the chain has it to match `Llama.generate`.
_TYPICAL_OFF = 1.0
_MIN_KEEP = 1
# How many arguments `llama_sampler_init_penalties` takes in the builds that batch:
# llama.cpp's (window, repeat, frequency, presence), or llama-cpp-python's with the
# vocabulary size first. Older builds took nine and predate the batching API anyway.
_PENALTY_ARITIES = (4, 5)


def penalties_problem(llama_cpp: Any) -> str | None:
    """Why this llama-cpp-python cannot build the chain, or None when it can."""
    init = getattr(llama_cpp, "llama_sampler_init_penalties", None)
    if init is None:
        return "it has no llama_sampler_init_penalties"
    arity = len(getattr(init, "argtypes", None) or ())
    if arity not in _PENALTY_ARITIES:
        return f"its llama_sampler_init_penalties takes {arity} arguments, not 4 or 5"
    return None


class RowSampler:
    """The sampler chain of one row; `close` frees it (idempotent)."""

    def __init__(
        self, llama_cpp: Any, vocab_size: int, sampling: SamplingSettings, seed: int
    ) -> None:
        self._llama_cpp = llama_cpp
        params = llama_cpp.llama_sampler_chain_default_params()
        self._chain = llama_cpp.llama_sampler_chain_init(params)
        for sampler in _chain_members(llama_cpp, vocab_size, sampling, fold_seed(seed)):
            llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: Any, index: int) -> int:
        """The token drawn from the logits of entry `index` of the last decoded batch."""
        return int(self._llama_cpp.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        chain, self._chain = self._chain, None
        if chain is not None:
            self._llama_cpp.llama_sampler_free(chain)  # frees the members with it


def _chain_members(
    llama_cpp: Any, vocab_size: int, sampling: SamplingSettings, seed: int
) -> list[Any]:
    penalty_args: tuple[Any, ...] = (
        PENALTY_WINDOW,
        sampling.repetition_penalty,
        _NO_FREQUENCY_PENALTY,
        _NO_PRESENCE_PENALTY,
    )
    if len(llama_cpp.llama_sampler_init_penalties.argtypes) == 5:
        penalty_args = (vocab_size, *penalty_args)
    return [
        llama_cpp.llama_sampler_init_penalties(*penalty_args),
        llama_cpp.llama_sampler_init_top_k(sampling.top_k),
        llama_cpp.llama_sampler_init_typical(_TYPICAL_OFF, _MIN_KEEP),
        llama_cpp.llama_sampler_init_top_p(sampling.top_p, _MIN_KEEP),
        llama_cpp.llama_sampler_init_min_p(sampling.min_p, _MIN_KEEP),
        llama_cpp.llama_sampler_init_temp(sampling.temperature),
        llama_cpp.llama_sampler_init_dist(seed),
    ]

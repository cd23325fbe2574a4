"""Our own decode loop for the torch backend: a batch of prompts, one seed per row.

transformers' `generate` draws every row from one random generator, so a
prompt's tokens would depend on its batch-mates. Here each row has its own
`torch.Generator` and its own logits processing, in the order transformers
applies them (repetition penalty, temperature, top-k, top-p, min-p). One
prompt is a batch of one, so the single and batched paths share every line.

Only what transformers 4.30 (the AUTOMATIC1111 pin) and 5.x both accept is
used: left padding with an attention mask and explicit position ids, and
whatever KV cache the model returned (tuples in 4.x, a DynamicCache in 5.x)
handed straight back. The cache argument is `past_key_values` up to 5.2x and
`cache` in later 5.x (the old name warns there), so it is looked up in the
model's forward() signature, as is the argument that limits logits to the
last position (absent in 4.30).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..settings import SamplingSettings
from .base import Stopwatch, fold_seed


@dataclass
class Row:
    """One prompt of the batch: its tokens, its budget, its generator and what it drew."""

    prompt: list[int]
    budget: int
    generator: Any
    new: list[int] = field(default_factory=list)
    done: bool = False


def filter_scores(torch: Any, scores: Any, history: Any, sampling: SamplingSettings) -> Any:
    """One row's next-token scores (1 x vocab, fp32) after every sampling filter."""
    if sampling.repetition_penalty != 1.0:
        scores = _repetition_penalty(torch, scores, history, sampling.repetition_penalty)
    scores = scores / sampling.temperature
    if sampling.top_k:
        scores = _top_k(torch, scores, sampling.top_k)
    if sampling.top_p < 1.0:
        scores = _top_p(torch, scores, sampling.top_p)
    if sampling.min_p > 0:
        scores = _min_p(torch, scores, sampling.min_p)
    return scores


def _repetition_penalty(torch: Any, scores: Any, history: Any, penalty: float) -> Any:
    seen = torch.gather(scores, 1, history)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, history, seen)


def _top_k(torch: Any, scores: Any, top_k: int) -> Any:
    k = min(top_k, scores.shape[-1])
    floor = torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(scores < floor, float("-inf"))


def _top_p(torch: Any, scores: Any, top_p: float) -> Any:
    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - top_p)
    drop[..., -1:] = False  # the likeliest token always stays
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def _min_p(torch: Any, scores: Any, min_p: float) -> Any:
    probs = torch.softmax(scores, dim=-1)
    floor = probs.max(dim=-1, keepdim=True).values * min_p
    # min_p < 1, so the likeliest token is never below the floor.
    return scores.masked_fill(probs < floor, float("-inf"))


def _first_keyword(model: Any, names: Sequence[str]) -> str | None:
    """The first of `names` that the model's forward() accepts."""
    accepted = inspect.signature(model.forward).parameters
    return next((name for name in names if name in accepted), None)


class BatchDecoder:
    """Samples continuations of several prompts at once; one instance per call."""

    def __init__(self, torch: Any, model: Any, device: str, eos: int) -> None:
        self.torch, self.model, self.device, self.eos = torch, model, device, eos
        # Without it, prefill projects every prompt position onto the vocabulary.
        self._keep = _first_keyword(model, ("logits_to_keep", "num_logits_to_keep"))
        self._cache = _first_keyword(model, ("cache", "past_key_values")) or "past_key_values"

    def rows(self, prompts: Sequence[list[int]], budgets: Sequence[int], seeds: Sequence[int]):
        return [
            Row(list(ids), budget, self._generator(seed))
            for ids, budget, seed in zip(prompts, budgets, seeds)
        ]

    def _generator(self, seed: int) -> Any:
        generator = self.torch.Generator(device=self.device)
        generator.manual_seed(fold_seed(seed))
        return generator

    def run(self, rows: list[Row], sampling: SamplingSettings, clock: Stopwatch) -> None:
        """Fill each row's `new` until its EOS or budget; finished rows idle on EOS."""
        torch = self.torch
        width = max(len(row.prompt) for row in rows)
        ids = torch.tensor([[self.eos] * (width - len(r.prompt)) + r.prompt for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows])
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        past = None
        for _ in range(max(row.budget for row in rows)):
            logits, past = self._forward(ids, mask, positions, past)
            ids = self._sample(rows, logits, sampling)
            clock.mark_first_token()
            if all(row.done for row in rows):
                break
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
            positions = positions[:, -1:] + 1

    def _forward(self, ids: Any, mask: Any, positions: Any, past: Any) -> tuple[Any, Any]:
        extra = {self._cache: past}
        if self._keep:
            extra[self._keep] = 1
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra
        )
        return out.logits[:, -1, :].float(), getattr(out, self._cache)

    def _sample(self, rows: list[Row], logits: Any, sampling: SamplingSettings) -> Any:
        """Draw each unfinished row's next token; the column fed to the next step."""
        torch = self.torch
        column = []
        for index, row in enumerate(rows):
            if row.done:
                column.append(self.eos)
                continue
            history = torch.tensor([row.prompt + row.new], device=logits.device)
            scores = filter_scores(torch, logits[index : index + 1], history, sampling)
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=row.generator).item())
            row.new.append(token)
            row.done = token == self.eos or len(row.new) >= row.budget
            column.append(token)
        return torch.tensor(column, device=self.device).unsqueeze(1)

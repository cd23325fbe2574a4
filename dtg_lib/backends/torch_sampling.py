"""Our own decode loop for the torch backend: a batch of prompts, one seed per row.

transformers' `generate` draws every row from one random generator, so a
prompt's tokens would depend on its batch-mates. Here each row has its own
`torch.Generator` and its own logits processing, in the order transformers
applies them (repetition penalty, temperature, top-k, top-p, min-p). One
prompt is a batch of one, so the single and batched paths share every line.

Prompts are left-padded to one width, with a mask and explicit position ids;
the forward passes themselves (transformers' own, or a fixed-shape one a GPU
replays as a CUDA graph) come from `torch_steps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..settings import SamplingSettings
from .base import Stopwatch, fold_seed
from .torch_steps import StepFactory


@dataclass
class Row:
    """One prompt of the batch: its tokens, its budget, its generator and what it drew."""

    prompt: list[int]
    budget: int
    generator: Any
    new: list[int] = field(default_factory=list)
    done: bool = False


def filter_scores(torch: Any, scores: Any, history: Any, sampling: SamplingSettings) -> Any:
    """Next-token scores (rows x vocab, fp32) after every sampling filter, row by row."""
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


class BatchDecoder:
    """Samples continuations of several prompts at once; one instance per call."""

    def __init__(self, torch: Any, steps: StepFactory, device: str, eos: int) -> None:
        self.torch, self.steps, self.device, self.eos = torch, steps, device, eos

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
        # Idle rows up to the batch size a captured graph runs at; they draw nothing.
        idle = self.steps.padded_batch(len(rows)) - len(rows)
        rows = [*rows, *(Row(list(rows[0].prompt), 0, None, done=True) for _ in range(idle))]
        width = max(len(row.prompt) for row in rows)
        ids = torch.tensor([[self.eos] * (width - len(r.prompt)) + r.prompt for r in rows])
        real = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows])
        ids, real = ids.to(self.device), real.to(self.device)
        positions = (real.cumsum(-1) - 1).clamp(min=0)
        budget = max(row.budget for row in rows)
        history = None
        if sampling.repetition_penalty != 1.0:
            history = self._history(rows, width, budget)
        steps = self.steps.steps(len(rows), width, budget)
        logits = steps.prefill(ids, real, positions)
        for step in range(budget):
            seen = None if history is None else history[:, : width + step]
            column = self._sample(rows, logits, sampling, seen)
            clock.mark_first_token()
            if all(row.done for row in rows) or step == budget - 1:
                break
            if history is not None:
                history[:, width + step] = column[:, 0]
            logits = steps.step(column)

    def _sample(self, rows: list[Row], logits: Any, sampling: SamplingSettings, seen: Any) -> Any:
        """Draw each unfinished row's next token; the column fed to the next step.

        The filters run on the whole batch at once (each acts within a row), the
        draws use each row's own generator, and the tokens come back in one
        transfer, so a batch waits for the GPU once a step rather than once a row.
        Finished rows draw too (their results are final, so what they draw and
        are fed next is never read): picking out the live rows by index would
        copy the index to the GPU and wait for it, once more every step.
        """
        torch = self.torch
        probs = torch.softmax(filter_scores(torch, logits, seen, sampling), dim=-1)
        column = self._draw(probs, [row.generator for row in rows])
        drawn = column.tolist()
        for row, token in zip(rows, drawn):
            if not row.done:
                row.new.append(token)
                row.done = token == self.eos or len(row.new) >= row.budget
        return column[:, None]

    def _draw(self, probs: Any, generators: list[Any]) -> Any:
        """One token per row of `probs`, each row drawn with its own generator.

        The race of exponential clocks: the token whose probability over an
        Exp(1) draw is largest wins, which picks each token with its probability.
        It is what torch.multinomial does for one sample, without the host checks
        that make multinomial wait for the GPU on every call. A row without a
        generator (an idle padding row) takes its likeliest token.
        """
        torch = self.torch
        clocks = torch.cat(
            [
                torch.ones_like(probs[:1])
                if gen is None
                else torch.empty_like(probs[:1]).exponential_(generator=gen)
                for gen in generators
            ]
        )
        # An exact 0 would make a banned token (probability 0) win with 0/0 = NaN.
        clocks.clamp_(min=torch.finfo(clocks.dtype).tiny)
        return (probs / clocks).argmax(dim=-1)

    def _history(self, rows: list[Row], width: int, budget: int) -> Any:
        """Room for every row's tokens, prompts filled in; each step writes one column.

        It lives on the device so a step adds its column there instead of sending
        the whole history over again. Left padding holds the row's own first
        token: a repeated index is penalised once all the same, so it changes
        nothing. A finished row's later columns hold what it drew after it
        finished, which only its own (final, unread) scores see.
        """
        padded = [[row.prompt[0]] * (width - len(row.prompt)) + row.prompt for row in rows]
        history = self.torch.empty((len(rows), width + budget), dtype=self.torch.long)
        history[:, :width] = self.torch.tensor(padded)
        return history.to(self.device)

"""Several prompts decoded together on one llama.cpp context: one sequence per row.

Opt-in (DTG_LLAMA_BATCH=1): measured with llama-cpp-python 0.3.36 on CPU
(docs/llama-batching.md), a row decoded in a multi-sequence batch is not always
bit-equal to the same row decoded alone. F16 and F32 weights take other kernels
for one token than for several, and where a row's cells sit in the shared KV
buffer changes the attention's summation order (full-size Q8_0 and Q6_K files
differ in the last bits too; the tiny Q8_0 test model happens to stay equal,
which the tests use). So by default a
job's expansions run one after another, exactly reproducible; with batching on,
each step of a job's live rows is one llama_decode, faster, and an expansion may
differ in a tag or two from what the same seed gives alone.

Each row has its own sequence id, sampler chain and seed (llama_sampling), and
its sequence keeps its evaluated prompt for the row's next round, as the
one-sequence path does (reusable_prefix). A row that shares more of its prompt
with an earlier row of the same call copies that row's cache entries
(llama_memory_seq_cp) instead of evaluating them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..settings import SamplingSettings
from .base import Generation, new_token_budget
from .llama_cpp import (
    CHUNK_TOKENS,
    N_CTX,
    LlamaCppBackend,
    _chunks,
    _Evaluated,
    close_llama,
    import_llama_cpp,
    reusable_prefix,
    segment_ends,
)
from .llama_params import context_params
from .llama_sampling import RowSampler, penalties_problem

log = logging.getLogger("dtg")

BATCH_ENV = "DTG_LLAMA_BATCH"
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
# Rows decoded together; a job with more rows runs in groups.
MAX_ROWS = 8
# KV cells shared by the rows of one group: two one-sequence contexts' worth. A row
# may still use N_CTX (new_token_budget); rows are grouped so that their prompts
# plus new-token budgets fit (DTG-400M: 96 KiB a cell, 384 MiB in all).
KV_CELLS = 2 * N_CTX
# The low-level API the decoder calls (llama-cpp-python 0.3.15 and later have it).
REQUIRED_FUNCTIONS = (
    "llama_batch_init",
    "llama_batch_free",
    "llama_decode",
    "llama_get_memory",
    "llama_memory_seq_rm",
    "llama_memory_seq_cp",
    "llama_memory_clear",
    "llama_sampler_chain_default_params",
    "llama_sampler_chain_init",
    "llama_sampler_chain_add",
    "llama_sampler_sample",
    "llama_sampler_free",
)


def batching_wanted(environ: Any = os.environ) -> bool:
    """Whether the user turned batching on (off unless asked for)."""
    return environ.get(BATCH_ENV, "").strip().lower() in _TRUE_WORDS


def batching_problem(llama_cpp: Any) -> str | None:
    """Why this llama-cpp-python cannot batch rows, or None when it can."""
    missing = [name for name in REQUIRED_FUNCTIONS if getattr(llama_cpp, name, None) is None]
    if missing:
        return f"it lacks {', '.join(missing)} (llama-cpp-python 0.3.15 or later has them)"
    fields = {name for name, _ in getattr(llama_cpp.llama_context_params, "_fields_", ())}
    if not {"n_seq_max", "kv_unified"} <= fields:
        return "its context parameters have no kv_unified (llama-cpp-python 0.3.15 or later)"
    return penalties_problem(llama_cpp)


@dataclass
class _Row:
    tokens: list[int]
    ends: tuple[int, ...]
    budget: int
    slot: int
    sampler: RowSampler
    reused: int = 0
    new: list[int] = field(default_factory=list)
    stopped: bool = False
    done: bool = False

    def take(self, token: int, eos: int) -> None:
        if token == eos:
            self.stopped = self.done = True
            return
        self.new.append(token)
        self.done = len(self.new) >= self.budget


class RowDecoder:
    """The sequences of one context and what each holds; used with the backend's lock held."""

    def __init__(self, llama_cpp: Any, llm: Any, marker: int | None) -> None:
        self._api = llama_cpp
        self._ctx = llm.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(max(CHUNK_TOKENS, MAX_ROWS), 0, 1)
        self._vocab = llm.n_vocab()
        self._eos = llm.token_eos()
        self._marker = marker
        self.llm = llm
        self._held: list[_Evaluated | None] = [None] * MAX_ROWS

    def close(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            self._api.llama_batch_free(batch)

    def run(
        self,
        prompts: Sequence[list[int]],
        budgets: Sequence[int],
        sampling: SamplingSettings,
        seeds: Sequence[int],
    ) -> list[tuple[_Row, float, float]]:
        """Decode one group (at most MAX_ROWS rows); each row with the group's time split."""
        rows: list[_Row] = []
        try:
            # Inside the try: samplers made before a failure are freed below too.
            self._assign(rows, prompts, budgets, sampling, seeds)
            started = time.perf_counter()
            for index, row in enumerate(rows):
                self._prefill(row, rows[:index])
            prompt_s = time.perf_counter() - started
            self._decode_steps(rows)
            generation_s = time.perf_counter() - started - prompt_s
        finally:
            for row in rows:
                row.sampler.close()
        share = len(rows)
        return [(row, prompt_s / share, generation_s / share) for row in rows]

    def _assign(
        self,
        rows: list[_Row],
        prompts: Sequence[list[int]],
        budgets: Sequence[int],
        sampling: SamplingSettings,
        seeds: Sequence[int],
    ) -> None:
        """Into `rows`, a sequence for each prompt: the free one whose cache it can reuse
        most of.

        Every other cache entry is dropped before anything is evaluated, so the
        group's rows have the room `groups` counted on.
        """
        free = list(range(MAX_ROWS))
        for tokens, budget, seed in zip(prompts, budgets, seeds):
            ends = segment_ends(tokens, self._marker)
            slot = max(free, key=lambda s: reusable_prefix(self._held[s], tokens, ends))
            free.remove(slot)
            keep = reusable_prefix(self._held[slot], tokens, ends)
            self._api.llama_memory_seq_rm(self._memory, slot, keep, -1)
            sampler = RowSampler(self._api, self._vocab, sampling, seed)
            rows.append(_Row(list(tokens), ends, budget, slot, sampler, reused=keep))
        for slot in free:
            self._forget(slot)

    def _forget(self, slot: int) -> None:
        self._api.llama_memory_seq_rm(self._memory, slot, -1, -1)
        self._held[slot] = None

    def _prefill(self, row: _Row, earlier: Sequence[_Row]) -> None:
        """Evaluate the row's prompt after what its sequence keeps, or after what an
        earlier row of the group shares with it, and draw its first token."""
        donor, shared = max(
            ((r.slot, reusable_prefix(self._held[r.slot], row.tokens, row.ends)) for r in earlier),
            key=lambda pair: pair[1],
            default=(-1, 0),
        )
        self._held[row.slot] = None  # nothing to vouch for until the evaluation ends
        if shared > row.reused:
            self._api.llama_memory_seq_rm(self._memory, row.slot, -1, -1)
            self._api.llama_memory_seq_cp(self._memory, donor, row.slot, 0, shared)
            row.reused = shared
        for begin, end in _chunks(row.reused, row.ends):
            entries = [(row.tokens[p], p, row.slot, p == end - 1) for p in range(begin, end)]
            self._decode(entries)
        self._held[row.slot] = _Evaluated(tuple(row.tokens), row.ends)
        row.take(row.sampler.sample(self._ctx, len(entries) - 1), self._eos)

    def _decode_steps(self, rows: Sequence[_Row]) -> None:
        while live := [row for row in rows if not row.done]:
            entries = [
                (row.new[-1], len(row.tokens) + len(row.new) - 1, row.slot, True) for row in live
            ]
            self._decode(entries)
            for index, row in enumerate(live):
                row.take(row.sampler.sample(self._ctx, index), self._eos)

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        batch = self._batch
        batch.n_tokens = len(entries)
        for i, (token, position, slot, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot
            batch.logits[i] = logits
        status = self._api.llama_decode(self._ctx, batch)
        if status != 0:
            for slot in range(MAX_ROWS):  # a failed decode leaves the cells unknown
                self._forget(slot)
            raise RuntimeError(f"llama_decode failed with status {status}")


def groups(needs: Sequence[int], cells: int = KV_CELLS, most: int = MAX_ROWS) -> list[list[int]]:
    """Row indices in order, cut into groups of at most `most` rows whose needs fit `cells`."""
    found: list[list[int]] = []
    used = cells + 1
    for index, need in enumerate(needs):
        if used + need > cells or len(found[-1]) >= most:
            found.append([])
            used = 0
        found[-1].append(index)
        used += need
    return found


class BatchingLlamaCppBackend(LlamaCppBackend):
    """The llama.cpp backend that also decodes several prompts together (BatchBackend)."""

    _context_cells = KV_CELLS
    _decoder: RowDecoder | None = None

    def _context_params(self, llama_cpp: Any) -> contextlib.AbstractContextManager[None]:
        return context_params(llama_cpp, sequences=MAX_ROWS, unified=True)

    def generate(self, prompt: str, sampling: SamplingSettings, seed: int) -> Generation:
        return self.generate_batch([prompt], sampling, [seed])[0]

    def generate_batch(
        self, prompts: Sequence[str], sampling: SamplingSettings, seeds: Sequence[int]
    ) -> list[Generation]:
        with self._lock:
            decoder = self._current_decoder()
            llm = decoder.llm
            self.threads.apply(llm)
            tokens = [self._tokenize(llm, prompt) for prompt in prompts]
            budgets = [
                new_token_budget(len(t), self.context, sampling.max_new_tokens) for t in tokens
            ]
            results: list[Generation | None] = [None] * len(prompts)
            for group in groups([len(t) + b for t, b in zip(tokens, budgets)]):
                decoded = decoder.run(
                    [tokens[i] for i in group],
                    [budgets[i] for i in group],
                    sampling,
                    [seeds[i] for i in group],
                )
                for index, (row, prompt_s, generation_s) in zip(group, decoded):
                    results[index] = self._generation(llm, row, prompt_s, generation_s)
            return [result for result in results if result is not None]

    def _current_decoder(self) -> RowDecoder:
        llm = self._current_model()
        if self._decoder is None or self._decoder.llm is not llm:
            if self._decoder is not None:
                self._decoder.close()
            self._decoder = RowDecoder(import_llama_cpp(), llm, self._marker(llm))
        return self._decoder

    def _generation(self, llm: Any, row: _Row, prompt_s: float, generation_s: float) -> Generation:
        return Generation(
            text=self._detokenize(llm, row.new),
            prompt_tokens=len(row.tokens),
            completion_tokens=len(row.new) + int(row.stopped),
            prompt_eval_s=prompt_s,
            generation_s=generation_s,
            stopped_by_eos=row.stopped,
            reused_prompt_tokens=row.reused,
        )

    def close(self) -> None:
        # The decoder goes with the model in one locked step: a call in between would
        # make a new decoder over a model about to close, and never free its batch.
        with self._lock:
            decoder, self._decoder = self._decoder, None
            if decoder is not None:
                decoder.close()
            llm, self._llm = self._llm, None
        if llm is not None:
            close_llama(llm)
            log.info("closed llama.cpp model %s", self.model_path)


BATCHING_NOTICE = (
    f"llama.cpp decoded this job's expansions together ({BATCH_ENV}=1): faster, but an "
    "expansion may differ slightly from the one the same seed gives alone, or from the same "
    "job run again"
)


def llama_backend(path: Any, device: str, *, n_threads: int | None = None) -> LlamaCppBackend:
    """The llama.cpp backend: the batching one when the user turned it on and this
    llama-cpp-python can, else the one-by-one one (with the reason logged)."""
    if batching_wanted():
        problem = batching_problem(import_llama_cpp())
        if problem is None:
            backend = BatchingLlamaCppBackend(path, device, n_threads=n_threads)
            backend.notices = (*backend.notices, BATCHING_NOTICE)
            return backend
        log.warning(
            "%s is set, but this llama-cpp-python cannot decode rows together: %s; "
            "expanding one by one",
            BATCH_ENV,
            problem,
        )
    return LlamaCppBackend(path, device, n_threads=n_threads)

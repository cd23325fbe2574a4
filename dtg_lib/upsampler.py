"""The upsampling loop: the public API of dtg_lib.

`upsample` expands one prompt; `upsample_many` expands every image of a
webui job, one seed each. Round k of one expansion samples with seed + k,
so an expansion is a pure function of (prompt, settings, seed, size, model,
backend, device).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from . import budget, tipo_loop
from .backends.base import (
    Backend,
    BatchBackend,
    Generation,
    ModelLoadError,
    PromptTooLong,
    fold_seed,
)
from .ban import compile_ban_list
from .categories import Category, raw_key
from .context_fit import fit_to_context
from .dtg_format import (
    INPUT_END,
    LookupLike,
    build_model_input,
    classify_prompt,
    continuation_input,
    parse_model_output,
)
from .models import TIPO_FAMILY, ModelError, ProgressFn
from .progress import (  # the errors are re-exported: callers import them from here
    Cancelled,
    GenerationError,
    Job,
    JobProgress,
    check_cancel,
    generation_message,
    stage,
)
from .progress import (
    UpsampleError as UpsampleError,
)
from .prompt_syntax import parse
from .result import Prepared, Result, Timings  # re-exported: callers import them here
from .settings import SamplingSettings, UpsampleSettings

if TYPE_CHECKING:
    from .backends import BackendCache
    from .model_selection import ModelChoice

log = logging.getLogger("dtg")

# Rounds in a row that add nothing new before the model is taken to be done.
STALE_ROUNDS = 3


class TagLookupLike(LookupLike, Protocol):
    """What the upsampler asks of a tag lookup (tag_lookup.TagLookup, or a test's own)."""

    @property
    def notices(self) -> tuple[str, ...]:
        """Things to tell the user with every result, such as an index it could not read."""
        ...


class Upsampler:
    """Holds the tag lookup and the backend cache; safe to share between threads."""

    def __init__(
        self,
        *,
        model_dir: Path | None = None,
        lookup: TagLookupLike | None = None,
        backends: BackendCache | None = None,
        embeddings: Collection[str] = (),
        allow_download: bool = True,
        token_counter: budget.TokenCounter | None = None,
    ) -> None:
        """`token_counter` counts final prompts for the token budget and the result's
        count; a face whose host counts them itself (the webui) gives its own."""
        self.model_dir = model_dir
        self.embeddings = frozenset(embeddings)
        self.token_counter = token_counter or budget.ENGINE_COUNTER
        self.allow_download = allow_download
        self._lookup = lookup
        self._backends = backends
        self._lock = threading.Lock()

    @property
    def lookup(self) -> TagLookupLike:
        with self._lock:
            if self._lookup is None:
                from .tag_lookup import get_lookup

                self._lookup = get_lookup()
            return self._lookup

    @property
    def backends(self) -> BackendCache:
        with self._lock:
            if self._backends is None:
                from .backends import default_cache

                self._backends = default_cache
            return self._backends

    def prepare(
        self,
        prompt: str,
        settings: UpsampleSettings,
        width: int = 1024,
        height: int = 1024,
        *,
        quality_line: bool = True,
    ) -> Prepared:
        classified = classify_prompt(parse(prompt, self.embeddings), self.lookup)
        model_input = build_model_input(
            classified,
            width=width,
            height=height,
            target=settings.target,
            quality_line=quality_line,
        )
        counted = {Category.SPECIAL, Category.GENERAL}
        user_tags = {t.name for t in classified.tags if t.category in counted}
        return Prepared(classified, model_input, len(user_tags), quality_line)

    def upsample(
        self,
        prompt: str,
        settings: UpsampleSettings,
        seed: int,
        width: int = 1024,
        height: int = 1024,
        *,
        cancel: threading.Event | None = None,
        progress: ProgressFn | None = None,
        nl_prompt: str = "",
    ) -> Result:
        return self.upsample_many(
            [prompt],
            settings,
            [seed],
            width,
            height,
            cancel=cancel,
            progress=progress,
            nl_prompts=[nl_prompt],
        )[0]

    def upsample_many(
        self,
        prompts: Sequence[str],
        settings: UpsampleSettings,
        seeds: Sequence[int],
        width: int = 1024,
        height: int = 1024,
        *,
        cancel: threading.Event | None = None,
        progress: ProgressFn | None = None,
        nl_prompts: Sequence[str] | None = None,
    ) -> list[Result]:
        """One Result per (prompt, seed), and natural-language prompt for a TIPO model
        (a DTG model ignores them, with a notice; see tipo_loop).

        `cancel`: once it is set (from another thread), the job stops before its next
        expansion or round and raises Cancelled; a round already running finishes first.
        `progress` hears of each step, in order: the download (bytes, only when the model
        is fetched), the local quantization (tensors, only when a TIPO :Q8_0/:Q6_K file is
        made), the load, each round, and the end (see models.ProgressEvent).
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed each")
        texts = tipo_loop.nl_prompts_for(nl_prompts, len(prompts))
        budget.require_vocabulary(settings.budget)
        started = time.perf_counter()
        check_cancel(cancel)
        told = JobProgress(progress, len(prompts), settings.max_rounds)
        choice = self._choose_model(settings, progress=told.tell)
        told.loading(choice, settings.device)
        with self.backends.lease(choice.backend, choice.path, settings.device) as backend:
            load_s = time.perf_counter() - started
            told.loaded(choice)
            job = Job(settings, width, height, backend, choice.takes_quality_line, cancel, told)
            if choice.family == TIPO_FAMILY:
                results = tipo_loop.expand_all(self, prompts, texts, seeds, job)
            elif isinstance(backend, BatchBackend) and len(prompts) > 1:
                results = self._expand_together(prompts, seeds, job, backend)
            else:
                results = [
                    self._expand_numbered(number, prompt, seed, job)
                    for number, (prompt, seed) in enumerate(zip(prompts, seeds), 1)
                ]
            if choice.family != TIPO_FAMILY:
                results = tipo_loop.note_ignored_nl(results, texts)
        told.finished()
        return [
            _with_model(result, choice, backend, load_s if index == 0 else 0.0)
            for index, result in enumerate(results)
        ]

    def unload(self) -> None:
        self.backends.unload()

    def _choose_model(
        self, settings: UpsampleSettings, progress: ProgressFn | None = None
    ) -> ModelChoice:
        from .model_selection import select_model

        # A name checked where it came in (models.checked_model_spec) carries its spec.
        return select_model(
            settings.model,
            settings.backend,
            model_dir=self.model_dir,
            allow_download=self.allow_download,
            progress=progress,
        )

    def _expand_numbered(self, number: int, prompt: str, seed: int, job: Job) -> Result:
        with stage("expansion", number, prompt):
            started = time.perf_counter()
            loop = self._begin(prompt, seed, job)
            with self._model_failures(job.backend):
                loop.run(job.backend, lambda rounds: job.progress.round_of(number, rounds))
            return self._finish(prompt, loop, started)

    @contextlib.contextmanager
    def _model_failures(self, backend: Backend, what: str = "") -> Iterator[None]:
        """A failure inside the model becomes a GenerationError, and the model is dropped.

        Dropping it means the next job loads a fresh one (after an out-of-memory error,
        say) instead of reusing one in an unknown state. A model file that changed on
        disk during the job and no longer loads is a damaged model (ModelLoadError), as
        it would be had it been found so before the job.
        """
        try:
            yield
        except (PromptTooLong, Cancelled):
            raise
        except (ModelLoadError, ModelError) as exc:
            self.backends.discard(backend)
            raise ModelLoadError(
                f"{what}the model ({backend.name} on {backend.device}) changed on disk while "
                f"in use and no longer loads: {exc}"
            ) from exc
        except Exception as exc:
            self.backends.discard(backend)
            raise GenerationError(f"{what}{generation_message(backend, exc)}") from exc

    def _expand_together(
        self, prompts: Sequence[str], seeds: Sequence[int], job: Job, backend: BatchBackend
    ) -> list[Result]:
        """All prompts' rounds in lockstep, one batched model call per round.

        A result's total_s is its own preparation and assembly plus its share of
        each batched call (the backend splits a call's time evenly between its rows),
        so the totals add up to about the job's wall time.
        """
        loops, spent = [], []
        for number, (prompt, seed) in enumerate(zip(prompts, seeds), 1):
            started = time.perf_counter()
            with stage("expansion", number, prompt):
                loops.append(self._begin(prompt, seed, job))
            spent.append(time.perf_counter() - started)
        with self._model_failures(backend, f"{len(loops)} prompts expanded together: "):
            _run_together(loops, backend, job.settings, job.progress.rounds_together)
        results = []
        for number, (prompt, loop, before) in enumerate(zip(prompts, loops, spent), 1):
            with stage("expansion", number, prompt):
                model_s = loop.prompt_eval_s + loop.generation_s
                results.append(self._finish(prompt, loop, time.perf_counter(), before + model_s))
        return results

    def _begin(self, prompt: str, seed: int, job: Job) -> _Rounds:
        """Everything before the model runs: read, classify and fit the prompt."""
        settings, width, height = job.settings, job.width, job.height
        check_cancel(job.cancel)
        started = time.perf_counter()
        with stage("reading the prompt"):
            prepared = self.prepare(prompt, settings, width, height, quality_line=job.quality_line)
        lookup_s = time.perf_counter() - started
        # A lookup that could not read its index (tag_lookup.TagLookup.notices) says so here.
        lookup_notices = list(self.lookup.notices)
        with stage("fitting the prompt into the model's context"):
            prepared, notices = fit_to_context(prepared, job.backend, settings, width, height)
        notices = lookup_notices + notices
        return _Rounds(
            prepared,
            settings,
            seed,
            lookup_s=lookup_s,
            notices=notices,
            cancel=job.cancel,
            counter=self.token_counter,
        )

    def _finish(self, prompt: str, loop: _Rounds, started: float, earlier_s: float = 0.0) -> Result:
        """The Result; total_s is the time since `started` plus `earlier_s`."""
        prepared = loop.prepared
        with stage("writing the final prompt"):
            final, fitted = budget.fit_tags(
                prepared.classified, loop.new_tags, loop.settings, self.token_counter
            )
        total = time.perf_counter() - started + earlier_s
        return Result(
            prompt=prompt,
            final_prompt=final,
            new_tags=tuple(loop.new_tags[: fitted.kept]),
            model_input=prepared.model_input,
            seed=loop.seed,
            rounds=loop.rounds,
            prompt_tokens=loop.prompt_tokens,
            completion_tokens=loop.completion_tokens,
            timings=Timings(
                lookup_s=loop.lookup_s,
                prompt_eval_s=loop.prompt_eval_s,
                generation_s=loop.generation_s,
                total_s=total,
            ),
            model="",
            backend="",
            device="",
            tag_categories={t.tag.name: t.category.value for t in prepared.classified.tags},
            notices=(*loop.notices, *fitted.notices),
            tokens=fitted.count.tokens if fitted.count else None,
            token_target=fitted.count.target if fitted.count else None,
        )


class _Rounds:
    """One expansion: generate, keep what is new and allowed, continue until long enough.

    `run` drives it alone; `_run_together` drives several through `next_input`
    and `take`, one round each per batched model call. The rules are the same.
    """

    def __init__(
        self,
        prepared: Prepared,
        settings: UpsampleSettings,
        seed: int,
        *,
        lookup_s: float = 0.0,
        notices: Sequence[str] = (),
        cancel: threading.Event | None = None,
        counter: budget.TokenCounter = budget.ENGINE_COUNTER,
    ) -> None:
        self.prepared = prepared
        self.cancel = cancel
        self.settings = settings
        self.seed = seed
        self.lookup_s = lookup_s
        self.bans = compile_ban_list(settings.ban_tags)
        self.user_names = prepared.classified.known_names()
        self.needed = settings.target_tags - prepared.user_tag_count
        # The target length and the token budget: whichever is reached first ends the loop.
        self.budget_full = budget.loop_limit(prepared.classified, settings, counter)
        self.new_tags: list[str] = []
        self.rounds = 0
        self.stale = 0
        self.finished = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.prompt_eval_s = 0.0
        self.generation_s = 0.0
        self.notices: list[str] = list(notices)

    def run(self, backend: Backend, after_round: Callable[[int], None] | None = None) -> None:
        """Every round until done; `after_round` hears the number of rounds run so far."""
        while (step := self.next_input()) is not None:
            text, seed = step
            try:
                generation = backend.generate(text, self.settings.sampling, seed)
            except PromptTooLong as exc:
                self.context_full(exc)
                continue
            self.take(text, generation)
            if after_round is not None:
                after_round(self.rounds)

    def next_input(self) -> tuple[str, int] | None:
        """The next round's model input and seed, or None once the expansion is done.

        Raises Cancelled when the job was cancelled, so a cancelled job stops between rounds.
        """
        check_cancel(self.cancel)
        if self._long_enough():
            self.finished = True
        if self.finished:
            return None
        # Folded here, not only in the backends, so the shuffle below sees the same seed
        # as sampling: seeds that differ by a multiple of 2**32 - 1 give equal expansions.
        round_seed = fold_seed(self.seed + self.rounds)
        fed = list(self.new_tags)
        random.Random(round_seed).shuffle(fed)
        return continuation_input(self.prepared.model_input, fed), round_seed

    def _long_enough(self) -> bool:
        if self.rounds >= self.settings.max_rounds or len(self.new_tags) >= self.needed:
            return True
        return self.budget_full is not None and self.budget_full(self.new_tags)

    def take(self, text: str, generation: Generation) -> None:
        """Count one round's generation for `text` and keep its new tags."""
        self.rounds += 1
        self.prompt_tokens += generation.prompt_tokens
        self.completion_tokens += generation.completion_tokens
        self.prompt_eval_s += generation.prompt_eval_s
        self.generation_s += generation.generation_s
        # The model may extend the last tag it was fed, so read the fed tags back too.
        generated = text + generation.text
        if not generation.stopped_by_eos:
            # Stopped by the token budget or the context: the last tag may be cut short
            # ("thigh" of "thighhighs"), so it is not kept.
            generated = _without_last_tag(generated)
        added = self._keep(parse_model_output(generated))
        if not added and not generation.stopped_by_eos and "," not in generation.text:
            self._note_once(
                f"a round stopped after {generation.completion_tokens} tokens, before it "
                "finished a tag; a larger max_new_tokens lets rounds finish theirs"
            )
        self.stale = 0 if added else self.stale + 1
        if self.stale >= STALE_ROUNDS:
            self.finished = True

    def _note_once(self, notice: str) -> None:
        if notice not in self.notices:
            self.notices.append(notice)

    def context_full(self, exc: PromptTooLong) -> None:
        """The round's input did not fit: fatal in round one, else keep what we have."""
        if not self.rounds:
            raise exc
        # The tags found so far, fed back, filled the context.
        self.notices.append(
            f"stopped after {len(self.new_tags)} new tags: the model's context is full"
        )
        self.finished = True

    def _keep(self, found: list[str]) -> int:
        seen = set(self.new_tags) | self.user_names
        before = len(self.new_tags)
        for tag in found:
            key = raw_key(tag)  # the model writes names as Danbooru does
            if key in seen or self.bans.bans(tag):
                continue
            seen.add(key)
            self.new_tags.append(key)
        return len(self.new_tags) - before


def _without_last_tag(generated: str) -> str:
    head, end, tail = generated.rpartition(INPUT_END)
    return f"{head}{end}{tail.rsplit(',', 1)[0]}" if "," in tail else f"{head}{end}"


def _run_together(
    loops: Sequence[_Rounds],
    backend: BatchBackend,
    settings: UpsampleSettings,
    after_round: Callable[[list[int]], None] | None = None,
) -> None:
    """Advance every unfinished expansion by one round per `generate_batch` call.

    `after_round` hears each expansion's number of rounds after every call.
    """
    while steps := [(loop, step) for loop in loops if (step := loop.next_input()) is not None]:
        texts = [text for _, (text, _) in steps]
        seeds = [seed for _, (_, seed) in steps]
        outcomes = _generate_step(backend, texts, settings.sampling, seeds)
        for (loop, _), text, outcome in zip(steps, texts, outcomes):
            if isinstance(outcome, PromptTooLong):
                loop.context_full(outcome)
            else:
                loop.take(text, outcome)
        if after_round is not None:
            after_round([loop.rounds for loop in loops])


def _generate_step(
    backend: BatchBackend, texts: list[str], sampling: SamplingSettings, seeds: list[int]
) -> list[Generation | PromptTooLong]:
    """One Generation per text, or the PromptTooLong of a text that filled the context."""
    try:
        return list(backend.generate_batch(texts, sampling, seeds))
    except PromptTooLong:
        # Some row no longer fits: ask row by row so that only that row stops.
        return [
            _generate_or_full(backend, text, sampling, seed) for text, seed in zip(texts, seeds)
        ]


def _generate_or_full(
    backend: Backend, text: str, sampling: SamplingSettings, seed: int
) -> Generation | PromptTooLong:
    try:
        return backend.generate(text, sampling, seed)
    except PromptTooLong as exc:
        return exc


def _with_model(result: Result, choice: ModelChoice, backend: Backend, load_s: float) -> Result:
    timings = replace(result.timings, load_s=load_s, total_s=result.timings.total_s + load_s)
    return replace(
        result,
        model=choice.display_name,
        backend=backend.name,
        device=backend.device,
        timings=timings,
        notices=((choice.notice,) if choice.notice else ())
        + backend.notices  # such as a GPU the backend could not use
        + result.notices,
    )


_default: Upsampler | None = None
_default_lock = threading.Lock()


def default_upsampler() -> Upsampler:
    global _default
    with _default_lock:
        if _default is None:
            _default = Upsampler()
        return _default


def upsample(
    prompt: str,
    settings: UpsampleSettings | None = None,
    seed: int = 0,
    width: int = 1024,
    height: int = 1024,
    *,
    cancel: threading.Event | None = None,
    progress: ProgressFn | None = None,
    nl_prompt: str = "",
) -> Result:
    return default_upsampler().upsample(
        prompt,
        settings or UpsampleSettings(),
        seed,
        width,
        height,
        cancel=cancel,
        progress=progress,
        nl_prompt=nl_prompt,
    )


def upsample_many(
    prompts: Sequence[str],
    settings: UpsampleSettings | None = None,
    seeds: Sequence[int] = (),
    width: int = 1024,
    height: int = 1024,
    *,
    cancel: threading.Event | None = None,
    progress: ProgressFn | None = None,
    nl_prompts: Sequence[str] | None = None,
) -> list[Result]:
    return default_upsampler().upsample_many(
        prompts,
        settings or UpsampleSettings(),
        seeds,
        width,
        height,
        cancel=cancel,
        progress=progress,
        nl_prompts=nl_prompts,
    )

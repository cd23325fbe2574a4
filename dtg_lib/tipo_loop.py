"""The TIPO loop: expanding prompts with a model of the TIPO family.

`Upsampler.upsample_many` hands a job here when the chosen model speaks TIPO's
format (dtg_lib.tipo_format). One expansion plans its passes from what the user
gave (the prompt's tags, classified as the DTG path classifies them, and an
optional natural-language text), then runs each pass on the backend, fed the
previous pass's result (dtg_lib.tipo_run, which also says how retries, the tag
cap, the ban list and gen_meta work). An expansion is a pure function of its
inputs and seed, as for DTG.

Decisions:
- Sampling: each sampling setting left at its DTG default takes TIPO's default
  (tipo_format.TipoSampling) instead; a value the user changed is used as given.
- Sentences are kept as the model wrote them: a ban list names tags, and taking
  words out of a sentence would change what it says.
- On a batching backend (BatchBackend) a job's expansions advance together: each
  step sends every unfinished expansion's next call (whatever its pass and try)
  in one `generate_batch` call. Each row keeps its own passes and tries, so a row
  gives what it gives alone wherever the backend's batch is exact (torch; llama.cpp
  only batches when DTG_LLAMA_BATCH=1, which is not exact, and says so).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Protocol

from . import budget
from .assemble import assemble
from .backends.base import Backend, BatchBackend
from .dtg_format import ClassifiedPrompt, LookupLike, classify_prompt
from .progress import Job, check_cancel, stage
from .prompt_syntax import escape_tag, parse
from .result import Result, Timings
from .settings import UpsampleSettings
from .tipo_format import TipoRequest, build_model_input, clean_text, plan_passes
from .tipo_run import TipoRun
from .tipo_run import tipo_sampling as tipo_sampling


class _NoticingLookup(LookupLike, Protocol):
    @property
    def notices(self) -> tuple[str, ...]: ...


class Engine(Protocol):
    """What the loop asks of an Upsampler."""

    embeddings: frozenset[str]
    token_counter: budget.TokenCounter

    @property
    def lookup(self) -> _NoticingLookup: ...

    def _model_failures(self, backend: Backend, what: str = "") -> AbstractContextManager[None]: ...


# Webui syntax in a natural-language prompt that the model should not read.
_EXTRA_NETWORK = re.compile(r"<[^<>]*>")
_WEIGHT = re.compile(r":\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*(?=\))")
_BRACKET = re.compile(r"(?<!\\)[()\[\]]")
_ESCAPE = re.compile(r"\\(.)")


def plain_text(text: str) -> str:
    """A natural-language prompt as the model reads it: without weights, brackets and
    extra networks (the final prompt keeps them all)."""
    text = _BRACKET.sub("", _WEIGHT.sub("", _EXTRA_NETWORK.sub(" ", text)))
    return clean_text(_ESCAPE.sub(r"\1", text))


def tipo_request(
    classified: ClassifiedPrompt,
    nl_prompt: str,
    settings: UpsampleSettings,
    width: int,
    height: int,
) -> TipoRequest:
    return TipoRequest.from_classified(
        classified,
        plain_text(nl_prompt),
        tag_length=settings.target,
        text_length=settings.nl_length,
        caption=settings.caption,
        gen_meta=settings.gen_meta,
        width=width,
        height=height,
    )


def first_model_input(request: TipoRequest) -> str:
    """The input of the first model call (what --dry-run shows), before any fitting."""
    passes = plan_passes(request)
    return build_model_input(request, passes[0]) if passes else ""


@dataclass
class _Expansion:
    """One prompt of the job: what was read before the model ran, and its passes."""

    number: int
    prompt: str
    nl_prompt: str
    classified: ClassifiedPrompt
    run: TipoRun
    lookup_s: float
    own_s: float = 0.0  # time spent on this prompt alone, outside shared model calls
    counter: budget.TokenCounter = budget.ENGINE_COUNTER  # the upsampler's, for the budget


def expand_all(
    upsampler: Engine,
    prompts: Sequence[str],
    nl_prompts: Sequence[str],
    seeds: Sequence[int],
    job: Job,
) -> list[Result]:
    """One Result per prompt, each with its natural-language prompt and seed."""
    numbered = list(enumerate(zip(prompts, nl_prompts, seeds), 1))
    if isinstance(job.backend, BatchBackend) and len(prompts) > 1:
        return _expand_together(upsampler, numbered, job, job.backend)
    return [
        _expand_one(upsampler, number, prompt, nl_prompt, seed, job)
        for number, (prompt, nl_prompt, seed) in numbered
    ]


def nl_prompts_for(nl_prompts: Sequence[str] | None, count: int) -> list[str]:
    """One natural-language prompt per prompt; none given means empty ones."""
    if nl_prompts is None:
        return [""] * count
    if len(nl_prompts) != count:
        raise ValueError(
            f"{count} prompts but {len(nl_prompts)} natural-language prompts: give one each"
        )
    return list(nl_prompts)


def note_ignored_nl(results: list[Result], nl_prompts: Sequence[str]) -> list[Result]:
    """A DTG model reads tags only: say so wherever a natural-language prompt was given."""
    notice = (
        "the natural-language prompt was ignored: the model is a DTG model, which reads "
        "tags only (choose a TIPO model, such as tipo-500m, to use it)"
    )
    return [
        replace(r, notices=(*r.notices, notice)) if text.strip() else r
        for r, text in zip(results, nl_prompts)
    ]


def _expand_one(
    upsampler: Engine, number: int, prompt: str, nl_prompt: str, seed: int, job: Job
) -> Result:
    with stage("expansion", number, prompt):
        started = time.perf_counter()
        expansion = _begin(upsampler, number, prompt, nl_prompt, seed, job)
        with upsampler._model_failures(job.backend):
            expansion.run.run(lambda calls: job.progress.round_of(number, calls))
        return _finish(expansion, job.settings, time.perf_counter() - started)


def _expand_together(
    upsampler: Engine,
    numbered: Sequence[tuple[int, tuple[str, str, int]]],
    job: Job,
    backend: BatchBackend,
) -> list[Result]:
    """Every prompt's calls in lockstep, one `generate_batch` call a step.

    A result's total_s is its own preparation and assembly plus its share of each
    batched call (the backend splits a call's time evenly between its rows), so the
    totals add up to about the job's wall time.
    """
    expansions = []
    for number, (prompt, nl_prompt, seed) in numbered:
        started = time.perf_counter()
        with stage("expansion", number, prompt):
            expansion = _begin(upsampler, number, prompt, nl_prompt, seed, job)
        expansion.own_s = time.perf_counter() - started
        expansions.append(expansion)
    runs = [expansion.run for expansion in expansions]
    with upsampler._model_failures(backend, f"{len(runs)} prompts expanded together: "):
        run_together(runs, backend, job.progress.rounds_together)
    results = []
    for expansion in expansions:
        started = time.perf_counter()
        model_s = expansion.run.prompt_eval_s + expansion.run.generation_s
        with stage("expansion", expansion.number, expansion.prompt):
            spent = expansion.own_s + model_s + time.perf_counter() - started
            results.append(_finish(expansion, job.settings, spent))
    return results


def run_together(
    runs: Sequence[TipoRun],
    backend: BatchBackend,
    after_step: Callable[[list[int]], None] | None = None,
) -> None:
    """Advance every unfinished run by one call per `generate_batch` call.

    Every run of a job has the same sampling (the job's settings). A run whose
    input no longer fits raises PromptTooLong from its `next_input`, as it would
    alone. `after_step` hears each run's number of calls after every step.
    """
    while calls := [(run, call) for run in runs if (call := run.next_input()) is not None]:
        texts = [text for _, (text, _) in calls]
        seeds = [seed for _, (_, seed) in calls]
        generations = backend.generate_batch(texts, calls[0][0].sampling, seeds)
        for (run, _), generation in zip(calls, generations):
            run.take(generation)
        if after_step is not None:
            after_step([run.calls for run in runs])


def _begin(
    upsampler: Engine, number: int, prompt: str, nl_prompt: str, seed: int, job: Job
) -> _Expansion:
    """Everything before the model runs: read and classify the prompt, plan the passes."""
    started = time.perf_counter()
    check_cancel(job.cancel)
    with stage("reading the prompt"):
        classified = classify_prompt(parse(prompt, upsampler.embeddings), upsampler.lookup)
        request = tipo_request(classified, nl_prompt, job.settings, job.width, job.height)
    lookup_s = time.perf_counter() - started
    run = TipoRun(request, job.settings, seed, job.backend, upsampler.lookup, job.cancel)
    run.notices.extend(upsampler.lookup.notices)
    run.user_names = classified.known_names()
    return _Expansion(
        number, prompt, nl_prompt, classified, run, lookup_s, counter=upsampler.token_counter
    )


def _finish(expansion: _Expansion, settings: UpsampleSettings, spent_s: float) -> Result:
    """The Result; its total_s is `spent_s` plus the time taken here."""
    started = time.perf_counter()
    run, classified = expansion.run, expansion.classified
    with stage("writing the final prompt"):
        final, kept, fitted = _fitted_prompt(
            classified, run, expansion.nl_prompt, settings, expansion.counter
        )
    return Result(
        prompt=expansion.prompt,
        final_prompt=final,
        new_tags=tuple(kept),
        model_input=run.model_input,
        seed=run.seed,
        rounds=run.calls,
        prompt_tokens=run.prompt_tokens,
        completion_tokens=run.completion_tokens,
        timings=Timings(
            lookup_s=expansion.lookup_s,
            prompt_eval_s=run.prompt_eval_s,
            generation_s=run.generation_s,
            total_s=spent_s + time.perf_counter() - started,
        ),
        model="",
        backend="",
        device="",
        tag_categories={
            **{t.tag.name: t.category.value for t in classified.tags},
            **{name: run.categories[name] for name in kept},
        },
        notices=(*run.notices, *fitted.notices),
        extended=run.extended or "" if fitted.level < 2 else "",
        generated=run.generated or "" if fitted.level < 1 else "",
        tokens=fitted.count.tokens if fitted.count else None,
        token_target=fitted.count.target if fitted.count else None,
    )


def _fitted_prompt(
    classified: ClassifiedPrompt,
    run: TipoRun,
    nl_prompt: str,
    settings: UpsampleSettings,
    counter: budget.TokenCounter = budget.ENGINE_COUNTER,
) -> tuple[str, list[str], budget.Fit]:
    """The final prompt within the token budget: new tags are trimmed first, then the
    model's long text, then its extension of the user's text; the user's text stays."""
    tags = run.new_tags()
    full = final_sentences(run, nl_prompt)
    levels = [full, {**full, "generated": ""}, {"extended": nl_prompt.strip(), "generated": ""}]

    def write(kept: int, level: int) -> str:
        return assemble(classified, tags[:kept], settings.format, levels[level], run.categories)

    fitted = budget.fit(settings.budget, write, len(tags), len(levels), counter)
    return write(fitted.kept, fitted.level), tags[: fitted.kept], fitted


def final_sentences(run: TipoRun, nl_prompt: str) -> dict[str, str]:
    """The sentence slots of the final prompt: the user's text as typed (weights and
    all) then the model's extension of it, and the long caption. What the model
    wrote is escaped for webui syntax; what repeats the user's text is left out."""
    given = plain_text(nl_prompt)
    extended = _escaped(_rest_after(run.extended, given))
    # The caption stands alone: a full stop that ended the user's sentence is not its start.
    generated = _escaped(_rest_after(run.generated, given).lstrip(_SENTENCE_MARKS + " "))
    return {"extended": _continued(nl_prompt.strip(), extended), "generated": generated}


_SENTENCE_MARKS = ".!?"


def _continued(text: str, continuation: str) -> str:
    """The user's text and the model's continuation of it; a continuation that begins by
    ending the user's sentence ("." then more) takes no space before it."""
    if not text or not continuation:
        return text or continuation
    joint = "" if continuation[0] in _SENTENCE_MARKS else " "
    return f"{text}{joint}{continuation}"


def _rest_after(text: str | None, given: str) -> str:
    """`text` without the user's own text at its start (the model continued it)."""
    text = clean_text(text or "")
    if given and text.startswith(given):
        return text[len(given) :].lstrip(" ,;")
    return "" if text == given else text


def _escaped(text: str) -> str:
    # Brackets the model wrote are words, not emphasis; escape_tag handles them.
    return escape_tag(text) if text else ""

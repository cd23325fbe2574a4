"""The TIPO loop: expanding a prompt with a model of the TIPO family.

`Upsampler.upsample_many` hands a job here when the chosen model speaks TIPO's
format (dtg_lib.tipo_format). One expansion plans its passes from what the user
gave (the prompt's tags, classified as the DTG path classifies them, and an
optional natural-language text), then runs each pass on the backend, fed the
previous pass's result. A pass that writes less than its length asks for is
tried again with seed + k, at most MAX_TRIES times, and the fullest attempt is
kept; so an expansion is a pure function of its inputs and seed, as for DTG.

Decisions:
- Sampling: each sampling setting left at its DTG default takes TIPO's default
  (tipo_format.TipoSampling) instead; a value the user changed is used as given.
- New tags are capped by the tag length's maximum (TIPO_TARGETS[target].max_tags,
  counting the user's `tag` section), not by the sentence maximum as tipo-kgen does.
- The ban list applies to new tags, which are neither kept nor fed to a later pass.
  Sentences are kept as the model wrote them: a ban list names tags, and taking
  words out of a sentence would change what it says.
- Passes run one prompt after another, also on a batching backend.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Protocol

from . import budget
from .assemble import assemble
from .backends.base import Backend, Generation, PromptTooLong, fold_seed
from .ban import compile_ban_list
from .categories import Category, raw_key
from .context_fit import MIN_NEW_TOKENS
from .dtg_format import ClassifiedPrompt, LookupLike, classify_prompt
from .progress import Job, check_cancel, stage
from .prompt_syntax import escape_tag, parse
from .result import Result, Timings
from .settings import SamplingSettings, UpsampleSettings
from .tipo_format import (
    LONG_SECTION,
    TAG_SECTION,
    TIPO_TARGETS,
    TipoOutput,
    TipoPass,
    TipoRequest,
    TipoSampling,
    build_model_input,
    clean_text,
    meets_target,
    parse_model_output,
    plan_passes,
    sentences,
)


class _NoticingLookup(LookupLike, Protocol):
    @property
    def notices(self) -> tuple[str, ...]: ...


class Engine(Protocol):
    """What the loop asks of an Upsampler."""

    embeddings: frozenset[str]

    @property
    def lookup(self) -> _NoticingLookup: ...

    def _model_failures(self, backend: Backend) -> AbstractContextManager[None]: ...


# Tries of one pass before its fullest attempt is kept: each is a call of up to 512 tokens.
MAX_TRIES = 5
_TAG_CATEGORIES_FIRST = (Category.SPECIAL, Category.GENERAL)
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


def tipo_sampling(sampling: SamplingSettings) -> SamplingSettings:
    """TIPO's defaults for every setting the user left at the DTG default."""
    dtg, tipo = SamplingSettings(), TipoSampling()
    names = ("temperature", "top_p", "top_k", "min_p", "max_new_tokens")
    unset = {n: getattr(tipo, n) for n in names if getattr(sampling, n) == getattr(dtg, n)}
    return replace(sampling, **unset)


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
        width=width,
        height=height,
    )


def first_model_input(request: TipoRequest) -> str:
    """The input of the first model call (what --dry-run shows), before any fitting."""
    passes = plan_passes(request)
    return build_model_input(request, passes[0]) if passes else ""


def expand_all(
    upsampler: Engine,
    prompts: Sequence[str],
    nl_prompts: Sequence[str],
    seeds: Sequence[int],
    job: Job,
) -> list[Result]:
    """One Result per prompt, each with its natural-language prompt and seed."""
    return [
        _expand_one(upsampler, number, prompt, nl_prompt, seed, job)
        for number, (prompt, nl_prompt, seed) in enumerate(zip(prompts, nl_prompts, seeds), 1)
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
        check_cancel(job.cancel)
        with stage("reading the prompt"):
            classified = classify_prompt(parse(prompt, upsampler.embeddings), upsampler.lookup)
            request = tipo_request(classified, nl_prompt, job.settings, job.width, job.height)
        lookup_s = time.perf_counter() - started
        run = TipoRun(request, job.settings, seed, job.backend, upsampler.lookup, job.cancel)
        run.notices.extend(upsampler.lookup.notices)
        run.user_names = classified.known_names()
        with upsampler._model_failures(job.backend):
            run.run(lambda calls: job.progress.round_of(number, calls))
        with stage("writing the final prompt"):
            final, kept, fitted = _fitted_prompt(classified, run, nl_prompt, job.settings)
        return Result(
            prompt=prompt,
            final_prompt=final,
            new_tags=tuple(kept),
            model_input=run.model_input,
            seed=seed,
            rounds=run.calls,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
            timings=Timings(
                lookup_s=lookup_s,
                prompt_eval_s=run.prompt_eval_s,
                generation_s=run.generation_s,
                total_s=time.perf_counter() - started,
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
    classified: ClassifiedPrompt, run: TipoRun, nl_prompt: str, settings: UpsampleSettings
) -> tuple[str, list[str], budget.Fit]:
    """The final prompt within the token budget: new tags are trimmed first, then the
    model's long text, then its extension of the user's text; the user's text stays."""
    tags = run.new_tags()
    full = run.final_sentences(nl_prompt)
    levels = [full, {**full, "generated": ""}, {"extended": nl_prompt.strip(), "generated": ""}]

    def write(kept: int, level: int) -> str:
        return assemble(classified, tags[:kept], settings.format, levels[level])

    fitted = budget.fit(settings.budget, write, len(tags), len(levels))
    return write(fitted.kept, fitted.level), tags[: fitted.kept], fitted


@dataclass
class _Attempt:
    output: TipoOutput
    amount: int  # tags or sentences written: the fullest attempt is kept


class TipoRun:
    """One expansion's passes. `run` calls the model; the rest reads what it kept."""

    def __init__(
        self,
        request: TipoRequest,
        settings: UpsampleSettings,
        seed: int,
        backend: Backend,
        lookup: LookupLike,
        cancel: threading.Event | None = None,
    ) -> None:
        self.request = request
        self.settings = settings
        self.seed = seed
        self.backend = backend
        self.lookup = lookup
        self.cancel = cancel
        self.passes = plan_passes(request)
        self.sampling = tipo_sampling(settings.sampling)
        self.bans = compile_ban_list(settings.ban_tags)
        self.tries = min(settings.max_rounds, MAX_TRIES)
        self.user_names: set[str] = {raw_key(n) for n in request.tag_section()}
        self.found: list[str] = []  # new tags in the order found, as raw keys
        self.categories: dict[str, str] = {}
        self.extended: str | None = None
        self.generated: str | None = None
        self.model_input = ""  # the first pass's
        self.notices: list[str] = []
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.prompt_eval_s = self.generation_s = 0.0

    def run(self, after_call: Callable[[int], None] | None = None) -> None:
        tags, text = self.request.tag_section(), self.request.clean_text()
        for index, step in enumerate(self.passes):
            model_input = self._fitted(step, tags, text)
            if index == 0:
                self.model_input = model_input
            output = self._best_attempt(step, model_input, after_call)
            self._keep(output)
            text = clean_text(output.generated or output.extended or text)
            # The next pass reads the user's tags and the new ones kept, nothing banned.
            kept = [t for t in self.new_tags() if self.categories[t] in _FIRST_VALUES]
            tags = list(dict.fromkeys(self.request.tag_section() + kept))

    def new_tags(self) -> list[str]:
        """New tags, capped by the tag length's maximum (the user's `tag` section counts)."""
        most = TIPO_TARGETS[self.request.tag_length].max_tags
        return self.found[: max(most - len(self.request.tag_section()), 0)]

    def final_sentences(self, nl_prompt: str) -> dict[str, str]:
        """The sentence slots of the final prompt: the user's text as typed (weights and
        all) then the model's extension of it, and the long caption. What the model
        wrote is escaped for webui syntax; what repeats the user's text is left out."""
        given = plain_text(nl_prompt)
        extended = _rest_after(self.extended, given)
        generated = _rest_after(self.generated, given)
        return {
            "extended": " ".join(p for p in (nl_prompt.strip(), _escaped(extended)) if p),
            "generated": _escaped(generated),
        }

    def _fitted(self, step: TipoPass, tags: list[str], text: str) -> str:
        """The pass's input, with tags left out from the end until it fits the context."""
        limit = self.backend.context - min(self.sampling.max_new_tokens, MIN_NEW_TOKENS)

        def text_with(count: int) -> str:
            return build_model_input(self.request, step, tags=tags[:count], text=text)

        full = text_with(len(tags))
        used = self.backend.count_tokens(full)
        if used <= limit:
            return full
        low, high, best = 0, len(tags) - 1, None
        while low <= high:  # the most tags that fit
            mid = (low + high) // 2
            if self.backend.count_tokens(text_with(mid)) <= limit:
                best, low = mid, mid + 1
            else:
                high = mid - 1
        if best is None:
            raise PromptTooLong(
                f"the TIPO model input is {used} tokens, more than the model's context "
                f"({self.backend.context}) allows, even without tags: shorten the "
                "natural-language prompt"
            )
        self.notices.append(
            f"the TIPO model input is {used} tokens, more than the model's context "
            f"({self.backend.context}) allows: {len(tags) - best} tags were left out of "
            "the model input; the final prompt keeps them all"
        )
        return text_with(best)

    def _best_attempt(
        self, step: TipoPass, model_input: str, after_call: Callable[[int], None] | None
    ) -> TipoOutput:
        best: _Attempt | None = None
        for attempt in range(self.tries):
            check_cancel(self.cancel)
            generation = self.backend.generate(
                model_input, self.sampling, fold_seed(self.seed + attempt)
            )
            self._count(generation)
            if after_call is not None:
                after_call(self.calls)
            written = generation.text if generation.stopped_by_eos else _cut_end(generation.text)
            output = parse_model_output(model_input + written, self.lookup)
            if meets_target(output, step):
                return output
            amount = _amount(output, step)
            if best is None or amount > best.amount:
                best = _Attempt(output, amount)
        assert best is not None  # tries is at least 1
        self.notices.append(
            f"a TIPO pass ({step.operation or 'tags'}) wrote less than the {step.length} "
            f"length asks for in {self.tries} tries; the fullest try was kept"
        )
        return best.output

    def _count(self, generation: Generation) -> None:
        self.calls += 1
        self.prompt_tokens += generation.prompt_tokens
        self.completion_tokens += generation.completion_tokens
        self.prompt_eval_s += generation.prompt_eval_s
        self.generation_s += generation.generation_s

    def _keep(self, output: TipoOutput) -> None:
        ordered = [c for c in _TAG_CATEGORIES_FIRST if c in output.tags]
        ordered += [c for c in output.tags if c not in _TAG_CATEGORIES_FIRST]
        seen = self.user_names | set(self.found)
        for category in ordered:
            for name in output.tags[category]:
                key = raw_key(name)
                if not key or key in seen or self.bans.bans(name):
                    continue
                seen.add(key)
                self.found.append(key)
                self.categories[key] = category.value
        self.extended = output.extended or self.extended
        self.generated = output.generated or self.generated


_FIRST_VALUES = {c.value for c in _TAG_CATEGORIES_FIRST}


def _amount(output: TipoOutput, step: TipoPass) -> int:
    if step.output_section == TAG_SECTION:
        return len(output.tag_section())
    text = output.generated if step.output_section == LONG_SECTION else output.extended
    return len(sentences(text))


def _cut_end(written: str) -> str:
    """Text stopped by the token budget, without its last piece, which may be cut short."""
    end = max(written.rfind(","), written.rfind("."), written.rfind("\n"))
    return written[: end + 1] if end >= 0 else ""


def _rest_after(text: str | None, given: str) -> str:
    """`text` without the user's own text at its start (the model continued it)."""
    text = clean_text(text or "")
    if given and text.startswith(given):
        return text[len(given) :].lstrip(" ,;")
    return "" if text == given else text


def _escaped(text: str) -> str:
    # Brackets the model wrote are words, not emphasis; escape_tag handles them.
    return escape_tag(text) if text else ""

"""One TIPO expansion's passes, as a machine that asks for one model call at a time.

`TipoRun.next_input` says what the next call should be (the model input and its
seed), `TipoRun.take` reads what came back. `run` drives one expansion alone;
dtg_lib.tipo_loop drives several through one `generate_batch` call a step. The
rules are the same either way, so a row of a batch gives exactly what it gives
alone with the same seed wherever the backend's batch is exact (see tipo_loop).

A pass that writes less than its length asks for is tried again with
`retry_seed(seed, k)`, at most MAX_TRIES times, and the fullest attempt is kept. A
retry sends the very same text as the try before it (not rebuilt, not re-fitted), so a backend that
keeps the previous call's prompt in its cache (llama.cpp) can reuse all of it.

Decisions:
- New tags are capped by the tag length's maximum (TIPO_TARGETS[target].max_tags,
  counting the user's `tag` section), not by the sentence maximum as tipo-kgen does.
- The ban list applies to new tags, which are neither kept nor fed to a later pass.
- gen_meta: the last pass asks the model for meta lines too. A header line
  (`artist:`, `characters:`, `copyrights:`, `meta:`, `rating:`, `quality:`) the
  model writes, wherever in its output, gives new tags of that category, unless
  the user's input already has that line (the first line of a key counts, as in
  tipo-kgen). They are kept apart from the `tag` section's new tags, ahead of
  them and outside their cap: the cap is the tag length's, which counts `tag`
  section tags only. Without gen_meta such lines after the `tag` section are
  taken for echoes and ignored.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from .backends.base import Backend, Generation, PromptTooLong, fold_seed
from .ban import compile_ban_list
from .categories import Category, raw_key
from .context_fit import MIN_NEW_TOKENS
from .dtg_format import LookupLike
from .progress import check_cancel
from .settings import SamplingSettings, UpsampleSettings
from .tipo_format import (
    HEADER_CATEGORIES,
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
    split_sections,
)

# Retry k of a pass samples with seed + k * RETRY_STRIDE, not seed + k (tipo-kgen's rule).
# A retry repeats its input exactly, and a webui batch runs neighbouring seeds on the same
# input: with seed + k, seed 11's second try *is* seed 12's first, so both keep the same
# text and neighbouring images got identical expansions. A large odd stride (2**32 / phi)
# keeps every image's tries apart from its neighbours' for any batch a person runs.
RETRY_STRIDE = 0x9E3779B1

# Tries of one pass before its fullest attempt is kept: each is a call of up to 512 tokens.
MAX_TRIES = 5
TAG_CATEGORIES_FIRST = (Category.SPECIAL, Category.GENERAL)
_FIRST_VALUES = {c.value for c in TAG_CATEGORIES_FIRST}
_META_KEYS = dict(HEADER_CATEGORIES)
_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>|</?s>|<unk>|<pad>")


def tipo_sampling(sampling: SamplingSettings) -> SamplingSettings:
    """TIPO's defaults for every setting the user left at the DTG default."""
    dtg, tipo = SamplingSettings(), TipoSampling()
    names = ("temperature", "top_p", "top_k", "min_p", "max_new_tokens")
    unset = {n: getattr(tipo, n) for n in names if getattr(sampling, n) == getattr(dtg, n)}
    return replace(sampling, **unset)


def written_meta(model_input: str, written: str) -> dict[Category, list[str]]:
    """Tags of the header lines the model wrote, by category: the first line of each key,
    and only for keys the model input does not have already."""
    given = split_sections(model_input)
    taken = {key for key, _ in given}
    found: dict[Category, list[str]] = {}
    for key, body in split_sections(model_input + written)[len(given) :]:
        if key in _META_KEYS and key not in taken:
            taken.add(key)
            names = (clean_text(_SPECIAL_TOKEN.sub("", piece)) for piece in body.split(","))
            found[_META_KEYS[key]] = [name for name in names if name]
    return found


@dataclass
class _Attempt:
    output: TipoOutput
    written: str  # what the model wrote after the input
    amount: int  # tags or sentences written: the fullest attempt is kept


@dataclass
class _PassState:
    """The pass under way: its input, which try comes next, and the fullest try so far."""

    step: TipoPass
    model_input: str
    attempt: int = 0
    best: _Attempt | None = None


def retry_seed(seed: int, attempt: int) -> int:
    """The seed of try `attempt` (0 first) of a pass for an expansion seeded `seed`."""
    return fold_seed(seed + attempt * RETRY_STRIDE)


class TipoRun:
    """One expansion's passes. `next_input`/`take` (or `run`) call the model; the rest
    reads what it kept."""

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
        self.found: list[str] = []  # new `tag` section tags in the order found, as raw keys
        self.meta_found: list[str] = []  # new tags from meta lines (gen_meta), as raw keys
        self.categories: dict[str, str] = {}
        self.extended: str | None = None
        self.generated: str | None = None
        self.model_input = ""  # the first pass's
        self.notices: list[str] = []
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.prompt_eval_s = self.generation_s = 0.0
        self._next_pass = 0
        self._tags, self._text = request.tag_section(), request.clean_text()
        self._pass: _PassState | None = None

    @property
    def rounds(self) -> int:
        """Model calls so far (progress counts TIPO calls as rounds)."""
        return self.calls

    def run(self, after_call: Callable[[int], None] | None = None) -> None:
        """Every call until the last pass is done; `after_call` hears the calls so far."""
        while (call := self.next_input()) is not None:
            model_input, seed = call
            self.take(self.backend.generate(model_input, self.sampling, seed))
            if after_call is not None:
                after_call(self.calls)

    def next_input(self) -> tuple[str, int] | None:
        """The next call's model input and seed, or None once every pass is done.

        Raises Cancelled once the job is cancelled, so a job stops between calls.
        """
        check_cancel(self.cancel)
        if self._pass is None:
            if self._next_pass >= len(self.passes):
                return None
            step = self.passes[self._next_pass]
            model_input = self._fitted(step, self._tags, self._text)
            if self._next_pass == 0:
                self.model_input = model_input
            self._pass = _PassState(step, model_input)
        return self._pass.model_input, retry_seed(self.seed, self._pass.attempt)

    def take(self, generation: Generation) -> None:
        """Read the answer to the call `next_input` asked for."""
        state = self._pass
        if state is None:
            raise RuntimeError("take() without a call asked for by next_input()")
        self._count(generation)
        written = generation.text if generation.stopped_by_eos else _cut_end(generation.text)
        output = parse_model_output(state.model_input + written, self.lookup)
        if meets_target(output, state.step):
            self._finish_pass(output, written)
            return
        amount = _amount(output, state.step)
        if state.best is None or amount > state.best.amount:
            state.best = _Attempt(output, written, amount)
        state.attempt += 1
        if state.attempt >= self.tries:
            self.notices.append(
                f"a TIPO pass ({state.step.operation or 'tags'}) wrote less than the "
                f"{state.step.length} length asks for in {self.tries} tries; the fullest "
                "try was kept"
            )
            self._finish_pass(state.best.output, state.best.written)

    def new_tags(self) -> list[str]:
        """Meta tags (gen_meta), then the `tag` section's new tags up to the tag length's
        maximum (the user's `tag` section counts)."""
        most = TIPO_TARGETS[self.request.tag_length].max_tags
        return self.meta_found + self.found[: max(most - len(self.request.tag_section()), 0)]

    def _finish_pass(self, output: TipoOutput, written: str) -> None:
        state = self._pass
        assert state is not None
        self._keep(output)
        if state.step.gen_meta:
            self._keep_meta(written_meta(state.model_input, written))
        self._text = clean_text(output.generated or output.extended or self._text)
        # The next pass reads the user's tags and the new ones kept, nothing banned.
        kept = [t for t in self.new_tags() if self.categories[t] in _FIRST_VALUES]
        self._tags = list(dict.fromkeys(self.request.tag_section() + kept))
        self._pass = None
        self._next_pass += 1

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

    def _count(self, generation: Generation) -> None:
        self.calls += 1
        self.prompt_tokens += generation.prompt_tokens
        self.completion_tokens += generation.completion_tokens
        self.prompt_eval_s += generation.prompt_eval_s
        self.generation_s += generation.generation_s

    def _keep(self, output: TipoOutput) -> None:
        ordered = [c for c in TAG_CATEGORIES_FIRST if c in output.tags]
        ordered += [c for c in output.tags if c not in TAG_CATEGORIES_FIRST]
        for category in ordered:
            for name in output.tags[category]:
                self._add(self.found, name, category)
        self.extended = output.extended or self.extended
        self.generated = output.generated or self.generated

    def _keep_meta(self, meta: dict[Category, list[str]]) -> None:
        for category, names in meta.items():
            for name in names:
                self._add(self.meta_found, name, category)

    def _add(self, kept: list[str], name: str, category: Category) -> None:
        """Keep a new tag unless the user or an earlier pass has it, or it is banned."""
        key = raw_key(name)
        taken = key in self.user_names or key in self.categories
        if not key or taken or self.bans.bans(name):
            return
        kept.append(key)
        self.categories[key] = category.value


def _amount(output: TipoOutput, step: TipoPass) -> int:
    if step.output_section == TAG_SECTION:
        return len(output.tag_section())
    text = output.generated if step.output_section == LONG_SECTION else output.extended
    return len(sentences(text))


def _cut_end(written: str) -> str:
    """Text stopped by the token budget, without its last piece, which may be cut short."""
    end = max(written.rfind(","), written.rfind("."), written.rfind("\n"))
    return written[: end + 1] if end >= 0 else ""

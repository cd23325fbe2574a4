"""The upsampling loop: the public API of dtg_lib.

`upsample` expands one prompt; `upsample_many` expands every image of a
webui job, one seed each. Round k of one expansion samples with seed + k,
so an expansion is a pure function of (prompt, settings, seed, size, model,
backend, device).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .assemble import assemble
from .ban import compile_ban_list
from .categories import Category, canonical
from .dtg_format import (
    ClassifiedPrompt,
    build_model_input,
    classify_prompt,
    continuation_input,
    parse_model_output,
)
from .prompt_syntax import parse
from .settings import UpsampleSettings

if TYPE_CHECKING:
    from .model_selection import ModelChoice

log = logging.getLogger("dtg")

# Rounds in a row that add nothing new before the model is taken to be done.
STALE_ROUNDS = 3


@dataclass(frozen=True)
class Timings:
    load_s: float = 0.0
    lookup_s: float = 0.0
    prompt_eval_s: float = 0.0
    generation_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True)
class Result:
    prompt: str
    final_prompt: str
    new_tags: tuple[str, ...]
    model_input: str
    seed: int
    rounds: int
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    model: str
    backend: str
    device: str
    tag_categories: dict[str, str] = field(default_factory=dict)
    notices: tuple[str, ...] = ()  # things the user should be told, such as a backend fallback

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["new_tags"] = list(self.new_tags)
        return data


@dataclass(frozen=True)
class Prepared:
    """Everything decided before the model runs; also what --dry-run shows."""

    classified: ClassifiedPrompt
    model_input: str
    user_tag_count: int


class Upsampler:
    """Holds the tag lookup and the backend cache; safe to share between threads."""

    def __init__(
        self,
        *,
        model_dir: Path | None = None,
        lookup: Any = None,
        backends: Any = None,
        embeddings: Collection[str] = (),
        allow_download: bool = True,
    ) -> None:
        self.model_dir = model_dir
        self.embeddings = frozenset(embeddings)
        self.allow_download = allow_download
        self._lookup = lookup
        self._backends = backends
        self._lock = threading.Lock()

    @property
    def lookup(self) -> Any:
        with self._lock:
            if self._lookup is None:
                from .tag_lookup import get_lookup

                self._lookup = get_lookup()
            return self._lookup

    @property
    def backends(self) -> Any:
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
        return Prepared(classified, model_input, len(user_tags))

    def upsample(
        self,
        prompt: str,
        settings: UpsampleSettings,
        seed: int,
        width: int = 1024,
        height: int = 1024,
    ) -> Result:
        return self.upsample_many([prompt], settings, [seed], width, height)[0]

    def upsample_many(
        self,
        prompts: Sequence[str],
        settings: UpsampleSettings,
        seeds: Sequence[int],
        width: int = 1024,
        height: int = 1024,
    ) -> list[Result]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed each")
        started = time.perf_counter()
        backend, choice = self._backend_for(settings)
        load_s = time.perf_counter() - started
        results = []
        for prompt, seed in zip(prompts, seeds):
            result = self._expand(
                prompt, settings, seed, width, height, backend, choice.takes_quality_line
            )
            results.append(_with_model(result, choice, backend, load_s if not results else 0.0))
        return results

    def unload(self) -> None:
        self.backends.unload()

    def _backend_for(self, settings: UpsampleSettings) -> tuple[Any, ModelChoice]:
        from .model_selection import select_model

        choice = select_model(
            settings.model,
            settings.backend,
            model_dir=self.model_dir,
            allow_download=self.allow_download,
        )
        backend = self.backends.get(choice.backend, choice.path, settings.device)
        return backend, choice

    def _expand(
        self,
        prompt: str,
        settings: UpsampleSettings,
        seed: int,
        width: int,
        height: int,
        backend: Any,
        quality_line: bool,
    ) -> Result:
        started = time.perf_counter()
        prepared = self.prepare(prompt, settings, width, height, quality_line=quality_line)
        lookup_s = time.perf_counter() - started
        loop = _Rounds(prepared, settings, seed)
        loop.run(backend)
        final = assemble(prepared.classified, loop.new_tags, settings.format)
        total = time.perf_counter() - started
        return Result(
            prompt=prompt,
            final_prompt=final,
            new_tags=tuple(loop.new_tags),
            model_input=prepared.model_input,
            seed=seed,
            rounds=loop.rounds,
            prompt_tokens=loop.prompt_tokens,
            completion_tokens=loop.completion_tokens,
            timings=Timings(
                lookup_s=lookup_s,
                prompt_eval_s=loop.prompt_eval_s,
                generation_s=loop.generation_s,
                total_s=total,
            ),
            model="",
            backend="",
            device="",
            tag_categories={t.tag.name: t.category.value for t in prepared.classified.tags},
        )


class _Rounds:
    """One expansion: generate, keep what is new and allowed, continue until long enough."""

    def __init__(self, prepared: Prepared, settings: UpsampleSettings, seed: int) -> None:
        self.prepared = prepared
        self.settings = settings
        self.seed = seed
        self.bans = compile_ban_list(settings.ban_tags)
        self.user_names = prepared.classified.known_names()
        self.new_tags: list[str] = []
        self.rounds = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.prompt_eval_s = 0.0
        self.generation_s = 0.0

    def run(self, backend: Any) -> None:
        stale = 0
        needed = self.settings.target_tags - self.prepared.user_tag_count
        while self.rounds < self.settings.max_rounds and len(self.new_tags) < needed:
            added = self._round(backend)
            stale = 0 if added else stale + 1
            if stale >= STALE_ROUNDS:
                break

    def _round(self, backend: Any) -> int:
        round_seed = self.seed + self.rounds
        fed = list(self.new_tags)
        random.Random(round_seed).shuffle(fed)
        text = continuation_input(self.prepared.model_input, fed)
        generation = backend.generate(text, self.settings.sampling, round_seed)
        self.rounds += 1
        self.prompt_tokens += generation.prompt_tokens
        self.completion_tokens += generation.completion_tokens
        self.prompt_eval_s += generation.prompt_eval_s
        self.generation_s += generation.generation_s
        # The model may extend the last tag it was fed, so read the fed tags back too.
        found = parse_model_output(text + generation.text)
        return self._keep(found)

    def _keep(self, found: list[str]) -> int:
        seen = set(self.new_tags) | self.user_names
        before = len(self.new_tags)
        for tag in found:
            key = canonical(tag)
            if key in seen or self.bans.bans(tag):
                continue
            seen.add(key)
            self.new_tags.append(key)
        return len(self.new_tags) - before


def _with_model(result: Result, choice: ModelChoice, backend: Any, load_s: float) -> Result:
    timings = replace(result.timings, load_s=load_s, total_s=result.timings.total_s + load_s)
    return replace(
        result,
        model=choice.display_name,
        backend=backend.name,
        device=backend.device,
        timings=timings,
        notices=(choice.notice,) if choice.notice else (),
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
) -> Result:
    return default_upsampler().upsample(prompt, settings or UpsampleSettings(), seed, width, height)


def upsample_many(
    prompts: Sequence[str],
    settings: UpsampleSettings | None = None,
    seeds: Sequence[int] = (),
    width: int = 1024,
    height: int = 1024,
) -> list[Result]:
    return default_upsampler().upsample_many(
        prompts, settings or UpsampleSettings(), seeds, width, height
    )

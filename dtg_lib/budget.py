"""The CLIP token budget: fit the final prompt into the chunks of 75 tokens that CLIP reads.

A prompt that spills a few tags into a new chunk changes the conditioning more than
those tags are worth, so `budget` (a setting) caps the final prompt:

- `none`: no cap (the final prompt is still counted when the vocabulary is there);
- `fill`: up to the end of the chunk the user's prompt (with no new tags) already reaches;
- `chunks:N`: at most N chunks of 75 tokens.

Only new tags (and, for a TIPO model, the sentences the model wrote) are left out; the
user's text is never touched. Counting is a `TokenCounter` that the caller may give: a
face whose host counts tokens itself (the webui, for its loaded checkpoint) gives that
one. The engine's own, `ENGINE_COUNTER`, is `clip_tokens.count_tokens`, which needs the
CLIP vocabulary of open_clip_torch: without it a budget other than `none` is an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .errors import CALLER_MISTAKE, DtgError

if TYPE_CHECKING:
    from .dtg_format import ClassifiedPrompt

log = logging.getLogger("dtg")


class BudgetChoice(Protocol):
    """The two settings a fit reads. The settings object has them; it validates its budget
    with this module, so this module does not import settings back."""

    budget: str
    format: str


NONE = "none"
FILL = "fill"
CHUNK_TOKENS = 75
MAX_CHUNKS = 32
BUDGET_CHOICES = (NONE, FILL, *(f"chunks:{n}" for n in (1, 2, 3, 4)))  # what a UI offers
_CHUNKS = re.compile(r"chunks:(\d{1,3})")


class BudgetError(DtgError, ValueError):
    """A budget that is not `none`, `fill` or `chunks:N` with N in 1..32."""

    http_status = CALLER_MISTAKE


def check_budget(budget: object) -> None:
    """Raise BudgetError, with a message for people, unless `budget` is a valid budget."""
    if not isinstance(budget, str):
        raise BudgetError(f"budget must be text ('none', 'fill' or 'chunks:N'), got {budget!r}")
    if budget in (NONE, FILL):
        return
    match = _CHUNKS.fullmatch(budget)
    if match is None or not 1 <= int(match.group(1)) <= MAX_CHUNKS:
        raise BudgetError(
            f"unknown budget {budget!r}: use 'none', 'fill' or 'chunks:N' "
            f"with N from 1 to {MAX_CHUNKS}"
        )


def token_limit(budget: str, base_target: int, chunk_tokens: int = CHUNK_TOKENS) -> int | None:
    """The most tokens the final prompt may count; `base_target` is the target (chunks
    times `chunk_tokens`) of the prompt without new tags. None for no budget."""
    if budget == NONE:
        return None
    if budget == FILL:
        return max(base_target, chunk_tokens)
    return int(budget.split(":", 1)[1]) * chunk_tokens


@dataclass(frozen=True)
class Count:
    tokens: int
    target: int


class TokenCounter(Protocol):
    """Counts a prompt as the image model's text encoder reads it, in chunks.

    `count` gives the webui counter's `tokens/target` (target: whole chunks), and may
    raise clip_tokens.ClipVocabularyMissing or PromptWeightError as `count` below does.
    """

    @property
    def chunk_tokens(self) -> int:
        """The tokens in one chunk (75 for CLIP)."""
        ...

    def count(self, prompt: str) -> Count: ...


class EngineCounter:
    """The engine's own counter: CLIP's vocabulary and the webui's chunking rules."""

    chunk_tokens = CHUNK_TOKENS

    def count(self, prompt: str) -> Count:
        return count(prompt)  # looked up at each call, so a test may stand in for it


ENGINE_COUNTER: TokenCounter = EngineCounter()


@dataclass(frozen=True)
class Fit:
    """How many new tags (and which sentence level) the final prompt keeps, and its count."""

    kept: int
    level: int  # index into the sentence levels tried (0: all the model's sentences)
    count: Count | None  # None when the vocabulary is missing and the budget is none
    notices: tuple[str, ...] = ()


def count(prompt: str) -> Count:
    """The webui counter's `tokens/target` for `prompt`."""
    from .clip_tokens import count_tokens

    counted = count_tokens(prompt)
    return Count(counted.tokens, counted.target)


def fit(
    budget: str,
    write: Callable[[int, int], str],
    new_tags: int,
    levels: int = 1,
    counter: TokenCounter = ENGINE_COUNTER,
) -> Fit:
    """The most new tags that fit the budget.

    `write(kept, level)` assembles the final prompt with the first `kept` new tags and
    sentence level `level` (0 keeps every sentence; each later level drops more of what
    the model wrote, never the user's text). Tags are trimmed first; a level is dropped
    only when no tags at all fit with it. The search over tags is binary, so a fit costs
    O(log n) assemblies and counts. `counter` counts them (the engine's own unless given).
    """
    from .clip_tokens import ClipVocabularyMissing, PromptWeightError

    try:
        if budget == NONE:
            return Fit(new_tags, 0, counter.count(write(new_tags, 0)))
        return _fit_within(budget, write, new_tags, levels, counter)
    except ClipVocabularyMissing:
        if budget != NONE:
            raise
        return Fit(new_tags, 0, None)
    except PromptWeightError as exc:
        # The webui itself cannot read such a weight: no count, and no trimming either.
        notice = f"the final prompt could not be counted ({exc}); the token budget was not applied"
        return Fit(new_tags, 0, None, (notice,) if budget != NONE else ())


def _fit_within(
    budget: str,
    write: Callable[[int, int], str],
    new_tags: int,
    levels: int,
    counter: TokenCounter,
) -> Fit:
    count = counter.count
    full = count(write(new_tags, 0))
    base = count(write(0, levels - 1))
    limit = token_limit(budget, base.target, counter.chunk_tokens)
    assert limit is not None
    if full.tokens <= limit:
        return Fit(new_tags, 0, full)
    if base.tokens > limit:
        notice = (
            f"the prompt is already {base.tokens} tokens, over the token budget {budget} "
            f"({limit} tokens): it is kept whole and no tags were added"
        )
        return Fit(0, levels - 1, base, (notice,))
    for level in range(levels):
        if count(write(0, level)).tokens > limit:
            continue
        kept = _most_that_fit(lambda k, lv=level: count(write(k, lv)).tokens <= limit, new_tags)
        final = count(write(kept, level))
        dropped = new_tags - kept
        parts = [f"{dropped} new tag{'s' if dropped != 1 else ''}"] if dropped else []
        if level:
            parts.append("some of the model's sentences")
        notice = (
            f"the token budget {budget} ({limit} tokens) left out {' and '.join(parts)}; "
            f"the final prompt is {final.tokens} tokens"
        )
        return Fit(kept, level, final, (notice,))
    raise AssertionError("the last level without tags fits")  # checked above as `base`


def _most_that_fit(fits: Callable[[int], bool], total: int) -> int:
    """The largest k in 0..total-1 with fits(k) true, given fits(0) and not fits(total)."""
    low, high = 0, total - 1  # fits(low) holds; the answer is at most high
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def require_vocabulary(budget: str) -> None:
    """Fail before the model loads when a budget is set and the vocabulary is missing."""
    if budget != NONE:
        from .clip_bpe import vocabulary_path

        vocabulary_path()


def fit_tags(
    classified: ClassifiedPrompt,
    new_tags: Sequence[str],
    settings: BudgetChoice,
    counter: TokenCounter = ENGINE_COUNTER,
) -> tuple[str, Fit]:
    """A DTG expansion's final prompt with the most new tags that fit the budget."""
    from .assemble import assemble

    def write(kept: int, level: int) -> str:
        return assemble(classified, new_tags[:kept], settings.format)

    fitted = fit(settings.budget, write, len(new_tags), counter=counter)
    return write(fitted.kept, 0), fitted


def loop_limit(
    classified: ClassifiedPrompt,
    settings: BudgetChoice,
    counter: TokenCounter = ENGINE_COUNTER,
) -> Callable[[Sequence[str]], bool] | None:
    """For the DTG loop: a test of whether these new tags already fill the budget, or None."""
    if settings.budget == NONE:
        return None
    from .assemble import assemble

    def write(tags: Sequence[str]) -> str:
        return assemble(classified, tags, settings.format)

    try:
        base_target = counter.count(write(())).target
    except ValueError:  # a weight the counter cannot read: the final fit says so
        return None
    limit = token_limit(settings.budget, base_target, counter.chunk_tokens)
    return lambda tags: counter.count(write(tags)).tokens >= (limit or 0)

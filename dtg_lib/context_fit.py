"""Fitting a DTG model input into the model's context.

Tags are left out of the model input, never out of the final prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from .backends.base import Backend, PromptTooLong
from .categories import Category
from .dtg_format import ClassifiedTag, build_model_input
from .result import Prepared
from .settings import UpsampleSettings

log = logging.getLogger("dtg")

# Room the model input must leave for generation; fewer new tokens than this
# would hardly add a tag.
MIN_NEW_TOKENS = 48


def fit_to_context(
    prepared: Prepared, backend: Backend, settings: UpsampleSettings, width: int, height: int
) -> tuple[Prepared, list[str]]:
    """Leave tags out of the model input (never the final prompt) until it fits the context.

    General tags go first, from the end of the prompt, then the other fields'
    tags, also from the end. Raises PromptTooLong only when even an empty input
    would not fit.
    """
    context = backend.context
    limit = context - min(settings.sampling.max_new_tokens, MIN_NEW_TOKENS)
    used = backend.count_tokens(prepared.model_input)
    if used <= limit:
        return prepared, []
    order = _drop_order(prepared.classified.tags)
    low, high = 1, len(order)
    best = None
    while low <= high:  # the fewest tags left out that make it fit
        mid = (low + high) // 2
        text = _input_without(prepared, order[:mid], settings, width, height)
        if backend.count_tokens(text) <= limit:
            best, high = (mid, text), mid - 1
        else:
            low = mid + 1
    if best is None:
        raise PromptTooLong(f"the prompt does not fit the model's context of {context} tokens")
    dropped, text = best
    notice = (
        f"the prompt is {used} tokens, more than the model's context ({context}) allows: "
        f"{dropped} of its tags were left out of the model input; the final prompt keeps them all"
    )
    log.warning(notice)
    return replace(prepared, model_input=text), [notice]


def _drop_order(tags: Sequence[ClassifiedTag]) -> list[int]:
    """Indices of tags in the order they are left out: general last-first, then the rest."""
    general = [i for i, t in enumerate(tags) if t.category is Category.GENERAL]
    other = [i for i, t in enumerate(tags) if t.category is not Category.GENERAL]
    return general[::-1] + other[::-1]


def _input_without(
    prepared: Prepared, drop: Sequence[int], settings: UpsampleSettings, width: int, height: int
) -> str:
    gone = set(drop)
    kept = tuple(t for i, t in enumerate(prepared.classified.tags) if i not in gone)
    return build_model_input(
        replace(prepared.classified, tags=kept),
        width=width,
        height=height,
        target=settings.target,
        quality_line=prepared.quality_line,
    )

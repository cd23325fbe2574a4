"""Expansions made recently, for the txt2img "Upscale" button.

That button runs a hires pass over a finished image with the prompt box's
(original) prompt and the image's seed. Running DTG again would cost time and,
on GPU llama.cpp, might not repeat exactly; not expanding would upscale with
another prompt than the image was made with. So the pass takes the expansion
its image got, when this process made it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from .args import SEED_RANGE

_Key = tuple[str, int, str]


class RecentExpansions:
    def __init__(self, size: int = 512, jobs: int = 64) -> None:
        self._size = size
        self._items: OrderedDict[_Key, str] = OrderedDict()
        # "before" jobs: one expansion for a run of seeds, however many images.
        self._jobs_size = jobs
        self._jobs: OrderedDict[_Key, tuple[int, str]] = OrderedDict()
        self._lock = threading.Lock()  # jobs and API requests run on several threads

    def remember_job(
        self, settings: str, first_seed: int, count: int, original: str, final: str
    ) -> None:
        """`final` for every seed from `first_seed` on, `count` of them (one entry)."""
        with self._lock:
            key = (settings, first_seed, original)
            self._jobs[key] = (count, final)
            self._jobs.move_to_end(key)
            while len(self._jobs) > self._jobs_size:
                self._jobs.popitem(last=False)

    def remember(
        self, settings: str, seeds: Sequence[int], originals: Sequence[str], finals: Sequence[str]
    ) -> None:
        with self._lock:
            for seed, original, final in zip(seeds, originals, finals):
                key = (settings, seed, original)
                self._items[key] = final
                self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def recall(
        self, settings: str, seeds: Sequence[int], originals: Sequence[str]
    ) -> list[str] | None:
        """The finals of every prompt, or None unless all of them are known."""
        with self._lock:
            found = [
                self._items.get((settings, s, o)) or self._in_a_job(settings, s, o)
                for s, o in zip(seeds, originals)
            ]
        if any(final is None for final in found):
            return None
        return found  # type: ignore[return-value]

    def _in_a_job(self, settings: str, seed: int, original: str) -> str | None:
        for (job_settings, first, job_original), (count, final) in self._jobs.items():
            same_job = (job_settings, job_original) == (settings, original)
            if same_job and (seed - first) % SEED_RANGE < count:
                return final
        return None


RECENT = RecentExpansions()

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

_Key = tuple[str, int, str]


class RecentExpansions:
    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._items: OrderedDict[_Key, str] = OrderedDict()
        self._lock = threading.Lock()  # jobs and API requests run on several threads

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
            found = [self._items.get((settings, s, o)) for s, o in zip(seeds, originals)]
        if any(final is None for final in found):
            return None
        return found  # type: ignore[return-value]


RECENT = RecentExpansions()

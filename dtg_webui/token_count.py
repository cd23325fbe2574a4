"""The token budget's counter in the webui: the host's own, for the loaded checkpoint.

The budget (and the count a result carries, which the Preview shows) should be the
number the prompt box's token counter shows. So the prompt is split into the prompts that
counter measures (extra networks taken out, the AND parts, prompt editing and alternation
over 20 steps: `clip_tokens.step_prompts`, the same rules), the host counts each one for
the loaded checkpoint (`host.prompt_lengths`: BREAK, the comma backtrack and textual-
inversion embeddings, which count as their vectors, are the host's doing) and the longest
one is the count.

Where the host cannot count, the engine's own CLIP count is used, and the log says why,
once per reason:
- the host has no counter, or no checkpoint is loaded yet (AUTOMATIC1111 answers "-");
- the checkpoint's counter does not count CLIP chunks of 75: Forge counts T5 tokens against
  255 for Flux, Chroma and SD 3.5. The budget is about CLIP's chunks, and the CLIP-L
  encoder of those models reads the same prompt, so the CLIP count is the one that means
  something there;
- the checkpoint counts nothing (Forge's base engine answers 0 for every prompt);
- the counter raises.
SD 1.x, SD 2.x and SDXL (and SD3 in AUTOMATIC1111, which counts with its CLIP encoders)
count with the host: their counters count CLIP chunks of 75.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from dtg_lib.budget import CHUNK_TOKENS, ENGINE_COUNTER, Count, TokenCounter
from dtg_lib.clip_tokens import step_prompts

from . import host

log = logging.getLogger("dtg")

NO_COUNTER = "no counter"
NOT_CLIP = "not CLIP chunks"
COUNTS_NOTHING = "counts nothing"
FAILED = "failed"
_REASONS = {
    NO_COUNTER: "the webui has no token counter for a loaded checkpoint (none loaded yet?)",
    NOT_CLIP: "the loaded checkpoint's token counter does not count CLIP chunks of 75 "
    "(Forge counts T5 tokens for Flux, Chroma and SD 3.5)",
    COUNTS_NOTHING: "the loaded checkpoint's token counter counts nothing",
    FAILED: "the webui's token counter failed",
}


class _CannotCount(Exception):
    """The host's counter cannot give a CLIP count for this prompt; `reason` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{_REASONS[reason]}{f' ({detail})' if detail else ''}")
        self.reason = reason


class HostTokenCounter:
    """A `budget.TokenCounter` that counts with the host, else with `fallback`."""

    chunk_tokens = CHUNK_TOKENS

    def __init__(
        self,
        find: Callable[[], host.PromptLengths | None] | None = None,
        fallback: TokenCounter = ENGINE_COUNTER,
    ) -> None:
        """`find` gives the host's line counter at each count (None: `host.prompt_lengths`,
        looked up at each count, since the checkpoint may change between jobs)."""
        self._find = find
        self._fallback = fallback
        self._told: set[str] = set()
        self._lock = threading.Lock()

    def count(self, prompt: str) -> Count:
        try:
            counted = self._host_count(prompt)
        except _CannotCount as cannot:
            self._tell_once(
                cannot.reason,
                "DTG: %s; the token budget counts with DTG's own CLIP counter",
                cannot,
            )
            return self._fallback.count(prompt)
        self._tell_once("used", "DTG: the token budget counts with the webui's token counter")
        return counted

    def _host_count(self, prompt: str) -> Count:
        lengths = self._find() if self._find is not None else host.prompt_lengths()
        if lengths is None:
            raise _CannotCount(NO_COUNTER)
        # An empty line is no tokens in one chunk for a CLIP counter; T5's says (1, 255).
        if _line_count(lengths, "") != Count(0, self.chunk_tokens):
            raise _CannotCount(NOT_CLIP)
        counts = [_line_count(lengths, line) for line in step_prompts(prompt)]
        longest = max(counts, key=lambda counted: counted.tokens)  # the first, as the host's
        if longest.tokens == 0 and prompt.strip():
            raise _CannotCount(COUNTS_NOTHING)
        return longest

    def _tell_once(self, reason: str, message: str, *args: Any) -> None:
        with self._lock:
            if reason in self._told:
                return
            self._told.add(reason)
        if reason == "used":
            log.info(message, *args)
        else:
            log.warning(message, *args)


def _line_count(lengths: host.PromptLengths, line: str) -> Count:
    try:
        tokens, target = lengths(line)
    except Exception as exc:  # the host's code: whatever it raises, the engine counts instead
        raise _CannotCount(FAILED, f"{type(exc).__name__}: {exc}") from exc
    if not _is_count(tokens) or not _is_count(target):
        raise _CannotCount(NO_COUNTER, f"it answered {tokens}/{target}")
    if target != math.ceil(max(tokens, 1) / CHUNK_TOKENS) * CHUNK_TOKENS:
        raise _CannotCount(NOT_CLIP, f"it answered {tokens}/{target}")
    return Count(tokens, target)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0

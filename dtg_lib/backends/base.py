"""What every backend promises, and the errors callers can act on."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

# normalize_device lives with the settings (the lowest layer); named here for the backends.
from ..errors import CALLER_MISTAKE, UNAVAILABLE, DtgError
from ..settings import SamplingSettings
from ..settings import normalize_device as normalize_device

# llama.cpp treats seed 0xFFFFFFFF as "pick a random seed", so seeds are folded
# into the range below it; torch uses the same folding so both see equal seeds.
_SEED_RANGE = 0xFFFFFFFF


@dataclass(frozen=True)
class Generation:
    """One model call: the new text and how long each phase took."""

    # Only the newly generated text (no prompt); special tokens other than EOS
    # stay in as text so callers can see and drop them.
    text: str
    prompt_tokens: int
    completion_tokens: int
    prompt_eval_s: float
    generation_s: float
    stopped_by_eos: bool
    # Prompt tokens whose KV cache was kept from the previous call instead of evaluated.
    reused_prompt_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.generation_s if self.generation_s > 0 else 0.0


class BackendUnavailable(DtgError, RuntimeError):
    """The library a backend needs is missing; the message has the pip command."""

    http_status = UNAVAILABLE


class ModelLoadError(DtgError, RuntimeError):
    """The model file or folder is missing, corrupt, truncated or of the wrong kind."""

    http_status = UNAVAILABLE


class PromptTooLong(DtgError, ValueError):
    """The prompt leaves no room for new tokens in the model's context."""

    http_status = CALLER_MISTAKE


@runtime_checkable
class Backend(Protocol):
    """A loaded model.

    `context` is the most tokens one call may hold, prompt and new tokens together.
    `notices` are things to tell the user with every result it gives, such as a GPU
    it could not use and the device it ran on instead.
    """

    name: str
    device: str
    context: int
    notices: tuple[str, ...]

    def generate(self, prompt: str, sampling: SamplingSettings, seed: int) -> Generation: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchBackend(Backend, Protocol):
    """A backend that also expands several prompts in one call (torch; llama.cpp only
    with DTG_LLAMA_BATCH=1, see llama_batch).

    On torch each continuation is exactly what `generate` would give its prompt with
    that seed; batched llama.cpp rows may differ in the last bits (see llama_batch).
    `upsample_many` then advances a job's expansions in lockstep; with a plain
    Backend (llama.cpp by default) it expands them one after another, which keeps
    llama.cpp's prefix reuse between rounds.
    """

    def generate_batch(
        self, prompts: Sequence[str], sampling: SamplingSettings, seeds: Sequence[int]
    ) -> list[Generation]: ...


FileStamp = tuple[tuple[str, str, int, int, int], ...]


def file_stamp(path: Path) -> FileStamp:
    """Name, real path, size, mtime and inode of a model file, or of each file directly in a
    model folder.

    Backends compare it before each generation: a file rewritten, truncated or
    replaced since the model was loaded has another stamp, and is reloaded (or
    fails to, which is a clear error) rather than read under the loaded model.
    """
    try:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        stats = [(f.name, os.path.realpath(f), f.stat()) for f in files]
    except OSError:
        return ()  # gone or unreadable: differs from any stamp taken at load
    return tuple((name, real, st.st_size, st.st_mtime_ns, st.st_ino) for name, real, st in stats)


def leads_elsewhere(loaded: FileStamp, now: FileStamp) -> bool:
    """Whether a file of the model now leads to another place than when it was loaded.

    A model is checked to lie inside the model folder when a request names it, not when
    a backend reloads it; so a reload must not follow a file that was swapped for a link
    to somewhere else since (it would load a model nobody checked).
    """
    before = {name: real for name, real, *_ in loaded}
    return any(name in before and before[name] != real for name, real, *_ in now)


def reload_wanted(path: Path, loaded: FileStamp) -> bool:
    """Whether the model at `path` changed since it was loaded (its stamp `loaded`).

    Raises ModelLoadError when a file of it now leads somewhere else: that is not
    reloaded (see `leads_elsewhere`).
    """
    now = file_stamp(path)
    if now == loaded:
        return False
    if leads_elsewhere(loaded, now):
        raise ModelLoadError(
            f"{path} now leads to another file than the one loaded; "
            "it is not reloaded (name the model again to load what it is now)"
        )
    return True


def fold_seed(seed: int) -> int:
    """Map any integer seed (negative, huge) onto the range both libraries accept."""
    return int(seed) % _SEED_RANGE


def new_token_budget(prompt_tokens: int, context: int, wanted: int) -> int:
    """How many tokens may still be generated; raises when the prompt fills the context."""
    room = context - prompt_tokens
    if room <= 0:
        raise PromptTooLong(
            f"the prompt is {prompt_tokens} tokens but the model's context is {context}"
        )
    return min(wanted, room)


class Stopwatch:
    """Splits one generation into prompt evaluation and decoding.

    Neither library reports the split the same way, so both backends mark the
    moment the first new token exists: everything before it is prompt work.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.ended: float | None = None

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def stop(self) -> None:
        self.ended = time.perf_counter()

    @property
    def prompt_eval_s(self) -> float:
        end = self.first_token if self.first_token is not None else self.ended
        return max(0.0, (end or self.started) - self.started)

    @property
    def generation_s(self) -> float:
        if self.first_token is None or self.ended is None:
            return 0.0
        return max(0.0, self.ended - self.first_token)

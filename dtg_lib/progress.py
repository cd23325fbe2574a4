"""How one upsample job goes: its progress, its cancellation, and where it failed.

The progress events (models.ProgressEvent) count model calls as "rounds": a DTG
expansion runs up to max_rounds of them, a TIPO expansion one or more per pass.
The errors here are the engine's own (dtg_lib.upsampler re-exports them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .backends.base import Backend
from .errors import FAILED, UNAVAILABLE, DtgError
from .models import ProgressEvent, ProgressFn

if TYPE_CHECKING:
    from .model_selection import ModelChoice
    from .settings import UpsampleSettings

log = logging.getLogger("dtg")


class UpsampleError(DtgError, RuntimeError):
    """One stage of an expansion failed unexpectedly; the message names stage and prompt."""

    http_status = FAILED


class Cancelled(UpsampleError):
    """The caller stopped the job (its client went away, or its time ran out).

    Raised at the next check: before each expansion and before each round. Over HTTP
    the server could not finish in time (a client that left gets no answer at all).
    """

    http_status = UNAVAILABLE


class GenerationError(UpsampleError):
    """The model failed while generating (out of memory, say).

    The backend was dropped from the cache, so the next request loads it afresh.
    """

    http_status = FAILED


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise Cancelled once `cancel` is set; the engine calls it between steps."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("the upsample job was cancelled")


class JobProgress:
    """Tells the caller's ProgressFn how one upsample_many call is going.

    A failing callback is logged once and then left alone: showing progress must
    never cost the user the expansion.
    """

    def __init__(self, progress: ProgressFn | None, prompts: int, max_rounds: int) -> None:
        self._progress = progress
        self._prompts = prompts
        self._max_rounds = max_rounds

    def tell(self, event: ProgressEvent) -> None:
        if self._progress is None:
            return
        try:
            self._progress(event)
        except Exception as exc:
            log.warning("progress display failed, shown no more: %s: %s", type(exc).__name__, exc)
            self._progress = None

    def loading(self, choice: ModelChoice, device: str) -> None:
        self.tell(ProgressEvent("load", f"Loading {choice.display_name} on {device}"))

    def loaded(self, choice: ModelChoice) -> None:
        self.tell(ProgressEvent("load", f"Loaded {choice.display_name}", 1, 1))

    def round_of(self, number: int, rounds: int) -> None:
        """Prompt `number`, expanded on its own, has finished `rounds` rounds."""
        where = f"prompt {number} of {self._prompts}, " if self._prompts > 1 else ""
        done = (number - 1) * self._max_rounds + rounds
        self._generating(done, f"Expanding: {where}round {rounds}")

    def rounds_together(self, rounds_each: Sequence[int]) -> None:
        """The prompts expanded together have finished `rounds_each` rounds each."""
        message = f"Expanding {self._prompts} prompts together: round {max(rounds_each)}"
        self._generating(sum(rounds_each), message)

    def finished(self) -> None:
        count = f"{self._prompts} prompts" if self._prompts > 1 else "the prompt"
        self._generating(self._total_rounds, f"Expanded {count}")

    @property
    def _total_rounds(self) -> int:
        # The most the job can take; an expansion that reaches its target stops early.
        return self._prompts * self._max_rounds

    def _generating(self, done: int, message: str) -> None:
        total = self._total_rounds
        self.tell(ProgressEvent("generate", message, min(done, total), total, "rounds"))


@dataclass(frozen=True)
class Job:
    """What every expansion of one upsample_many call shares."""

    settings: UpsampleSettings
    width: int
    height: int
    backend: Backend
    quality_line: bool
    cancel: threading.Event | None = None
    progress: JobProgress = field(default_factory=lambda: JobProgress(None, 1, 1))


@contextlib.contextmanager
def stage(what: str, number: int | None = None, prompt: str | None = None) -> Iterator[None]:
    """Turn an unexpected failure into one UpsampleError that says where it happened."""
    try:
        yield
    except UpsampleError as exc:
        if number is None or isinstance(exc, Cancelled):
            raise
        # Same class (GenerationError stays one), now naming the prompt.
        raise type(exc)(f"prompt {number} ({preview(prompt)}): {exc}") from exc
    except DtgError:
        raise  # it already says what went wrong in the user's terms
    except Exception as exc:
        where = f"prompt {number} ({preview(prompt)}): " if number is not None else ""
        raise UpsampleError(f"{where}{what} failed: {type(exc).__name__}: {exc}") from exc


def preview(prompt: str | None, limit: int = 60) -> str:
    text = repr(prompt or "")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def generation_message(backend: Backend, exc: BaseException) -> str:
    kind = type(exc).__name__
    memory = isinstance(exc, MemoryError) or "OutOfMemory" in kind or "out of memory" in str(exc)
    reason = "ran out of memory" if memory else f"failed ({kind}: {exc})"
    return (
        f"the model ({backend.name} on {backend.device}) {reason} while generating; "
        "it was unloaded and the next request loads it again"
        + (" (a smaller model, such as a GGUF on the CPU, needs less memory)" if memory else "")
    )

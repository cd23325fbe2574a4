"""The one engine the webui shares between tabs and jobs.

`engine_factory` is module state on purpose: tests (and other front ends) swap
in their own engine without a model. Every access goes through `_lock` because
the webui API can run jobs on several threads.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtg_lib.models import ProgressEvent, ProgressFn
    from dtg_lib.settings import UpsampleSettings

log = logging.getLogger("dtg")

EngineFactory = Callable[[Path | None, frozenset[str]], Any]


def _default_factory(model_dir: Path | None, embeddings: frozenset[str]) -> Any:
    from dtg_lib.upsampler import Upsampler

    from .token_count import HostTokenCounter

    # The budget counts as the prompt box's counter does, for the loaded checkpoint.
    return Upsampler(model_dir=model_dir, embeddings=embeddings, token_counter=HostTokenCounter())


engine_factory: EngineFactory = _default_factory
_lock = threading.Lock()
_cached: dict[str, Any] = {}


def set_factory(factory: EngineFactory | None) -> None:
    """Swap the factory (None: the real Upsampler) and drop the cached engine."""
    global engine_factory
    with _lock:
        engine_factory = factory or _default_factory
        _cached.clear()


def get_engine(model_dir: Path | None, embeddings: frozenset[str]) -> Any:
    key = (model_dir, embeddings)
    with _lock:
        if _cached.get("key") != key or "engine" not in _cached:
            _cached["engine"] = engine_factory(model_dir, embeddings)
            _cached["key"] = key
        return _cached["engine"]


def run_job(
    upsampler: Any,
    prompts: Sequence[str],
    settings: UpsampleSettings,
    seeds: Sequence[int],
    size: tuple[int, int],
    nl_prompts: Sequence[str] = (),
) -> list[Any]:
    """`upsample_many` for a webui job, its progress shown in the host's progress text.

    An engine swapped in through `set_factory` that takes no `progress` runs without it.
    `nl_prompts` (one per prompt, for a TIPO model) are passed only when one has text,
    as the HTTP routes do: an engine of a DTG-only caller need not take them.
    """
    width, height = size
    options: dict[str, Any] = {}
    if any(nl_prompts):
        options["nl_prompts"] = list(nl_prompts)
    with progress_in_host() as progress:
        if _takes_progress(upsampler):
            options["progress"] = progress
        return upsampler.upsample_many(prompts, settings, seeds, width, height, **options)


@contextlib.contextmanager
def progress_in_host() -> Iterator[ProgressFn]:
    """A progress callback that writes each step into `shared.state.textinfo`, the text the
    host shows beside the job's progress bar; the text it had comes back afterwards."""
    state = _host_state()
    if state is None:
        yield _shows_nothing
        return
    before = getattr(state, "textinfo", None)

    def show(event: ProgressEvent) -> None:
        state.textinfo = progress_text(event)

    try:
        yield show
    finally:
        state.textinfo = before


def progress_text(event: ProgressEvent) -> str:
    """One line (the host's progress bar leaves out a textinfo with a line break)."""
    if event.total and event.unit == "bytes":
        return f"DTG: {event.message} ({event.done / 1e6:.0f} of {event.total / 1e6:.0f} MB)"
    if event.total:
        return f"DTG: {event.message} ({100 * event.done // event.total}%)"
    return f"DTG: {event.message}"


def _host_state() -> Any:
    """The host's `shared.state`, or None outside a webui (or before it made one)."""
    try:
        from modules import shared
    except ImportError:
        return None
    return getattr(shared, "state", None)


def _shows_nothing(event: ProgressEvent) -> None:
    """Progress with nowhere to go."""


def _takes_progress(upsampler: Any) -> bool:
    try:
        parameters = inspect.signature(upsampler.upsample_many).parameters
    except (TypeError, ValueError):
        return False
    return "progress" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def unload() -> None:
    with _lock:
        engine = _cached.get("engine")
    unload_engine = getattr(engine, "unload", None)
    if unload_engine is not None:
        unload_engine()
        log.info("DTG: model unloaded")

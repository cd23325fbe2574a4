"""The engines the nodes share, one per model folder, and one guarded run of a job.

`engine_factory` is swappable on purpose (tests pass the tiny model and a fake tag
lookup); every access goes through `_lock`, as ComfyUI may run nodes on its worker
thread while the server thread asks to free memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtg_lib.errors import DtgError
from dtg_lib.models import REGISTRY, is_registry_name, list_local_models
from dtg_lib.settings import UpsampleSettings

from . import host
from .inputs import JobItem, JobRequest

log = logging.getLogger("dtg")

EngineFactory = Callable[[Path | None], Any]


def _default_factory(model_dir: Path | None) -> Any:
    from dtg_lib.upsampler import Upsampler

    return Upsampler(model_dir=model_dir)


_lock = threading.Lock()
_factory: list[EngineFactory] = [_default_factory]
_engines: dict[Path | None, Any] = {}


def set_factory(factory: EngineFactory | None) -> None:
    """Swap the factory (None: the real Upsampler) and drop the engines made so far."""
    with _lock:
        _factory[0] = factory or _default_factory
        _engines.clear()


def get_engine(model_dir: Path | None) -> Any:
    with _lock:
        if model_dir not in _engines:
            _engines[model_dir] = _factory[0](model_dir)
        return _engines[model_dir]


def unload() -> None:
    """Frees every loaded DTG model (ComfyUI's unload request); the engines stay."""
    with _lock:
        engines = list(_engines.values())
    for engine in engines:
        unload_engine = getattr(engine, "unload", None)
        if unload_engine is not None:
            unload_engine()
    if engines:
        log.info("DTG: model unloaded")


# --- models ---------------------------------------------------------------------


def model_names(family: str, folders: Sequence[Path]) -> list[str]:
    """The dropdown: registry names of this family, then the models the dtg folders hold."""
    names = []
    for entry in REGISTRY.values():
        if entry.family == family:
            names.append(entry.name)
            names.extend(f"{entry.name}:{variant}" for variant in entry.gguf_files)
            names.append(f"{entry.name}:hf")
    for folder in folders:
        names.extend(model.name for model in list_local_models(folder) if model.family == family)
    return list(dict.fromkeys(names))


def model_location(name: str, folders: Sequence[Path]) -> Path | None:
    """The dtg folder a model name is read from: the one holding it, else the first one
    (where a registry model is downloaded to)."""
    if not is_registry_name(name):
        for folder in folders:
            if any(model.name == name for model in list_local_models(folder)):
                return folder
    return folders[0] if folders else None


# --- one job --------------------------------------------------------------------


@dataclass(frozen=True)
class JobOutcome:
    results: list[Any]  # one dtg_lib Result each, or None where the prompt passed through
    problems: list[str]  # why an item passed through unchanged; "" where it did not
    notices: tuple[str, ...] = ()

    @property
    def told(self) -> list[str]:
        """What the node's text says before the prompts: each problem, else the notices."""
        problems = [problem for problem in self.problems if problem]
        return list(dict.fromkeys(problems)) if problems else list(self.notices)


def run_job(request: JobRequest) -> JobOutcome:
    """Expands the items, those with the same settings and size together (one
    upsample_many call each). A DTG problem (missing or corrupt model, missing backend,
    a bad setting) passes that call's prompts through unchanged unless `strict`;
    ComfyUI's interrupt stops the whole job."""
    count = len(request.items)
    results: list[Any] = [None] * count
    problems = [""] * count
    notices: list[str] = []
    for (settings, _, _), indices in _batches(request.items).items():
        items = [request.items[index] for index in indices]
        try:
            done = _expanded(items, settings)
        except DtgError as exc:
            if request.strict:
                raise
            problem = f"DTG: prompt left unchanged: {exc}"
            log.warning("%s", problem)
            for index in indices:
                problems[index] = problem
            continue
        for index, result in zip(indices, done):
            results[index] = result
        notices.extend(notice for result in done for notice in result.notices)
    told = tuple(dict.fromkeys(notices))
    for notice in told:
        log.info("DTG: %s", notice)
    return JobOutcome(results, problems, told)


BatchKey = tuple[UpsampleSettings | DtgError, int, int]


def _batches(items: Sequence[JobItem]) -> dict[BatchKey, list[int]]:
    """The items' indices by (settings, width, height), in the order first seen."""
    batches: dict[BatchKey, list[int]] = {}
    for index, item in enumerate(items):
        batches.setdefault((item.settings, item.width, item.height), []).append(index)
    return batches


def _expanded(items: Sequence[JobItem], settings: UpsampleSettings | DtgError) -> list[Any]:
    if isinstance(settings, DtgError):
        raise settings
    folders = host.model_folders()
    engine = get_engine(model_location(settings.model, folders))
    cancel = threading.Event()
    with host.progress_bar(cancel) as (progress, interrupts):
        try:
            results = engine.upsample_many(
                [item.prompt for item in items],
                settings,
                [item.seed for item in items],
                items[0].width,
                items[0].height,
                cancel=cancel,
                progress=progress,
                nl_prompts=[item.nl_prompt for item in items],
            )
        except DtgError:
            if interrupts:  # the user pressed Cancel: ComfyUI expects its own exception
                raise interrupts[0] from None
            raise
    if interrupts:  # pressed after the last check: the workflow must stop all the same
        raise interrupts[0]
    return list(results)

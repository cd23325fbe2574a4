"""The one engine the webui shares between tabs and jobs.

`engine_factory` is module state on purpose: tests (and other front ends) swap
in their own engine without a model. Every access goes through `_lock` because
the webui API can run jobs on several threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("dtg")

EngineFactory = Callable[[Path | None, frozenset[str]], Any]


def _default_factory(model_dir: Path | None, embeddings: frozenset[str]) -> Any:
    from dtg_lib.upsampler import Upsampler

    return Upsampler(model_dir=model_dir, embeddings=embeddings)


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


def unload() -> None:
    with _lock:
        engine = _cached.get("engine")
    unload_engine = getattr(engine, "unload", None)
    if unload_engine is not None:
        unload_engine()
        log.info("DTG: model unloaded")

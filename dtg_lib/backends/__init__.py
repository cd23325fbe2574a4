"""Model backends behind one small interface, and a cache that keeps one loaded.

Importing this package imports neither torch nor llama_cpp; they load with the
first model.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from .base import (
    Backend,
    BackendUnavailable,
    Generation,
    ModelLoadError,
    PromptTooLong,
    normalize_device,
)

__all__ = [
    "KINDS",
    "Backend",
    "BackendCache",
    "BackendUnavailable",
    "Generation",
    "ModelLoadError",
    "PromptTooLong",
    "canonical_kind",
    "default_cache",
    "llama_cpp_available",
    "load_backend",
    "torch_available",
]

log = logging.getLogger("dtg")

KINDS = ("llama.cpp", "torch")
_ALIASES = {
    "llama.cpp": "llama.cpp",
    "llama_cpp": "llama.cpp",
    "llamacpp": "llama.cpp",
    "gguf": "llama.cpp",
    "torch": "torch",
    "transformers": "torch",
    "hf": "torch",
}
# Imports that failed once; trying again would only repeat the slow failure.
_FAILED_IMPORTS: set[str] = set()


def canonical_kind(kind: str) -> str:
    found = _ALIASES.get(str(kind).strip().lower())
    if found is None:
        raise ValueError(f"unknown backend {kind!r}: choose one of {', '.join(KINDS)}")
    return found


def _importable(name: str, *, load: bool) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None  # None: import blocked on purpose
    if name in _FAILED_IMPORTS or importlib.util.find_spec(name) is None:
        return False
    if not load:
        return True
    try:
        importlib.import_module(name)
    except (ImportError, OSError) as exc:
        log.debug("%s is installed but does not import: %s", name, exc)
        _FAILED_IMPORTS.add(name)
        return False
    return True


def llama_cpp_available() -> bool:
    """llama-cpp-python imports (tried once: it is light, and a broken native library shows)."""
    return _importable("llama_cpp", load=True)


def torch_available() -> bool:
    """torch and transformers are installed.

    Found without importing them: importing torch takes seconds, and the first
    model load imports it anyway (reporting a broken install as BackendUnavailable).
    """
    return _importable("torch", load=False) and _importable("transformers", load=False)


def load_backend(
    kind: str,
    model_path: Path,
    device: str = "cpu",
    *,
    n_threads: int | None = None,
    dtype: str | None = None,
) -> Backend:
    """Load `model_path` with the named backend.

    `dtype` applies to torch only ("fp16", "bf16", "fp32"; default fp32 on CPU and
    fp16 on GPUs). Raises BackendUnavailable or ModelLoadError with a message
    meant for the user.
    """
    kind = canonical_kind(kind)
    path = Path(model_path).expanduser()
    if kind == "llama.cpp":
        from .llama_cpp import LlamaCppBackend

        return LlamaCppBackend(path, device, n_threads=n_threads)
    from .torch_backend import TorchBackend

    return TorchBackend(path, device, dtype=dtype, n_threads=n_threads)


Loader = Callable[..., Backend]
_CacheKey = tuple[str, Path, str, int | None, str | None]


class BackendCache:
    """Keeps one backend loaded and swaps it when the kind, path or device changes.

    Holding more than one DTG model would only waste (V)RAM: a webui job uses one
    model at a time. All methods are thread-safe.
    """

    def __init__(self, loader: Loader | None = None) -> None:
        self._loader = loader or load_backend
        self._lock = threading.Lock()
        self._backend: Backend | None = None
        self._key: _CacheKey | None = None

    def get(
        self,
        kind: str,
        model_path: Path,
        device: str = "cpu",
        *,
        n_threads: int | None = None,
        dtype: str | None = None,
    ) -> Backend:
        key = (
            canonical_kind(kind),
            Path(model_path).expanduser().resolve(),
            normalize_device(device),
            n_threads,
            dtype,
        )
        with self._lock:
            if self._backend is not None and self._key == key:
                return self._backend
            self._close_locked()
            backend = self._loader(key[0], key[1], key[2], n_threads=n_threads, dtype=dtype)
            self._backend, self._key = backend, key
            return backend

    @property
    def current(self) -> Backend | None:
        with self._lock:
            return self._backend

    def unload(self) -> bool:
        """Close the cached backend; True when there was one."""
        with self._lock:
            had = self._backend is not None
            self._close_locked()
            return had

    def _close_locked(self) -> None:
        backend, self._backend, self._key = self._backend, None, None
        if backend is not None:
            backend.close()


default_cache = BackendCache()

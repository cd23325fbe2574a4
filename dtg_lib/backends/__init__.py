"""Model backends behind one small interface, and a cache that keeps one loaded.

Importing this package imports neither torch nor llama_cpp; they load with the
first model.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ..settings import normalize_device
from .base import (
    Backend,
    BackendUnavailable,
    Generation,
    ModelLoadError,
    PromptTooLong,
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
        from .llama_batch import llama_backend  # one-by-one unless DTG_LLAMA_BATCH=1

        return llama_backend(path, device, n_threads=n_threads)
    from .torch_backend import TorchBackend

    return TorchBackend(path, device, dtype=dtype, n_threads=n_threads)


Loader = Callable[..., Backend]
_CacheKey = tuple[str, Path, str, int | None, str | None]


class BackendCache:
    """Keeps one backend loaded and swaps it when the kind, path or device changes.

    Holding more than one DTG model would only waste (V)RAM: a webui job uses one
    model at a time. All methods are thread-safe. A backend handed out by
    `lease` is closed only once its last user is done with it, so unloading or
    switching models while other threads generate never pulls a model from
    under them.
    """

    def __init__(self, loader: Loader | None = None) -> None:
        self._loader = loader or load_backend
        self._lock = threading.Lock()
        self._backend: Backend | None = None
        self._key: _CacheKey | None = None
        # id(backend) -> threads using it, and backends to close when that reaches 0.
        self._users: dict[int, int] = {}
        self._retired: dict[int, Backend] = {}

    def get(
        self,
        kind: str,
        model_path: Path,
        device: str = "cpu",
        *,
        n_threads: int | None = None,
        dtype: str | None = None,
    ) -> Backend:
        """The cached backend, loading it when needed (not leased: see `lease`)."""
        key = _cache_key(kind, model_path, device, n_threads, dtype)
        with self._lock:
            return self._get_locked(key)

    @contextlib.contextmanager
    def lease(
        self,
        kind: str,
        model_path: Path,
        device: str = "cpu",
        *,
        n_threads: int | None = None,
        dtype: str | None = None,
    ) -> Iterator[Backend]:
        """Like `get`, but the backend stays open until the `with` block ends."""
        key = _cache_key(kind, model_path, device, n_threads, dtype)
        with self._lock:
            backend = self._get_locked(key)
            self._users[id(backend)] = self._users.get(id(backend), 0) + 1
        try:
            yield backend
        finally:
            self._release(backend)

    def discard(self, backend: Backend) -> None:
        """Drop `backend` if it is still the cached one (after it failed, say).

        The next request loads a fresh one; this one closes when its users are done.
        """
        with self._lock:
            if self._backend is backend:
                self._retire_locked()

    @property
    def current(self) -> Backend | None:
        with self._lock:
            return self._backend

    def unload(self) -> bool:
        """Close the cached backend (once nobody uses it); True when there was one."""
        with self._lock:
            had = self._backend is not None
            self._retire_locked()
            return had

    def _get_locked(self, key: _CacheKey) -> Backend:
        if self._backend is not None and self._key == key:
            return self._backend
        self._retire_locked()
        backend = self._loader(key[0], key[1], key[2], n_threads=key[3], dtype=key[4])
        self._backend, self._key = backend, key
        return backend

    def _retire_locked(self) -> None:
        backend, self._backend, self._key = self._backend, None, None
        if backend is None:
            return
        if self._users.get(id(backend)):
            self._retired[id(backend)] = backend
        else:
            backend.close()

    def _release(self, backend: Backend) -> None:
        with self._lock:
            left = self._users[id(backend)] - 1
            if left:
                self._users[id(backend)] = left
                return
            del self._users[id(backend)]
            retired = self._retired.pop(id(backend), None)
        # Closing can take a while (freeing VRAM); other threads need not wait for it.
        if retired is not None:
            retired.close()


def _cache_key(
    kind: str, model_path: Path, device: str, n_threads: int | None, dtype: str | None
) -> _CacheKey:
    return (
        canonical_kind(kind),
        Path(model_path).expanduser().resolve(),
        normalize_device(device),
        n_threads,
        dtype,
    )


default_cache = BackendCache()

"""Model-load parameters that llama-cpp-python's `Llama(...)` does not expose.

llama.cpp's CPU device offers "extra buffer types" (the AMX buffer on Intel
Xeons with AMX, and the repack buffers that reorder Q4_0/Q8_0/... weights for
wider SIMD kernels). The AMX one segfaults inside `llama_decode` on some
machines with Q8_0 / Q6_K / K-quant files (ggml-org/llama.cpp#20824, closed
without a fix), and a segfault takes the whole webui down. Loading with
`use_extra_bufts = false` (llama.cpp's `--no-extra-bufts`) keeps the weights in
the plain CPU buffer, which every quant type supports. On the tiny and
full-width models the difference in ms/token was within noise here (see
benchmarks/RESULTS.md), so safety wins by default.

`Llama(...)` builds its model params from `llama_model_default_params()` and
ignores unknown keywords, so the only way in is to wrap that function while the
model loads; a lock keeps two loads from racing on the swap.

Memory mapping (`use_mmap`, a plain `Llama(...)` keyword) is off by default too.
With it on, the weights stay pages of the file: a file truncated while the
model is in use (a re-download, a full disk, a user replacing it) makes the
next page read a SIGBUS that kills the whole process, with no log line and
every request in flight lost. Read into memory, the loaded weights do not
depend on the file at all. Measured on the full-size model (see
benchmarks/bench_mmap.py and benchmarks/RESULTS.md): the cost is a slightly
longer load and a peak RSS that counts the weights as private memory rather
than as shared page cache.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

# Set to 1 to let llama.cpp use the AMX/repack buffers again (faster on some CPUs,
# crash-prone on others).
EXTRA_BUFFERS_ENV = "DTG_LLAMA_EXTRA_BUFFERS"
# Set to 1 to memory-map GGUF weights again (shared page cache between processes,
# but a truncated file kills the process).
MMAP_ENV = "DTG_LLAMA_MMAP"
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
# Reentrant: a load swaps both the model and the context defaults (see context_params).
_SWAP_LOCK = threading.RLock()


def extra_buffers_wanted(explicit: bool | None = None) -> bool:
    """The caller's choice, else the environment's; off unless asked for."""
    if explicit is not None:
        return explicit
    return os.environ.get(EXTRA_BUFFERS_ENV, "").strip().lower() in _TRUE_WORDS


def mmap_wanted(explicit: bool | None = None) -> bool:
    """The caller's choice, else the environment's; off unless asked for (see above)."""
    if explicit is not None:
        return explicit
    return os.environ.get(MMAP_ENV, "").strip().lower() in _TRUE_WORDS


@contextlib.contextmanager
def model_params(llama_cpp: Any, *, extra_buffers: bool) -> Iterator[None]:
    """While active, every model llama-cpp-python loads gets `use_extra_bufts=extra_buffers`."""
    module = llama_cpp.llama_cpp
    original = module.llama_model_default_params

    def patched() -> Any:
        params = original()
        # Older builds predate the flag; they have no extra buffers to turn off.
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = extra_buffers
        return params

    with _SWAP_LOCK:
        module.llama_model_default_params = patched
        try:
            yield
        finally:
            module.llama_model_default_params = original


def uses_extra_buffers(llm: Any) -> bool | None:
    """What a loaded `Llama` was given; None when the build has no such flag."""
    params = getattr(llm, "model_params", None)
    return getattr(params, "use_extra_bufts", None) if params is not None else None


@contextlib.contextmanager
def context_params(llama_cpp: Any, *, sequences: int, unified: bool) -> Iterator[None]:
    """While active, every context llama-cpp-python creates holds `sequences` sequences,
    in one KV buffer shared by all of them when `unified` (see llama_batch)."""
    module = llama_cpp.llama_cpp
    original = module.llama_context_default_params

    def patched() -> Any:
        params = original()
        params.n_seq_max = sequences
        params.kv_unified = unified
        return params

    with _SWAP_LOCK:
        module.llama_context_default_params = patched
        try:
            yield
        finally:
            module.llama_context_default_params = original

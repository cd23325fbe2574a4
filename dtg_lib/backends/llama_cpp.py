"""GGUF models through llama-cpp-python."""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path
from typing import Any

from ..settings import SamplingSettings
from .base import (
    BackendUnavailable,
    Generation,
    ModelLoadError,
    Stopwatch,
    fold_seed,
    new_token_budget,
    normalize_device,
)

log = logging.getLogger("dtg")

N_CTX = 2048
PIP_COMMAND = "pip install llama-cpp-python"
GGUF_MAGIC = b"GGUF"
# Header: magic, uint32 version, uint64 tensor count, uint64 metadata count.
_HEADER = struct.Struct("<4sIQQ")
_KNOWN_VERSIONS = (2, 3)
# Far above any real model; a larger count means the header is garbage.
_MAX_HEADER_COUNT = 1_000_000


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailable(f"llama-cpp-python is not installed: {PIP_COMMAND}") from exc
    except OSError as exc:  # the package is there but its shared library will not load
        raise BackendUnavailable(
            f"llama-cpp-python is installed but its library failed to load ({exc}): "
            f"pip install --force-reinstall --no-cache-dir llama-cpp-python"
        ) from exc
    return llama_cpp


def check_gguf_file(path: Path) -> None:
    """Reject what is plainly not a GGUF model before llama.cpp reads it."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(
            f"{path} is a folder; the llama.cpp backend needs a .gguf file "
            "(use the torch backend for a Hugging Face folder)"
        )
    try:
        with path.open("rb") as handle:
            header = handle.read(_HEADER.size)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if len(header) < _HEADER.size:
        raise ModelLoadError(f"{path} is too short to be a GGUF model ({len(header)} bytes)")
    magic, version, tensors, metadata = _HEADER.unpack(header)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    if version not in _KNOWN_VERSIONS:
        raise ModelLoadError(f"{path} has unsupported GGUF version {version}")
    if not 0 < tensors < _MAX_HEADER_COUNT or metadata >= _MAX_HEADER_COUNT:
        raise ModelLoadError(f"{path} has a corrupt GGUF header")


def _gpu_layers(llama_cpp: Any, device: str) -> tuple[int, str]:
    if device == "cpu":
        return 0, "cpu"
    if not llama_cpp.llama_supports_gpu_offload():
        log.warning(
            "this llama-cpp-python build has no GPU support, so the model runs on the CPU; "
            "install a CUDA/Metal build of llama-cpp-python to offload it"
        )
        return 0, "cpu"
    return -1, device


class LlamaCppBackend:
    """One loaded GGUF model; calls are serialised because a context is not thread-safe."""

    name = "llama.cpp"

    def __init__(self, model_path: Path, device: str = "cpu", *, n_threads: int | None = None):
        llama_cpp = import_llama_cpp()
        self.model_path = Path(model_path)
        check_gguf_file(self.model_path)
        layers, self.device = _gpu_layers(llama_cpp, normalize_device(device))
        # llama-cpp-python defaults to half the cores; DTG is small and benefits from all.
        threads = n_threads or os.cpu_count() or 1
        self._lock = threading.Lock()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=N_CTX,
                n_gpu_layers=layers,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not load {self.model_path}: the file is truncated or corrupt, "
                f"or its architecture is unknown to this llama-cpp-python ({exc})"
            ) from exc
        log.info(
            "loaded %s with llama.cpp on %s (%d threads)", self.model_path, self.device, threads
        )

    def _require_open(self) -> Any:
        if self._llm is None:
            raise RuntimeError(f"the llama.cpp backend for {self.model_path} was closed")
        return self._llm

    def _tokenize(self, llm: Any, text: str) -> list[int]:
        # special=True makes `<|input_end|>` and friends single tokens, as in training.
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self._tokenize(self._require_open(), text))

    def generate(self, prompt: str, sampling: SamplingSettings, seed: int) -> Generation:
        with self._lock:
            llm = self._require_open()
            tokens = self._tokenize(llm, prompt)
            budget = new_token_budget(len(tokens), N_CTX, sampling.max_new_tokens)
            new, stopped, clock = self._run(llm, tokens, sampling, seed, budget)
            return Generation(
                text=self._detokenize(llm, new),
                prompt_tokens=len(tokens),
                completion_tokens=len(new) + int(stopped),
                prompt_eval_s=clock.prompt_eval_s,
                generation_s=clock.generation_s,
                stopped_by_eos=stopped,
            )

    def _run(
        self, llm: Any, tokens: list[int], sampling: SamplingSettings, seed: int, budget: int
    ) -> tuple[list[int], bool, Stopwatch]:
        # The sampler chain is seeded when generate() builds it, so each call with
        # the same seed replays the same draws; reset() drops the previous KV cache
        # so no prefix reuse can change the arithmetic between calls.
        llm.set_seed(fold_seed(seed))
        llm.reset()
        eos = llm.token_eos()
        new: list[int] = []
        stopped = False
        clock = Stopwatch()
        stream = llm.generate(
            tokens,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repetition_penalty,
            reset=True,
        )
        for token in stream:
            clock.mark_first_token()
            if token == eos:
                stopped = True
                break
            new.append(token)
            if len(new) >= budget:
                break
        stream.close()
        clock.stop()
        return new, stopped, clock

    def _detokenize(self, llm: Any, tokens: list[int]) -> str:
        text = llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")
        # The word-boundary marker of the first piece becomes a leading space here but
        # not in transformers' decoder; drop it so both backends return the same text.
        return text[1:] if text.startswith(" ") else text

    def close(self) -> None:
        with self._lock:
            llm, self._llm = self._llm, None
        if llm is not None:
            closer = getattr(llm, "close", None)
            if callable(closer):
                closer()
            log.info("closed llama.cpp model %s", self.model_path)

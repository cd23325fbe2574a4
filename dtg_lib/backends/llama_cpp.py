"""GGUF models through llama-cpp-python."""

from __future__ import annotations

import contextlib
import logging
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import SamplingSettings
from .base import (
    BackendUnavailable,
    Generation,
    ModelLoadError,
    Stopwatch,
    file_stamp,
    fold_seed,
    new_token_budget,
    normalize_device,
    reload_wanted,
)
from .llama_params import extra_buffers_wanted, mmap_wanted, model_params
from .threads import ThreadPolicy

log = logging.getLogger("dtg")

N_CTX = 2048
PIP_COMMAND = "pip install llama-cpp-python"
GGUF_MAGIC = b"GGUF"
# Header: magic, uint32 version, uint64 tensor count, uint64 metadata count.
_HEADER = struct.Struct("<4sIQQ")
_KNOWN_VERSIONS = (2, 3)
# Far above any real model; a larger count means the header is garbage.
_MAX_HEADER_COUNT = 1_000_000


# Every round of one DTG expansion repeats the input up to and including this
# token, then lists different tags; a canonical chunk ends before it.
SEGMENT_MARKER = "<|input_end|>"
# Canonical chunks end every this many tokens too, so that a prefix two prompts
# share (a DTG or TIPO header, across jobs) ends near a chunk end.
CHUNK_TOKENS = 16
_UNSET = object()


@dataclass(frozen=True)
class _Evaluated:
    """The prompt whose KV cache entries the context holds, and its chunk ends."""

    tokens: tuple[int, ...]
    ends: tuple[int, ...]


def segment_ends(tokens: Sequence[int], marker: int | None) -> tuple[int, ...]:
    """Where the prompt's canonical llama_decode calls end: every CHUNK_TOKENS tokens,
    before the first marker, and at the end.

    llama.cpp's float results depend on how tokens are batched (measured:
    docs/llama-batching.md; a Q6_K file's cache entries differ when a chunk of
    two tokens is split off, an F16 one's when one token is). Evaluating every
    prompt in chunks fixed by its own tokens and positions, and reusing cache
    entries only up to a chunk end both prompts share, makes a kept entry
    bit-equal to a freshly computed one: a call gives the same output whatever
    came before, with no assumption about llama.cpp's kernels. Ending a chunk
    before the marker leaves a last chunk even when a round repeats the bare
    input, so that input is reused too.
    """
    count = len(tokens)
    ends = set(range(CHUNK_TOKENS, count, CHUNK_TOKENS)) | {count}
    if marker is not None and marker in tokens:
        cut = list(tokens).index(marker)
        if cut > 0:
            ends.add(cut)
    return tuple(sorted(ends))


def reusable_prefix(previous: _Evaluated | None, tokens: Sequence[int], ends: Sequence[int]) -> int:
    """The longest chunk end both prompts share, with equal tokens before it.

    Never the whole prompt: its last chunk is evaluated again so that the logits
    to sample from are fresh.
    """
    if previous is None:
        return 0
    limit = min(_common_prefix(previous.tokens, tokens), len(tokens) - 1)
    shared = set(previous.ends) & set(ends)
    return max((end for end in shared if end <= limit), default=0)


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    count = 0
    for a, b in zip(first, second):
        if a != b:
            break
        count += 1
    return count


def _chunks(start: int, ends: Sequence[int]) -> list[tuple[int, int]]:
    """The llama_decode calls that evaluate the tokens after a kept prefix `start`."""
    later = [end for end in ends if end > start]
    return list(zip([start, *later[:-1]], later))


def trained_context(metadata: Mapping[str, str], most: int) -> int:
    """The positions the model was trained on (its GGUF `<arch>.context_length`), at most
    `most`; `most` when the file does not say."""
    architecture = metadata.get("general.architecture", "llama")
    written = str(metadata.get(f"{architecture}.context_length", "")).strip()
    return min(most, int(written)) if written.isdigit() and int(written) > 0 else most


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


def offload_problem(llama_cpp: Any, device: str, platform: str = sys.platform) -> str | None:
    """Why this llama.cpp cannot run the model on `device` (not "cpu"), or None when it can.

    A GPU build offloads to the one GPU API it was built for: Metal on macOS,
    CUDA (or ROCm, Vulkan) elsewhere.
    """
    if not llama_cpp.llama_supports_gpu_offload():
        return (
            "this llama-cpp-python build has no GPU offload; "
            "a CUDA or Metal build of llama-cpp-python offloads the model"
        )
    if device == "mps" and platform != "darwin":
        return "MPS exists only on macOS"
    if device.startswith("cuda") and platform == "darwin":
        return "llama.cpp on macOS offloads to Metal: choose mps"
    return None


def placement(llama_cpp: Any, device: str) -> tuple[int, str, str]:
    """GPU layers, the device the model runs on, and a notice when that is not `device`.

    An unavailable GPU is not an error, unlike in the torch backend: the plain
    `pip install llama-cpp-python` build has no GPU offload, and DTG's GGUF runs
    well on the CPU, so a webui set to "cuda" keeps working; the notice travels
    with every result, so the fallback is never silent.
    """
    if device == "cpu":
        return 0, "cpu", ""
    problem = offload_problem(llama_cpp, device)
    if problem is None:
        return -1, device, ""
    notice = f"device {device!r} is not available to llama.cpp here; ran on cpu ({problem})"
    log.warning(notice)
    return 0, "cpu", notice


class LlamaCppBackend:
    """One loaded GGUF model; calls are serialised because a context is not thread-safe."""

    name = "llama.cpp"
    context = N_CTX
    # What the KV cache holds (see _prefill); class-level defaults, set per instance.
    _evaluated: _Evaluated | None = None
    _marker_id: Any = _UNSET
    # KV cache cells of the context: one sequence of `context` tokens.
    _context_cells = N_CTX

    def __init__(
        self,
        model_path: Path,
        device: str = "cpu",
        *,
        n_threads: int | None = None,
        extra_buffers: bool | None = None,
        use_mmap: bool | None = None,
    ):
        llama_cpp = import_llama_cpp()
        self.model_path = Path(model_path)
        check_gguf_file(self.model_path)
        layers, self.device, notice = placement(llama_cpp, normalize_device(device))
        # Told with every result (see Backend): this model always runs where it was placed.
        self.notices: tuple[str, ...] = (notice,) if notice else ()
        # Physical cores, or DTG_THREADS; `self.threads.apply` re-chooses per generation.
        self.threads = ThreadPolicy(n_threads)
        threads = self.threads.at_load
        self._lock = threading.Lock()
        # AMX/repack weight buffers segfault on some CPUs; see llama_params.
        self.extra_buffers = extra_buffers_wanted(extra_buffers)
        # A mapped file truncated under a running model is a SIGBUS; see llama_params.
        self.use_mmap = mmap_wanted(use_mmap)
        self._load_options = {"n_gpu_layers": layers, "n_threads": threads}
        self._llm = self._load(llama_cpp)

    def _load(self, llama_cpp: Any) -> Any:
        """A Llama over the file as it is now; its stamp is kept to notice later changes."""
        self._stamp = file_stamp(self.model_path)
        threads = self._load_options["n_threads"]
        try:
            with (
                model_params(llama_cpp, extra_buffers=self.extra_buffers),
                self._context_params(llama_cpp),
            ):
                llm = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    n_ctx=self._context_cells,
                    n_gpu_layers=self._load_options["n_gpu_layers"],
                    n_threads=threads,
                    n_threads_batch=threads,
                    use_mmap=self.use_mmap,
                    verbose=False,
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not load {self.model_path}: the file is truncated or corrupt, "
                f"or its architecture is unknown to this llama-cpp-python ({exc})"
            ) from exc
        # A model trained on fewer positions (TIPO v1: 1024) must not be fed more.
        self.context = trained_context(llm.metadata, N_CTX)
        log.info(
            "loaded %s with llama.cpp on %s (%d threads, context %d)",
            self.model_path,
            self.device,
            threads,
            self.context,
        )
        return llm

    def _context_params(self, llama_cpp: Any) -> contextlib.AbstractContextManager[None]:
        """Context parameters `Llama(...)` does not take (see llama_batch); none here."""
        return contextlib.nullcontext()

    def _current_model(self) -> Any:
        """The open model, reloaded first when its file changed since it was loaded.

        Called with the lock held, before each generation. A file that no longer
        loads raises ModelLoadError and leaves the backend closed.
        """
        llm = self._require_open()
        if not reload_wanted(self.model_path, self._stamp):
            return llm
        log.warning("model file %s changed since it was loaded; reloading it", self.model_path)
        self._llm, self._evaluated, self._marker_id = None, None, _UNSET
        close_llama(llm)
        check_gguf_file(self.model_path)
        self._llm = self._load(import_llama_cpp())
        return self._llm

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
            llm = self._current_model()
            self.threads.apply(llm)
            tokens = self._tokenize(llm, prompt)
            budget = new_token_budget(len(tokens), self.context, sampling.max_new_tokens)
            clock = Stopwatch()
            reused = self._prefill(llm, tokens)
            new, stopped = self._sample(llm, sampling, seed, budget, clock)
            return Generation(
                text=self._detokenize(llm, new),
                prompt_tokens=len(tokens),
                completion_tokens=len(new) + int(stopped),
                prompt_eval_s=clock.prompt_eval_s,
                generation_s=clock.generation_s,
                stopped_by_eos=stopped,
                reused_prompt_tokens=reused,
            )

    def _marker(self, llm: Any) -> int | None:
        if self._marker_id is _UNSET:
            ids = llm.tokenize(SEGMENT_MARKER.encode("utf-8"), add_bos=False, special=True)
            self._marker_id = ids[0] if len(ids) == 1 else None
        return self._marker_id

    def _prefill(self, llm: Any, tokens: list[int]) -> int:
        """Evaluate the prompt in canonical chunks, keeping those the KV cache already
        holds (across jobs too: DTG and TIPO headers repeat).

        Returns how many prompt tokens were reused rather than evaluated.
        """
        ends = segment_ends(tokens, self._marker(llm))
        keep = reusable_prefix(self._evaluated, tokens, ends)
        if keep > llm.n_tokens:  # the cache was cleared behind our back
            keep = 0
        # Until the evaluation below finishes, the cache holds nothing we can vouch for.
        self._evaluated = None
        if keep:
            llm.n_tokens = keep  # eval() drops every cache entry from n_tokens on
        else:
            llm.reset()
        for begin, end in _chunks(keep, ends):
            llm.eval(tokens[begin:end])
        self._evaluated = _Evaluated(tuple(tokens), ends)
        return keep

    def _sample(
        self, llm: Any, sampling: SamplingSettings, seed: int, budget: int, clock: Stopwatch
    ) -> tuple[list[int], bool]:
        # The sampler chain is seeded when generate() builds it, so each call with
        # the same seed replays the same draws. The prompt is already evaluated:
        # reset=False with no tokens makes generate() sample from the current logits
        # instead of applying its own prefix matching, which would re-batch the prompt.
        llm.set_seed(fold_seed(seed))
        eos = llm.token_eos()
        new: list[int] = []
        stopped = False
        stream = llm.generate(
            [],
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repetition_penalty,
            reset=False,
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
        return new, stopped

    def _detokenize(self, llm: Any, tokens: list[int]) -> str:
        # The first piece's word-boundary marker comes out as a leading space, which
        # the caller needs: it is the difference between "tongue" + " out" and
        # "tongue" + "out" when a round continues the last tag it was fed.
        return llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")

    def close(self) -> None:
        with self._lock:
            llm, self._llm = self._llm, None
        if llm is not None:
            close_llama(llm)
            log.info("closed llama.cpp model %s", self.model_path)


def close_llama(llm: Any) -> None:
    closer = getattr(llm, "close", None)  # older llama-cpp-python frees on garbage collection
    if callable(closer):
        closer()

"""Hugging Face folders (safetensors) through torch and transformers."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..models.validation import check_hf_folder
from ..settings import SamplingSettings
from .base import (
    BackendUnavailable,
    Generation,
    ModelLoadError,
    Stopwatch,
    file_stamp,
    new_token_budget,
    normalize_device,
    reload_wanted,
)
from .torch_sampling import BatchDecoder, Row
from .torch_steps import StepFactory, resolve_decode_mode

log = logging.getLogger("dtg")

# Every package the backend imports, with the name pip knows it by.
REQUIRED = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("safetensors", "safetensors"),
    ("tokenizers", "tokenizers"),
)
PIP_COMMAND = "pip install torch transformers sentencepiece safetensors"
DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
DEFAULT_CONTEXT = 2048
# SentencePiece's mark of a piece that begins a word.
WORD_START = "\u2581"
# A plain piece that decodes to itself, put before generated tokens so that their first
# word keeps its space (see new_text).
ANCHOR = ","
# "auto", "eager", "static" or "graph" (see torch_steps); for benchmarks and bug hunts.
DECODE_ENV = "DTG_TORCH_DECODE"


def import_torch_stack() -> tuple[Any, Any]:
    """torch and transformers, or BackendUnavailable naming the first missing package."""
    import importlib

    modules = {}
    for module, package in REQUIRED:
        try:
            modules[module] = importlib.import_module(module)
        except ImportError as exc:
            raise BackendUnavailable(f"{package} is not installed: {PIP_COMMAND}") from exc
        except OSError as exc:  # installed, but a native library (CUDA, MKL) is missing
            raise BackendUnavailable(
                f"{package} is installed but failed to load ({exc}): "
                f"pip install --force-reinstall {package}"
            ) from exc
    return modules["torch"], modules["transformers"]


def resolve_dtype(torch: Any, device: str, dtype: str | None) -> Any:
    if dtype is None:
        # Half precision is what GPUs are fast at; CPUs are faster and exact in fp32.
        return torch.float32 if device == "cpu" else torch.float16
    name = DTYPES.get(str(dtype).lower())
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(sorted(DTYPES))}")
    return getattr(torch, name)


def check_device(torch: Any, device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(
            "this torch has no CUDA support or sees no GPU: install a CUDA build "
            "(pip install torch --index-url https://download.pytorch.org/whl/cu121) or use cpu"
        )
    mps = getattr(torch.backends, "mps", None)
    if device == "mps" and not (mps is not None and mps.is_available()):
        raise BackendUnavailable("MPS is not available with this torch on this machine; use cpu")


def _load_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError, KeyError]
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    return tuple(errors)


def dtype_keyword(transformers: Any) -> str:
    # Transformers 5 renamed `torch_dtype` to `dtype`; 4.x only knows the old name.
    major = str(getattr(transformers, "__version__", "4")).split(".", 1)[0]
    return "dtype" if major.isdigit() and int(major) >= 5 else "torch_dtype"


def new_text(tokenizer: Any, tokens: list[int]) -> str:
    """The text of generated tokens as it continues the prompt.

    Decoded alone, a first piece that starts a word ("▁out", or a byte-fallback space)
    loses its space; a round that continues its last fed tag would then glue the two
    words. So the tokens are decoded after a comma, which is then cut off again.
    """
    if tokens:
        anchor = tokenizer.convert_tokens_to_ids(ANCHOR)
        if isinstance(anchor, int) and anchor != tokenizer.unk_token_id:
            head = _decode(tokenizer, [anchor])
            both = _decode(tokenizer, [anchor, *tokens])
            if both.startswith(head):
                return both[len(head) :]
    text = _decode(tokenizer, tokens)
    if tokens and not text.startswith(" "):
        first = tokenizer.convert_ids_to_tokens(tokens[0])
        if isinstance(first, str) and first.startswith(WORD_START):
            text = " " + text
    return text


# safetensors' names of the element types, as torch names them.
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
# A safetensors header is a few hundred bytes a tensor; anything near this is not one.
MAX_HEADER_BYTES = 100_000_000
# Converted tensors are read through a buffer of this size.
READ_CHUNK_BYTES = 16 << 20
READ_THREADS = min(4, os.cpu_count() or 1)


def weight_files(folder: Path) -> list[Path] | None:
    """The safetensors files transformers would load from the folder, or None if it has neither
    a model.safetensors nor a shard index (then transformers' own loader gives the error)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{index} is not a shard index: {exc}") from exc
        if any(not isinstance(name, str) or Path(name).name != name for name in names):
            raise ModelLoadError(f"{index} names a shard outside its folder")
        return [folder / name for name in names]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else None


def read_weights(torch: Any, files: Sequence[Path], dtype: Any) -> dict[str, Any]:
    """Every tensor of the files, floating-point ones in `dtype`, in memory torch allocated.

    Each tensor is read (not memory-mapped), a converted one a chunk at a time, so the
    peak is the weights in `dtype` plus a chunk a thread: transformers maps the whole
    file and keeps its pages resident until the end of the load, which for an fp32
    file loaded in bf16 is the fp32 file plus the bf16 weights. Being torch's own memory,
    the tensors also need no copy against a file truncated later (see own_weights).
    Tensors are read by READ_THREADS threads at once, each with its own file handle
    and buffer: one thread leaves the cores idle while it copies from the page cache.
    """
    jobs: list[tuple[Path, str, dict[str, Any]]] = []
    for path in files:
        with open(path, "rb") as handle:
            jobs += [(path, name, entry) for name, entry in _safetensors_entries(path, handle)]
    buffers = threading.local()  # each thread's chunk, reused across its tensors

    def read(job: tuple[Path, str, dict[str, Any]]) -> Any:
        path, _, entry = job
        if not hasattr(buffers, "chunk"):
            buffers.chunk = torch.empty(READ_CHUNK_BYTES, dtype=torch.uint8)
        with open(path, "rb") as handle:
            return _read_tensor(torch, _Source(path, handle, buffers.chunk), entry, dtype)

    if READ_THREADS <= 1:
        tensors = [read(job) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            tensors = list(pool.map(read, jobs))
    return {name: tensor for (_, name, _), tensor in zip(jobs, tensors)}


class _Source:
    """An open safetensors file and the buffer that converted tensors pass through."""

    def __init__(self, path: Path, handle: Any, chunk: Any):
        self.path, self.handle, self.chunk = path, handle, chunk

    def read_into(self, target: Any, begin: int) -> None:
        """Fill a flat uint8 tensor with the file's bytes from `begin`.

        Through ctypes, not target.numpy(): a storage numpy has seen is marked not
        resizable, which own_weights would take for a file mapping and copy.
        """
        size = target.numel()
        if size == 0:
            return
        self.handle.seek(begin)
        window = (ctypes.c_ubyte * size).from_address(target.data_ptr())
        if self.handle.readinto(window) != size:
            raise ModelLoadError(f"{self.path} ended while it was being read")


def _safetensors_entries(path: Path, handle: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, entry) for each tensor, with data_offsets made absolute and checked."""
    size = os.fstat(handle.fileno()).st_size
    head = handle.read(8)
    length = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
        raise ModelLoadError(f"{path} is not a safetensors file (or it is truncated)")
    try:
        header = json.loads(handle.read(length))
        entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
        for _, entry in entries:
            begin, end = (8 + length + int(offset) for offset in entry["data_offsets"])
            if not 8 + length <= begin <= end:
                raise ValueError(f"bad data_offsets {entry['data_offsets']}")
            entry["data_offsets"] = (begin, end)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{path} has a broken safetensors header: {exc}") from exc
    needed = max((entry["data_offsets"][1] for _, entry in entries), default=0)
    if needed > size:
        raise ModelLoadError(
            f"{path} is truncated ({size:,} of {needed:,} bytes): download it again"
        )
    return entries


def _read_tensor(torch: Any, source: _Source, entry: dict[str, Any], dtype: Any) -> Any:
    name = SAFETENSORS_DTYPES.get(str(entry.get("dtype")))
    if name is None:
        raise ModelLoadError(f"{source.path} holds a tensor of type {entry.get('dtype')!r}")
    stored = getattr(torch, name)
    shape = [int(n) for n in entry["shape"]]
    begin, end = entry["data_offsets"]
    count = math.prod(shape)
    if count * _element_size(torch, stored) != end - begin:
        raise ModelLoadError(f"{source.path}: a tensor's bytes do not match its shape {shape}")
    if not stored.is_floating_point or stored == dtype:
        raw = torch.empty(end - begin, dtype=torch.uint8)
        source.read_into(raw, begin)
        return raw.view(stored).reshape(shape)
    # Converted a chunk at a time: the tensor as stored never exists whole.
    out = torch.empty(count, dtype=dtype)
    itemsize = (end - begin) // max(count, 1)
    per_chunk = source.chunk.numel() // itemsize
    for first in range(0, count, per_chunk):
        n = min(per_chunk, count - first)
        part = source.chunk[: n * itemsize]
        source.read_into(part, begin + first * itemsize)
        out[first : first + n].copy_(part.view(stored))
    return out.reshape(shape)


def _element_size(torch: Any, dtype: Any) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def own_weights(torch: Any, model: Any) -> int:
    """Copy each weight that is still a view of a memory-mapped file into memory of its own.

    Newer transformers (4.43 on) hand safetensors' memory map straight to the
    model when the dtype and device match (fp32 on the CPU), so the weights stay
    pages of the file: a file truncated while the model is in use (a re-download,
    a full disk) makes the next read a SIGBUS that kills the process. Returns
    how many tensors were copied; a copy of the weights that transformers already
    made is left alone. Cost: see benchmarks/bench_mmap.py.
    """
    copied = 0
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if _file_backed(tensor):
                tensor.data = tensor.data.clone()
                copied += 1
    return copied


def _file_backed(tensor: Any) -> bool:
    """Whether the tensor's memory is borrowed (safetensors' map of the file) rather than torch's.

    safetensors wraps the mapped bytes without telling torch the file (its
    `filename` is None), but memory torch did not allocate is never resizable.
    """
    if tensor.device.type != "cpu":
        return False  # moved to an accelerator: already a copy
    resizable = getattr(tensor.untyped_storage(), "resizable", None)
    return not resizable() if callable(resizable) else True  # cannot tell: copy


def _decode(tokenizer: Any, tokens: list[int]) -> str:
    return tokenizer.decode(tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)


class TorchBackend:
    """One loaded Hugging Face model; calls are serialised with a lock."""

    name = "torch"
    # Torch runs where it is asked or refuses (check_device), so it has nothing to tell.
    notices: tuple[str, ...] = ()

    def __init__(
        self,
        model_path: Path,
        device: str = "cpu",
        *,
        dtype: str | None = None,
        n_threads: int | None = None,
        decode: str | None = None,
    ):
        torch, transformers = import_torch_stack()
        self._torch, self._transformers = torch, transformers
        self.model_path = Path(model_path)
        self.device = normalize_device(device)
        check_device(torch, self.device)
        check_hf_folder(self.model_path)
        if n_threads:
            torch.set_num_threads(n_threads)
        self.dtype = resolve_dtype(torch, self.device, dtype)
        wanted = decode or os.environ.get(DECODE_ENV, "")
        self._decode = resolve_decode_mode(wanted, self.device, torch.__version__)
        self._lock = threading.Lock()
        # Taken before loading, so that a change during the load is noticed too.
        self._stamp = file_stamp(self.model_path)
        self._tokenizer, self._model = self._load()
        self._steps = StepFactory(torch, self._model, self._decode)
        self.context = int(
            getattr(self._model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT
        )
        log.info(
            "loaded %s with torch on %s (%s, %s decode, activation %s)",
            self.model_path,
            self.device,
            self.dtype,
            self.decode,
            getattr(self._model.config, "hidden_act", "?"),
        )

    @property
    def decode(self) -> str:
        """The decode path in use: a failed capture or an unusual model changes it."""
        return self._steps.mode if self._steps is not None else self._decode

    def _load(self) -> tuple[Any, Any]:
        transformers = self._transformers
        common = {"local_files_only": True, "trust_remote_code": False}
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path, **common)
            model = self._load_model(common)
        except ModelLoadError:
            raise
        except _load_errors() as exc:
            raise ModelLoadError(f"transformers could not load {self.model_path}: {exc}") from exc
        # Half precision is read into the CPU's memory first, so no fp32 copy reaches the GPU.
        model = model.to(self.device).eval()
        own_weights(self._torch, model)
        return tokenizer, model

    def _load_model(self, common: dict[str, Any]) -> Any:
        """The model in self.dtype, its weights read by read_weights: never all of them in fp32
        when a half-precision model is asked of an fp32 file, nor twice in fp32."""
        transformers = self._transformers
        dtype = {dtype_keyword(transformers): self.dtype}
        files = weight_files(self.model_path)
        if files is None:
            return transformers.AutoModelForCausalLM.from_pretrained(
                self.model_path, use_safetensors=True, **dtype, **common
            )
        config = transformers.AutoConfig.from_pretrained(self.model_path, **common)
        # The class itself: the Auto class wants a folder, and a folder and a
        # state dict together are refused by transformers 5.
        model_class = transformers.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        state = read_weights(self._torch, files, self.dtype)
        return model_class.from_pretrained(None, config=config, state_dict=state, **dtype)

    def _current_model(self) -> tuple[Any, Any]:
        """The open tokenizer and model, reloaded first when a file of the folder changed.

        Called with the lock held, before each generation. A folder that no longer
        loads raises ModelLoadError and leaves the backend closed.
        """
        loaded = self._require_open()
        if not reload_wanted(self.model_path, self._stamp):
            return loaded
        log.warning("model folder %s changed since it was loaded; reloading it", self.model_path)
        self._model = self._tokenizer = None
        self._steps.clear()
        self._steps = None
        check_hf_folder(self.model_path)
        self._stamp = file_stamp(self.model_path)
        self._tokenizer, self._model = self._load()
        self._steps = StepFactory(self._torch, self._model, self._decode)
        return self._tokenizer, self._model

    def _require_open(self) -> tuple[Any, Any]:
        if self._model is None:
            raise RuntimeError(f"the torch backend for {self.model_path} was closed")
        return self._tokenizer, self._model

    def count_tokens(self, text: str) -> int:
        with self._lock:
            tokenizer, _ = self._require_open()
            return len(tokenizer(text)["input_ids"])

    def generate(self, prompt: str, sampling: SamplingSettings, seed: int) -> Generation:
        # A batch of one: the same sampler as a batch, so a prompt's result does not
        # depend on whether it was expanded alone or with others.
        return self.generate_batch([prompt], sampling, [seed])[0]

    def generate_batch(
        self, prompts: Sequence[str], sampling: SamplingSettings, seeds: Sequence[int]
    ) -> list[Generation]:
        """One continuation per prompt, each sampled with its own seed, in one batch.

        Each Generation reports the batch's prompt and decode time divided by the
        number of prompts: its fair share, so that the shares add up to the wall time.
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            return []
        with self._lock:
            tokenizer, _ = self._current_model()
            encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
            budgets = [
                new_token_budget(len(ids), self.context, sampling.max_new_tokens) for ids in encoded
            ]
            decoder = BatchDecoder(self._torch, self._steps, self.device, tokenizer.eos_token_id)
            rows = decoder.rows(encoded, budgets, seeds)
            clock = Stopwatch()
            # inference_mode, not no_grad: a kept graph's buffers are made in the
            # first job and must be written by later ones in the same mode.
            with self._torch.inference_mode():
                decoder.run(rows, sampling, clock)
            clock.stop()
            share = 1 / len(rows)
            return [self._generation(tokenizer, row, clock, share) for row in rows]

    @staticmethod
    def _generation(tokenizer: Any, row: Row, clock: Stopwatch, share: float) -> Generation:
        stopped = bool(row.new) and row.new[-1] == tokenizer.eos_token_id
        kept = row.new[:-1] if stopped else row.new
        text = new_text(tokenizer, kept)
        return Generation(
            text=text,
            prompt_tokens=len(row.prompt),
            completion_tokens=len(row.new),
            prompt_eval_s=clock.prompt_eval_s * share,
            generation_s=clock.generation_s * share,
            stopped_by_eos=stopped,
        )

    def close(self) -> None:
        with self._lock:
            had_model = self._model is not None
            self._model = None
            self._tokenizer = None
            if had_model:
                self._steps.clear()
                self._steps = None
        if not had_model:
            return
        gc.collect()
        torch = self._torch
        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif self.device == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()
        log.info("closed torch model %s", self.model_path)

"""Hugging Face folders (safetensors) through torch and transformers."""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import threading
from collections.abc import Sequence
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
            model = transformers.AutoModelForCausalLM.from_pretrained(
                self.model_path,
                use_safetensors=True,
                **{dtype_keyword(transformers): self.dtype},
                **common,
            )
        except _load_errors() as exc:
            raise ModelLoadError(f"transformers could not load {self.model_path}: {exc}") from exc
        model = model.to(self.device).eval()
        own_weights(self._torch, model)
        return tokenizer, model

    def _current_model(self) -> tuple[Any, Any]:
        """The open tokenizer and model, reloaded first when a file of the folder changed.

        Called with the lock held, before each generation. A folder that no longer
        loads raises ModelLoadError and leaves the backend closed.
        """
        loaded = self._require_open()
        if file_stamp(self.model_path) == self._stamp:
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

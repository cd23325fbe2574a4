"""Hugging Face folders (safetensors) through torch and transformers."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Iterator
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


def check_hf_folder(path: Path) -> None:
    """A folder with config.json and safetensors weights; anything else is refused early."""
    if not path.exists():
        raise ModelLoadError(f"model folder not found: {path}")
    if path.is_file():
        hint = " (a GGUF file: use the llama.cpp backend)" if path.suffix == ".gguf" else ""
        raise ModelLoadError(
            f"{path} is a file{hint}; the torch backend needs a Hugging Face model folder"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; it is not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            f"{path} has no .safetensors weights; the torch backend loads only safetensors "
            "because pickle (.bin) weights can run code when loaded"
        )


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


def _dtype_keyword(transformers: Any) -> str:
    # Transformers 5 renamed `torch_dtype` to `dtype`; 4.x only knows the old name.
    major = str(getattr(transformers, "__version__", "4")).split(".", 1)[0]
    return "dtype" if major.isdigit() and int(major) >= 5 else "torch_dtype"


def native_min_p(transformers: Any) -> bool:
    return hasattr(transformers.GenerationConfig(), "min_p")


def make_min_p_processor(transformers: Any, min_p: float) -> Any:
    """min-p filtering for transformers versions that lack it (added in 4.39)."""
    import torch

    class MinPFilter(transformers.LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            probs = torch.softmax(scores.float(), dim=-1)
            floor = probs.max(dim=-1, keepdim=True).values * min_p
            return scores.masked_fill(probs < floor, float("-inf"))

    return MinPFilter()


def make_clock_streamer(transformers: Any, clock: Stopwatch) -> Any:
    """A streamer that only notes when the first new token arrives."""
    base = getattr(transformers, "generation", transformers)
    streamer_base = getattr(base, "BaseStreamer", object)

    class ClockStreamer(streamer_base):
        def __init__(self) -> None:
            self.calls = 0

        def put(self, value: Any) -> None:
            # generate() first hands over the prompt, then one token per step.
            self.calls += 1
            if self.calls == 2:
                clock.mark_first_token()

        def end(self) -> None:
            """Nothing to flush: the caller stops the clock once generate() returns."""

    return ClockStreamer()


@contextlib.contextmanager
def seeded(torch: Any, device: str, seed: int) -> Iterator[None]:
    """Seed this call's sampling and restore the global RNG state afterwards."""
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(fold_seed(seed))
        yield


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
        self._lock = threading.Lock()
        self._tokenizer, self._model = self._load()
        self.context = int(
            getattr(self._model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT
        )
        log.info(
            "loaded %s with torch on %s (%s, activation %s)",
            self.model_path,
            self.device,
            self.dtype,
            getattr(self._model.config, "hidden_act", "?"),
        )

    def _load(self) -> tuple[Any, Any]:
        transformers = self._transformers
        common = {"local_files_only": True, "trust_remote_code": False}
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path, **common)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                self.model_path,
                use_safetensors=True,
                **{_dtype_keyword(transformers): self.dtype},
                **common,
            )
        except _load_errors() as exc:
            raise ModelLoadError(f"transformers could not load {self.model_path}: {exc}") from exc
        return tokenizer, model.to(self.device).eval()

    def _require_open(self) -> tuple[Any, Any]:
        if self._model is None:
            raise RuntimeError(f"the torch backend for {self.model_path} was closed")
        return self._tokenizer, self._model

    def count_tokens(self, text: str) -> int:
        with self._lock:
            tokenizer, _ = self._require_open()
            return len(tokenizer(text)["input_ids"])

    def _sampling_kwargs(self, sampling: SamplingSettings, budget: int, eos: int) -> dict:
        kwargs: dict[str, Any] = {
            "do_sample": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "repetition_penalty": sampling.repetition_penalty,
            "max_new_tokens": budget,
            "eos_token_id": eos,
            "pad_token_id": eos,
        }
        if sampling.min_p > 0:
            if native_min_p(self._transformers):
                kwargs["min_p"] = sampling.min_p
            else:
                processors = self._transformers.LogitsProcessorList
                kwargs["logits_processor"] = processors(
                    [make_min_p_processor(self._transformers, sampling.min_p)]
                )
        return kwargs

    def generate(self, prompt: str, sampling: SamplingSettings, seed: int) -> Generation:
        torch = self._torch
        with self._lock:
            tokenizer, model = self._require_open()
            encoded = tokenizer(prompt, return_tensors="pt")
            input_ids = encoded["input_ids"].to(self.device)
            prompt_tokens = int(input_ids.shape[1])
            budget = new_token_budget(prompt_tokens, self.context, sampling.max_new_tokens)
            eos = tokenizer.eos_token_id
            clock = Stopwatch()
            with seeded(torch, self.device, seed), torch.no_grad():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=encoded["attention_mask"].to(self.device),
                    streamer=make_clock_streamer(self._transformers, clock),
                    **self._sampling_kwargs(sampling, budget, eos),
                )
            clock.stop()
            new = output[0, prompt_tokens:].tolist()
            stopped = bool(new) and new[-1] == eos
            kept = new[:-1] if stopped else new
            text = tokenizer.decode(
                kept, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            return Generation(
                text=text,
                prompt_tokens=prompt_tokens,
                completion_tokens=len(new),
                prompt_eval_s=clock.prompt_eval_s,
                generation_s=clock.generation_s,
                stopped_by_eos=stopped,
            )

    def close(self) -> None:
        with self._lock:
            had_model = self._model is not None
            self._model = None
            self._tokenizer = None
        if not had_model:
            return
        gc.collect()
        torch = self._torch
        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif self.device == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()
        log.info("closed torch model %s", self.model_path)

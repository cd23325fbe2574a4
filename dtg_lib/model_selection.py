"""Choosing the file and the backend for a model name.

`auto` takes llama.cpp for GGUF and torch for Hugging Face folders. When a
registry model asks for a backend that is not installed, the other format
of the same model is used instead and the user is told; a local file
cannot change format, so there the missing backend is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from . import models
from .backends import BackendUnavailable, llama_cpp_available, torch_available

log = logging.getLogger("dtg")

_BACKEND_FOR_KIND = {models.GGUF_KIND: "llama.cpp", models.HF_KIND: "torch"}
_INSTALL = {
    "llama.cpp": "pip install llama-cpp-python",
    "torch": "pip install torch transformers sentencepiece safetensors",
}


@dataclass(frozen=True)
class ModelChoice:
    backend: str
    path: Path
    display_name: str
    takes_quality_line: bool
    notice: str = ""  # something the user should be told, such as a fallback
    family: str = models.DTG_FAMILY  # which prompt format the model speaks: dtg or tipo


def _available(backend: str) -> bool:
    return llama_cpp_available() if backend == "llama.cpp" else torch_available()


def select_model(
    model: models.ModelSpec | str,
    backend: str = "auto",
    *,
    model_dir: Path | None = None,
    allow_download: bool = True,
    progress: models.ProgressFn | None = None,
) -> ModelChoice:
    """The backend and the validated file for `model`.

    `model` is a spec, a checked name carrying its spec (from an HTTP request), or a
    trusted name, which is parsed here; either way it is parsed at most once.
    `progress` hears of a download, should the model need one.
    """
    spec = models.spec_for(model, model_dir)
    given = model if isinstance(model, str) else spec.display_name
    wanted = _BACKEND_FOR_KIND[spec.kind] if backend == "auto" else backend
    notice = ""
    if _BACKEND_FOR_KIND[spec.kind] != wanted or not _available(wanted):
        spec, wanted, notice = _switch_format(given, spec, wanted)
    resolved = models.resolve_model(
        spec, model_dir, allow_download=allow_download, progress=progress
    )
    if notice:
        log.warning(notice)
    return ModelChoice(
        backend=wanted,
        path=resolved.path,
        display_name=models.shown_model_name(spec, given, model_dir),
        takes_quality_line=spec.takes_quality_line,
        notice=notice,
        family=spec.family,
    )


def _switch_format(
    given: str, spec: models.ModelSpec, wanted: str
) -> tuple[models.ModelSpec, str, str]:
    """The same registry model in the format a usable backend reads."""
    other = "torch" if wanted == "llama.cpp" else "llama.cpp"
    if not _available(wanted):
        if spec.entry is None or not _available(other):
            raise BackendUnavailable(_missing_message(wanted, other))
        notice = (
            f"{wanted} backend is not installed ({_INSTALL[wanted]}); "
            f"using the {other} backend for {spec.entry.name}"
        )
        wanted = other
    else:
        notice = ""
    if spec.entry is None:
        raise BackendUnavailable(
            f"{given} is a {spec.kind} model; the {wanted} backend cannot read it. "
            "Choose backend auto, or a model in the other format."
        )
    variant = "hf" if wanted == "torch" else spec.entry.default_variant
    return models.variant_spec(spec.entry, variant), wanted, notice


def _missing_message(wanted: str, other: str) -> str:
    if _available(other):
        return f"the {wanted} backend is not installed: {_INSTALL[wanted]}"
    return (
        f"no DTG backend is installed: {_INSTALL['llama.cpp']} "
        f"(GGUF models), or {_INSTALL['torch']} (Hugging Face models)"
    )

"""Which DTG model to use, where it lives on disk, and fetching it from the hub.

One concern per module: `names` (the registry, parsing a name into a `ModelSpec`),
`locations` (the model folder, the one rule for names from outside, on-disk and
Hugging Face cache lookup), `download` (hub access, offline rules, progress),
`validation` (GGUF, safetensors, transformers folders, recorded sizes), `resolving`
(spec -> validated model on disk), `quantize` (Q8_0/Q6_K made on this machine from a
model published only as F16) and `listing` (what the model folder holds).

Importing this package is cheap: huggingface_hub, platformdirs and gguf load only
when a download, the default folder or a GGUF check needs them.
"""

from __future__ import annotations

from .family import detect_family
from .listing import list_local_models
from .locations import (
    checked_model_spec,
    default_model_dir,
    hf_cache_dir,
    registry_path,
    safe_model_path,
    shown_model_name,
)
from .names import (
    DEFAULT_MODEL,
    DEFAULT_QUANT,
    DTG_FAMILY,
    FAMILIES,
    GGUF_FILES,
    GGUF_KIND,
    HF_KIND,
    HF_OPTIONAL_FILES,
    HF_REQUIRED_FILES,
    KINDS,
    LOCAL_QUANTS,
    PICKLE_SUFFIXES,
    REGISTRY,
    TIPO_FAMILY,
    TOKENIZER_FILES,
    CheckedModelName,
    DownloadFailed,
    LocalModel,
    ModelCorrupt,
    ModelEntry,
    ModelError,
    ModelNotFound,
    ModelSpec,
    ProgressEvent,
    ProgressFn,
    ResolvedModel,
    is_registry_name,
    model_choices,
    parse_model_name,
    registry_models,
    spec_for,
    variant_spec,
)
from .quantize import QuantizeFailed, make_local_quant
from .resolving import resolve_model
from .validation import SIZES_FILE, validate_model_file

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_QUANT",
    "DTG_FAMILY",
    "FAMILIES",
    "GGUF_FILES",
    "GGUF_KIND",
    "HF_KIND",
    "HF_OPTIONAL_FILES",
    "HF_REQUIRED_FILES",
    "KINDS",
    "LOCAL_QUANTS",
    "PICKLE_SUFFIXES",
    "REGISTRY",
    "SIZES_FILE",
    "TIPO_FAMILY",
    "TOKENIZER_FILES",
    "CheckedModelName",
    "DownloadFailed",
    "LocalModel",
    "ModelCorrupt",
    "ModelEntry",
    "ModelError",
    "ModelNotFound",
    "ModelSpec",
    "ProgressEvent",
    "ProgressFn",
    "QuantizeFailed",
    "ResolvedModel",
    "checked_model_spec",
    "default_model_dir",
    "detect_family",
    "hf_cache_dir",
    "is_registry_name",
    "list_local_models",
    "make_local_quant",
    "model_choices",
    "parse_model_name",
    "registry_models",
    "registry_path",
    "resolve_model",
    "safe_model_path",
    "shown_model_name",
    "spec_for",
    "validate_model_file",
    "variant_spec",
]

"""What every module of the model layer shares: model kinds and families, the error family.

It imports nothing else of the model layer, so names, validation and family detection
can all build on it without importing each other in a circle.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UNAVAILABLE, DtgError

HF_KIND = "hf"
GGUF_KIND = "gguf"
KINDS = (GGUF_KIND, HF_KIND)

# Model families: each speaks its own prompt format (dtg_format / tipo_format).
DTG_FAMILY = "dtg"
TIPO_FAMILY = "tipo"
FAMILIES = (DTG_FAMILY, TIPO_FAMILY)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")

# Formats that unpickle on load and can run arbitrary code: never loaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


class ModelError(DtgError, RuntimeError):
    """A model cannot be used; the message names it and says what to do."""

    http_status = UNAVAILABLE


class ModelNotFound(ModelError):
    """The model is neither known nor on disk (and could not be downloaded)."""


class ModelCorrupt(ModelError):
    """A model file is truncated, damaged or of the wrong kind."""


class DownloadFailed(ModelError):
    """Fetching a model from the hub failed; nothing partial was left in place."""


def pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickle-based checkpoint ({path.suffix}); these can run code when loaded, "
        "so they are never loaded. Use the .gguf files or the .safetensors weights instead."
    )

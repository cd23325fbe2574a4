"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL_CACHE = REPO_ROOT / ".cache" / "tiny-model"


@pytest.fixture(scope="session")
def tiny_model():
    """The project's tiny DTG-format model, built once (~40 s) and cached across runs.

    The cache is rebuilt only when the build recipe changes
    (`dtg_dev.tiny_model.RECIPE_VERSION`).
    """
    for module in ("torch", "transformers", "sentencepiece", "tokenizers", "gguf", "numpy"):
        pytest.importorskip(module, reason=f"{module} is needed to build the tiny model")
    from dtg_dev.tiny_model import tiny_model_cached

    return tiny_model_cached(TINY_MODEL_CACHE)

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


TINY_TIPO_MODEL_CACHE = REPO_ROOT / ".cache" / "tiny-tipo-model"


@pytest.fixture(scope="session")
def tiny_tipo_model():
    """The project's tiny TIPO-format model (HF folder + f16 GGUF), built once (~45 s)
    and cached apart from the DTG one (`dtg_dev.tiny_model.TIPO_RECIPE_VERSION`)."""
    for module in ("torch", "transformers", "sentencepiece", "tokenizers", "gguf", "numpy"):
        pytest.importorskip(module, reason=f"{module} is needed to build the tiny TIPO model")
    from dtg_dev.tiny_model import tiny_tipo_model_cached

    return tiny_tipo_model_cached(TINY_TIPO_MODEL_CACHE)


@pytest.fixture(autouse=True)
def _fresh_ban_list_cache():
    """Compiled ban lists are cached per text; a test that swaps the regex engine must not
    find an earlier test's compiled list."""
    from dtg_lib.ban import compile_ban_list

    compile_ban_list.cache_clear()
    yield


@pytest.fixture(autouse=True)
def _hub_not_remembered_as_unreachable():
    """A test whose hub was unreachable must not block the next test's downloads."""
    from dtg_lib.models.download import UNREACHABLE_HUB

    UNREACHABLE_HUB.answered()
    yield
    UNREACHABLE_HUB.answered()

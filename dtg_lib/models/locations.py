"""Where models live: the model folder, names from outside kept inside it, and the
on-disk / Hugging Face cache lookup of registry models."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from .names import (
    GGUF_KIND,
    HF_KIND,
    TOKENIZER_FILES,
    ModelError,
    ModelNotFound,
    ModelSpec,
    choices_text,
    local_spec,
    parse_registry_name,
)

log = logging.getLogger("dtg")


def default_model_dir() -> Path:
    """DTG_MODEL_DIR, else a per-user cache folder."""
    configured = os.environ.get("DTG_MODEL_DIR", "").strip()
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dtg-upsampler", appauthor=False)) / "models"


def registry_path(spec: ModelSpec, model_dir: Path) -> Path:
    assert spec.entry is not None
    folder = Path(model_dir) / spec.entry.repo_name
    return folder / spec.filename if spec.kind == GGUF_KIND and spec.filename else folder


def safe_model_path(name: str, model_dir: Path) -> Path:
    """Map a name from the API/UI to a path that cannot leave `model_dir`.

    Registry names map to where their download lives (present or not); any
    other name must be an existing file or folder inside `model_dir`. The
    messages name no server path: they go to whoever sent the name.
    """
    text = _name_text(name)
    spec = parse_registry_name(text)
    if spec is not None:
        return registry_path(spec, model_dir)
    return _local_path_inside(text, model_dir)


def checked_model_spec(name: object, model_dir: Path) -> ModelSpec:
    """The one rule for model names from outside (HTTP, the webui API, a shared page).

    A registry name may be downloaded; anything else must be a model inside
    `model_dir`. Returns the spec to load, parsed once; raises ModelError otherwise,
    with a message that names no server path.
    """
    text = _name_text(name)
    spec = parse_registry_name(text)
    if spec is not None:
        return spec
    return local_spec(_local_path_inside(text, model_dir))


def _name_text(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise ModelError(f"Invalid model name {_shown(name)}. {choices_text()}")
    return name.strip()


def _local_path_inside(text: str, model_dir: Path) -> Path:
    """The existing file or folder `text` names inside `model_dir`; ModelError otherwise."""
    if ".." in re.split(r"[\\/]", text):
        raise ModelError(
            f"Model name {_shown(text)} may not contain '..'; name a model inside the model folder."
        )
    try:
        target = _inside_model_dir(text, model_dir)
    except ModelError:
        raise
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop (pre-3.13 raises)
        reason = exc.strerror if isinstance(exc, OSError) else "a symlink loop"
        raise ModelError(
            f"Model name {_shown(text)} cannot name a file in the model folder: {reason}."
        ) from exc
    if target is None:
        raise ModelError(
            f"Model {_shown(text)} is outside the model folder; only models there are allowed."
        )
    return target


def _inside_model_dir(text: str, model_dir: Path) -> Path | None:
    """The existing path `text` names inside `model_dir`, or None when it leads outside."""
    root = Path(model_dir).resolve()
    # resolve() follows symlinks, so a link inside the folder that points
    # outside of it fails the containment check below.
    target = (root / text).resolve()
    if not target.is_relative_to(root):
        return None
    if not target.exists():
        raise ModelNotFound(f"No model {_shown(text)} in the model folder. {choices_text()}")
    return target


def _shown(name: object, limit: int = 80) -> str:
    """A name as it goes into a message: quoted, escaped, and cut when very long."""
    text = ascii(name)
    if len(text) <= limit:
        return text
    length = f"{len(name)} characters" if isinstance(name, str) else "long"
    return f"{text[: limit - 5]}...{text[-1]} ({length})"


def find_on_disk(spec: ModelSpec, model_dir: Path) -> Path | None:
    target = registry_path(spec, model_dir)
    if spec.kind == GGUF_KIND and target.is_file():
        return target
    if spec.kind == HF_KIND and hf_folder_complete(target):
        return target
    return _find_in_hf_cache(spec)


def hf_folder_complete(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
        and any((folder / name).is_file() for name in TOKENIZER_FILES)
    )


def _find_in_hf_cache(spec: ModelSpec) -> Path | None:
    """A file already in the Hugging Face cache (e.g. from the original extension)."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return None
    assert spec.entry is not None
    wanted = spec.filename if spec.kind == GGUF_KIND else "config.json"
    # Read the cache folder now: some versions bind their default at import.
    cache_dir = getattr(constants, "HF_HUB_CACHE", None)
    try:
        found = try_to_load_from_cache(spec.entry.repo_id, wanted, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        log.debug("Hugging Face cache lookup for %s failed: %s", spec.entry.repo_id, exc)
        return None
    if not isinstance(found, str):
        return None
    path = Path(found)
    if spec.kind == GGUF_KIND:
        return path
    return path.parent if hf_folder_complete(path.parent) else None


def hf_cache_dir() -> str | None:
    """The Hugging Face hub cache folder, when huggingface_hub is loaded."""
    hub_constants = sys.modules.get("huggingface_hub.constants")
    return getattr(hub_constants, "HF_HUB_CACHE", None)


def shown_model_name(spec: ModelSpec, given: str, model_dir: Path | None = None) -> str:
    """The model as results and notices name it: never a server path the user did not type.

    A registry model by its registry name; a local one by its path inside the model
    folder, else as the user named it.
    """
    if spec.local_path is None:
        return spec.display_name
    root = Path(model_dir) if model_dir is not None else default_model_dir()
    try:
        return spec.local_path.relative_to(root.resolve()).as_posix()
    except (OSError, RuntimeError, ValueError):  # ValueError: not inside the folder
        return given.strip()

"""The models already in the model folder."""

from __future__ import annotations

from pathlib import Path

from .family import detect_family
from .locations import default_model_dir
from .names import (
    DTG_FAMILY,
    GGUF_KIND,
    HF_KIND,
    LocalModel,
    ModelEntry,
    entry_for_repo_name,
    is_local_quant_file,
    variant_name,
)


def list_local_models(model_dir: Path | None = None) -> list[LocalModel]:
    """GGUF files and transformers folders in `model_dir` and one level below.

    Only what lies inside the folder once symlinks are followed is listed: a link
    out of it (to a system file, say) could not be used through `safe_model_path`,
    and its name and size are nobody's business.
    """
    root = Path(model_dir) if model_dir is not None else default_model_dir()
    if not root.is_dir():
        return []
    try:
        real_root = root.resolve()
    except (OSError, RuntimeError):
        return []
    found: list[LocalModel] = []
    for folder in [root, *_visible_subdirs(root, real_root)]:
        found.extend(_gguf_model(root, path) for path in _visible_files(folder, real_root, ".gguf"))
        for candidate in _visible_subdirs(folder, real_root):
            if _looks_like_hf_folder(candidate):
                found.append(_hf_model(root, candidate, real_root))
    return sorted(found, key=lambda model: model.name.lower())


def _resolves_inside(path: Path, real_root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop before Python 3.13
        return False


def _visible_subdirs(folder: Path, real_root: Path) -> list[Path]:
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()]
    except OSError:
        return []
    return sorted(p for p in entries if _resolves_inside(p, real_root))


def _visible_files(folder: Path, real_root: Path, suffix: str | None = None) -> list[Path]:
    """Files in `folder` (ending in `suffix`, when given) that lie inside `real_root`."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted(
        p
        for p in entries
        if not p.name.startswith(".")
        and (suffix is None or p.suffix.lower() == suffix)
        and p.is_file()
        and _resolves_inside(p, real_root)
    )


def _looks_like_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _registry_folder_entry(root: Path, folder: Path) -> ModelEntry | None:
    return entry_for_repo_name(folder.name) if folder.parent == root else None


def _family(path: Path, kind: str, entry: ModelEntry | None) -> str:
    fallback = entry.family if entry is not None else DTG_FAMILY
    return detect_family(path, kind) or fallback


def _gguf_model(root: Path, path: Path) -> LocalModel:
    entry = _registry_folder_entry(root, path.parent)
    if entry is not None and path.name in entry.gguf_files.values():
        name = variant_name(entry, GGUF_KIND, path.name)
    else:
        name = path.relative_to(root).as_posix()
    family = _family(path, GGUF_KIND, entry)
    size = _file_size(path)
    made_here = is_local_quant_file(path)
    return LocalModel(name, GGUF_KIND, path, size, family, _licence(entry), made_here)


def _hf_model(root: Path, folder: Path, real_root: Path) -> LocalModel:
    entry = _registry_folder_entry(root, folder)
    name = f"{entry.name}:hf" if entry is not None else folder.relative_to(root).as_posix()
    size = sum(
        _file_size(p) for p in _visible_files(folder, real_root) if p.suffix.lower() != ".gguf"
    )
    family = _family(folder, HF_KIND, entry)
    return LocalModel(name, HF_KIND, folder, size, family, _licence(entry))


def _licence(entry: ModelEntry | None) -> str:
    return entry.licence if entry is not None else ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

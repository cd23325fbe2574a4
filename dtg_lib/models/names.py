"""Model names: the registry, parsing a name into a `ModelSpec`, and how models are named.

A model is named by a registry name (`delta-rev2`, `delta-rev2:Q6_K`, `gamma:hf`), a hub
repo id, or a local `.gguf` file / transformers folder. A name is parsed once; the spec
it gives is what travels to the resolver and the loader.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("dtg")

ProgressFn = Callable[[str, int, int], None]

DEFAULT_MODEL = "delta-rev2"
HF_KIND = "hf"
GGUF_KIND = "gguf"
KINDS = (GGUF_KIND, HF_KIND)

# Variant suffix (matched case-insensitively) -> GGUF file in the repo; Q8_0 is the default
# because it is close to f16 in quality at half the size.
GGUF_FILES: dict[str, str] = {
    "Q8_0": "ggml-model-Q8_0.gguf",
    "Q6_K": "ggml-model-Q6_K.gguf",
    "f16": "ggml-model-f16.gguf",
}
DEFAULT_QUANT = "Q8_0"
_HF_VARIANTS = ("hf", "transformers")

HF_REQUIRED_FILES = ("config.json", "model.safetensors")
HF_OPTIONAL_FILES = (
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")

# Formats that unpickle on load and can run arbitrary code: never loaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


@dataclass(frozen=True)
class ModelEntry:
    """One DanTagGen repo on the hub."""

    name: str
    repo_id: str
    takes_quality_line: bool
    context_length: int

    @property
    def repo_name(self) -> str:
        return self.repo_id.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelSpec:
    """What a user named, resolved against the registry or as a local path."""

    entry: ModelEntry | None
    kind: str
    filename: str | None
    local_path: Path | None
    takes_quality_line: bool

    @property
    def display_name(self) -> str:
        if self.local_path is not None:
            return str(self.local_path)
        return variant_name(self.entry, self.kind, self.filename)


@dataclass(frozen=True)
class ResolvedModel:
    """A model that is on disk and passed validation."""

    spec: ModelSpec
    path: Path
    kind: str


@dataclass(frozen=True)
class LocalModel:
    """A model found in the model folder; `name` is what to pass back to `resolve_model`."""

    name: str
    kind: str
    path: Path
    size: int


class ModelError(RuntimeError):
    """A model cannot be used; the message names it and says what to do."""


class ModelNotFound(ModelError):
    """The model is neither known nor on disk (and could not be downloaded)."""


class ModelCorrupt(ModelError):
    """A model file is truncated, damaged or of the wrong kind."""


class DownloadFailed(ModelError):
    """Fetching a model from the hub failed; nothing partial was left in place."""


def _registry_entry(name: str, context_length: int) -> ModelEntry:
    return ModelEntry(
        name=name,
        repo_id=f"KBlueLeaf/DanTagGen-{name}",
        takes_quality_line=name.startswith("delta"),
        context_length=context_length,
    )


REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        _registry_entry("alpha", 2048),
        _registry_entry("beta", 2048),
        _registry_entry("gamma", 512),
        _registry_entry("delta", 2048),
        _registry_entry("delta-rev2", 2048),
    )
}


def model_choices() -> list[str]:
    """Every registry name a user may pick, short default first per model."""
    names = []
    for entry in REGISTRY.values():
        names.append(entry.name)
        names.extend(f"{entry.name}:{quant}" for quant in GGUF_FILES)
        names.append(f"{entry.name}:hf")
    return names


def variant_name(entry: ModelEntry | None, kind: str, filename: str | None) -> str:
    base = entry.name if entry is not None else "?"
    if kind == HF_KIND:
        return f"{base}:hf"
    for quant, gguf_name in GGUF_FILES.items():
        if gguf_name == filename:
            return f"{base}:{quant}"
    return f"{base}:{filename}"


def choices_text() -> str:
    models = ", ".join(REGISTRY)
    variants = ", ".join(f":{quant}" for quant in GGUF_FILES)
    return (
        f"Known models: {models} (variants {variants} or :hf; default {DEFAULT_QUANT}), "
        f"a repo id such as {REGISTRY[DEFAULT_MODEL].repo_id}, "
        "a .gguf file, or a folder with config.json and .safetensors weights."
    )


# ---------------------------------------------------------------- parsing


def parse_model_name(name: str, model_dir: Path | None = None) -> ModelSpec:
    """Turn a user's model name into a spec; `model_dir` lets bare names match files there."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFound(f"No model was named. {choices_text()}")
    text = name.strip()
    spec = parse_registry_name(text)
    if spec is not None:
        return spec
    path = _find_local_path(text, model_dir)
    if path is not None:
        return local_spec(path)
    raise ModelNotFound(_unknown_name_message(text, model_dir))


def parse_registry_name(text: str) -> ModelSpec | None:
    base, has_variant, variant = text.partition(":")
    key = base.strip().lower().removeprefix("kblueleaf/").removeprefix("dantaggen-")
    entry = REGISTRY.get(key)
    if entry is None:
        return None
    return variant_spec(entry, variant if has_variant else DEFAULT_QUANT)


def variant_spec(entry: ModelEntry, variant: str) -> ModelSpec:
    """The spec of one format of a registry model: a quant such as `Q6_K`, or `hf`."""
    variant = variant.strip()
    if variant.lower() in _HF_VARIANTS:
        return ModelSpec(entry, HF_KIND, None, None, entry.takes_quality_line)
    for quant, filename in GGUF_FILES.items():
        if quant.lower() == variant.lower():
            return ModelSpec(entry, GGUF_KIND, filename, None, entry.takes_quality_line)
    allowed = ", ".join([*GGUF_FILES, "hf"])
    raise ModelNotFound(
        f"Unknown variant {variant!r} for model {entry.name}; use one of {allowed}."
    )


class CheckedModelName(str):
    """A model name that was already parsed and checked: text to show, spec to load.

    It rides in the settings' `model` text field from where a name comes in (an HTTP
    request) to `select_model`, which takes its spec instead of parsing the text again.
    """

    spec: ModelSpec

    def __new__(cls, text: str, spec: ModelSpec) -> CheckedModelName:
        name = super().__new__(cls, text)
        name.spec = spec
        return name

    def __reduce__(self) -> tuple[Any, ...]:
        # Copies (dataclasses.replace/asdict deep-copy) keep the spec.
        return (CheckedModelName, (str(self), self.spec))


def spec_for(model: ModelSpec | str, model_dir: Path | None = None) -> ModelSpec:
    """The spec of `model`: a spec as is, a checked name's own spec, else the name parsed."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, CheckedModelName):
        return model.spec
    return parse_model_name(model, model_dir)


def is_registry_name(name: str) -> bool:
    """True for names the registry knows (`delta-rev2`, `gamma:hf`, a repo id), not paths.

    Callers that take names from the network use this to tell a registry name,
    which may be downloaded, from a local name that must stay in the model folder.
    """
    try:
        return isinstance(name, str) and parse_registry_name(name.strip()) is not None
    except ModelNotFound:  # a known model with an unknown variant is still a registry name
        return True


def _find_local_path(text: str, model_dir: Path | None) -> Path | None:
    # The model folder wins over the working directory: names listed by
    # list_local_models are relative to it.
    if "\x00" in text:
        return None
    # os.path.expanduser leaves an unknown "~user" alone where Path raises.
    given = Path(os.path.expanduser(text))
    candidates = []
    if model_dir is not None and not given.is_absolute():
        candidates.append(Path(model_dir) / given)
    candidates.append(given)
    for candidate in candidates:
        with contextlib.suppress(OSError):
            if candidate.exists():
                return candidate.resolve()
    return None


def local_spec(path: Path) -> ModelSpec:
    kind = _local_kind(path)
    entry = _entry_from_layout(path)
    quality = entry.takes_quality_line if entry is not None else _guess_quality_line(path)
    filename = path.name if kind == GGUF_KIND else None
    return ModelSpec(entry, kind, filename, path, quality)


def _local_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "config.json").is_file():
            return HF_KIND
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" Name one of its .gguf files instead: {', '.join(ggufs)}." if ggufs else ""
        raise ModelError(f"{path} is a folder without config.json, so it is no model folder.{hint}")
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return GGUF_KIND
    if suffix in PICKLE_SUFFIXES:
        raise ModelCorrupt(pickle_message(path))
    if suffix == ".safetensors":
        raise ModelError(
            f"{path} is a weights file; name the folder that holds it and its config.json."
        )
    raise ModelError(f"{path} is neither a .gguf file nor a model folder with config.json.")


_LAYOUT_RE = re.compile(r"(?:^|--)dantaggen-([a-z0-9-]+)$", re.IGNORECASE)


def _entry_from_layout(path: Path) -> ModelEntry | None:
    # Our own layout (.../DanTagGen-delta/file) and the HF cache layout
    # (.../models--KBlueLeaf--DanTagGen-delta/snapshots/<hash>/file) both
    # carry the repo name a few levels up.
    for part in reversed(path.parts[-4:]):
        match = _LAYOUT_RE.search(part)
        if match and match.group(1).lower() in REGISTRY:
            return REGISTRY[match.group(1).lower()]
    return None


_GENERATION_RE = re.compile(r"(?<![a-z])(alpha|beta|gamma|delta)(?![a-z])")


def _guess_quality_line(path: Path) -> bool:
    for text in (path.name, path.parent.name):
        match = _GENERATION_RE.search(text.lower())
        if match:
            return match.group(1) == "delta"
    return True


def _unknown_name_message(text: str, model_dir: Path | None) -> str:
    looks_like_path = any(sep in text for sep in ("/", "\\")) or text.lower().endswith(".gguf")
    if looks_like_path:
        where = f" (also looked in {model_dir})" if model_dir is not None else ""
        return f"No model file or folder at {text!r}{where}. {choices_text()}"
    return f"Unknown model {text!r}. {choices_text()}"


def pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickle-based checkpoint ({path.suffix}); these can run code when loaded, "
        "so they are never loaded. Use the .gguf files or the .safetensors weights instead."
    )

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

# Re-exported (`as`): the rest of the model layer and its callers name them from here too.
from .common import DTG_FAMILY as DTG_FAMILY
from .common import FAMILIES as FAMILIES
from .common import GGUF_KIND as GGUF_KIND
from .common import HF_KIND as HF_KIND
from .common import KINDS as KINDS
from .common import PICKLE_SUFFIXES as PICKLE_SUFFIXES
from .common import TIPO_FAMILY as TIPO_FAMILY
from .common import TOKENIZER_FILES as TOKENIZER_FILES
from .common import DownloadFailed as DownloadFailed
from .common import ModelCorrupt as ModelCorrupt
from .common import ModelError as ModelError
from .common import ModelNotFound as ModelNotFound
from .common import pickle_message as pickle_message

log = logging.getLogger("dtg")

PHASES = ("download", "quantize", "load", "generate")


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a request, for a progress bar or a status line.

    `phase` is one of PHASES; `done` of `total` counts `unit`s ("bytes" while
    downloading, "tensors" while quantizing, "rounds" while generating); `total` is None
    where it is not known.
    """

    phase: str
    message: str  # one line for a person: "Downloading ggml-model-Q8_0.gguf"
    done: int = 0
    total: int | None = None
    unit: str = ""


# Told of each step; the one who passes it shows progress (the hub's own bar is then off).
ProgressFn = Callable[[ProgressEvent], None]

DEFAULT_MODEL = "delta-rev2"

# Variant suffix (matched case-insensitively) -> GGUF file in the repo; Q8_0 is the default
# because it is close to f16 in quality at half the size.
GGUF_FILES: dict[str, str] = {
    "Q8_0": "ggml-model-Q8_0.gguf",
    "Q6_K": "ggml-model-Q6_K.gguf",
    "f16": "ggml-model-f16.gguf",
}
DEFAULT_QUANT = "Q8_0"
# Quantizations made on the user's machine, with llama.cpp's own quantizer, for a model
# published only as F16 (TIPO): the two DTG publishes. Lower ones cost a model of 100-500M
# parameters too much quality for what they save.
LOCAL_QUANTS = ("Q8_0", "Q6_K")
# A locally made file ends so; the model list marks it, and nothing downloads it.
LOCAL_QUANT_SUFFIX = ".local-quant.gguf"
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


@dataclass(frozen=True)
class ModelEntry:
    """One model repo on the hub (DanTagGen or TIPO)."""

    name: str
    repo_id: str
    takes_quality_line: bool
    context_length: int
    family: str = DTG_FAMILY
    licence: str = ""
    # (variant, GGUF file in the repo) pairs; the first is the default variant.
    gguf_variants: tuple[tuple[str, str], ...] = tuple(GGUF_FILES.items())
    # Variants made on this machine from the default (F16) file; see LOCAL_QUANTS.
    local_quants: tuple[str, ...] = ()

    @property
    def repo_name(self) -> str:
        return self.repo_id.rsplit("/", 1)[-1]

    @property
    def published_files(self) -> dict[str, str]:
        """Variant -> GGUF file in the hub repo."""
        return dict(self.gguf_variants)

    @property
    def gguf_files(self) -> dict[str, str]:
        """Every GGUF variant -> its file in the model folder, local quantizations last."""
        source = self.gguf_variants[0][1]
        made = {quant: local_quant_filename(source, quant) for quant in self.local_quants}
        return {**self.published_files, **made}

    def quantized_from(self, filename: str | None) -> str | None:
        """The published file that `filename` is made from on this machine, else None."""
        if filename is None or filename in self.published_files.values():
            return None
        source = self.gguf_variants[0][1]
        made = (local_quant_filename(source, quant) for quant in self.local_quants)
        return source if filename in made else None

    @property
    def default_variant(self) -> str:
        return self.gguf_variants[0][0]


@dataclass(frozen=True)
class ModelSpec:
    """What a user named, resolved against the registry or as a local path."""

    entry: ModelEntry | None
    kind: str
    filename: str | None
    local_path: Path | None
    takes_quality_line: bool
    # Which prompt format the model speaks: from the registry, or read from a local file.
    family: str = DTG_FAMILY

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

    @property
    def family(self) -> str:
        return self.spec.family


@dataclass(frozen=True)
class LocalModel:
    """A model found in the model folder; `name` is what to pass back to `resolve_model`."""

    name: str
    kind: str
    path: Path
    size: int
    family: str = DTG_FAMILY
    # A registry model's licence (kept in its registry folder layout); "" for one's own file.
    licence: str = ""
    # Made on this machine from a published F16 file (a *.local-quant.gguf file).
    local_quant: bool = False

    def described(self) -> dict[str, Any]:
        """What a model list says of it, without its path (HTTP answers name no folder)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "family": self.family,
            "licence": self.licence,
            "size": self.size,
            "local_quant": self.local_quant,
        }


def local_quant_filename(source: str, quant: str) -> str:
    """The file a local `quant` of the published `source` file is written to:
    `TIPO-500M_epoch5-F16.gguf` -> `TIPO-500M_epoch5-Q8_0.local-quant.gguf`."""
    stem = source[: -len(".gguf")] if source.lower().endswith(".gguf") else source
    for precision in ("-f16", "_f16", "-f32", "_f32"):
        if stem.lower().endswith(precision):
            stem = stem[: -len(precision)]
            break
    return f"{stem}-{quant}{LOCAL_QUANT_SUFFIX}"


def is_local_quant_file(path: Path | str) -> bool:
    return Path(path).name.lower().endswith(LOCAL_QUANT_SUFFIX)


# The DanTagGen model card (alpha) declares licence "openrail"; the later generations
# come from the same author and card.
DTG_LICENCE = "openrail"
KOHAKU_LICENCE = "kohaku-license-1.0"
TIPO_CONTEXT = 1024  # TIPO v1 models are LLaMA with a 1024-token context
TIPO_VARIANT = "F16"  # TIPO publishes F16 GGUF files only


def _registry_entry(name: str, context_length: int) -> ModelEntry:
    return ModelEntry(
        name=name,
        repo_id=f"KBlueLeaf/DanTagGen-{name}",
        takes_quality_line=name.startswith("delta"),
        context_length=context_length,
        family=DTG_FAMILY,
        licence=DTG_LICENCE,
    )


def _tipo_entry(repo_name: str, gguf_file: str, licence: str) -> ModelEntry:
    return ModelEntry(
        name=repo_name.lower(),
        repo_id=f"KBlueLeaf/{repo_name}",
        takes_quality_line=True,  # TIPO's header has a `quality:` line
        context_length=TIPO_CONTEXT,
        family=TIPO_FAMILY,
        licence=licence,
        gguf_variants=((TIPO_VARIANT, gguf_file),),
        local_quants=LOCAL_QUANTS,
    )


REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        _registry_entry("alpha", 2048),
        _registry_entry("beta", 2048),
        _registry_entry("gamma", 512),
        _registry_entry("delta", 2048),
        _registry_entry("delta-rev2", 2048),
        _tipo_entry("TIPO-100M", "TIPO-100M-F16.gguf", "apache-2.0"),
        _tipo_entry("TIPO-200M", "TIPO-200M-40Btok-F16.gguf", "apache-2.0"),
        _tipo_entry("TIPO-200M-ft", "TIPO-200M-ft-F16.gguf", KOHAKU_LICENCE),
        _tipo_entry("TIPO-200M-ft2", "TIPO-200M-ft2-F16.gguf", KOHAKU_LICENCE),
        _tipo_entry("TIPO-500M", "TIPO-500M_epoch5-F16.gguf", KOHAKU_LICENCE),
        _tipo_entry("TIPO-500M-ft", "TIPO-500M-ft-F16.gguf", KOHAKU_LICENCE),
    )
}

# Known models this project does not run, with the reason a user is told.
_TIPO_V2_REASON = (
    "a sparse mixture-of-experts model of its own architecture; its transformers form needs "
    "remote code, which is never run, and no public source confirms that llama.cpp loads "
    "its GGUF. Use a TIPO v1 model such as tipo-500m-ft or tipo-200m."
)
UNSUPPORTED: dict[str, tuple[str, str]] = {
    # name: (repo id, why it cannot be used)
    "tipov2-1b-a200m": ("KBlueLeaf/TIPOv2-1B-A200M", _TIPO_V2_REASON),
    "tipo-v2.1-1b-a200m": ("KBlueLeaf/TIPO-v2.1-1B-A200M", _TIPO_V2_REASON),
}


def model_choices() -> list[str]:
    """Every registry name a user may pick, short default first per model."""
    names = []
    for entry in REGISTRY.values():
        names.append(entry.name)
        names.extend(f"{entry.name}:{variant}" for variant in entry.gguf_files)
        names.append(f"{entry.name}:hf")
    return names


def registry_models() -> list[dict[str, Any]]:
    """The registry for a model list: each model's family, licence and variants."""
    listed = [
        {
            "name": entry.name,
            "repo_id": entry.repo_id,
            "family": entry.family,
            "licence": entry.licence,
            "context_length": entry.context_length,
            "variants": [*entry.gguf_files, HF_KIND],
            "default_variant": entry.default_variant,
            # Of the variants, those quantized on this machine from the F16 file at first use.
            "local_quants": list(entry.local_quants),
            "supported": True,
        }
        for entry in REGISTRY.values()
    ]
    for name, (repo_id, reason) in UNSUPPORTED.items():
        listed.append(
            {
                "name": name,
                "repo_id": repo_id,
                "family": TIPO_FAMILY,
                "licence": "",
                "supported": False,
                "reason": f"not supported: {reason}",
            }
        )
    return listed


def variant_name(entry: ModelEntry | None, kind: str, filename: str | None) -> str:
    base = entry.name if entry is not None else "?"
    if kind == HF_KIND:
        return f"{base}:hf"
    files = entry.gguf_files if entry is not None else GGUF_FILES
    for quant, gguf_name in files.items():
        if gguf_name == filename:
            return f"{base}:{quant}"
    return f"{base}:{filename}"


def choices_text() -> str:
    dtg = ", ".join(e.name for e in REGISTRY.values() if e.family == DTG_FAMILY)
    tipo = ", ".join(e.name for e in REGISTRY.values() if e.family == TIPO_FAMILY)
    variants = ", ".join(f":{quant}" for quant in GGUF_FILES)
    local = " or ".join(f":{quant}" for quant in LOCAL_QUANTS)
    return (
        f"Known models: {dtg} (variants {variants} or :hf; default {DEFAULT_QUANT}); "
        f"{tipo} (:{TIPO_VARIANT}, :hf, or {local} made here from the F16 file; "
        f"default {TIPO_VARIANT}), "
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
    if key in UNSUPPORTED:
        repo_id, reason = UNSUPPORTED[key]
        raise ModelNotFound(f"{repo_id} is not supported: it is {reason}")
    entry = REGISTRY.get(key)
    if entry is None:
        return None
    return variant_spec(entry, variant if has_variant else entry.default_variant)


def variant_spec(entry: ModelEntry, variant: str) -> ModelSpec:
    """The spec of one format of a registry model: a quant such as `Q6_K`, or `hf`."""
    variant = variant.strip()
    quality, family = entry.takes_quality_line, entry.family
    if variant.lower() in _HF_VARIANTS:
        return ModelSpec(entry, HF_KIND, None, None, quality, family)
    for quant, filename in entry.gguf_files.items():
        if quant.lower() == variant.lower():
            return ModelSpec(entry, GGUF_KIND, filename, None, quality, family)
    allowed = ", ".join([*entry.gguf_files, "hf"])
    made = ""
    if entry.local_quants:
        only = entry.default_variant
        made = (
            f" {entry.name} is published only as {only} GGUF ({entry.published_files[only]})"
            f" and as transformers weights; {' and '.join(entry.local_quants)} are made on "
            f"this machine from the {only} file with llama.cpp's quantizer, no other."
        )
    raise ModelNotFound(
        f"Unknown variant {variant!r} for model {entry.name}; use one of {allowed}.{made}"
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
    from .family import detect_family  # it reads files; names stays light to import

    kind = _local_kind(path)
    entry = _entry_from_layout(path)
    quality = entry.takes_quality_line if entry is not None else _guess_quality_line(path)
    filename = path.name if kind == GGUF_KIND else None
    family = detect_family(path, kind) or (entry.family if entry is not None else DTG_FAMILY)
    return ModelSpec(entry, kind, filename, path, quality, family)


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


_BY_REPO_NAME: dict[str, ModelEntry] = {e.repo_name.lower(): e for e in REGISTRY.values()}


def entry_for_repo_name(folder_name: str) -> ModelEntry | None:
    """The registry model a folder is named after: `DanTagGen-delta`, `TIPO-200M`, or the
    HF cache's `models--KBlueLeaf--TIPO-200M`."""
    return _BY_REPO_NAME.get(folder_name.lower().rsplit("--", 1)[-1])


def _entry_from_layout(path: Path) -> ModelEntry | None:
    # Our own layout (.../DanTagGen-delta/file) and the HF cache layout
    # (.../models--KBlueLeaf--DanTagGen-delta/snapshots/<hash>/file) both
    # carry the repo name a few levels up.
    for part in reversed(path.parts[-4:]):
        entry = entry_for_repo_name(part)
        if entry is not None:
            return entry
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

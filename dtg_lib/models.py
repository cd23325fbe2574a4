"""Which DTG model to use, where it lives on disk, and fetching it from the hub.

A model is named by a registry name (`delta-rev2`, `delta-rev2:Q6_K`,
`gamma:hf`), a hub repo id, or a local `.gguf` file / transformers folder.
Downloads land in `<model_dir>/<repo-name>/`, mirroring the repo, and every
file is checked before anyone gets to load it: a truncated or wrong file is
refused (and deleted when we downloaded it) instead of crashing a backend.

Importing this module is cheap: huggingface_hub and platformdirs load only
when a download or the default folder is needed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import shutil
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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

# Expected sizes recorded at download time, so a file truncated later (disk
# full, copy interrupted) is caught even when its header still parses.
SIZES_FILE = ".dtg-sizes.json"

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_DEFAULT_ENDPOINT = "https://huggingface.co"
_DOWNLOAD_LOCK = threading.Lock()


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
        return _variant_name(self.entry, self.kind, self.filename)


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


class _RemoteFileMissing(DownloadFailed):
    """The hub answered 404 for one file; optional files tolerate this."""


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


def _variant_name(entry: ModelEntry | None, kind: str, filename: str | None) -> str:
    base = entry.name if entry is not None else "?"
    if kind == HF_KIND:
        return f"{base}:hf"
    for quant, gguf_name in GGUF_FILES.items():
        if gguf_name == filename:
            return f"{base}:{quant}"
    return f"{base}:{filename}"


def _choices_text() -> str:
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
        raise ModelNotFound(f"No model was named. {_choices_text()}")
    text = name.strip()
    spec = _parse_registry_name(text)
    if spec is not None:
        return spec
    path = _find_local_path(text, model_dir)
    if path is not None:
        return _local_spec(path)
    raise ModelNotFound(_unknown_name_message(text, model_dir))


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


def _parse_registry_name(text: str) -> ModelSpec | None:
    base, has_variant, variant = text.partition(":")
    key = base.strip().lower().removeprefix("kblueleaf/").removeprefix("dantaggen-")
    entry = REGISTRY.get(key)
    if entry is None:
        return None
    if not has_variant:
        variant = DEFAULT_QUANT
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


def is_registry_name(name: str) -> bool:
    """True for names the registry knows (`delta-rev2`, `gamma:hf`, a repo id), not paths.

    Callers that take names from the network use this to tell a registry name,
    which may be downloaded, from a local name that must stay in the model folder.
    """
    try:
        return isinstance(name, str) and _parse_registry_name(name.strip()) is not None
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


def _local_spec(path: Path) -> ModelSpec:
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
        raise ModelCorrupt(_pickle_message(path))
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
        return f"No model file or folder at {text!r}{where}. {_choices_text()}"
    return f"Unknown model {text!r}. {_choices_text()}"


# ---------------------------------------------------------------- locations


def default_model_dir() -> Path:
    """DTG_MODEL_DIR, else a per-user cache folder."""
    configured = os.environ.get("DTG_MODEL_DIR", "").strip()
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dtg-upsampler", appauthor=False)) / "models"


def _registry_path(spec: ModelSpec, model_dir: Path) -> Path:
    assert spec.entry is not None
    folder = Path(model_dir) / spec.entry.repo_name
    return folder / spec.filename if spec.kind == GGUF_KIND and spec.filename else folder


def safe_model_path(name: str, model_dir: Path) -> Path:
    """Map a name from the API/UI to a path that cannot leave `model_dir`.

    Registry names map to where their download lives (present or not); any
    other name must be an existing file or folder inside `model_dir`. The
    messages name no server path: they go to whoever sent the name.
    """
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise ModelError(f"Invalid model name {_shown(name)}. {_choices_text()}")
    text = name.strip()
    spec = _parse_registry_name(text)
    if spec is not None:
        return _registry_path(spec, model_dir)
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
        raise ModelNotFound(f"No model {_shown(text)} in the model folder. {_choices_text()}")
    return target


def _shown(name: object, limit: int = 80) -> str:
    """A name as it goes into a message: quoted, escaped, and cut when very long."""
    text = ascii(name)
    if len(text) <= limit:
        return text
    length = f"{len(name)} characters" if isinstance(name, str) else "long"
    return f"{text[: limit - 5]}...{text[-1]} ({length})"


# ---------------------------------------------------------------- resolving


def resolve_model(
    name: str,
    model_dir: Path | None = None,
    *,
    allow_download: bool = True,
    progress: ProgressFn | None = None,
) -> ResolvedModel:
    """Find the named model on disk, downloading it when allowed, and validate it."""
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    spec = parse_model_name(name, model_dir=model_dir)
    if spec.local_path is not None:
        validate_model_file(spec.local_path, spec.kind)
        return ResolvedModel(spec, spec.local_path, spec.kind)
    on_disk = _find_on_disk(spec, model_dir)
    if on_disk is not None:
        validate_model_file(on_disk, spec.kind)
        return ResolvedModel(spec, on_disk, spec.kind)
    blocker = _download_blocker(allow_download)
    if blocker is not None:
        raise ModelNotFound(_missing_message(spec, model_dir, blocker))
    path = _download(spec, model_dir, progress)
    return ResolvedModel(spec, path, spec.kind)


def _find_on_disk(spec: ModelSpec, model_dir: Path) -> Path | None:
    target = _registry_path(spec, model_dir)
    if spec.kind == GGUF_KIND and target.is_file():
        return target
    if spec.kind == HF_KIND and _hf_folder_complete(target):
        return target
    return _find_in_hf_cache(spec)


def _hf_folder_complete(folder: Path) -> bool:
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
    return path.parent if _hf_folder_complete(path.parent) else None


def hf_cache_dir() -> str | None:
    """The Hugging Face hub cache folder, when huggingface_hub is loaded."""
    hub_constants = sys.modules.get("huggingface_hub.constants")
    return getattr(hub_constants, "HF_HUB_CACHE", None)


def _env_offline_var() -> str | None:
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE_WORDS:
            return var
    # huggingface_hub reads the variable once at import; if it was set then,
    # the library refuses the network even after the variable is gone.
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if getattr(hub_constants, "HF_HUB_OFFLINE", False) is True:
        return "HF_HUB_OFFLINE"
    return None


def _download_blocker(allow_download: bool) -> tuple[str, str] | None:
    """Why downloading is off and how to turn it on, or None when it is on."""
    var = _env_offline_var()
    if var is not None:
        return f"{var} is set, so nothing is downloaded", f"unset {var}"
    if not allow_download:
        return "downloading is turned off", "allow downloads"
    return None


def _missing_message(spec: ModelSpec, model_dir: Path, blocker: tuple[str, str]) -> str:
    assert spec.entry is not None
    reason, remedy = blocker
    target = _registry_path(spec, model_dir)
    what = spec.filename or "the transformers files (config.json, model.safetensors, tokenizer)"
    places = [str(target)]
    cache = hf_cache_dir()
    if cache:
        places.append(f"the Hugging Face cache {cache}")
    return (
        f"Model {spec.display_name} is not on disk and {reason}. "
        f"Looked in: {'; '.join(places)}. "
        f"Put {what} from {spec.entry.repo_id} at {target}, or {remedy} and try again."
    )


# ---------------------------------------------------------------- downloading


def _endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


def _endpoint_text() -> str:
    return _endpoint() or _DEFAULT_ENDPOINT


def _import_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise DownloadFailed(
            "Downloading models needs huggingface_hub (pip install huggingface_hub); "
            "or download the model yourself and put it in the model folder."
        ) from exc
    return huggingface_hub


def _download_errors() -> tuple[type[BaseException], ...]:
    """Exception types a hub call raises for network, HTTP and protocol trouble.

    huggingface_hub changed HTTP clients (requests -> httpx -> httpx2) and its
    error bases over the years, so the set is built from what is installed.
    """
    errors: list[type[BaseException]] = [OSError, ValueError]
    for module_name in ("httpx2", "httpx"):
        module = sys.modules.get(module_name)
        base = getattr(module, "HTTPError", None)
        if isinstance(base, type) and issubclass(base, BaseException):
            errors.append(base)
    hub_errors = sys.modules.get("huggingface_hub.errors")
    for name in ("HfHubHTTPError", "EntryNotFoundError", "XetDownloadError"):
        cls = getattr(hub_errors, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no details'}"


def _describe_failure(exc: BaseException, repo_id: str, filename: str, dest: Path) -> str:
    where = f"{filename} from {repo_id} at {_endpoint_text()}"
    status = _status_code(exc)
    if status == 404:
        reason = f"The hub has no {where} (HTTP 404). Check the model name and HF_ENDPOINT."
    elif status in (401, 403):
        reason = (
            f"The hub refused {where} (HTTP {status}); the repo may be gated or the token wrong."
        )
    else:
        reason = f"Could not download {where}: {_first_line(exc)}."
    return (
        f"{reason} Check the network and try again, or download the file yourself and put it "
        f"at {dest}. Set HF_HUB_OFFLINE=1 to stop download attempts."
    )


def _download(spec: ModelSpec, model_dir: Path, progress: ProgressFn | None) -> Path:
    assert spec.entry is not None
    hub = _import_hub()
    folder = Path(model_dir) / spec.entry.repo_name
    with _DOWNLOAD_LOCK:
        # Another thread may have fetched it while this one waited.
        done = _find_on_disk(spec, model_dir)
        if done is not None:
            validate_model_file(done, spec.kind)
            return done
        folder.mkdir(parents=True, exist_ok=True)
        if spec.kind == GGUF_KIND:
            assert spec.filename is not None
            return _download_gguf(hub, spec.entry, spec.filename, folder, progress)
        return _download_hf_folder(hub, spec.entry, folder, progress)


def _download_gguf(
    hub: Any, entry: ModelEntry, filename: str, folder: Path, progress: ProgressFn | None
) -> Path:
    path = _fetch_file(hub, entry.repo_id, filename, folder, progress)
    what = f"a broken {filename} for {entry.repo_id}; it was"
    _keep_if_valid(path, GGUF_KIND, folder, [filename], what)
    log.info("Model %s ready at %s", entry.repo_id, path)
    return path


def _download_hf_folder(
    hub: Any, entry: ModelEntry, folder: Path, progress: ProgressFn | None
) -> Path:
    fetched = [
        _fetch_file(hub, entry.repo_id, name, folder, progress).name for name in HF_REQUIRED_FILES
    ]
    for name in HF_OPTIONAL_FILES:
        with contextlib.suppress(_RemoteFileMissing):
            fetched.append(_fetch_file(hub, entry.repo_id, name, folder, progress).name)
    what = f"broken transformers files for {entry.repo_id}; they were"
    _keep_if_valid(folder, HF_KIND, folder, fetched, what)
    log.info("Model %s (transformers) ready at %s", entry.repo_id, folder)
    return folder


def _keep_if_valid(path: Path, kind: str, folder: Path, fetched: list[str], what: str) -> None:
    """Delete what was just fetched into `folder` if the model at `path` is not valid."""
    try:
        validate_model_file(path, kind)
    except ModelCorrupt as exc:
        _discard(folder, fetched)
        raise ModelCorrupt(f"The hub at {_endpoint_text()} sent {what} deleted. {exc}") from exc


def _fetch_file(
    hub: Any, repo_id: str, filename: str, folder: Path, progress: ProgressFn | None
) -> Path:
    """Download one file into `folder`; only a complete file of the announced size survives."""
    dest = folder / filename
    expected = _remote_size(hub, repo_id, filename, dest)
    log.info("Downloading %s from %s (%s) into %s", filename, repo_id, _endpoint_text(), folder)
    try:
        path = Path(_hub_download(hub, repo_id, filename, folder, progress, expected))
    except _download_errors() as exc:
        raise DownloadFailed(_describe_failure(exc, repo_id, filename, dest)) from exc
    actual = path.stat().st_size
    if expected is not None and actual != expected:
        _discard(folder, [filename])
        raise DownloadFailed(
            f"{filename} from {repo_id} arrived with {actual} bytes instead of {expected}; "
            "it was deleted. Try again."
        )
    _record_size(folder, filename, actual)
    return path


def _remote_size(hub: Any, repo_id: str, filename: str, dest: Path) -> int | None:
    """Ask the hub for the file's size (a HEAD request); 404 -> _RemoteFileMissing."""
    endpoint = _endpoint()
    url_kwargs = {"endpoint": endpoint} if endpoint and _accepts(hub.hf_hub_url, "endpoint") else {}
    url = hub.hf_hub_url(repo_id, filename, **url_kwargs)
    try:
        metadata = hub.get_hf_file_metadata(url)
    except _download_errors() as exc:
        message = _describe_failure(exc, repo_id, filename, dest)
        if _status_code(exc) == 404:
            raise _RemoteFileMissing(message) from exc
        raise DownloadFailed(message) from exc
    size = getattr(metadata, "size", None)
    return size if isinstance(size, int) else None


def _accepts(func: Callable[..., Any], parameter: str) -> bool:
    try:
        return parameter in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _hub_download(
    hub: Any,
    repo_id: str,
    filename: str,
    folder: Path,
    progress: ProgressFn | None,
    expected: int | None,
) -> str:
    """Call hf_hub_download with what the installed version supports."""
    download = hub.hf_hub_download
    kwargs: dict[str, Any] = {}
    endpoint = _endpoint()
    if endpoint and _accepts(download, "endpoint"):
        kwargs["endpoint"] = endpoint
    reporting = progress is not None and _accepts(download, "tqdm_class")
    if reporting:
        kwargs["tqdm_class"] = _reporting_tqdm(filename, progress)
    elif progress is not None:
        progress(filename, 0, expected or 0)
    if _accepts(download, "local_dir"):
        kwargs["local_dir"] = str(folder)
        if _accepts(download, "local_dir_use_symlinks") and not _has_local_folder_layout():
            # Before 0.23, local_dir symlinked large files into the cache.
            kwargs["local_dir_use_symlinks"] = False
        path = download(repo_id, filename, **kwargs)
    else:
        path = str(_copy_into(Path(download(repo_id, filename, **kwargs)), folder / filename))
    if progress is not None and not reporting:
        size = Path(path).stat().st_size
        progress(filename, size, size)
    return path


def _has_local_folder_layout() -> bool:
    import importlib.util

    return importlib.util.find_spec("huggingface_hub._local_folder") is not None


def _copy_into(source: Path, dest: Path) -> Path:
    # Copy under a temporary name so a crash never leaves a partial file at dest.
    partial = dest.with_name(dest.name + ".dtg-partial")
    shutil.copyfile(source, partial)
    os.replace(partial, dest)
    return dest


def _reporting_tqdm(filename: str, progress: ProgressFn) -> type:
    """A tqdm class that also reports (filename, done, total) to `progress`."""
    try:
        from huggingface_hub.utils import tqdm as base
    except ImportError:
        from tqdm.auto import tqdm as base

    class ReportingTqdm(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._dtg_done = int(kwargs.get("initial") or 0)
            self._dtg_total = int(kwargs.get("total") or 0)
            progress(filename, self._dtg_done, self._dtg_total)

        def update(self, n: float | None = 1) -> bool | None:
            # A disabled bar does not count, so keep our own tally.
            self._dtg_done = max(0, self._dtg_done + int(n or 0))
            progress(filename, self._dtg_done, self._dtg_total)
            return super().update(n)

    return ReportingTqdm


def _discard(folder: Path, filenames: list[str]) -> None:
    """Delete downloaded files and their bookkeeping so a retry starts clean."""
    for filename in filenames:
        for path in (
            folder / filename,
            folder / ".cache" / "huggingface" / "download" / f"{filename}.metadata",
        ):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("Could not delete %s: %s", path, exc)
        _record_size(folder, filename, None)
    log.warning("Deleted broken download(s) in %s: %s", folder, ", ".join(filenames))


def _read_sizes(folder: Path) -> dict[str, int]:
    try:
        data = json.loads((folder / SIZES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}


def _record_size(folder: Path, filename: str, size: int | None) -> None:
    sizes = _read_sizes(folder)
    if size is None:
        if sizes.pop(filename, None) is None:
            return
    else:
        sizes[filename] = size
    partial = folder / (SIZES_FILE + ".tmp")
    try:
        partial.write_text(json.dumps(sizes, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(partial, folder / SIZES_FILE)
    except OSError as exc:
        log.warning("Could not record download sizes in %s: %s", folder, exc)


# ---------------------------------------------------------------- listing


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
    if folder.parent != root or not folder.name.lower().startswith("dantaggen-"):
        return None
    return REGISTRY.get(folder.name.lower().removeprefix("dantaggen-"))


def _gguf_model(root: Path, path: Path) -> LocalModel:
    entry = _registry_folder_entry(root, path.parent)
    if entry is not None and path.name in GGUF_FILES.values():
        name = _variant_name(entry, GGUF_KIND, path.name)
    else:
        name = path.relative_to(root).as_posix()
    return LocalModel(name, GGUF_KIND, path, _file_size(path))


def _hf_model(root: Path, folder: Path, real_root: Path) -> LocalModel:
    entry = _registry_folder_entry(root, folder)
    name = f"{entry.name}:hf" if entry is not None else folder.relative_to(root).as_posix()
    size = sum(
        _file_size(p) for p in _visible_files(folder, real_root) if p.suffix.lower() != ".gguf"
    )
    return LocalModel(name, HF_KIND, folder, size)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------- validation


def validate_model_file(path: Path, kind: str) -> None:
    """Raise ModelCorrupt unless `path` is a complete GGUF file / transformers folder."""
    path = Path(path)
    if kind not in KINDS:
        raise ModelError(f"Unknown model kind {kind!r}; expected one of {', '.join(KINDS)}.")
    if not path.exists():
        raise ModelNotFound(f"Model path {path} does not exist.")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelCorrupt(_pickle_message(path))
    if kind == GGUF_KIND:
        _validate_gguf(path)
    else:
        _validate_hf_folder(path)


def _pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickle-based checkpoint ({path.suffix}); these can run code when loaded, "
        "so they are never loaded. Use the .gguf files or the .safetensors weights instead."
    )


def _check_recorded_size(path: Path) -> None:
    expected = _read_sizes(path.parent).get(path.name)
    actual = path.stat().st_size
    if expected is not None and actual != expected:
        raise ModelCorrupt(
            f"{path} has {actual} bytes but was downloaded with {expected}; it is truncated or "
            "was changed. Delete it and run again to download it afresh."
        )


# GGUF metadata value types: fixed-size scalars by type id; 8 string, 9 array.
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING = 8
_GGUF_ARRAY = 9
_GGUF_UINT32 = 4
_GGUF_VERSIONS = (2, 3)
_GGUF_DEFAULT_ALIGNMENT = 32
_GGUF_MAX_DIMS = 8
_GGUF_MAX_NESTING = 4
_GGUF_MAX_COUNT = 10_000_000

# ggml tensor type id -> (elements per block, bytes per block), from ggml's
# type traits; types missing here only skip the exact end-of-data check.
_GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
}


class _GGUFReader:
    """Bounds-checked little-endian reads; running past the end means truncation."""

    def __init__(self, handle: BinaryIO, path: Path, size: int) -> None:
        self.handle = handle
        self.path = path
        self.size = size
        self.wide = True  # GGUF v2+ uses 64-bit counts and lengths

    def truncated(self, needed: int) -> ModelCorrupt:
        return ModelCorrupt(
            f"{self.path} is truncated: it has {self.size} bytes but its header needs at least "
            f"{needed}. The download was probably interrupted; delete it and download it again."
        )

    def take(self, count: int) -> bytes:
        start = self.handle.tell()
        if start + count > self.size:
            raise self.truncated(start + count)
        return self.handle.read(count)

    def skip(self, count: int) -> None:
        end = self.handle.tell() + count
        if end > self.size:
            raise self.truncated(end)
        self.handle.seek(count, os.SEEK_CUR)

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def count(self) -> int:
        return self.u64() if self.wide else self.u32()

    def string(self) -> bytes:
        return self.take(self.count())

    def skip_string(self) -> None:
        self.skip(self.count())

    def tell(self) -> int:
        return self.handle.tell()


def _validate_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelCorrupt(f"{path} is a folder, not a .gguf file.")
    size = path.stat().st_size
    with path.open("rb") as handle:
        reader = _GGUFReader(handle, path, size)
        magic = handle.read(4)
        if magic != b"GGUF":
            raise ModelCorrupt(_not_gguf_message(path, magic))
        _read_gguf_version(reader)
        needed = _gguf_data_end(reader)
    if size < needed:
        raise ModelCorrupt(
            f"{path} is truncated: it has {size} bytes but its tensors end at byte {needed}. "
            "The download was probably interrupted; delete it and download it again."
        )
    _check_recorded_size(path)


def _not_gguf_message(path: Path, magic: bytes) -> str:
    if not magic:
        return f"{path} is empty; delete it and download the model again."
    hint = ""
    if magic.startswith(b"PK") or magic[:1] == b"\x80":
        hint = " It looks like a pickle/PyTorch checkpoint, which is never loaded."
    elif magic.lstrip()[:1] in (b"<", b"{"):
        hint = " It looks like text (an HTML error page or JSON), not model weights."
    return f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF').{hint}"


def _read_gguf_version(reader: _GGUFReader) -> int:
    version = reader.u32()
    if version not in _GGUF_VERSIONS:
        raise ModelCorrupt(
            f"{reader.path} is GGUF version {version}; only versions "
            f"{', '.join(map(str, _GGUF_VERSIONS))} are supported. "
            "Re-convert it with a current llama.cpp."
        )
    return version


def _gguf_data_end(reader: _GGUFReader) -> int:
    """Parse metadata and tensor infos; return the byte where tensor data must end."""
    tensor_count = reader.u64()
    kv_count = reader.u64()
    if tensor_count > _GGUF_MAX_COUNT or kv_count > _GGUF_MAX_COUNT:
        raise ModelCorrupt(
            f"{reader.path} has an implausible GGUF header ({tensor_count} tensors, "
            f"{kv_count} metadata entries); the file is damaged."
        )
    alignment = _GGUF_DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = reader.string()
        value_type = reader.u32()
        if key == b"general.alignment" and value_type == _GGUF_UINT32:
            alignment = reader.u32()
        else:
            _skip_gguf_value(reader, value_type)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ModelCorrupt(f"{reader.path} declares an invalid alignment {alignment}.")
    extents = [_gguf_tensor_extent(reader) for _ in range(tensor_count)]
    data_start = -(-reader.tell() // alignment) * alignment
    if not extents:
        return reader.tell()
    return data_start + max(extents)


def _skip_gguf_value(reader: _GGUFReader, value_type: int, depth: int = 0) -> None:
    if value_type in _GGUF_SCALAR_SIZES:
        reader.skip(_GGUF_SCALAR_SIZES[value_type])
    elif value_type == _GGUF_STRING:
        reader.skip_string()
    elif value_type == _GGUF_ARRAY:
        _skip_gguf_array(reader, depth)
    else:
        raise ModelCorrupt(
            f"{reader.path} has an unknown GGUF value type {value_type}; it is damaged."
        )


def _skip_gguf_array(reader: _GGUFReader, depth: int) -> None:
    if depth >= _GGUF_MAX_NESTING:
        raise ModelCorrupt(f"{reader.path} nests GGUF arrays {depth} deep; it is damaged.")
    item_type = reader.u32()
    count = reader.count()
    item_size = _GGUF_SCALAR_SIZES.get(item_type)
    if item_size is not None:
        reader.skip(count * item_size)
        return
    # Strings and arrays take at least 8 bytes each, so a count larger than
    # what is left of the file is a lie; checking first avoids a long loop.
    if count * 8 > reader.size - reader.tell():
        raise reader.truncated(reader.tell() + count * 8)
    for _ in range(count):
        _skip_gguf_value(reader, item_type, depth + 1)


def _gguf_tensor_extent(reader: _GGUFReader) -> int:
    """Read one tensor info; return where its data ends, relative to the data start."""
    reader.skip_string()
    n_dims = reader.u32()
    if n_dims > _GGUF_MAX_DIMS:
        raise ModelCorrupt(f"{reader.path} has a tensor with {n_dims} dimensions; it is damaged.")
    elements = 1
    for _ in range(n_dims):
        elements *= reader.u64()
    tensor_type = reader.u32()
    offset = reader.u64()
    block = _GGML_BLOCKS.get(tensor_type)
    if block is None:
        return offset
    per_block, block_bytes = block
    return offset + elements // per_block * block_bytes


def _validate_hf_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelCorrupt(
            f"{folder} is a file; a transformers model is a folder with config.json."
        )
    _check_hf_config(folder / "config.json")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ModelCorrupt(
                f"{folder} only has pickle weights ({', '.join(pickles)}); these can run code "
                "when loaded, so they are never loaded. Download the .safetensors weights."
            )
        raise ModelCorrupt(f"{folder} has no .safetensors weights.")
    for weight in weights:
        _validate_safetensors(weight)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelCorrupt(
            f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
            "copy it from the model repo."
        )


def _check_hf_config(config_path: Path) -> None:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelCorrupt(f"{config_path.parent} has no config.json.") from exc
    except (OSError, ValueError) as exc:
        raise ModelCorrupt(
            f"{config_path} is not valid JSON ({exc}); the file is damaged."
        ) from exc
    if not isinstance(config, dict):
        raise ModelCorrupt(f"{config_path} does not hold a JSON object; the file is damaged.")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type.lower() != "llama":
        raise ModelCorrupt(
            f"{config_path} says model_type {model_type!r}; DanTagGen models are 'llama'. "
            "This folder holds some other model."
        )


_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


def _validate_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelCorrupt(f"{path} is too short to be a safetensors file ({size} bytes).")
        header_len = int.from_bytes(prefix, "little")
        if not 2 <= header_len <= _SAFETENSORS_MAX_HEADER:
            raise ModelCorrupt(f"{path} is not a safetensors file (header length {header_len}).")
        if 8 + header_len > size:
            raise ModelCorrupt(
                f"{path} is truncated: its header alone needs {8 + header_len} bytes, "
                f"the file has {size}. Delete it and download it again."
            )
        raw_header = handle.read(header_len)
    data_end = _safetensors_data_end(path, raw_header)
    if 8 + header_len + data_end > size:
        raise ModelCorrupt(
            f"{path} is truncated: its header promises {data_end} bytes of tensor data but only "
            f"{size - 8 - header_len} follow. Delete it and download it again."
        )
    _check_recorded_size(path)


def _safetensors_data_end(path: Path, raw_header: bytes) -> int:
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelCorrupt(f"{path} has a damaged safetensors header ({exc}).") from exc
    if not isinstance(header, dict):
        raise ModelCorrupt(f"{path} has a damaged safetensors header (not a JSON object).")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise ModelCorrupt(f"{path} has a damaged safetensors header (tensor {name!r}).")
        end = max(end, offsets[1])
    return end

"""Fetching registry models from the hub: offline rules, progress, and keeping only
complete, valid files."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .locations import find_on_disk
from .names import (
    GGUF_KIND,
    HF_KIND,
    HF_OPTIONAL_FILES,
    HF_REQUIRED_FILES,
    DownloadFailed,
    ModelCorrupt,
    ModelEntry,
    ModelSpec,
    ProgressEvent,
    ProgressFn,
)
from .validation import record_size, validate_model_file

log = logging.getLogger("dtg")


class _RemoteFileMissing(DownloadFailed):
    """The hub answered 404 for one file; optional files tolerate this."""


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_DEFAULT_ENDPOINT = "https://huggingface.co"
_DOWNLOAD_LOCK = threading.Lock()


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


# A hub that could not be reached is not asked again for a while: without network, each
# attempt waits through huggingface_hub's own retries (about 23 s seen in a webui), and a
# webui asks at every job and every Preview.
HUB_RETRY_S = 300.0


class _UnreachableHub:
    """When the hub last failed to answer at all (not an HTTP error), shared by all threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed_at: float | None = None

    def failed(self) -> None:
        with self._lock:
            self._failed_at = time.monotonic()

    def answered(self) -> None:
        with self._lock:
            self._failed_at = None

    def seconds_left(self) -> float:
        with self._lock:
            if self._failed_at is None:
                return 0.0
            return max(0.0, self._failed_at + HUB_RETRY_S - time.monotonic())


UNREACHABLE_HUB = _UnreachableHub()


def download_blocker(allow_download: bool) -> tuple[str, str] | None:
    """Why downloading is off and how to turn it on, or None when it is on."""
    var = _env_offline_var()
    if var is not None:
        return f"{var} is set, so nothing is downloaded", f"unset {var}"
    if not allow_download:
        return "downloading is turned off", "allow downloads"
    left = UNREACHABLE_HUB.seconds_left()
    if left > 0:
        return (
            f"the model hub ({_endpoint_text()}) could not be reached a moment ago, so it is "
            f"not asked again for {left:.0f} s",
            "check the network",
        )
    return None


def _note_hub_failure(exc: BaseException) -> None:
    """Remember a hub that did not answer its first request of a download; an HTTP answer
    (404, 401) means it is there, and a download cut short later is tried again at once."""
    if _status_code(exc) is None:
        UNREACHABLE_HUB.failed()


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


def download_model(spec: ModelSpec, model_dir: Path, progress: ProgressFn | None) -> Path:
    assert spec.entry is not None
    hub = _import_hub()
    folder = Path(model_dir) / spec.entry.repo_name
    with _DOWNLOAD_LOCK:
        # Another thread may have fetched it while this one waited.
        done = find_on_disk(spec, model_dir)
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
    record_size(folder, filename, actual)
    return path


def _remote_size(hub: Any, repo_id: str, filename: str, dest: Path) -> int | None:
    """Ask the hub for the file's size (a HEAD request); 404 -> _RemoteFileMissing."""
    endpoint = _endpoint()
    url_kwargs = {"endpoint": endpoint} if endpoint and _accepts(hub.hf_hub_url, "endpoint") else {}
    url = hub.hf_hub_url(repo_id, filename, **url_kwargs)
    try:
        metadata = hub.get_hf_file_metadata(url)
    except _download_errors() as exc:
        _note_hub_failure(exc)
        message = _describe_failure(exc, repo_id, filename, dest)
        if _status_code(exc) == 404:
            raise _RemoteFileMissing(message) from exc
        raise DownloadFailed(message) from exc
    UNREACHABLE_HUB.answered()
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
        progress(_download_event(filename, 0, expected))
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
        progress(_download_event(filename, size, size))
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


def _download_event(filename: str, done: int, total: int | None) -> ProgressEvent:
    return ProgressEvent("download", f"Downloading {filename}", done, total or None, "bytes")


def _reporting_tqdm(filename: str, progress: ProgressFn) -> type:
    """A tqdm class that reports each chunk to `progress` instead of drawing a bar.

    The caller of `progress` shows it (a bar of its own, a status line), so the
    hub's bar stays off: a terminal would otherwise get two.
    """
    try:
        from huggingface_hub.utils import tqdm as base
    except ImportError:
        from tqdm.auto import tqdm as base

    class ReportingTqdm(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})
            self._dtg_done = int(kwargs.get("initial") or 0)
            self._dtg_total = int(kwargs.get("total") or 0)
            progress(_download_event(filename, self._dtg_done, self._dtg_total))

        def update(self, n: float | None = 1) -> bool | None:
            # A disabled bar does not count, so keep our own tally.
            self._dtg_done = max(0, self._dtg_done + int(n or 0))
            progress(_download_event(filename, self._dtg_done, self._dtg_total))
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
        record_size(folder, filename, None)
    log.warning("Deleted broken download(s) in %s: %s", folder, ", ".join(filenames))

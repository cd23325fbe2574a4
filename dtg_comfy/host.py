"""Everything that touches ComfyUI itself: the models/dtg folder, the progress bar, the
interrupt button and the unload request. Its modules are imported here, when needed, so
the pack imports without ComfyUI (the tests stand in for it with tests/comfy_stub)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dtg_lib.models import ProgressEvent, ProgressFn

log = logging.getLogger("dtg")

FOLDER_NAME = "dtg"  # ComfyUI/models/dtg, and the key in extra_model_paths.yaml
_register_lock = threading.Lock()


def register_model_folder() -> None:
    """Adds ComfyUI/models/dtg to folder_paths, after what extra_model_paths.yaml added
    (ComfyUI reads it before custom nodes load), so those folders are listed too."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    with _register_lock:
        known = folder_paths.folder_names_and_paths.get(FOLDER_NAME)
        if known is not None and default in known[0]:
            return
        folder_paths.add_model_folder_path(FOLDER_NAME, default)


def model_folders() -> list[Path]:
    """The dtg folders, the one new downloads go to first."""
    import folder_paths

    register_model_folder()
    return [Path(folder) for folder in folder_paths.get_folder_paths(FOLDER_NAME)]


def _unload_hook_installed(function: Any) -> bool:
    return getattr(function, "_dtg_unloads", False)


def hook_unload(unload: Callable[[], None]) -> bool:
    """Frees the DTG model whenever ComfyUI unloads its models.

    ComfyUI has no public unload hook for custom nodes: its "free memory"/"unload models"
    request (POST /free, the Manager's button) calls
    `comfy.model_management.unload_all_models()` by attribute, so that function is wrapped,
    once. False when there is no such function (another host)."""
    try:
        import comfy.model_management as model_management
    except ImportError:
        return False
    with _register_lock:
        original = getattr(model_management, "unload_all_models", None)
        if original is None:
            return False
        if _unload_hook_installed(original):
            return True

        def unload_all_models(*args: Any, **kwargs: Any) -> Any:
            try:
                unload()
            except Exception as exc:  # ComfyUI's own unload must still run
                log.warning("DTG: unloading the model failed: %s: %s", type(exc).__name__, exc)
            return original(*args, **kwargs)

        unload_all_models._dtg_unloads = True  # type: ignore[attr-defined]
        model_management.unload_all_models = unload_all_models
        return True


class Interrupted(Exception):
    """Holds ComfyUI's own interrupt exception while the engine stops."""


@contextlib.contextmanager
def progress_bar(cancel: threading.Event) -> Iterator[tuple[ProgressFn, list[BaseException]]]:
    """A progress callback that drives ComfyUI's ProgressBar, and the interrupt ComfyUI
    raised through it (if any). The interrupt sets `cancel`, so the engine stops at its
    next check; the caller raises the saved exception for ComfyUI to see."""
    import comfy.model_management as model_management
    import comfy.utils

    bars: dict[str, Any] = {}
    interrupts: list[BaseException] = []
    interrupt_type = getattr(model_management, "InterruptProcessingException", Interrupted)

    def show(event: ProgressEvent) -> None:
        try:
            model_management.throw_exception_if_processing_interrupted()
            if event.total:
                bar = bars.get(event.phase)
                if bar is None:
                    bar = bars[event.phase] = comfy.utils.ProgressBar(event.total)
                bar.update_absolute(event.done, event.total)  # its hook may raise it too
        except interrupt_type as exc:
            interrupts.append(exc)
            cancel.set()

    yield show, interrupts

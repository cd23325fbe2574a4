"""What the node pack's first import installs: install.py's own decisions, reused.

ComfyUI Manager installs requirements.txt, which holds only what always installs. The
rest (tipo-kgen without its torch requirement, llama-cpp-python from a prebuilt wheel)
goes through install.py's `install_for_comfyui` (the same one ComfyUI Manager's run of
install.py takes): never a source build at start-up, a failed attempt not retried for a
week, and every failure one printed line. Without llama.cpp the torch backend is used.

DTG_COMFY_INSTALL=0 turns this off (tests do); DTG_LLAMA_CPP=skip|cpu as for the webui.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

log = logging.getLogger("dtg")

INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "install.py"
# A name of its own: another node pack's install.py must not be found in its place.
MODULE_NAME = "dtg_install_for_comfyui"


def load_install_script(path: Path = INSTALL_SCRIPT) -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def install_missing(environ: Mapping[str, str] = os.environ) -> None:
    """Installs what is missing; never raises, since ComfyUI must start regardless."""
    try:
        load_install_script().install_for_comfyui(environ)
    except Exception as exc:  # an installer problem must not stop ComfyUI from starting
        log.warning("DTG: installing llama-cpp-python skipped: %s: %s", type(exc).__name__, exc)

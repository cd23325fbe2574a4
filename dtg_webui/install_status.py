"""What install.py could not install, told to the user in the panel.

install.py writes `dtg_install_status.json` beside itself only when something is
missing (it cannot import dtg_lib, so the file is the channel). A status is stale
once the package imports after all, say after a manual install.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

log = logging.getLogger("dtg")

STATUS_FILE = Path(__file__).resolve().parent.parent / "dtg_install_status.json"


def install_notice(path: Path | None = None) -> str | None:
    """A sentence for the panel, or None when there is nothing to say."""
    path = path or STATUS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("DTG: unreadable install status %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("llama_cpp", True) or _llama_present():
        return None
    message = data.get("message")
    return message if isinstance(message, str) and message else None


def _llama_present() -> bool:
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False

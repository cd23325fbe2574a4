"""The repository root as a ComfyUI custom node pack (clone it into ComfyUI/custom_nodes).

ComfyUI imports this file and reads NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS.
The A1111/Forge webui never imports it (it loads scripts/*.py, install.py, preload.py
and javascript/), and pytest does not either (tests/ is no package). WEB_DIRECTORY is
ComfyUI's front-end folder (dtg_comfy/web: the nodes show their text), not javascript/,
which is the webui's.

The packages beside this file (dtg_lib, dtg_comfy) are imported by their own names, as
scripts/dtg.py does for the webui, so the root goes on sys.path.
"""

import sys
from pathlib import Path

_PACK_ROOT = str(Path(__file__).resolve().parent)
if _PACK_ROOT not in sys.path:
    sys.path.append(_PACK_ROOT)

from dtg_comfy import first_start  # noqa: E402

first_start.install_missing()

from dtg_comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./dtg_comfy/web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

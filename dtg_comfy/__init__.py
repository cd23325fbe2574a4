"""DanTagGen as a ComfyUI node pack: a thin layer over dtg_lib, as scripts/dtg.py is for
the webui.

ComfyUI imports the repository root's `__init__.py`, which hands on the mappings below.
Importing this package loads no model, no torch and nothing of ComfyUI: `folder_paths`
and `comfy.*` are imported when a node runs or lists its inputs.
"""

from __future__ import annotations

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

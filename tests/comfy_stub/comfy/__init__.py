"""Stand-in for ComfyUI's `comfy` package: only model_management and utils."""

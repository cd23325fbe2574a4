"""Glue between the Stable Diffusion WebUI and dtg_lib.

Kept beside dtg_lib so `scripts/dtg.py` stays a thin adapter. Modules here may
import the webui's `modules` package, but only inside functions: the package
must import (and be tested) without a webui.
"""

"""DTG upsampler engine: expands Stable Diffusion prompts with DanTagGen.

Importing this package is cheap: models, tag indexes and heavy libraries load
on first use.
"""

import logging

__version__ = "0.1.0"

logging.getLogger("dtg").addHandler(logging.NullHandler())

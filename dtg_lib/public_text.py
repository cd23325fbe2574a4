"""Text a user may see from a server: no folder of this machine, always valid UTF-8, not huge.

The HTTP answers and the webui's infotext (saved inside every image) both pass their
messages through `public_text`, so neither names the model folder, the Hugging Face cache
or the home folder.
"""

from __future__ import annotations

from pathlib import Path

from . import models

# A message to a client is cut here; the server log keeps the whole of it.
MAX_DETAIL_CHARS = 2000
# What messages say instead of these folders' paths.
FOLDER_NAME = "<model folder>"
CACHE_NAME = "<Hugging Face cache>"


def public_text(text: str, model_dir: Path | None = None) -> str:
    """`text` as a client may see it: no server folder, always valid UTF-8, not huge.

    The model folder becomes "<model folder>", the Hugging Face cache
    "<Hugging Face cache>", the home folder "~".
    """
    for folder, name in _private_folders(model_dir):
        text = text.replace(folder, name)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 3] + "..."
    return text


def _private_folders(model_dir: Path | None) -> list[tuple[str, str]]:
    """(path, public name), longest path first so a folder inside another goes first."""
    pairs = []
    if model_dir is not None:
        pairs += [(str(model_dir), FOLDER_NAME), (str(_resolved(model_dir)), FOLDER_NAME)]
    cache = models.hf_cache_dir()
    if cache:
        pairs += [
            (cache, CACHE_NAME),
            (str(_resolved(Path(cache))), CACHE_NAME),
        ]
    home = Path.home()
    pairs += [(str(home), "~"), (str(_resolved(home)), "~")]
    # A folder of one or two characters ("/") would mangle every sentence.
    return sorted({p for p in pairs if len(p[0]) > 2}, key=lambda p: -len(p[0]))


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path

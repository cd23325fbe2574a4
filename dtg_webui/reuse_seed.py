"""The panel's reuse button: the expansion seed of the image shown in the gallery.

Like the webui's own reuse button for the image seed, it reads the last job's
generation info (a hidden textbox, JSON) and the selected gallery index, which
javascript hands over (`selected_gallery_index()`, a webui global).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .args import RANDOM_SEED
from .infotext import read_params
from .rewrite import derive_seed

log = logging.getLogger("dtg")

TABS = ("txt2img", "img2img")
JS_SELECTED = "(info, index, current) => [info, selected_gallery_index(), current]"


def info_field(elem_id: Any) -> bool:
    return isinstance(elem_id, str) and elem_id in {f"generation_info_{t}" for t in TABS}


def reused_seed(generation_info: Any, gallery_index: Any, current: Any) -> Any:
    """The DTG seed the selected image was expanded with; `current` when there is none."""
    infotext, image_seed = _selected(generation_info, gallery_index)
    if infotext is None:
        return current
    from modules.infotext_utils import parse_generation_parameters

    args = read_params(parse_generation_parameters(infotext))
    if args is None:  # the image was made without DTG
        return current
    try:
        return derive_seed(int(image_seed), args.seed())
    except (TypeError, ValueError):
        return current if args.seed() == RANDOM_SEED else args.seed()


def _selected(generation_info: Any, gallery_index: Any) -> tuple[str | None, Any]:
    """The selected image's infotext and seed.

    `infotexts` follows the gallery (a grid's infotext first, when there is a grid);
    `all_seeds` has the images only, so its index is shifted by the grid.
    """
    try:
        info = json.loads(generation_info or "")
        index = int(gallery_index)
        first = int(info.get("index_of_first_image", 0))
        infotexts, seeds = info["infotexts"], info["all_seeds"]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None, None
    if not infotexts:
        return None, None
    index = min(max(index, 0), len(infotexts) - 1)
    image = index - first
    return infotexts[index], seeds[image] if 0 <= image < len(seeds) else None


class ReuseWiring:
    """Connects one tab's reuse button to that tab's generation info, once both exist."""

    def __init__(self) -> None:
        self.info: Any = None
        self.controls: tuple[Any, Any] | None = None
        self.wired = False

    def saw_component(self, component: Any, elem_id: Any) -> None:
        if info_field(elem_id) and self.info is None:
            self.info = component
            self._wire()

    def set_controls(self, button: Any, seed_box: Any) -> None:
        self.controls = (button, seed_box)
        self._wire()

    def _wire(self) -> None:
        if self.wired or self.controls is None or self.info is None:
            return
        import gradio as gr

        button, seed_box = self.controls
        index = gr.Number(value=-1, visible=False)
        button.click(
            fn=reused_seed,
            inputs=[self.info, index, seed_box],
            outputs=[seed_box],
            **{_js_keyword(button.click): JS_SELECTED},
        )
        self.wired = True


def _js_keyword(listener: Any) -> str:
    # gradio 3 (A1111) names it `_js`, gradio 4 (Forge) `js`.
    import inspect

    try:
        names = inspect.signature(listener).parameters
    except (TypeError, ValueError):
        return "_js"
    return "js" if "js" in names and "_js" not in names else "_js"

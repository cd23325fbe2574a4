"""TIPO in the panel: which family the chosen model speaks, and what follows from it.

The natural-language box (with NL length, caption and meta) is shown only while a TIPO
model is chosen; the family comes from the engine (the registry, or a local file's own
vocabulary), never from the user. Hidden, the box keeps its text, so choosing a TIPO model
again brings it back, but no job reads it: a DTG model reads tags only, and a notice about
a text the user cannot see would only puzzle. The same rule holds for an API caller who
names a DTG model with an `nl_prompt`.
"""

from __future__ import annotations

import logging
from typing import Any

from dtg_lib.errors import DtgError
from dtg_lib.models import TIPO_FAMILY, parse_model_name
from dtg_lib.settings import UpsampleSettings

from . import host
from .args import ScriptArgs

log = logging.getLogger("dtg")


def model_family(name: Any) -> str | None:
    """ "dtg" or "tipo" for a registry name or a model in the model folder; None when the
    name names nothing (the job reports that, through the engine)."""
    if not isinstance(name, str) or not name.strip():
        return None
    try:
        return parse_model_name(name, host.config().model_dir).family
    except DtgError as exc:
        log.debug("DTG: cannot tell the family of model %r: %s", name, exc)
        return None


def is_tipo(name: Any) -> bool:
    return model_family(name) == TIPO_FAMILY


def nl_prompt_for(args: ScriptArgs, settings: UpsampleSettings) -> str:
    """The natural-language prompt a job hands the engine: the panel's, for a TIPO model."""
    return args.nl_text() if is_tipo(settings.model) else ""


def controls_update(name: Any) -> dict[str, Any]:
    """The TIPO controls' update when the model dropdown changes: shown for a TIPO model
    (gradio 3.41 and 4.x both take `gr.update(visible=...)` for a layout block)."""
    import gradio as gr

    return gr.update(visible=is_tipo(name))


def follow_model(model: Any, controls: Any) -> None:
    """Show `controls` for TIPO models only: now, when the webui's saved UI defaults
    (ui-config.json) put another model in the dropdown, and whenever it changes (by a
    click or by a pasted infotext: gradio's change event fires for both)."""
    controls.visible = is_tipo(getattr(model, "value", None))
    # The webui calls a dropdown's `init_field` with the value it restores from
    # ui-config.json, after ui() returned and before the page is sent.
    model.init_field = lambda value: setattr(controls, "visible", is_tipo(value))
    model.change(fn=controls_update, inputs=[model], outputs=[controls])

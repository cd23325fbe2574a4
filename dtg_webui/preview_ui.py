"""The panel's Preview: expand the prompt box's text now, with the panel's values and seed.

The prompt, seed and size boxes belong to the webui, not to this script. They are
caught as they are built (the script's `after_component` hook, by elem_id) and the
Preview button is wired as soon as both it and the prompt box exist, whichever the
host builds first. "Use in prompt" is done in javascript/dtg.js, which reads the
final prompt out of the preview (`.dtg-preview-final`); the same click clears the
styles box here when the previewed expansion already holds the styles.
"""

from __future__ import annotations

import logging
from html import escape
from typing import Any

from dtg_lib.settings import SettingsError

from . import engine, host, tipo_panel
from .args import ARG_NAMES, ScriptArgs
from .infotext import EMPTY_HTML as EMPTY_HTML
from .rewrite import derive_seed, fix_seed

log = logging.getLogger("dtg")

TABS = ("txt2img", "img2img")
# The host's boxes the preview reads, in the handler's order, with the value used when
# one of them was never found (a reordered or foreign UI).
HOST_INPUTS: tuple[tuple[str, Any], ...] = (
    ("prompt", ""),
    ("seed", -1),
    ("width", 1024),
    ("height", 1024),
    ("styles", ()),
)


def host_field(elem_id: Any) -> str | None:
    """ "txt2img_seed" -> "seed" for the boxes the preview reads; None for any other id."""
    if not isinstance(elem_id, str):
        return None
    tab, _, name = elem_id.partition("_")
    if tab in TABS and name in dict(HOST_INPUTS):
        return name
    return None


def run_preview(
    prompt: Any, image_seed: Any, width: Any, height: Any, styles: Any, *panel: Any
) -> str:
    """HTML for the preview box. Never raises into gradio."""
    return preview(prompt, image_seed, width, height, styles, *panel)[0]


def preview(
    prompt: Any, image_seed: Any, width: Any, height: Any, styles: Any, *panel: Any
) -> tuple[str, bool]:
    """The click handler: the preview's HTML, and whether the expansion has the styles in it.

    In "after" mode a job expands the prompt with its styles applied, so the preview
    does too; "Use in prompt" then clears the styles box (`styles_after_copy`), as the
    host's own "apply styles" button does, or the next job would add them twice.
    """
    args = ScriptArgs.from_args(panel)
    config = host.config()
    try:
        settings = args.settings(backend=config.backend, device=config.device)
    except SettingsError as exc:
        return _message(f"Invalid settings: {exc}"), False
    prompt = prompt if isinstance(prompt, str) else ""
    nl_prompt = tipo_panel.nl_prompt_for(args, settings)
    if not prompt.strip() and not nl_prompt.strip():
        # A TIPO model turns a sentence alone into tags; anything else needs tags.
        return _message(
            "The prompt box is empty: write a prompt (with a TIPO model, a sentence in the "
            "natural-language box will do), then preview it."
        ), False
    seed = fix_seed(image_seed)
    try:
        styled = host.apply_styles(prompt, styles) if settings.timing != "before" else prompt
        upsampler = engine.get_engine(config.model_dir, host.embedding_names())
        # Only when there is one, as a job passes it (engine.run_job).
        options = {"nl_prompts": [nl_prompt]} if nl_prompt else {}
        (result,) = upsampler.upsample_many(
            [styled],
            settings,
            [derive_seed(seed, args.seed())],
            _size(width),
            _size(height),
            **options,
        )
    except Exception as exc:  # a preview failure is shown in the box, never a gradio error
        log.error("DTG: preview failed: %s: %s", type(exc).__name__, exc)
        return _message(f"Preview failed: {type(exc).__name__}: {exc}"), False
    return preview_html(result, seed), styled != prompt


def styles_after_copy(styles_in_preview: Any, styles: Any) -> Any:
    """The styles box after "Use in prompt": empty when the copied text holds the styles."""
    return [] if styles_in_preview is True else styles


def nl_after_copy(model: Any, nl_text: Any) -> Any:
    """The natural-language box after "Use in prompt": the copied final prompt already holds
    a TIPO model's sentences, so the box is emptied (the next job would read them twice);
    a hidden box (a DTG model) keeps its text."""
    return "" if tipo_panel.is_tipo(model) else nl_text


def preview_html(result: Any, image_seed: int) -> str:
    """The coloured preview, a TIPO model's sentences apart from the tags, the final prompt
    as text (what "Use in prompt" copies) and the seed."""
    final = escape(result.final_prompt)
    return (
        f'<div class="dtg-preview-wrap">{_rendered(result)}{sentences_html(result)}'
        f'<pre class="dtg-preview-final" style="white-space:pre-wrap;margin:6px 0">{final}</pre>'
        f'<div class="dtg-preview-seed" style="font-size:.8em;opacity:.8">'
        f"image seed {image_seed} (generate with it to get this expansion)</div></div>"
    )


def sentences_html(result: Any) -> str:
    """A TIPO model's sentences apart from the tag chips; empty for a DTG model's result."""
    from dtg_lib.preview import render_sentences_html

    return render_sentences_html(result)


def _rendered(result: Any) -> str:
    try:
        from dtg_lib.preview import render_preview_html
    except ImportError:  # an older engine without the renderer: the text alone still helps
        return (
            f'<div class="dtg-summary">{result.rounds} rounds, {result.timings.total_s:.2f} s</div>'
        )
    return render_preview_html(result)


def _message(text: str) -> str:
    return f'<div class="dtg-preview-message">{escape(text)}</div>'


def _size(value: Any) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        return 1024
    return size if size > 0 else 1024


class PreviewWiring:
    """Connects one tab's Preview button to that tab's prompt box, once both exist."""

    def __init__(self) -> None:
        self.host_components: dict[str, Any] = {}
        self.controls: tuple[Any, Any, list[Any]] | None = None
        self.wired = False

    def saw_component(self, component: Any, elem_id: Any) -> None:
        name = host_field(elem_id)
        if name is not None and name not in self.host_components:
            self.host_components[name] = component
            self._wire()

    def set_controls(
        self, button: Any, output: Any, panel: list[Any], copy: Any, styles_in_preview: Any
    ) -> None:
        """`copy` is "Use in prompt"; `styles_in_preview` a gr.State the preview sets."""
        self.controls = (button, output, list(panel), copy, styles_in_preview)
        self._wire()

    def _wire(self) -> None:
        if self.wired or self.controls is None or "prompt" not in self.host_components:
            return
        import gradio as gr

        button, output, panel, copy, styles_in_preview = self.controls
        inputs = [
            self.host_components.get(name) or gr.State(default) for name, default in HOST_INPUTS
        ]
        button.click(fn=preview, inputs=[*inputs, *panel], outputs=[output, styles_in_preview])
        styles = self.host_components.get("styles")
        if styles is not None:
            # Beside javascript/dtg.js, which copies the text on the same click.
            copy.click(fn=styles_after_copy, inputs=[styles_in_preview, styles], outputs=[styles])
        if len(panel) == len(ARG_NAMES):
            nl_box, model_box = panel[ARG_NAMES.index("nl_prompt")], panel[ARG_NAMES.index("model")]
            copy.click(fn=nl_after_copy, inputs=[model_box, nl_box], outputs=[nl_box])
        self.wired = True

"""DanTagGen for the Stable Diffusion WebUI (AUTOMATIC1111 1.10 and Forge).

A thin adapter: the panel's values become one `ScriptArgs`, and everything else
lives in `dtg_webui` (host glue) and `dtg_lib` (the engine).

API: `"alwayson_scripts": {"DanTagGen": {"args": [{"enabled": true, "target": "short"}]}}`,
one object read by the names below, or the values positionally in this order
(`dtg_webui.args.ARG_NAMES`). What is left out takes the panel's defaults
(`dtg_webui.args.ScriptArgs`, which takes them from `dtg_lib.settings.UpsampleSettings`);
an unknown name, like a wrong value, leaves the prompt as written and is named under
"DTG error" in the infotext.

   0 enabled        bool, off unless given
   1 target         very_short | short | long | very_long
   2 ban_tags       comma-separated: exact tag, * wildcard, /regex/
   3 dtg_seed       -1: each image's own seed; N: that seed for every image
   4 timing         "after": per image; "before": once per job
   5 model          registry name (e.g. "delta-rev2") or a file in the model folder
   6 temperature    7 top_p    8 top_k    9 min_p
  10 format         default | one line | append | custom
  11 custom_format  the template, used when format is "custom"
  12 backend        "": the Settings page's; auto | llama.cpp | torch
  13 device         "": the Settings page's (or --dtg-device); cpu | cuda | mps
  14 budget         CLIP token budget: none | fill | chunks:N (N 1..32)
  15 nl_prompt      TIPO models: the natural-language prompt (ignored for DTG models)
  16 nl_length      TIPO models: the sentences' length, very_short .. very_long
  17 caption        TIPO models: also write a caption of the tags
  18 gen_meta       TIPO models: also write meta lines (artist, characters, ...)

Also: a Preview of the prompt box (dtg_webui.preview_ui, javascript/dtg.js), X/Y/Z plot
axes (dtg_webui.xyz), HTTP routes under /dtg/v1 with --api (dtg_webui.routes).
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

# A1111 puts the extension folder on sys.path only while this file loads, so the packages
# beside it are imported now, while they can be found.
_EXTENSION_ROOT = str(Path(__file__).resolve().parent.parent)
if _EXTENSION_ROOT not in sys.path:
    sys.path.append(_EXTENSION_ROOT)

from modules import script_callbacks, scripts  # noqa: E402

from dtg_lib.budget import BUDGET_CHOICES  # noqa: E402
from dtg_lib.settings import BACKENDS, TARGETS, TIMINGS  # noqa: E402
from dtg_webui import (  # noqa: E402
    host,
    infotext,
    install_status,
    preview_ui,
    reuse_seed,
    rewrite,
    routes,
    tipo_panel,
    xyz,
)
from dtg_webui.args import (  # noqa: E402
    FORMAT_CHOICES,
    FROM_SETTINGS,
    RANDOM_SEED,
    ScriptArgs,
    slider_range,
)

TITLE = "DanTagGen"
DEFAULTS = ScriptArgs()
TIMING_HELP = (
    "after: each image expanded with its own seed, after wildcards and styles (reproducible); "
    "before: the prompt expanded once per job from the job seed"
)
BAN_HELP = "comma-separated: exact tag, * wildcard, or /regex/"
NL_HELP = (
    "TIPO models: a sentence or two; the tags stay in the prompt box. "
    "Weights such as (word:1.2) are kept in the final prompt."
)


class DanTagGenScript(scripts.Script):
    def __init__(self) -> None:
        super().__init__()
        self.preview = preview_ui.PreviewWiring()
        self.reuse = reuse_seed.ReuseWiring()

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> object:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        import gradio as gr
        from modules.ui_components import InputAccordion, ToolButton

        tab = "img2img" if is_img2img else "txt2img"

        def ids(name: str) -> dict:
            # Unique per tab for the DOM; the class names the control on both tabs.
            return {"elem_id": f"dtg-{tab}-{name}", "elem_classes": [f"dtg-{name}"]}

        with InputAccordion(DEFAULTS.enabled, label=TITLE, **ids("enabled")) as enabled:
            notice = install_status.install_notice()
            if notice:
                gr.HTML(f'<div class="dtg-install-notice">{escape(notice)}</div>')
            with gr.Row():
                target = gr.Radio(
                    list(TARGETS), value=DEFAULTS.target, label="Target length", **ids("target")
                )
                timing = gr.Radio(
                    list(TIMINGS),
                    value=DEFAULTS.timing,
                    label="When",
                    info=TIMING_HELP,
                    **ids("timing"),
                )
            ban_tags = gr.Textbox(
                value=DEFAULTS.ban_tags, label="Ban tags", placeholder=BAN_HELP, **ids("ban-tags")
            )
            with gr.Row():
                dtg_seed = gr.Number(
                    value=DEFAULTS.dtg_seed,
                    precision=0,
                    label="DTG seed (-1: each image's own; ♻️: the selected image's)",
                    **ids("seed"),
                )
                follow_seed = ToolButton("\U0001f3b2", **ids("seed-follow"))
                reuse = ToolButton("\u267b\ufe0f", **ids("seed-reuse"))
            with gr.Row():
                model = gr.Dropdown(
                    host.model_choices(),
                    value=host.opt("dtg_default_model"),
                    label="Model",
                    allow_custom_value=True,
                    **ids("model"),
                )
                backend = gr.Dropdown(
                    [FROM_SETTINGS, *BACKENDS],
                    value=FROM_SETTINGS,
                    label="Backend",
                    **ids("backend"),
                )
                device = gr.Dropdown(
                    [FROM_SETTINGS, *host.DEVICES],
                    value=FROM_SETTINGS,
                    label="Device",
                    allow_custom_value=True,
                    **ids("device"),
                )
                budget = gr.Dropdown(
                    list(BUDGET_CHOICES),
                    value=DEFAULTS.budget,
                    label="Token budget",
                    allow_custom_value=True,
                    **ids("budget"),
                )
            # Shown only while a TIPO model is chosen (tipo_panel.follow_model).
            with gr.Group(**ids("tipo")) as tipo_controls:
                nl_prompt = gr.Textbox(
                    value=DEFAULTS.nl_prompt,
                    lines=2,
                    label="Natural-language prompt",
                    placeholder=NL_HELP,
                    **ids("nl-prompt"),
                )
                with gr.Row():
                    nl_length = gr.Radio(
                        list(TARGETS),
                        value=DEFAULTS.nl_length,
                        label="NL length",
                        **ids("nl-length"),
                    )
                    caption = gr.Checkbox(
                        value=DEFAULTS.caption,
                        label="Also write a caption of the tags",
                        **ids("caption"),
                    )
                    gen_meta = gr.Checkbox(
                        value=DEFAULTS.gen_meta,
                        label="Also write meta (artist, characters, ...)",
                        **ids("gen-meta"),
                    )
            with gr.Row():
                temperature = gr.Slider(
                    *slider_range("temperature", 0.05),
                    value=DEFAULTS.temperature,
                    step=0.05,
                    label="Temperature",
                    **ids("temperature"),
                )
                top_p = gr.Slider(
                    *slider_range("top_p", 0.01),
                    value=DEFAULTS.top_p,
                    step=0.01,
                    label="Top p",
                    **ids("top-p"),
                )
                top_k = gr.Slider(
                    *slider_range("top_k", 1),
                    value=DEFAULTS.top_k,
                    step=1,
                    label="Top k",
                    **ids("top-k"),
                )
                min_p = gr.Slider(
                    *slider_range("min_p", 0.01),
                    value=DEFAULTS.min_p,
                    step=0.01,
                    label="Min p",
                    **ids("min-p"),
                )
            with gr.Row():
                output_format = gr.Radio(
                    list(FORMAT_CHOICES),
                    value=DEFAULTS.format,
                    label="Output format",
                    **ids("format"),
                )
                custom_format = gr.Textbox(
                    value=DEFAULTS.custom_format,
                    lines=3,
                    label="Custom template",
                    placeholder="<|special|>, <|general|>, <|quality|>",
                    **ids("custom-format"),
                )
            with gr.Row():
                preview = gr.Button("Preview", **ids("preview-run"))
                copy = gr.Button("Use in prompt", **ids("copy"))
            preview_box = gr.HTML(preview_ui.EMPTY_HTML, **ids("preview"))
            styles_in_preview = gr.State(False)
        follow_seed.click(fn=lambda: RANDOM_SEED, inputs=[], outputs=[dtg_seed])
        tipo_panel.follow_model(model, tipo_controls)

        components = [
            enabled,
            target,
            ban_tags,
            dtg_seed,
            timing,
            model,
            temperature,
            top_p,
            top_k,
            min_p,
            output_format,
            custom_format,
            backend,
            device,
            budget,
            nl_prompt,
            nl_length,
            caption,
            gen_meta,
        ]
        self.infotext_fields = infotext.paste_fields(components, preview_box)
        self.paste_field_names = list(infotext.PASTE_KEYS.values())
        self.preview.set_controls(preview, preview_box, components, copy, styles_in_preview)
        self.reuse.set_controls(reuse, dtg_seed)
        return components

    def after_component(self, component, **kwargs) -> None:
        # The prompt, seed and size boxes are the host's; the preview reads them.
        elem_id = kwargs.get("elem_id") or getattr(component, "elem_id", None)
        self.preview.saw_component(component, elem_id)
        self.reuse.saw_component(component, elem_id)

    def before_process(self, p, *args) -> None:
        rewrite.begin_job(p)
        rewrite.expand_main_prompt(p, _job_args(p, args))

    def process(self, p, *args) -> None:
        rewrite.expand_images(p, _job_args(p, args))

    def process_batch(self, p, *args, **kwargs) -> None:
        rewrite.fix_hires_infotext(p)

    def postprocess(self, p, processed, *args) -> None:
        rewrite.finish_job(_job_args(p, args))


def _job_args(p, args: tuple) -> ScriptArgs:
    # X/Y/Z plot cells carry their own DTG values on `p`.
    return xyz.apply_overrides(p, ScriptArgs.from_args(args))


# At module level, not per instance: the class is built once per tab, and the webui
# clears these callbacks before it reloads scripts.
script_callbacks.on_ui_settings(host.register_settings)
script_callbacks.on_infotext_pasted(infotext.on_infotext_pasted)
script_callbacks.on_app_started(routes.mount)
script_callbacks.on_before_ui(xyz.register_axes)

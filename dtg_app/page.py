"""The page: a prompt form, an Expand button, and the coloured preview of the result.

With a TIPO model chosen, the form also shows a natural-language box, the length of the
sentences to write, "also write a caption" and "also write meta"; the result shows the
sentences the model wrote (`extended`, `generated`) apart from the tag chips. The model
list names each model's family and licence.

The handler builds the same JSON body a client of `POST /dtg/v1/upsample`
sends and runs it through the same checks (`http_api.parse_request`) and the
same engine call (`http_api.run_request`), so the page and the API cannot
disagree about what is valid or what comes back.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr

from dtg_lib import http_api, models
from dtg_lib.assemble import FORMAT_PRESETS
from dtg_lib.preview import (
    render_preview_grid,
    render_preview_html,
    render_sentences_html,
    token_count_text,
)
from dtg_lib.settings import BACKENDS, TARGETS, SamplingSettings, UpsampleSettings
from dtg_lib.upsampler import Upsampler

from .model_list import ModelOption, model_option, model_options

log = logging.getLogger("dtg")

MAX_SEEDS = 8
CSS = """
#dtg-app { max-width: 1280px; margin: 0 auto; }
#dtg-preview { min-height: 140px; }
#dtg-status { min-height: 1.6em; opacity: .85; }
.dtg-error-box { border: 1px solid #e74c3c; background: #e74c3c1f; color: inherit;
  border-radius: 10px; padding: 10px 12px; }
"""
_EMPTY = (
    '<div class="dtg-empty" style="opacity:.6;padding:12px">'
    "Expanded tags appear here, coloured by category.</div>"
)
_SAMPLING = SamplingSettings()
_SETTINGS = UpsampleSettings()


# What the Expand handler fills: preview HTML, sentences HTML, final prompt, status line.
PageAnswer = tuple[str, str, str, str]


@dataclass(frozen=True)
class PageConfig:
    model_dir: Path
    default_model: str  # the server's model: trusted, so a request naming it skips path checks
    allow_download: bool = True


# ---------------------------------------------------------------- the handler


def form_to_body(values: dict[str, Any], default_model: str) -> dict[str, Any]:
    """The HTTP API's request body for what the form holds."""
    settings = {
        "target": values["target"],
        "backend": values["backend"],
        "ban_tags": values["ban_tags"] or "",
        "format": values["format"] or "default",
        "nl_length": values["nl_length"] or _SETTINGS.nl_length,
        "caption": bool(values["caption"]),
        "gen_meta": bool(values["gen_meta"]),
        **{name: _sampling_value(name, values[name]) for name in _SAMPLING_FIELDS},
    }
    if values["model"] and values["model"] != default_model:
        settings["model"] = values["model"]
    seed, count = _whole(values["seed"], -1), max(1, min(_whole(values["count"], 1), MAX_SEEDS))
    if seed == http_api.RANDOM_SEED:
        seed = random.randrange(0xFFFFFFFF)  # drawn here so "several seeds" are neighbours
    body = {
        "prompt": values["prompt"] or "",
        "seeds": [seed + i for i in range(count)],
        "width": _whole(values["width"], 1024),
        "height": _whole(values["height"], 1024),
        "settings": settings,
    }
    if (values["nl_prompt"] or "").strip():  # as typed; a DTG model ignores it and says so
        body["nl_prompt"] = values["nl_prompt"]
    return body


def _sampling_value(name: str, value: Any) -> Any:
    # Sliders may hand back 100.0 for top_k; the settings want a whole number there.
    return _whole(value, getattr(_SAMPLING, name)) if name in _WHOLE_FIELDS else value


def _whole(value: Any, default: int) -> Any:
    # gr.Number gives floats; a non-number is passed on for the API's checks to name.
    if value is None:
        return default
    return int(value) if isinstance(value, float) and value.is_integer() else value


def make_handler(
    get_upsampler: Callable[[], Upsampler], config: PageConfig, components: dict[str, Any]
) -> Callable:
    """The Expand handler; gradio passes a set of inputs as one {component: value} dict."""

    # gradio finds the progress bar by this default value; it is created once, on purpose.
    def expand(values: dict, progress: gr.Progress = gr.Progress()) -> PageAnswer:  # noqa: B008
        form = {name: values[component] for name, component in components.items()}
        if not shows_nl_box(form.get("model"), config):
            form["nl_prompt"] = ""  # hidden for a DTG model: what stays in it is not sent
        return run_form(form_to_body(form, config.default_model), get_upsampler, config, progress)

    return expand


def shows_nl_box(model: Any, config: PageConfig) -> bool:
    """Whether the page shows the natural-language box for `model` (a TIPO model)."""
    chosen = str(model or config.default_model)
    trusted = chosen == config.default_model
    option = model_option(chosen, config.model_dir, trusted=trusted)
    return option.family == models.TIPO_FAMILY


def run_form(
    body: dict[str, Any],
    get_upsampler: Callable[[], Upsampler],
    config: PageConfig,
    progress: Callable[..., Any],
) -> PageAnswer:
    """(preview HTML, sentences HTML, final prompt, status line); errors become a message,
    never an exception."""
    if not str(body["prompt"]).strip() and not str(body.get("nl_prompt", "")).strip():
        # A TIPO model turns a sentence alone into tags, so either one is enough.
        return _error("Type a prompt first (tags, or a sentence for a TIPO model).")
    defaults = {"model": config.default_model}
    try:
        request = http_api.parse_request(body, config.model_dir, defaults)
    except http_api.RequestError as exc:
        return _error(str(exc))
    status, payload = http_api.run_request(
        get_upsampler, request, progress=gradio_progress(progress)
    )
    if status != 200:
        return _error(payload["detail"])
    return _success(payload["results"])


def gradio_progress(progress: Callable[..., Any]) -> models.ProgressFn:
    """The engine's progress (download, load, rounds) as calls of a `gr.Progress`."""

    def show(event: models.ProgressEvent) -> None:
        # (done, None) is a step count without a known end; gradio shows it so.
        progress((event.done, event.total), desc=event.message, unit=event.unit or "steps")

    return show


def _success(results: list[dict[str, Any]]) -> PageAnswer:
    html = render_preview_html(results[0]) if len(results) == 1 else render_preview_grid(results)
    total = sum(r["timings"]["total_s"] for r in results)
    notices = sorted({n for r in results for n in r["notices"]})
    for notice in notices:
        gr.Info(notice)
    count = f"{len(results)} expansions" if len(results) > 1 else "Expanded"
    status = f"{count} in {total:.2f} s with {results[0]['model']} ({results[0]['backend']})"
    if counted := token_count_text(results[0]):
        status += f"; {counted}"
    return html, render_sentence_list(results), results[0]["final_prompt"], status


def render_sentence_list(results: list[dict[str, Any]]) -> str:
    """The sentences a TIPO model wrote, apart from the tag chips: per result, the text
    extended and the caption generated (labelled with the seed when there are several);
    empty when no result has any."""
    blocks = [
        render_sentences_html(result, f", seed {result['seed']}" if len(results) > 1 else "")
        for result in results
    ]
    shown = "".join(blocks)
    return f'<div class="dtg-sentence-list" id="dtg-sentence-list">{shown}</div>' if shown else ""


def _error(message: str) -> PageAnswer:
    gr.Warning(message)
    box = (
        '<div class="dtg-error-box" id="dtg-error">'
        f"<b>Could not expand:</b> {escape(message)}</div>"
    )
    return box, "", "", ""  # the box says it; a status line too would repeat it


# ---------------------------------------------------------------- the layout

_WHOLE_FIELDS = ("top_k", "max_new_tokens")
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "max_new_tokens",
)


def _copy_button_kwargs(component: type) -> dict[str, Any]:
    # gradio 6 takes buttons=["copy"]; gradio 4 and 5 take show_copy_button=True.
    parameters = inspect.signature(component.__init__).parameters
    if "buttons" in parameters:
        return {"buttons": ["copy"]}
    return {"show_copy_button": True} if "show_copy_button" in parameters else {}


def _blocks_style() -> dict[str, Any]:
    # gradio 4 and 5 take css in gr.Blocks; gradio 6 takes it when mounting (see server.py).
    return {"css": CSS} if "css" in inspect.signature(gr.Blocks.__init__).parameters else {}


def _prompt_column(config: PageConfig, form: dict[str, Any]) -> None:
    form["prompt"] = gr.Textbox(
        label="Prompt (tags, in webui syntax)",
        lines=4,
        placeholder="1girl, solo, dragon girl, (smile:1.2), <lora:style:0.6>",
        elem_id="dtg-prompt",
    )
    options = model_options(config.model_dir, config.default_model)
    with gr.Group(visible=options[0].speaks_tipo, elem_id="dtg-tipo") as tipo_controls:
        _tipo_controls(form)
    with gr.Row():
        form["target"] = gr.Dropdown(
            list(TARGETS), value="long", label="Target length", elem_id="dtg-target"
        )
        form["seed"] = gr.Number(
            value=-1, precision=0, label="Seed (-1: random)", elem_id="dtg-seed"
        )
        form["count"] = gr.Slider(
            1, MAX_SEEDS, value=1, step=1, label="Several seeds", elem_id="dtg-count"
        )
    with gr.Row():
        form["width"] = gr.Number(value=1024, precision=0, label="Width", elem_id="dtg-width")
        form["height"] = gr.Number(value=1024, precision=0, label="Height", elem_id="dtg-height")
    form["ban_tags"] = gr.Textbox(
        label="Ban list", placeholder="hat, *ribbon, /.*(cap|hood)/", elem_id="dtg-ban"
    )
    _model_row(config, form, options)
    _sampling_accordion(form)
    show = tipo_controls_shown(config, {o.name: o for o in options})
    form["model"].change(show, inputs=form["model"], outputs=tipo_controls)


def _tipo_controls(form: dict[str, Any]) -> None:
    """The natural-language box and its settings, shown while a TIPO model is chosen."""
    form["nl_prompt"] = gr.Textbox(
        label="Natural-language prompt (TIPO)",
        lines=3,
        placeholder="a girl reading in a (library:1.2); leave the tags empty to get tags from it",
        elem_id="dtg-nl",
    )
    with gr.Row():
        form["nl_length"] = gr.Dropdown(
            list(TARGETS),
            value=_SETTINGS.nl_length,
            label="Sentence length",
            elem_id="dtg-nl-length",
        )
        form["caption"] = gr.Checkbox(
            value=_SETTINGS.caption, label="Also write a caption", elem_id="dtg-caption"
        )
        form["gen_meta"] = gr.Checkbox(
            value=_SETTINGS.gen_meta,
            label="Also write meta (artist, characters, ...)",
            elem_id="dtg-gen-meta",
        )


def tipo_controls_shown(config: PageConfig, known: dict[str, ModelOption]) -> Callable[[str], Any]:
    """The model list's change handler: the TIPO controls show for a TIPO model only."""

    def show(name: str) -> Any:
        option = known.get(name) or model_option(
            name or "", config.model_dir, trusted=name == config.default_model
        )
        return gr.update(visible=option.speaks_tipo)

    return show


def _model_row(config: PageConfig, form: dict[str, Any], options: list[ModelOption]) -> None:
    with gr.Row():
        form["model"] = gr.Dropdown(
            [option.choice for option in options],  # "name (family, licence)"; the value: name
            value=config.default_model,
            allow_custom_value=True,
            label="Model",
            elem_id="dtg-model",
        )
        form["backend"] = gr.Dropdown(
            list(BACKENDS), value="auto", label="Backend", elem_id="dtg-backend"
        )
        form["format"] = gr.Dropdown(
            list(FORMAT_PRESETS),
            value="default",
            allow_custom_value=True,  # or a template with <|general|> and friends
            label="Format",
            elem_id="dtg-format",
        )


def _sampling_accordion(form: dict[str, Any]) -> None:
    with gr.Accordion("Sampling", open=False, elem_id="dtg-sampling"):
        with gr.Row():
            _slider(form, "temperature", 0.05, 3.0, 0.05)
            _slider(form, "top_p", 0.05, 1.0, 0.01)
            _slider(form, "min_p", 0.0, 0.99, 0.01)
        with gr.Row():
            _slider(form, "top_k", 0, 500, 1)
            _slider(form, "repetition_penalty", 0.5, 2.0, 0.01)
            _slider(form, "max_new_tokens", 16, 1024, 1)


def _slider(form: dict[str, Any], name: str, low: float, high: float, step: float) -> None:
    form[name] = gr.Slider(
        low,
        high,
        value=getattr(_SAMPLING, name),
        step=step,
        label=name.replace("_", " ").capitalize(),
        elem_id=f"dtg-{name.replace('_', '-')}",
    )


def _result_column() -> tuple[Any, Any, Any, Any, Any]:
    status = gr.Markdown("", elem_id="dtg-status")
    preview = gr.HTML(_EMPTY, elem_id="dtg-preview")
    sentences = gr.HTML("", elem_id="dtg-sentences")  # a TIPO model's, apart from the tags
    final = gr.Textbox(
        label="Final prompt",
        lines=5,
        interactive=False,
        elem_id="dtg-final",
        **_copy_button_kwargs(gr.Textbox),
    )
    copy = gr.Button("Copy final prompt", elem_id="dtg-copy", size="sm")
    return status, preview, sentences, final, copy


def build_page(get_upsampler: Callable[[], Upsampler], config: PageConfig) -> gr.Blocks:
    form: dict[str, Any] = {}  # name in the request body -> its component
    with gr.Blocks(title="DTG upsampler", elem_id="dtg-app", **_blocks_style()) as page:
        gr.Markdown(
            "## DTG upsampler\nExpand a Stable Diffusion prompt with DanTagGen or TIPO: "
            "your tags keep their place, new tags are dashed; a TIPO model also reads "
            "and writes sentences.",
            elem_id="dtg-title",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                _prompt_column(config, form)
                expand = gr.Button("Expand", variant="primary", elem_id="dtg-expand")
            with gr.Column(scale=6):
                status, preview, sentences, final, copy = _result_column()
        inputs = set(form.values())
        outputs = [preview, sentences, final, status]
        handler = make_handler(get_upsampler, config, form)
        expand.click(handler, inputs=inputs, outputs=outputs, concurrency_limit=4)
        form["prompt"].submit(handler, inputs=inputs, outputs=outputs)
        form["nl_prompt"].submit(handler, inputs=inputs, outputs=outputs)
        copy.click(None, inputs=[final], outputs=None, js=_COPY_JS)
    return page


# Runs in the browser: the clipboard API needs a secure context (https or localhost).
_COPY_JS = "(text) => { if (text) { navigator.clipboard.writeText(text); } return []; }"

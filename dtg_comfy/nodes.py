"""The nodes: DTG Upsample, TIPO and DTG Format.

Inputs are typed, with tooltips; every input becomes an `UpsampleSettings` (inputs.py),
with the engine's defaults and limits. A missing or corrupt model, or a missing backend,
passes the prompt through unchanged with the reason in the node's text and the console,
unless "strict" is on. The text shows on the node through web/dtg_text.js.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dtg_lib.budget import BUDGET_CHOICES
from dtg_lib.models import DTG_FAMILY, TIPO_FAMILY
from dtg_lib.settings import (
    DEVICES,
    SAMPLING_LIMITS,
    TARGETS,
    SamplingSettings,
    UpsampleSettings,
)

from . import engine, host, inputs

CATEGORY = "DanTagGen"
SEED_MAX = 0xFFFFFFFFFFFFFFFF  # ComfyUI's own seed range; the engine folds it onto its own
TIPO_DEFAULT_MODEL = "tipo-200m-ft2"
SENTENCE_JOIN = "\n\n"


def _model_input(family: str, default: str) -> tuple[Any, dict[str, Any]]:
    names = engine.model_names(family, host.model_folders())
    return names, {
        "default": default if default in names else names[0],
        "tooltip": "a registry name (downloaded into models/dtg) or a model in models/dtg",
    }


def _number(kind: str, name: str, default: float, step: float, tooltip: str) -> tuple:
    """A sampling input within the engine's limits (one step inside an open end)."""
    low, high = SAMPLING_LIMITS[name].ui_range(step)
    if kind == "INT":
        low, high = int(low), int(high)
    options = {"default": default, "min": low, "max": high, "step": step, "tooltip": tooltip}
    return kind, options


def _common_inputs(family: str, default_model: str) -> dict[str, Any]:
    sampling = SamplingSettings()
    return {
        "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "the tags to expand"}),
        "width": (
            "INT",
            {
                "default": 1024,
                "min": 64,
                "max": 16384,
                "step": 8,
                "tooltip": "image width the model writes for (a LATENT overrides)",
            },
        ),
        "height": (
            "INT",
            {
                "default": 1024,
                "min": 64,
                "max": 16384,
                "step": 8,
                "tooltip": "image height the model writes for (a LATENT overrides)",
            },
        ),
        "target": (
            list(TARGETS),
            {
                "default": UpsampleSettings.target,
                "tooltip": "how many tags the prompt should end up with",
            },
        ),
        "ban_tags": (
            "STRING",
            {"default": "", "tooltip": "tags never added: comma-separated, * wildcard, or /regex/"},
        ),
        "seed": (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": SEED_MAX,
                "control_after_generate": True,
                "tooltip": "the same seed and inputs give the same expansion",
            },
        ),
        "model": _model_input(family, default_model),
        "backend": (
            ["auto", "llama.cpp", "torch"],
            {
                "default": UpsampleSettings.backend,
                "tooltip": "auto: llama.cpp for GGUF files when installed, else torch",
            },
        ),
        "device": (
            list(DEVICES),
            {
                "default": UpsampleSettings.device,
                "tooltip": "cpu keeps the model out of the image model's VRAM",
            },
        ),
        "temperature": _number(
            "FLOAT", "temperature", sampling.temperature, 0.05, "higher: more varied tags"
        ),
        "top_p": _number("FLOAT", "top_p", sampling.top_p, 0.01, "nucleus sampling"),
        "top_k": _number("INT", "top_k", sampling.top_k, 1, "0: no limit"),
        "min_p": _number(
            "FLOAT", "min_p", sampling.min_p, 0.01, "drop tokens below this share of the likeliest"
        ),
        "format": (
            list(inputs.FORMAT_CHOICES),
            {
                "default": UpsampleSettings.format,
                "tooltip": "how the final prompt is laid out; custom: the template below",
            },
        ),
        "custom_format": (
            "STRING",
            {
                "multiline": True,
                "default": "",
                "tooltip": "a template with <|general|>, <|characters|>, ... (format: custom)",
            },
        ),
        "strict": (
            "BOOLEAN",
            {
                "default": False,
                "tooltip": "on: a missing model or backend stops the workflow; off: prompt kept",
            },
        ),
    }


# Optional, after the required inputs: a saved workflow's widget values keep their places.
_OPTIONAL = {
    "latent": ("LATENT", {"tooltip": "takes width and height from this latent"}),
    "budget": (
        list(BUDGET_CHOICES),
        {
            "default": UpsampleSettings.budget,
            "tooltip": "CLIP token budget: fill the 75-token chunk the prompt reaches, "
            "or at most N chunks; new tags are trimmed, never yours",
        },
    ),
}


class _Expand:
    """What DTG Upsample and TIPO share: list inputs expanded together, guarded runs."""

    CATEGORY = CATEGORY
    FUNCTION = "expand"
    INPUT_IS_LIST = True
    # An output node, so a workflow of text nodes alone runs and shows the prompt.
    OUTPUT_NODE = True

    @classmethod
    def IS_CHANGED(cls, **given: Any) -> str:
        names = dict.fromkeys(inputs.as_list(given.get("model")))
        return inputs.inputs_key(given, ";".join(_model_file_stamp(name) for name in names))

    def expand(self, **given: Any) -> dict[str, Any]:
        host.hook_unload(engine.unload)
        request = inputs.request_from(given)
        outcome = engine.run_job(request)
        outputs = self.outputs(request, outcome)
        if not request.items:
            told = "DTG: no prompt came in (an empty list): nothing to expand"
            return {"ui": {"text": [told]}, "result": outputs}
        # The node's text (web/dtg_text.js shows it on the node): why prompts were kept,
        # or the engine's notices, then what it wrote; the history holds it too.
        return {"ui": {"text": [*outcome.told, *outputs[0]]}, "result": outputs}

    def outputs(self, request: inputs.JobRequest, outcome: engine.JobOutcome) -> tuple:
        raise NotImplementedError


class DTGUpsample(_Expand):
    DESCRIPTION = "Expands a tag prompt with DanTagGen (on the CPU by default)."
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("final prompt", "new tags", "original prompt")
    OUTPUT_IS_LIST = (True, True, True)
    OUTPUT_TOOLTIPS = (
        "the prompt with the new tags, laid out by format",
        "only the tags the model added, comma-separated",
        "the prompt as given",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": _common_inputs(DTG_FAMILY, UpsampleSettings.model),
            "optional": dict(_OPTIONAL),
        }

    def outputs(self, request: inputs.JobRequest, outcome: engine.JobOutcome) -> tuple:
        finals, news = [], []
        for item, result in zip(request.items, outcome.results):
            finals.append(item.prompt if result is None else result.final_prompt)
            news.append("" if result is None else ", ".join(result.new_tags))
        return finals, news, [item.prompt for item in request.items]


class TIPOUpsample(_Expand):
    DESCRIPTION = "Expands tags and a natural-language prompt with a TIPO model."
    RETURN_TYPES = ("STRING", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("final prompt", "new tags", "sentences", "original prompt")
    OUTPUT_IS_LIST = (True, True, True, True)
    OUTPUT_TOOLTIPS = (
        "tags and sentences, laid out by format",
        "only the tags the model added, comma-separated",
        "the natural-language prompt extended, then the caption TIPO wrote",
        "the tag prompt as given",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        required = _common_inputs(TIPO_FAMILY, TIPO_DEFAULT_MODEL)
        required["nl_prompt"] = (
            "STRING",
            {
                "multiline": True,
                "default": "",
                "tooltip": "a natural-language prompt for TIPO to extend",
            },
        )
        required["nl_length"] = (
            list(TARGETS),
            {"default": UpsampleSettings.nl_length, "tooltip": "how long the sentences should be"},
        )
        required["caption"] = (
            "BOOLEAN",
            {"default": UpsampleSettings.caption, "tooltip": "also write a long caption"},
        )
        optional = dict(_OPTIONAL)
        optional["gen_meta"] = (
            "BOOLEAN",
            {
                "default": UpsampleSettings.gen_meta,
                "tooltip": "also let TIPO write meta lines (artist, characters, ...) as new tags",
            },
        )
        return {"required": required, "optional": optional}

    def outputs(self, request: inputs.JobRequest, outcome: engine.JobOutcome) -> tuple:
        finals, news, sentences = [], [], []
        for item, result in zip(request.items, outcome.results):
            if result is None:
                finals.append(item.prompt)
                news.append("")
                sentences.append(item.nl_prompt)
                continue
            finals.append(result.final_prompt)
            news.append(", ".join(result.new_tags))
            written = [t for t in (result.extended, result.generated) if t.strip()]
            sentences.append(SENTENCE_JOIN.join(written))
        return finals, news, sentences, [item.prompt for item in request.items]


class DTGFormat:
    DESCRIPTION = "Lays out a prompt and the tags added to it with a format or a template."
    CATEGORY = CATEGORY
    FUNCTION = "format"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt",)
    OUTPUT_TOOLTIPS = ("the prompt laid out by the format",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "prompt": (
                    "STRING",
                    {
                        "forceInput": True,
                        "tooltip": "the original prompt (DTG Upsample's third output)",
                    },
                ),
                "new_tags": (
                    "STRING",
                    {
                        "forceInput": True,
                        "tooltip": "the tags added (DTG Upsample's second output)",
                    },
                ),
                "format": (
                    list(inputs.FORMAT_CHOICES),
                    {"default": "one line", "tooltip": "a preset; custom: the template below"},
                ),
                "custom_format": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "a template with <|general|>, <|artist|>, ...",
                    },
                ),
            },
            "optional": {
                "sentences": (
                    "STRING",
                    {"forceInput": True, "tooltip": "TIPO's sentences, for <|extended|>"},
                ),
            },
        }

    def format(
        self, prompt: str, new_tags: str, format: str, custom_format: str = "", sentences: str = ""
    ) -> dict[str, Any]:
        from dtg_lib.assemble import assemble

        template = inputs.format_text({"format": format, "custom_format": custom_format})
        tags = [tag.strip() for tag in new_tags.split(",") if tag.strip()]
        upsampler = engine.get_engine(None)
        classified = upsampler.prepare(prompt, UpsampleSettings()).classified
        filled = {"extended": sentences} if sentences else None
        written = assemble(classified, tags, template, filled)
        return {"ui": {"text": [written]}, "result": (written,)}


def _model_file_stamp(name: Any) -> str:
    """Size and time of a model file in models/dtg, so replacing it re-runs the node."""
    if not isinstance(name, str):
        return ""
    folder = engine.model_location(name, host.model_folders())
    path = Path(folder or "") / name
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}"


NODE_CLASS_MAPPINGS = {
    "DTGUpsample": DTGUpsample,
    "DTGFormat": DTGFormat,
    "DTGTipo": TIPOUpsample,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DTGUpsample": "DTG Upsample",
    "DTGFormat": "DTG Format",
    "DTGTipo": "TIPO",
}

"""What the webui itself decides: command-line flags, the Settings tab, model paths.

Options are read with a default because `shared.opts` only knows them after the
Settings tab has been built, and API-only launches may run jobs before that.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtg_lib.settings import BACKENDS, DEFAULT_MODEL, DEVICES

log = logging.getLogger("dtg")

SECTION = ("dtg", "DanTagGen")
# The Settings page's "Stable Diffusion" category (webui 1.7+, Forge); older webuis have
# no categories, and the section stands alone as before.
CATEGORY = "sd"
MODELS_SUBDIR = "dtg"


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    component: str | None = None
    choices: tuple[str, ...] = ()
    # Choices read again at each page load and by the field's refresh button.
    listed: Callable[[], list[str]] | None = None


OPTIONS: tuple[Option, ...] = (
    Option("dtg_model_dir", "", "Model folder (empty: models/dtg; --dtg-model-dir wins)"),
    Option(
        "dtg_default_model",
        DEFAULT_MODEL,
        "Default model in the DanTagGen panel (a name, or a file in the model folder)",
        "Dropdown",
        listed=lambda: model_choices(),
    ),
    Option("dtg_backend", "auto", "Backend", "Radio", BACKENDS),
    Option("dtg_device", "cpu", "Device (--dtg-device wins)", "Radio", DEVICES),
    Option("dtg_keep_loaded", True, "Keep the model loaded between jobs (off: unload after each)"),
)
_DEFAULTS = {option.key: option.default for option in OPTIONS}


@dataclass(frozen=True)
class HostConfig:
    model_dir: Path | None
    default_model: str
    backend: str
    device: str
    keep_loaded: bool


def register_settings() -> None:
    """The `on_ui_settings` callback: one "DanTagGen" section in the Settings tab."""
    from modules import shared

    for option in OPTIONS:
        info = _option_info(shared, option)
        if hasattr(info, "category_id"):  # what the host's options_section sets, where it has one
            info.category_id = CATEGORY
        shared.opts.add_option(option.key, info)


def _option_info(shared: Any, option: Option) -> Any:
    component = _gradio_component(option.component)
    if component is None:
        return shared.OptionInfo(option.default, option.label, section=SECTION)
    if option.listed is None:
        args = {"choices": list(option.choices)}
        return shared.OptionInfo(option.default, option.label, component, args, section=SECTION)
    listed = option.listed
    return shared.OptionInfo(
        option.default,
        option.label,
        _accepting_any_value(component),
        lambda: {"choices": listed()},  # called at each page load and after a refresh
        section=SECTION,
        refresh=_reread_model_folder,
    )


def _reread_model_folder() -> None:
    """The refresh button's first step; model_choices() reads the folder afresh anyway."""


def _accepting_any_value(dropdown: Any) -> Any:
    """The dropdown with allow_custom_value where gradio has it (3.41 and 4.x do): a name
    typed in, or a file added since, stays valid. A constructor keyword and not a component
    arg, since the host also passes the args to gr.update(), which gradio 3.41 checks."""
    try:
        accepts = "allow_custom_value" in inspect.signature(dropdown).parameters
    except (TypeError, ValueError):  # no readable signature: build it plain
        accepts = False
    if not accepts:
        return dropdown

    def build(**kwargs: Any) -> Any:
        return dropdown(allow_custom_value=True, **kwargs)

    return build


def _gradio_component(name: str | None) -> Any:
    if name is None:
        return None
    try:
        import gradio
    except ImportError:  # the settings still work as plain text boxes
        return None
    return getattr(gradio, name, None)


def opt(key: str) -> Any:
    from modules import shared

    return getattr(shared.opts, key, _DEFAULTS[key])


def config() -> HostConfig:
    from modules import shared

    cmd = shared.cmd_opts
    _use_threads_flag(getattr(cmd, "dtg_threads", None))
    return HostConfig(
        model_dir=_model_dir(getattr(cmd, "dtg_model_dir", None) or opt("dtg_model_dir")),
        default_model=opt("dtg_default_model") or DEFAULT_MODEL,
        backend=opt("dtg_backend") or "auto",
        device=getattr(cmd, "dtg_device", None) or opt("dtg_device") or "cpu",
        keep_loaded=bool(opt("dtg_keep_loaded")),
    )


def _use_threads_flag(value: str | None) -> None:
    """--dtg-threads, when given, becomes DTG_THREADS, which the llama.cpp backend reads.

    config() runs at every job and Preview: a bad value is warned about once."""
    if not value:
        return
    from dtg_lib.backends.threads import use_threads
    from dtg_lib.settings import SettingsError

    try:
        use_threads(value)
    except SettingsError as exc:
        _warn_once(f"DTG: ignoring --dtg-threads: {exc}")


@functools.lru_cache(maxsize=16)
def _warn_once(message: str) -> None:
    log.warning("%s", message)


def _model_dir(chosen: str | None) -> Path | None:
    if chosen:
        return Path(chosen).expanduser()
    try:
        from modules import paths
    except ImportError:
        return None
    models_path = getattr(paths, "models_path", None)
    return Path(models_path) / MODELS_SUBDIR if models_path else None


def model_choices() -> list[str]:
    """Registry names, then the models already in the model folder (by their names there)."""
    from dtg_lib.models import ModelError, list_local_models
    from dtg_lib.models import model_choices as registry_choices

    names = registry_choices()
    try:
        local = list_local_models(config().model_dir)
    except (ModelError, OSError) as exc:  # an unreadable folder must not break the UI
        log.warning("DTG: cannot list the model folder: %s", exc)
        local = []
    return [*names, *(m.name for m in local if m.name not in names)]


def embedding_names() -> frozenset[str]:
    """Loaded textual-inversion names, so dtg_lib keeps them as they are; empty if unknown."""
    try:
        from modules.sd_hijack import model_hijack
    except ImportError:
        return frozenset()
    database = getattr(model_hijack, "embedding_db", None)
    return frozenset(getattr(database, "word_embeddings", None) or ())


def apply_styles(prompt: str, styles: Any) -> str:
    """`prompt` with the chosen prompt styles applied, as a job would apply them."""
    if not styles:
        return prompt
    from modules import shared

    apply = getattr(getattr(shared, "prompt_styles", None), "apply_styles_to_prompt", None)
    return apply(prompt, list(styles)) if callable(apply) else prompt


def parse_infotext(text: str) -> dict[str, Any] | None:
    """The host's own reading of an infotext (styles taken out per its settings); None
    where the host has no such function."""
    try:
        from modules import infotext_utils
    except ImportError:
        return None
    parse = getattr(infotext_utils, "parse_generation_parameters", None)
    return parse(text) if callable(parse) else None


# The host's counter of one prompt line for the loaded checkpoint: (tokens, target).
PromptLengths = Callable[[str], tuple[Any, Any]]


def prompt_lengths() -> PromptLengths | None:
    """What the prompt box's token counter calls for each prompt line, for the loaded
    checkpoint: Forge's `get_prompt_lengths_on_ui` on the model, else AUTOMATIC1111's
    `model_hijack.get_prompt_lengths`. None where the host has neither, and on Forge
    before a model is loaded (its stand-in model counts words, not tokens; Forge's
    `model_hijack` would load a model to count)."""
    try:
        from modules import sd_models
    except ImportError:
        sd_models = None
    # The attribute, not `shared.sd_model`, which would load a model to count.
    model = getattr(getattr(sd_models, "model_data", None), "sd_model", None)
    placeholder = getattr(sd_models, "FakeInitialModel", None)
    forge = isinstance(placeholder, type)
    if forge and isinstance(model, placeholder):
        return None
    lengths = getattr(model, "get_prompt_lengths_on_ui", None)
    if callable(lengths) or forge:
        return lengths if callable(lengths) else None
    try:
        from modules.sd_hijack import model_hijack
    except ImportError:
        return None
    lengths = getattr(model_hijack, "get_prompt_lengths", None)
    return lengths if callable(lengths) else None

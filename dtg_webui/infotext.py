"""Infotext keys: what each image records, and how a pasted infotext restores the panel.

"DTG original prompt" is a callable rather than a list: webui 1.10.1 indexes list
values by the position inside the batch, so with batch count > 1 every batch
would repeat the first batch's originals. The callable looks the image up by
its final prompt text, which create_infotext passes in as `prompt_text`.

A TIPO model's natural-language prompt rides inside "DTG Parameters" (as `nl_prompt`,
beside `dtg_seed`), not under a key of its own: that JSON always holds a comma and a
colon, so every host quotes it as JSON, and any text (quotes, line breaks, commas, a
value that looks quoted itself) comes back from a paste exactly as typed. A value of
its own would be quoted by the host only when it holds a comma, colon or line break.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from dtg_lib.settings import SettingsError, UpsampleSettings

from .args import ARG_NAMES, ScriptArgs

log = logging.getLogger("dtg")

PARAMS_KEY = "DTG Parameters"
ORIGINAL_KEY = "DTG original prompt"
ERROR_KEY = "DTG error"
NOTICE_KEY = "DTG notice"
PROMPT_KEY = "Prompt"
HIRES_PROMPT_KEY = "Hires prompt"
# "DTG original prompt" of an empty prompt: JSON's empty string, which the host's reading
# of an infotext turns back into "" (and which no prompt a person writes is).
EMPTY_ORIGINAL = '""'
# What the host's paste reads out of the prompt lines (styles included).
PROMPT_FIELDS = (
    PROMPT_KEY,
    "Negative prompt",
    "Styles array",
    HIRES_PROMPT_KEY,
    "Hires negative prompt",
)
SEED_FIELD = "dtg_seed"
NL_FIELD = "nl_prompt"
# Every DTG value a paste can restore, one infotext key per positional argument.
PASTE_KEYS: dict[str, str] = {name: f"DTG {name}" for name in ARG_NAMES}
# The Preview box when empty. Here rather than in preview_ui, which imports this module
# (through rewrite): a paste empties the box, and the two must not import each other.
EMPTY_HTML = (
    '<div class="dtg-preview-empty">Preview: expands the prompt box with these settings.</div>'
)


def params_text(settings: UpsampleSettings, dtg_seed: int, nl_prompt: str = "") -> str:
    """ "DTG Parameters": the settings, the DTG seed and the natural-language prompt a
    TIPO model read (left out when there was none)."""
    data = settings.to_dict()
    data[SEED_FIELD] = dtg_seed
    if nl_prompt:
        data[NL_FIELD] = nl_prompt
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


class OriginalPrompts:
    """Per-image "DTG original prompt" value for create_infotext's callable protocol.

    An empty original (a TIPO model given a sentence alone) is written as EMPTY_ORIGINAL:
    the host drops a key whose value is empty when it reads an infotext back, and a paste
    would then take the image's prompt for one that DTG never touched.
    """

    def __init__(self, originals: Sequence[str], finals: Sequence[str]) -> None:
        self._by_final = dict(zip(finals, originals))
        distinct = set(originals)
        self._only = next(iter(distinct)) if len(distinct) == 1 else None

    def __call__(self, prompt_text: str | None = None, **_: Any) -> str | None:
        original = self.original_of(prompt_text)
        return EMPTY_ORIGINAL if original == "" else original

    def original_of(self, prompt_text: str | None) -> str | None:
        """The prompt as written of the image whose final prompt is `prompt_text`."""
        # Grids and hosts without prompt_text still get an answer when it is unambiguous.
        if prompt_text is not None and prompt_text in self._by_final:
            return self._by_final[prompt_text]
        return self._only


class HiresPrompts:
    """Per-image "Hires prompt", looked up by the image's own prompt.

    webui 1.10.1 writes an image's infotext with its index inside the batch but reads
    `p.all_hr_prompts` (the whole job's list) with it, so from the second batch on it
    names another image's hires prompt. That goes unseen while every image has the same
    prompt; with one expansion per image the infotext (and a paste of it) would carry
    another image's expansion as "Hires prompt".

    The grid's infotext names the job's first prompt as written (`p.main_prompt`), not
    an expansion; for it the answer is what the webui would say without DTG: the hires
    prompt the user wrote, or none.
    """

    def __init__(
        self,
        finals: Sequence[str],
        hires: Sequence[str],
        fallback: Any,
        originals: OriginalPrompts | None = None,
    ) -> None:
        self._by_final = _unambiguous(zip(finals, hires))
        written = []
        for final, hr in zip(finals, hires):
            original = originals.original_of(final) if originals else None
            if original is not None:
                # A hires prompt equal to the image's expansion was an empty hires box.
                written.append((original, original if hr == final else hr))
        self._by_original = _unambiguous(written)
        self.fallback = fallback

    def __call__(self, prompt_text: str | None = None, **kwargs: Any) -> str | None:
        for known in (self._by_final, self._by_original):
            if prompt_text is not None and prompt_text in known:
                hr = known[prompt_text]
                return None if hr == prompt_text else hr
        if callable(self.fallback):
            return self.fallback(prompt_text=prompt_text, **kwargs)
        return None


def _unambiguous(pairs: Any) -> dict[str, str]:
    """key -> value for the keys that always come with the same value."""
    found: dict[str, str] = {}
    ambiguous: set[str] = set()
    for key, value in pairs:
        if found.setdefault(key, value) != value:
            ambiguous.add(key)
    for key in ambiguous:
        del found[key]
    return found


def read_params(params: dict[str, Any]) -> ScriptArgs | None:
    """The panel values stored in a parsed infotext, or None when it has none (or bad ones)."""
    raw = params.get(PARAMS_KEY)
    if raw is None:
        return None
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
        dtg_seed = int(data.pop(SEED_FIELD, -1))
        nl_prompt = data.pop(NL_FIELD, "")
        if not isinstance(nl_prompt, str):
            raise TypeError(f"{NL_FIELD} must be text, got {nl_prompt!r}")
        return ScriptArgs.from_settings(UpsampleSettings.from_dict(data), dtg_seed, nl_prompt)
    except (SettingsError, ValueError, TypeError) as exc:
        log.warning("DTG: ignoring unreadable %r in pasted infotext: %s", PARAMS_KEY, exc)
        return None


def on_infotext_pasted(infotext: str, params: dict[str, Any]) -> None:
    """Flatten "DTG Parameters" into one key per panel value and put the original prompt back.

    The original prompt goes into the prompt box so that generating again with the
    restored settings reproduces the expansion instead of expanding an expansion.
    """
    restored = read_params(params)
    if restored is None:
        return
    for name, key in PASTE_KEYS.items():
        params[key] = getattr(restored, name)
    if not restored.nl_prompt and not _is_tipo(restored.model):
        # A DTG image has no natural-language prompt: the box (hidden for a DTG model)
        # keeps what the user typed there rather than being emptied.
        del params[PASTE_KEYS[NL_FIELD]]
    original = params.get(ORIGINAL_KEY)
    if not isinstance(original, str):
        # The prompt stays the expansion: DTG on would expand it again.
        params[PASTE_KEYS["enabled"]] = False
        return
    # The host reads EMPTY_ORIGINAL back as "" (JSON's empty string), the stand-in as is.
    original = "" if original == EMPTY_ORIGINAL else original
    params[PROMPT_KEY] = original
    if restored.timing != "before":
        # "after" expanded the prompt with its styles in it: read the styles out of the
        # original, as the host would have without DTG. ("before" styled the expansion,
        # so the host's own reading of the styles already stands.)
        _read_styles_of(original, infotext, params)


def _is_tipo(model: str) -> bool:
    from . import tipo_panel  # the family lookup reads the host's model folder

    try:
        return tipo_panel.is_tipo(model)
    except ImportError:  # no webui around (a tool reading infotexts): nothing to keep
        return False


def _read_styles_of(original: str, infotext: str, params: dict[str, Any]) -> None:
    from . import host

    try:
        reread = host.parse_infotext(_with_prompt(infotext, original))
    except Exception as exc:  # a paste must still restore what it can
        log.warning("DTG: could not read the styles of the original prompt: %s", exc)
        return
    if not reread:
        return
    for key in PROMPT_FIELDS:
        if key in reread:
            params[key] = reread[key]
        else:
            params.pop(key, None)


def _with_prompt(infotext: str, prompt: str) -> str:
    """The infotext with its prompt lines replaced by `prompt`."""
    lines = infotext.strip().split("\n")
    rest = next(
        (i for i, line in enumerate(lines) if line.startswith("Negative prompt:")),
        len(lines) - 1,
    )
    return "\n".join([prompt, *lines[rest:]])


def paste_fields(components: Sequence[Any], preview_box: Any) -> list[tuple[Any, Any]]:
    """The script's `infotext_fields`: one getter per panel value, in ARG_NAMES order, and
    the preview box, emptied by every paste (it showed another prompt's expansion)."""
    fields = [(component, paste_getter(name)) for component, name in zip(components, ARG_NAMES)]
    return [*fields, (preview_box, cleared_preview)]


def cleared_preview(params: dict[str, Any]) -> str | None:
    """The preview box after a paste: empty again, since the paste replaced the prompt."""
    return EMPTY_HTML if PROMPT_KEY in params else None


def paste_getter(name: str) -> Callable[[dict[str, Any]], Any]:
    """`infotext_fields` key for one panel value.

    "enabled" is answered for every paste: on only when `on_infotext_pasted` put the
    original prompt back. So pasting an image made without DTG turns the panel off, and
    so does the API's `infotext` field, which reads the getters without running the
    paste callbacks: its prompt is the expansion, and it stays the image's prompt. The
    other values are left alone when the infotext has none.
    """
    key = PASTE_KEYS[name]
    if name == "enabled":
        return lambda params: params.get(key) is True
    return lambda params: params.get(key)

"""The per-job prompt rewrite behind the script's hooks.

Whatever goes wrong here, the prompts stay exactly as the user wrote them and
the job goes on: errors become one log line and an infotext note.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dtg_lib.errors import DtgError
from dtg_lib.public_text import public_text
from dtg_lib.settings import TIMINGS, SettingsError, UpsampleSettings

from . import engine, host, tipo_panel
from .args import RANDOM_SEED, SEED_RANGE, ScriptArgs
from .infotext import (
    ERROR_KEY,
    HIRES_PROMPT_KEY,
    NOTICE_KEY,
    ORIGINAL_KEY,
    PARAMS_KEY,
    HiresPrompts,
    OriginalPrompts,
    params_text,
)
from .recent import RECENT

log = logging.getLogger("dtg")

# The webui's own random-seed range, so a fixed seed looks like one the webui picked.
_WEBUI_SEED_RANGE = 4294967294
# Everything DTG writes into a job's infotext. Some host features run several jobs on
# one `p` or on shallow copies sharing its dict (X/Y/Z plot, prompts from file, img2img
# batch, loopback), so a job must not inherit the last one's keys.
_JOB_KEYS = (PARAMS_KEY, ORIGINAL_KEY, ERROR_KEY, NOTICE_KEY)
# On `p` after "before" mode rewrote p.prompt: (what it wrote, what was there).
_REWRITE_ATTR = "dtg_prompt_rewrite"


@dataclass(frozen=True)
class JobSettings:
    """What decides a job's expansions besides its prompts and seeds: the settings, the
    natural-language prompt a TIPO model reads ("" for none, and for a DTG model), and
    the DTG seed the infotext records."""

    settings: UpsampleSettings
    nl_prompt: str
    dtg_seed: int

    def cache_key(self) -> str:
        """The key of the recent expansions: the same settings with another natural-language
        prompt are another expansion."""
        return json.dumps([self.settings.to_json(), self.nl_prompt], ensure_ascii=False)


def derive_seed(image_seed: int, dtg_seed: int) -> int:
    """-1 follows each image's seed; a fixed DTG seed is that image's expansion seed.

    So with -1 every image gets its own tags, reproducible from its seed; a fixed seed
    (typed, or taken from an image with the reuse button) keeps those tags while the
    image seed changes.
    """
    base = image_seed if dtg_seed == RANDOM_SEED else dtg_seed
    return int(base) % SEED_RANGE


def fix_seed(seed: Any) -> int:
    """The webui's "-1 means random" rule, applied early so "before" mode can record it."""
    if seed is None or seed == "":
        seed = RANDOM_SEED
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        seed = RANDOM_SEED
    return random.randrange(_WEBUI_SEED_RANGE) if seed == RANDOM_SEED else seed


def is_upscale_pass(p: Any) -> bool:
    # The txt2img "Upscale" button re-runs the job on a finished image, whose prompt was
    # expanded when that image was made (see recent.py).
    return bool(getattr(p, "txt2img_upscale", False))


def begin_job(p: Any) -> None:
    """`before_process()`, every job: clear what an earlier job on this `p` left behind.

    That is DTG's infotext keys, and the prompt "before" mode wrote into p.prompt, which
    the next job on the same `p` (loopback, img2img batch) must not expand again.
    """
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        for key in _JOB_KEYS:
            params.pop(key, None)
        hires = params.get(HIRES_PROMPT_KEY)
        if isinstance(hires, HiresPrompts):
            params[HIRES_PROMPT_KEY] = hires.fallback
    rewrite = getattr(p, _REWRITE_ATTR, None)
    if rewrite is not None:
        setattr(p, _REWRITE_ATTR, None)
        written, original = rewrite
        if p.prompt in (written, _styled(p, written)):
            p.prompt = original


def _styled(p: Any, prompt: Any) -> Any:
    """`prompt` with the job's styles, as sd-dynamic-prompts writes it back to p.prompt."""
    if not isinstance(prompt, str):
        return None
    try:
        return host.apply_styles(prompt, getattr(p, "styles", None))
    except Exception as exc:  # a host without styles: nothing to compare with
        log.debug("DTG: could not apply styles: %s", exc)
        return None


def runs_now(p: Any, args: ScriptArgs, hook_timing: str) -> bool:
    try:
        enabled = args.is_enabled()
    except SettingsError as exc:
        if hook_timing == "after":  # process() runs for every job: report once, there
            log.error("DTG: %s; prompts left as written", exc)
            _note_error(p, str(exc))
        return False
    if not enabled:
        return False
    # An unknown timing is reported by process(), through settings validation.
    timing = args.timing if args.timing in TIMINGS else "after"
    return timing == hook_timing


def expand_images(p: Any, args: ScriptArgs) -> None:
    """`process()`: every image gets its own expansion, seeded from its own seed."""
    if not runs_now(p, args, "after"):
        return
    config = host.config()
    job = _job_settings(p, args, config)
    if job is None:
        return
    originals = list(p.all_prompts)
    seeds = [derive_seed(seed, job.dtg_seed) for seed in p.all_seeds]
    finals = _expand_or_recall(p, originals, job, seeds, config)
    if finals is None:
        _record_failure(p, job, originals)
        return
    _replace_prompts(p, originals, finals)
    _record(p, job, OriginalPrompts(originals, finals))


def expand_main_prompt(p: Any, args: ScriptArgs) -> None:
    """`before_process()`: one expansion for the whole job, before styles and wildcards.

    Seeded from the job seed, so it is reproducible only when the job seed is kept.
    """
    if not runs_now(p, args, "before"):
        return
    config = host.config()
    job = _job_settings(p, args, config)
    if job is None:
        return
    p.seed = fix_seed(p.seed)
    many = isinstance(p.prompt, list)
    originals = list(p.prompt) if many else [p.prompt]
    seeds = [derive_seed(p.seed, job.dtg_seed)] * len(originals)
    finals = _expand_or_recall(p, originals, job, seeds, config)
    if finals is None:
        _record_failure(p, job, originals)
        return
    if not many and not is_upscale_pass(p):
        _remember_the_job(p, job, originals[0], finals[0])
    setattr(p, _REWRITE_ATTR, (finals if many else finals[0], p.prompt))
    p.prompt = finals if many else finals[0]
    _record(p, job, OriginalPrompts(originals, finals))


def _remember_the_job(p: Any, job: JobSettings, original: str, final: str) -> None:
    """The Upscale button reruns one image of the job with that image's own seed.

    "before" mode expanded once, from the job's first seed; every image of the job
    carries that expansion, so its recall must find it under any of their seeds.
    """
    if getattr(p, "subseed_strength", 0):
        return  # with variation seeds every image has the job's seed
    if job.dtg_seed != RANDOM_SEED:
        return  # every image's expansion seed is the fixed one, filed already
    images = int(getattr(p, "batch_size", 1) or 1) * int(getattr(p, "n_iter", 1) or 1)
    first_seed = derive_seed(p.seed, job.dtg_seed)
    RECENT.remember_job(job.cache_key(), first_seed, images, original, final)


def fix_hires_infotext(p: Any) -> None:
    """`process_batch()`: the infotext's "Hires prompt" names each image's own one.

    The webui sets its lookup in `p.init()`, after `process()`, hence this later hook.
    """
    if ORIGINAL_KEY not in p.extra_generation_params:
        return  # DTG did not rewrite this job's prompts
    lookup = p.extra_generation_params.get(HIRES_PROMPT_KEY)
    hires = getattr(p, "all_hr_prompts", None)
    if not callable(lookup) or isinstance(lookup, HiresPrompts) or not hires:
        return
    originals = p.extra_generation_params[ORIGINAL_KEY]
    p.extra_generation_params[HIRES_PROMPT_KEY] = HiresPrompts(
        p.all_prompts, hires, lookup, originals if isinstance(originals, OriginalPrompts) else None
    )


def finish_job(args: ScriptArgs) -> None:
    """`postprocess()`: free the model when the user asked not to keep it."""
    try:
        enabled = args.is_enabled()
    except SettingsError:
        return  # reported by process(); nothing was loaded for this job
    if enabled and not host.config().keep_loaded:
        engine.unload()


def _job_settings(p: Any, args: ScriptArgs, config: host.HostConfig) -> JobSettings | None:
    try:
        settings = args.settings(backend=config.backend, device=config.device)
    except SettingsError as exc:
        log.error("DTG: invalid settings, prompts left as written: %s", exc)
        _note_error(p, f"invalid settings: {exc}")
        return None
    return JobSettings(settings, tipo_panel.nl_prompt_for(args, settings), args.seed())


def _expand_or_recall(
    p: Any,
    prompts: Sequence[str],
    job: JobSettings,
    seeds: Sequence[int],
    config: host.HostConfig,
) -> list[str] | None:
    """A new expansion, or for the Upscale button's pass the one its image got."""
    key = job.cache_key()
    if is_upscale_pass(p):
        finals = RECENT.recall(key, seeds, prompts)
        if finals is None:
            log.info("DTG: upscale pass of an image this session did not expand; prompt kept")
        return finals
    finals = _expand(p, prompts, job, seeds, config)
    if finals is not None:
        RECENT.remember(key, seeds, prompts, finals)
    return finals


def _expand(
    p: Any,
    prompts: Sequence[str],
    job: JobSettings,
    seeds: Sequence[int],
    config: host.HostConfig,
) -> list[str] | None:
    started = time.perf_counter()
    try:
        upsampler = engine.get_engine(config.model_dir, host.embedding_names())
        width, height = int(getattr(p, "width", 1024)), int(getattr(p, "height", 1024))
        results = engine.run_job(
            upsampler,
            list(prompts),
            job.settings,
            list(seeds),
            (width, height),
            nl_prompts=[job.nl_prompt] * len(prompts),
        )
        finals = [result.final_prompt for result in results]
        if len(finals) != len(prompts):
            raise RuntimeError(f"engine returned {len(finals)} prompts for {len(prompts)}")
    except Exception as exc:  # any engine failure must leave the job running, unexpanded
        log.error("DTG: expansion failed, prompts left as written: %s", _failure_text(exc))
        log.debug("DTG: expansion failure details", exc_info=True)
        _note_error(p, _failure_text(exc))
        return None
    log.info("DTG: expanded %d prompt(s) in %.2fs", len(finals), time.perf_counter() - started)
    _note_notices(p, results)
    return finals


def _failure_text(exc: Exception) -> str:
    """An engine error's message says it all (its class is DtgError's promise); anything else
    is unexpected, so its type is named too."""
    return str(exc) if isinstance(exc, DtgError) else f"{type(exc).__name__}: {exc}"


def _replace_prompts(p: Any, originals: list[str], finals: list[str]) -> None:
    p.all_prompts = list(finals)
    hires = getattr(p, "all_hr_prompts", None)
    if not hires:
        return
    # A hires prompt equal to the original is the webui's copy of an empty hires box;
    # one the user wrote differently is theirs and stays.
    p.all_hr_prompts = [
        finals[i] if i < len(finals) and hr == originals[i] else hr for i, hr in enumerate(hires)
    ]


def _record(p: Any, job: JobSettings, originals: OriginalPrompts) -> None:
    text = params_text(job.settings, job.dtg_seed, job.nl_prompt)
    p.extra_generation_params[PARAMS_KEY] = text
    p.extra_generation_params[ORIGINAL_KEY] = originals


def _record_failure(p: Any, job: JobSettings, prompts: Sequence[str]) -> None:
    """After an engine failure, the infotext still holds the panel's values, with the prompts
    as written as the originals: a paste then restores the panel and the prompt, and
    generating again retries the expansion (instead of pasting DTG off)."""
    if ERROR_KEY in p.extra_generation_params:
        _record(p, job, OriginalPrompts(prompts, prompts))


def _note_notices(p: Any, results: Sequence[Any]) -> None:
    """What the engine wants the user told (a backend fallback, a trimmed prompt), once."""
    notices = list(dict.fromkeys(n for r in results for n in getattr(r, "notices", ())))
    if not notices:
        return
    text = "; ".join(" ".join(n.split()) for n in notices)
    log.warning("DTG: %s", text)
    _tell(p, NOTICE_KEY, text)


def _note_error(p: Any, message: str) -> None:
    _tell(p, ERROR_KEY, " ".join(message.split()), " (prompts left unexpanded)")


def _tell(p: Any, key: str, text: str, comment_tail: str = "") -> None:
    """Into the infotext under `key`, and under the image as a comment where the host has them.

    The infotext travels inside every saved image, so it names no folder of this machine
    (the model folder, the hub cache, the home folder), as the HTTP answers do not.
    """
    text = public_text(text, host.config().model_dir)
    p.extra_generation_params[key] = text
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(f"DTG: {text}{comment_tail}")

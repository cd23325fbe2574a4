"""HTTP routes: `POST /dtg/v1/upsample` and `GET /dtg/v1/models`.

One router serves both the webui (mounted at app start) and the standalone
server, so one client works against either. FastAPI is imported inside
`create_router` only: dtg_lib must import without it.

Request body of `POST /dtg/v1/upsample` (a JSON object):

    prompt    one prompt              } exactly one of the two
    prompts   a list of prompts       }
    seed      one seed for every prompt; -1, null or missing: a random seed (reported back)
    seeds     a list of seeds: with `prompts`, one seed each (same length);
              with `prompt`, one expansion of that prompt per seed; null: missing
    width, height   image size the prompt is for (default 1024 x 1024)
    settings  UpsampleSettings fields; sampling keys flat or under "sampling"
              (a TIPO model's `nl_length`, `caption` and `gen_meta` are settings too;
              `budget`: "none", "fill" or "chunks:N", the final prompt's CLIP token budget)
    nl_prompt   a natural-language prompt for every expansion (TIPO models; a DTG
                model ignores it, with a notice)
    nl_prompts  or a list of them, one per entry of `prompts` (same length)

A result carries the new tags and a TIPO model's texts apart: `new_tags`,
`extended` (the short text, the natural-language prompt extended) and
`generated` (the long caption written), and the final prompt's CLIP token count as
`tokens` and `token_target` (null without open_clip_torch).

The body is parsed and checked here rather than by a pydantic model, so the
route behaves the same under pydantic 1 (A1111 1.10) and pydantic 2 (Forge,
current), and every answer that is not a result is `{"detail": "<one readable
sentence>"}`, made in one place (`_problem`) that names no server folder and
can always be encoded.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import models
from .errors import CALLER_MISTAKE, FAILED, TOO_LARGE, DtgError
from .limits import (
    MAX_BODY_BYTES,
    MAX_ITEMS,
    MAX_NL_PROMPT_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SIZE,
    REQUEST_TIMEOUT_S,
)
from .public_text import public_text
from .settings import SettingsError, UpsampleSettings
from .upsampler import Cancelled

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .upsampler import Result, Upsampler

log = logging.getLogger("dtg")

PREFIX = "/dtg/v1"
RANDOM_SEED = -1
_SEED_LIMIT = 2**63  # keeps seeds inside what JSON clients and numpy-based code round-trip
# How often a running request checks whether its client is still there.
_DISCONNECT_POLL_S = 0.25
# Not an HTTP standard code: nginx's "client closed the request", for the log only.
_CLIENT_GONE = 499


class RequestError(DtgError, ValueError):
    """The request itself is wrong; answered with `http_status` (422) and this message."""

    http_status = CALLER_MISTAKE


class BodyTooLarge(RequestError):
    """The body is over the server's limit; refused before it is read."""

    http_status = TOO_LARGE


@dataclass(frozen=True)
class UpsampleRequest:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    width: int
    height: int
    settings: UpsampleSettings
    # One natural-language prompt per prompt (TIPO models); empty: none given.
    nl_prompts: tuple[str, ...] = ()
    # The folder request-named models live in; messages name it without its path.
    model_dir: Path | None = None


def create_router(
    get_upsampler: Callable[[], Upsampler],
    *,
    model_dir: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> APIRouter:
    """The routes, bound to an upsampler factory (called per request, so it may be lazy).

    `model_dir` is the only folder a request may name local models in (default: the
    engine's model folder). `defaults` are settings used where a request leaves them
    out, such as the server's `--model`; they are trusted and not path-checked.
    A request still running after `request_timeout_s`, or whose client disconnects,
    is cancelled; a body over `max_body_bytes` is refused before it is read.
    """
    from fastapi import APIRouter, Request

    router = APIRouter(prefix=PREFIX, tags=["dtg"])
    folder = Path(model_dir) if model_dir is not None else models.default_model_dir()
    base = dict(defaults or {})

    async def upsample_route(request):  # annotated below
        """Expand one or several prompts; see the module docstring for the body."""
        try:
            body = await _read_body(request, max_body_bytes)
            parsed = parse_request(_decode(body), folder, base)
            return await _run_watched(request, get_upsampler, parsed, request_timeout_s)
        except RequestError as exc:
            return _problem(exc.http_status, str(exc), folder)
        except Exception:  # the one place nothing escapes as a plain-text 500
            log.exception("upsample request failed unexpectedly")
            return _problem(500, "internal error while upsampling; see the server log", folder)

    # This module's annotations are strings (PEP 563) that FastAPI would resolve in the
    # module globals, where the lazily imported Request is missing; give it the class.
    upsample_route.__annotations__ = {"request": Request}
    response_class = _json_response_class()
    router.add_api_route(
        "/upsample", upsample_route, methods=["POST"], response_class=response_class
    )

    def models_route():
        """Registry names (downloaded on first use) and the models in the model folder."""
        return _json(200, list_models(folder))

    router.add_api_route("/models", models_route, methods=["GET"], response_class=response_class)
    return router


# ---------------------------------------------------------------- answers


@functools.lru_cache(maxsize=1)
def _json_response_class() -> type:
    from fastapi.responses import JSONResponse

    class SafeJSONResponse(JSONResponse):
        """JSON that can always be sent: text that is no Unicode goes out escaped."""

        def render(self, content: Any) -> bytes:
            text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
            return text.encode("utf-8", "backslashreplace")

    return SafeJSONResponse


def _json(status: int, payload: dict[str, Any]) -> Any:
    return _json_response_class()(payload, status_code=status)


def _problem(status: int, detail: str, model_dir: Path | None) -> Any:
    """The one error answer: `{"detail": ...}`, public and encodable."""
    return _json(status, {"detail": public_text(detail, model_dir)})


def _public_model_name(name: str) -> str:
    """A model name for a result: a path the server chose (its `--model`) shows only its name."""
    return Path(name).name if Path(name).is_absolute() else name


# ---------------------------------------------------------------- reading the body


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes.

    Content-Length is checked before anything is read; a chunked body (no length)
    is counted as it arrives, so at most `limit` bytes are ever held.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(_too_large(f"{int(declared):,} bytes", limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(_too_large(f"more than {limit:,} bytes", limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, limit: int) -> str:
    return (
        f"the request body is {what}; the limit is {limit:,} bytes "
        f"({MAX_ITEMS} prompts of {MAX_PROMPT_CHARS:,} characters, with room for settings)"
    )


def _decode(body: bytes) -> Any:
    if not body.strip():
        raise RequestError("the request body is empty: send a JSON object with a prompt")
    try:
        data = json.loads(body)
    except UnicodeDecodeError as exc:
        raise RequestError(f"the request body is not UTF-8 JSON text: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # only an integer too long to convert gets here
        raise RequestError(
            "the request body holds a number with too many digits to read; "
            "seeds and sizes are at most 19 digits"
        ) from exc
    except RecursionError as exc:
        raise RequestError("the request body nests too deeply") from exc
    _reject_lone_surrogates(data)
    return data


def _reject_lone_surrogates(data: Any) -> None:
    """Refuse text that is no Unicode anywhere in the body, naming where it is.

    JSON allows an escaped lone surrogate ("\\ud800"); it is no character, and
    neither the engine nor the answer could write it out.
    """
    pending = [(data, "")]
    while pending:  # a loop, not recursion: the body may nest as deep as json accepts
        value, where = pending.pop()
        if isinstance(value, str):
            _check_unicode(value, where or "the request body")
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_unicode(key, f"a field name in {where}" if where else "a field name")
                pending.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            pending.extend((item, where) for item in value)


def _check_unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"{where} is not valid Unicode text: {exc.reason} "
            f"({text[exc.start : exc.end]!a} at character {exc.start})"
        ) from exc


# ---------------------------------------------------------------- request checking


def parse_request(
    data: Any, model_dir: Path, defaults: Mapping[str, Any] | None = None
) -> UpsampleRequest:
    """Check a decoded request body; raises RequestError with a message for the client."""
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    known = {"prompt", "prompts", "seed", "seeds", "width", "height", "settings"}
    known |= {"nl_prompt", "nl_prompts"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(unknown)}")
    prompts, seeds = _prompts_and_seeds(data)
    return UpsampleRequest(
        prompts=prompts,
        seeds=seeds,
        width=_size(data, "width"),
        height=_size(data, "height"),
        settings=_settings(data.get("settings"), model_dir, defaults or {}),
        nl_prompts=_nl_prompts(data, len(prompts)),
        model_dir=Path(model_dir),
    )


def _nl_prompts(data: dict[str, Any], count: int) -> tuple[str, ...]:
    """One natural-language prompt per expansion; () when none is given."""
    one, many = data.get("nl_prompt"), data.get("nl_prompts")
    if one is not None and many is not None:
        raise RequestError("give either nl_prompt or nl_prompts, not both")
    if one is not None:
        if not isinstance(one, str):
            raise RequestError("nl_prompt must be text")
        return (_checked_text(one, "nl_prompt", MAX_NL_PROMPT_CHARS),) * count
    if many is None:
        return ()
    if data.get("prompts") is None:
        raise RequestError("nl_prompts goes with prompts (one each); with prompt, use nl_prompt")
    if not isinstance(many, list) or not all(isinstance(p, str) for p in many):
        raise RequestError("nl_prompts must be a list of texts")
    if len(many) != count:
        raise RequestError(
            f"{count} prompts but {len(many)} nl_prompts: give one nl_prompt per prompt"
        )
    return tuple(_checked_text(p, "nl_prompts", MAX_NL_PROMPT_CHARS) for p in many)


def _prompts_and_seeds(data: dict[str, Any]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    prompts = _prompt_list(data.get("prompt"), data.get("prompts"))
    # null means missing, for both seed and seeds.
    seed, seeds = data.get("seed"), data.get("seeds")
    if seeds is not None and seed is not None:
        raise RequestError("give either seed or seeds, not both")
    if seeds is None:
        one = _seed(RANDOM_SEED if seed is None else seed, "seed")
        return prompts, (one,) * len(prompts)
    seed_list = _seed_list(seeds)
    if data.get("prompt") is not None:  # one prompt, several seeds: one expansion per seed
        return prompts * len(seed_list), seed_list
    if len(seed_list) != len(prompts):
        raise RequestError(
            f"{len(prompts)} prompts but {len(seed_list)} seeds: give one seed per prompt, "
            "or a single seed for all"
        )
    return prompts, seed_list


def _prompt_list(prompt: Any, prompts: Any) -> tuple[str, ...]:
    if (prompt is None) == (prompts is None):
        raise RequestError("give exactly one of prompt (text) or prompts (a list of texts)")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise RequestError(f"prompt must be text, got {type(prompt).__name__}")
        return (_checked_text(prompt, "prompt"),)
    if not isinstance(prompts, list) or not prompts:
        raise RequestError("prompts must be a non-empty list of texts")
    if len(prompts) > MAX_ITEMS:
        raise RequestError(f"at most {MAX_ITEMS} prompts per request, got {len(prompts)}")
    if not all(isinstance(p, str) for p in prompts):
        raise RequestError("every entry of prompts must be text")
    return tuple(_checked_text(p, "prompts") for p in prompts)


def _checked_text(text: str, name: str, limit: int = MAX_PROMPT_CHARS) -> str:
    if len(text) > limit:
        raise RequestError(f"{name}: at most {limit} characters, got {len(text)}")
    _check_unicode(text, name)
    return text


def _seed_list(seeds: Any) -> tuple[int, ...]:
    if not isinstance(seeds, list) or not seeds:
        raise RequestError("seeds must be a non-empty list of whole numbers")
    if len(seeds) > MAX_ITEMS:
        raise RequestError(f"at most {MAX_ITEMS} seeds per request, got {len(seeds)}")
    return tuple(_seed(s, "seeds") for s in seeds)


def _seed(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be whole numbers, got {value!r}")
    if not -_SEED_LIMIT < value < _SEED_LIMIT:
        raise RequestError(f"{name} out of range: {value}")
    # -1 is the webui's "random"; the seed used is reported back so it can be replayed.
    return random.randrange(0xFFFFFFFF) if value == RANDOM_SEED else value


def _size(data: dict[str, Any], name: str) -> int:
    value = data.get(name, 1024)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        raise RequestError(f"{name} must be a whole number from 1 to {MAX_SIZE}, got {value!r}")
    return value


def _settings(given: Any, model_dir: Path, defaults: Mapping[str, Any]) -> UpsampleSettings:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise RequestError("settings must be a JSON object")
    data = {**defaults, **given}
    if "model" in given:
        data["model"] = checked_model_name(given["model"], model_dir)
    try:
        return UpsampleSettings.from_dict(data)
    except SettingsError as exc:
        raise RequestError(f"invalid setting: {exc}") from exc


def checked_model_name(name: Any, model_dir: Path) -> models.CheckedModelName:
    """A model name from the network, checked once by `models.checked_model_spec`.

    The result is the text the settings carry (a registry name as given, else the path
    proved to lie inside the model folder) with its spec, which `select_model` loads
    without parsing the name again.
    """
    if not isinstance(name, str):
        raise RequestError(f"settings.model must be text, got {type(name).__name__}")
    try:
        spec = models.checked_model_spec(name, model_dir)
    except models.ModelError as exc:
        raise RequestError(f"invalid model: {exc}") from exc
    text = name.strip() if spec.local_path is None else str(spec.local_path)
    return models.CheckedModelName(text, spec)


# ---------------------------------------------------------------- running


async def _run_watched(
    request: Any,
    get_upsampler: Callable[[], Upsampler],
    parsed: UpsampleRequest,
    timeout_s: float,
) -> Any:
    """Run the engine in a worker thread; cancel it when the client leaves or time runs out.

    The engine stops at its next check (before each expansion and round), so the
    thread is free again soon after, instead of working for a client that is gone.
    """
    from fastapi.concurrency import run_in_threadpool

    cancel = threading.Event()
    work = asyncio.ensure_future(run_in_threadpool(run_request, get_upsampler, parsed, cancel))
    try:
        stopped = await _wait_or_stop(request, work, timeout_s)
    finally:
        if not work.done():  # stopped, or this coroutine was itself cancelled
            cancel.set()
            work.add_done_callback(_log_late_end)
    if stopped is None:
        status, payload = work.result()
        if status != 200:
            return _problem(status, payload["detail"], parsed.model_dir)
        return _json(status, payload)
    if stopped == "timeout":
        log.warning("upsample request stopped after the %g s limit", timeout_s)
        return _problem(
            503,
            f"the request ran longer than this server's limit of {timeout_s:g} s and was "
            "stopped; ask for fewer prompts, seeds or rounds",
            parsed.model_dir,
        )
    log.info("upsample request cancelled: the client disconnected")
    return _problem(_CLIENT_GONE, "the client disconnected; the request was cancelled", None)


async def _wait_or_stop(request: Any, work: asyncio.Future, timeout_s: float) -> str | None:
    """None once `work` is done; "timeout" or "disconnected" when it must be stopped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        done, _ = await asyncio.wait({work}, timeout=max(0.0, min(_DISCONNECT_POLL_S, remaining)))
        if done:
            return None
        if remaining <= 0:
            return "timeout"
        if await request.is_disconnected():
            return "disconnected"


def _log_late_end(work: asyncio.Future) -> None:
    """Reads the outcome of work nobody waits for any more, so no error goes unseen."""
    if work.cancelled():
        return
    if work.exception() is not None:
        log.warning("a cancelled upsample request failed: %s", work.exception())


def run_request(
    get_upsampler: Callable[[], Upsampler],
    request: UpsampleRequest,
    cancel: threading.Event | None = None,
    progress: models.ProgressFn | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run the engine; (HTTP status, JSON body). Never lets an exception or traceback out.

    `cancel`, once set, stops the engine at its next check (see `Upsampler.upsample_many`);
    `progress` hears of the download, load and rounds (the page shows them).
    Messages name no server folder (see `public_text`).
    """
    status, payload = _run_engine(get_upsampler, request, cancel, progress)
    if status != 200:
        return status, {"detail": public_text(payload["detail"], request.model_dir)}
    for result in payload["results"]:
        result["notices"] = [public_text(n, request.model_dir) for n in result["notices"]]
    return status, payload


def _run_engine(
    get_upsampler: Callable[[], Upsampler],
    request: UpsampleRequest,
    cancel: threading.Event | None,
    progress: models.ProgressFn | None = None,
) -> tuple[int, dict[str, Any]]:
    try:
        upsampler = get_upsampler()
        args = (request.prompts, request.settings, request.seeds, request.width, request.height)
        # An upsampler of the caller's own (create_router takes any) may take neither.
        options: dict[str, Any] = {"cancel": cancel, "progress": progress}
        if any(request.nl_prompts):  # passed only when given: a caller's own may not take it
            options["nl_prompts"] = list(request.nl_prompts)
        taken = {name: value for name, value in options.items() if _takes(upsampler, name)}
        results = upsampler.upsample_many(*args, **taken)
    except DtgError as exc:  # its class says what it means for the client
        if exc.http_status != CALLER_MISTAKE:
            log.warning("upsample request failed: %s", exc)
        return exc.http_status, {"detail": _engine_error_detail(exc)}
    except (RuntimeError, OSError, ValueError) as exc:
        log.warning("upsample request failed: %s", exc)
        return 500, {"detail": f"upsampling failed: {exc}"}
    except Exception:  # the client gets a sentence, the log gets the traceback
        log.exception("upsample request failed unexpectedly")
        return 500, {"detail": "internal error while upsampling; see the server log"}
    return 200, {"results": [result_to_json(r) for r in results]}


def _engine_error_detail(exc: DtgError) -> str:
    """The client's sentence: a failure while generating says so; other errors say it all."""
    if isinstance(exc, Cancelled):
        return f"the request was stopped: {exc}"
    if exc.http_status == FAILED:
        return f"upsampling failed: {exc}"
    return str(exc)


def _takes(upsampler: Any, option: str) -> bool:
    """Whether the upsampler's upsample_many takes the keyword `option`."""
    try:
        parameters = inspect.signature(upsampler.upsample_many).parameters
    except (TypeError, ValueError):
        return False
    return option in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def result_to_json(result: Result) -> dict[str, Any]:
    """The public shape of one result (what both the webui and the standalone server send)."""
    return {
        "prompt": result.prompt,
        "final_prompt": result.final_prompt,
        "new_tags": list(result.new_tags),
        "extended": result.extended,
        "generated": result.generated,
        "seed": result.seed,
        "rounds": result.rounds,
        "timings": asdict(result.timings),
        "model": _public_model_name(result.model),
        "backend": result.backend,
        "device": result.device,
        "notices": list(result.notices),
        "tag_categories": dict(result.tag_categories),
        "tokens": result.tokens,
        "token_target": result.token_target,
    }


def list_models(model_dir: Path) -> dict[str, Any]:
    local = models.list_local_models(model_dir)
    return {
        "registry": models.model_choices(),
        # Each registry model with its family and licence (the TIPO fine-tunes carry the
        # author's own licence), and the ones that are listed as not supported.
        "models": models.registry_models(),
        # A model in a registry folder carries that model's licence; one's own file has "".
        # Quantized on this machine from the published F16 file: local_quant (TIPO :Q8_0).
        "local": [m.described() for m in local],
    }

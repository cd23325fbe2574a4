"""HTTP routes: `POST /dtg/v1/upsample` and `GET /dtg/v1/models`.

One router serves both the webui (mounted at app start) and the standalone
server, so one client works against either. FastAPI is imported inside
`create_router` only: dtg_lib must import without it.

Request body of `POST /dtg/v1/upsample` (a JSON object):

    prompt    one prompt              } exactly one of the two
    prompts   a list of prompts       }
    seed      one seed for every prompt; -1 or missing: a random seed (reported back)
    seeds     a list of seeds: with `prompts`, one seed each (same length);
              with `prompt`, one expansion of that prompt per seed
    width, height   image size the prompt is for (default 1024 x 1024)
    settings  UpsampleSettings fields; sampling keys flat or under "sampling"

The body is parsed and checked here rather than by a pydantic model, so the
route behaves the same under pydantic 1 (A1111 1.10) and pydantic 2 (Forge,
current), and every rejection is `{"detail": "<one readable sentence>"}`.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import models
from .backends import BackendUnavailable, ModelLoadError, PromptTooLong
from .settings import SettingsError, UpsampleSettings

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .upsampler import Result, Upsampler

log = logging.getLogger("dtg")

PREFIX = "/dtg/v1"
MAX_ITEMS = 64  # expansions per request; each one runs the model for up to max_rounds rounds
MAX_SIZE = 16384
# Characters per prompt: a long real prompt has a few thousand; the engine reads every tag.
MAX_PROMPT_CHARS = 50_000
RANDOM_SEED = -1
_SEED_LIMIT = 2**63  # keeps seeds inside what JSON clients and numpy-based code round-trip


class RequestError(ValueError):
    """The request itself is wrong; answered with 422 and this message."""


@dataclass(frozen=True)
class UpsampleRequest:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    width: int
    height: int
    settings: UpsampleSettings


def create_router(
    get_upsampler: Callable[[], Upsampler],
    *,
    model_dir: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> APIRouter:
    """The routes, bound to an upsampler factory (called per request, so it may be lazy).

    `model_dir` is the only folder a request may name local models in (default: the
    engine's model folder). `defaults` are settings used where a request leaves them
    out, such as the server's `--model`; they are trusted and not path-checked.
    """
    from fastapi import APIRouter, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    router = APIRouter(prefix=PREFIX, tags=["dtg"])
    folder = Path(model_dir) if model_dir is not None else models.default_model_dir()
    base = dict(defaults or {})

    async def upsample_route(request):  # annotated below
        """Expand one or several prompts; see the module docstring for the body."""
        try:
            parsed = parse_request(_decode(await request.body()), folder, base)
        except RequestError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        # The engine call blocks for seconds; a worker thread keeps the event loop serving.
        status, payload = await run_in_threadpool(run_request, get_upsampler, parsed)
        return JSONResponse(payload, status_code=status)

    # This module's annotations are strings (PEP 563) that FastAPI would resolve in the
    # module globals, where the lazily imported Request is missing; give it the class.
    upsample_route.__annotations__ = {"request": Request}
    router.add_api_route("/upsample", upsample_route, methods=["POST"], response_class=JSONResponse)

    @router.get("/models")
    def models_route() -> dict[str, Any]:
        """Registry names (downloaded on first use) and the models in the model folder."""
        return list_models(folder)

    return router


def _decode(body: bytes) -> Any:
    if not body.strip():
        raise RequestError("the request body is empty: send a JSON object with a prompt")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise RequestError("the request body nests too deeply") from exc


# ---------------------------------------------------------------- request checking


def parse_request(
    data: Any, model_dir: Path, defaults: Mapping[str, Any] | None = None
) -> UpsampleRequest:
    """Check a decoded request body; raises RequestError with a message for the client."""
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    known = {"prompt", "prompts", "seed", "seeds", "width", "height", "settings"}
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
    )


def _prompts_and_seeds(data: dict[str, Any]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    prompts = _prompt_list(data.get("prompt"), data.get("prompts"))
    if data.get("seeds") is not None and data.get("seed") is not None:
        raise RequestError("give either seed or seeds, not both")
    if data.get("seeds") is None:
        seed = _seed(data.get("seed", RANDOM_SEED), "seed")
        return prompts, (seed,) * len(prompts)
    seeds = _seed_list(data["seeds"])
    if data.get("prompt") is not None:  # one prompt, several seeds: one expansion per seed
        return prompts * len(seeds), seeds
    if len(seeds) != len(prompts):
        raise RequestError(
            f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt, "
            "or a single seed for all"
        )
    return prompts, seeds


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


def _checked_text(text: str, name: str) -> str:
    if len(text) > MAX_PROMPT_CHARS:
        raise RequestError(f"{name}: at most {MAX_PROMPT_CHARS} characters, got {len(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON allows an escaped lone surrogate ("\ud800"); it is no character at all.
        raise RequestError(f"{name} is not valid Unicode text: {exc.reason}") from exc
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


def checked_model_name(name: Any, model_dir: Path) -> str:
    """A model name from the network, made safe: a registry name, or a path in `model_dir`.

    Registry names stay names so the engine may still switch format (GGUF <-> HF)
    when a backend is missing; anything else becomes the path `safe_model_path`
    proved to lie inside the model folder.
    """
    if not isinstance(name, str):
        raise RequestError(f"settings.model must be text, got {type(name).__name__}")
    try:
        path = models.safe_model_path(name, model_dir)
    except models.ModelError as exc:
        raise RequestError(f"invalid model: {exc}") from exc
    return name.strip() if models.is_registry_name(name) else str(path)


# ---------------------------------------------------------------- running

# Failures of the engine's surroundings (a model not downloaded, a backend not
# installed, a damaged file): the server cannot serve this now, the request is fine.
_UNAVAILABLE = (BackendUnavailable, ModelLoadError, models.ModelError)


def run_request(
    get_upsampler: Callable[[], Upsampler], request: UpsampleRequest
) -> tuple[int, dict[str, Any]]:
    """Run the engine; (HTTP status, JSON body). Never lets an exception or traceback out."""
    try:
        upsampler = get_upsampler()
        results = upsampler.upsample_many(
            request.prompts, request.settings, request.seeds, request.width, request.height
        )
    except _UNAVAILABLE as exc:
        log.warning("upsample request failed: %s", exc)
        return 503, {"detail": str(exc)}
    except (PromptTooLong, SettingsError) as exc:
        return 422, {"detail": str(exc)}
    except (RuntimeError, OSError, ValueError) as exc:
        log.warning("upsample request failed: %s", exc)
        return 500, {"detail": f"upsampling failed: {exc}"}
    except Exception:  # the client gets a sentence, the log gets the traceback
        log.exception("upsample request failed unexpectedly")
        return 500, {"detail": "internal error while upsampling; see the server log"}
    return 200, {"results": [result_to_json(r) for r in results]}


def result_to_json(result: Result) -> dict[str, Any]:
    """The public shape of one result (what both the webui and the standalone server send)."""
    return {
        "prompt": result.prompt,
        "final_prompt": result.final_prompt,
        "new_tags": list(result.new_tags),
        "seed": result.seed,
        "rounds": result.rounds,
        "timings": asdict(result.timings),
        "model": result.model,
        "backend": result.backend,
        "device": result.device,
        "notices": list(result.notices),
        "tag_categories": dict(result.tag_categories),
    }


def list_models(model_dir: Path) -> dict[str, Any]:
    local = models.list_local_models(model_dir)
    return {
        "registry": models.model_choices(),
        "local": [{"name": m.name, "kind": m.kind, "size": m.size} for m in local],
    }

"""The HTTP routes (`/dtg/v1/...`, dtg_lib.http_api) mounted on the webui's app.

Mounted only when the webui serves its own API (`--api` or `--nowebui`), the same
exposure as `/sdapi/v1`, and behind `--api-auth` when that is set: the routes run
the model and may download registry models. They share the panel's engine, so a
model loaded by either is loaded once.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from . import engine, host

log = logging.getLogger("dtg")

# Marks an app that has the routes (newer FastAPI versions keep an included router as one
# entry of app.routes, so the paths cannot be looked for there).
MOUNTED_FLAG = "dtg_routes_mounted"


def get_upsampler() -> Any:
    config = host.config()
    return engine.get_engine(config.model_dir, host.embedding_names())


def mount(_demo: Any, app: Any) -> None:
    """The `on_app_started` callback."""
    from modules import shared

    cmd = shared.cmd_opts
    if not (getattr(cmd, "api", False) or getattr(cmd, "nowebui", False)):
        log.info("DTG: HTTP routes not mounted (start the webui with --api to get them)")
        return
    state = getattr(app, "state", None)
    if getattr(state, MOUNTED_FLAG, False):
        return  # this app already has them
    try:
        from dtg_lib.http_api import create_router
    except ImportError as exc:
        log.warning("DTG: HTTP routes unavailable: %s", exc)
        return
    config = host.config()
    # Defaults follow the Settings tab at start-up; a request may name its own.
    defaults = {"backend": config.backend, "device": config.device, "model": config.default_model}
    router = create_router(get_upsampler, model_dir=config.model_dir, defaults=defaults)
    app.include_router(router, dependencies=auth_dependencies(getattr(cmd, "api_auth", None)))
    if state is not None:
        setattr(state, MOUNTED_FLAG, True)
    log.info("DTG: HTTP routes mounted under /dtg/v1")


def parse_credentials(api_auth: str) -> dict[str, str]:
    """--api-auth "user:password,user2:password2", as the webui reads it."""
    pairs = (entry.strip().split(":", 1) for entry in api_auth.split(","))
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2 and pair[0]}


def auth_dependencies(api_auth: str | None) -> list[Any]:
    """HTTP Basic, with the webui's API credentials; none when the API is open."""
    if not api_auth:
        return []
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic

    credentials = parse_credentials(api_auth)
    basic = HTTPBasic()

    # No annotation on `given`: this module's annotations are strings, which FastAPI
    # would try to resolve in the module namespace, where HTTPBasicCredentials is not.
    def check(given=Depends(basic)) -> None:  # noqa: B008 (FastAPI's way to declare it)
        expected = credentials.get(given.username)
        if expected is None or not secrets.compare_digest(
            given.password.encode(), expected.encode()
        ):
            raise HTTPException(
                status_code=401,
                detail="Incorrect username or password",
                headers={"WWW-Authenticate": "Basic"},
            )

    return [Depends(check)]

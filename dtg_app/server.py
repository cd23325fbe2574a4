"""The standalone server: the page at `/` and the HTTP API at `/dtg/v1/` on one port."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI

from dtg_lib import models
from dtg_lib.http_api import create_router
from dtg_lib.limits import REQUEST_TIMEOUT_S
from dtg_lib.settings import DEFAULT_MODEL
from dtg_lib.upsampler import Upsampler

from .page import CSS, PageConfig, build_page

log = logging.getLogger("dtg")


def create_app(
    upsampler: Upsampler,
    *,
    model_dir: Path | None = None,
    default_model: str | None = None,
    allow_download: bool = True,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> FastAPI:
    """FastAPI app with the API routes and the gradio page sharing one upsampler.

    An API request still running after `request_timeout_s` is stopped (503).
    """
    folder = Path(model_dir) if model_dir is not None else models.default_model_dir()
    config = PageConfig(folder, default_model or DEFAULT_MODEL, allow_download)
    app = FastAPI(title="DTG upsampler")
    # The routes go in before the page: the page is mounted at "/" and would catch them.
    defaults = {"model": config.default_model}
    router = create_router(
        lambda: upsampler,
        model_dir=folder,
        defaults=defaults,
        request_timeout_s=request_timeout_s,
    )
    app.include_router(router)
    page = build_page(lambda: upsampler, config)
    page.queue(default_concurrency_limit=4)
    return gr.mount_gradio_app(app, page, path="/", **_style_kwargs())


def _style_kwargs() -> dict[str, Any]:
    # gradio 6 takes css/theme when mounting; gradio 4 and 5 took them in gr.Blocks.
    parameters = inspect.signature(gr.mount_gradio_app).parameters
    return {"css": CSS} if "css" in parameters else {}


def serve(
    host: str = "127.0.0.1",
    port: int = 7870,
    *,
    model: str | None = None,
    model_dir: Path | None = None,
    allow_download: bool = True,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> None:
    """Run the server until interrupted."""
    import uvicorn

    upsampler = Upsampler(model_dir=model_dir, allow_download=allow_download)
    app = create_app(
        upsampler,
        model_dir=model_dir,
        default_model=model,
        allow_download=allow_download,
        request_timeout_s=request_timeout_s,
    )
    log.warning("DTG upsampler on http://%s:%d (API at /dtg/v1/upsample)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")

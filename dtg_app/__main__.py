"""`python -m dtg_app` (or `dtg-serve`): the page at / and the HTTP API at /dtg/v1/ on one port.

`python -m dtg_lib serve ...` runs this in a child process, so the engine never imports
the app. The arguments are checked here before gradio loads, and the port before the
server says where it listens.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from dtg_lib.backends.threads import parse_threads, use_threads
from dtg_lib.limits import REQUEST_TIMEOUT_S
from dtg_lib.settings import SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dtg_app",
        description="Serve the DTG page at / and the HTTP API at /dtg/v1/ on one port.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_port, default=7870, help="1 to 65535 (default 7870)")
    parser.add_argument("--model", default=None, help="default model: registry name or path")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="the only folder API requests may name"
    )
    parser.add_argument("--offline", action="store_true", help="never download")
    parser.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="auto|N",
        help="CPU threads for llama.cpp: auto (physical cores, fewer while other work holds "
        "them) or a number; sets DTG_THREADS",
    )
    parser.add_argument(
        "--request-timeout",
        type=_seconds,
        default=REQUEST_TIMEOUT_S,
        help=f"seconds an API request may run before it is stopped (default {REQUEST_TIMEOUT_S:g})",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"a time limit is a positive number, got {text}")
    return seconds


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {port}")
    return port


def _threads(text: str) -> str:
    try:
        parse_threads(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def bind_problem(host: str, port: int) -> str | None:
    """Why the server could not listen there, found before it says where it listens."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def load_server() -> ModuleType:
    """dtg_app.server, which imports gradio and fastapi (seconds): loaded once the
    arguments are known to be good."""
    return importlib.import_module("dtg_app.server")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        server = load_server()
    except ImportError as exc:
        print(
            f"error: the app needs gradio and fastapi: pip install 'dtg-upsampler[app]' ({exc})",
            file=sys.stderr,
        )
        return 1
    if args.threads is not None:
        use_threads(args.threads)
    problem = bind_problem(args.host, args.port)
    if problem:
        print(f"error: {problem} (choose another with --port or --host)", file=sys.stderr)
        return 1
    server.serve(
        args.host,
        args.port,
        model=args.model,
        model_dir=args.model_dir,
        allow_download=not args.offline,
        request_timeout_s=args.request_timeout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

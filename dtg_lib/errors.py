"""The base of every error the engine raises on purpose, and what each kind means to a client.

This module imports nothing of the project, so every layer can derive from it.
An error class says once what it means (`http_status`); the HTTP routes and the
webui read that instead of keeping their own lists of classes.
"""

from __future__ import annotations

from typing import ClassVar

# What a client is told, by kind of error.
CALLER_MISTAKE = 422  # the request or its settings are wrong; sending it again will not help
TOO_LARGE = 413  # the request is bigger than this server accepts
UNAVAILABLE = 503  # the server cannot serve this now (a model or backend missing or damaged)
FAILED = 500  # something broke while the engine worked on a good request


class DtgError(Exception):
    """An error whose message already says, in the user's terms, what went wrong.

    Subclasses keep a second base (ValueError, RuntimeError) where callers catch that.
    """

    http_status: ClassVar[int] = FAILED

"""`shared.state`: the running task's progress, which the host's progress bar polls.

Reduced to what scripts touch: `textinfo`, the one-line text the page shows beside the
bar (the host leaves out a text with a line break), and `begin`/`end`, which the host's
task queue calls around each task; `begin` clears what the last task left there.
"""

from __future__ import annotations


class State:
    def __init__(self) -> None:
        self.job = ""
        self.job_count = 0
        self.textinfo: str | None = None

    def begin(self, job: str = "(unknown)") -> None:
        self.job = job
        self.job_count = -1
        self.textinfo = None

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

"""What the load benchmarks share: one trial per fresh process, its memory, and the cells.

Each trial runs `python SCRIPT --child ARGS...` so peak RSS is the trial's own; the child
prints one JSON line with its row.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmHWM, RssAnon, RssFile ...) in MB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def trial(script: str | Path, *args: str) -> dict[str, Any] | None:
    """The row a fresh `script --child args` prints, or None (said) when it failed."""
    command = [sys.executable, str(script), "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"  {' '.join(args[:2])}: failed ({done.returncode}): {done.stderr[-500:]}")
        return None
    return json.loads(lines[-1])


def median_cell(values: list[float], digits: int) -> str:
    """ "median (min-max)", the form RESULTS.md gives interleaved pairs in."""
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )

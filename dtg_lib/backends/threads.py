"""How many CPU threads llama.cpp decodes with, and fewer while other work holds the cores.

The setting is "auto" (the default) or a whole number, from `DTG_THREADS` (the faces'
`--threads` / `--dtg-threads` flags set that variable, so a `serve` child inherits it).

"auto" starts from the physical cores this process may run on: SMT siblings share one
core's execution units, and a decode thread on each of them slows llama.cpp down. Before
each generation (the backend calls `ThreadPolicy.apply`) it then looks at how much of those
cores other processes used since the previous one, and leaves the cores they hold out.
llama.cpp's threads meet at a barrier after every operation, so one thread that the OS
deschedules stalls all the others: on 2 cores with one competing process, decoding on
2 threads took 321 ms a token where 1 thread took 31. A core counts as held once others
use `HELD_FRACTION` of it.

A number is used as it is, whatever the load. llama.cpp takes the same count for single
tokens and for batches here (`n_threads` and `n_threads_batch`).
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..settings import SettingsError

log = logging.getLogger("dtg")

THREADS_ENV = "DTG_THREADS"
AUTO = "auto"
# llama.cpp's GGML_MAX_N_THREADS; more is refused rather than passed on.
MAX_THREADS = 512
# Others' average use of a core, over the last window, from which it counts as theirs.
# Low on purpose: a thread of ours that shares a core even half the time holds up the rest.
HELD_FRACTION = 0.3
# A shorter window than this says little (the kernel counts CPU time in 10 ms ticks);
# the previous choice stands until a longer one has passed.
MIN_WINDOW_S = 0.2
SYS_ROOT = Path("/sys")
PROC_STAT = Path("/proc/stat")
# /proc/stat's per-CPU columns: user nice system idle iowait irq softirq steal guest ...
# Busy = all but idle and iowait; steal is another guest of the hypervisor on our core.
# (guest time is already inside user.)
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---------------------------------------------------------------- the setting


def parse_threads(value: Any, *, source: str = "threads") -> int | None:
    """None for "auto" (or empty), else the whole number of threads; a clear error otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise SettingsError(f"{source} must be 'auto' or a whole number, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower()
        if text in ("", AUTO):
            return None
        # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
        if not (text.isascii() and text.isdigit()) or len(text) > 6:
            raise SettingsError(
                f"{source} must be 'auto' or a whole number of threads, got {value!r}"
            )
        number = int(text)
    if not 1 <= number <= MAX_THREADS:
        raise SettingsError(f"{source} must be between 1 and {MAX_THREADS}, got {number}")
    return number


def configured_threads(environ: Mapping[str, str] = os.environ) -> int | None:
    """The number `DTG_THREADS` fixes, or None for "auto" (also when it is unset)."""
    return parse_threads(environ.get(THREADS_ENV), source=THREADS_ENV)


def use_threads(value: Any) -> None:
    """A face's `--threads` flag: checked here, then kept where every backend reads it."""
    chosen = parse_threads(value, source="--threads")
    os.environ[THREADS_ENV] = AUTO if chosen is None else str(chosen)


# ---------------------------------------------------------------- the cores


def allowed_cpus() -> frozenset[int] | None:
    """The CPUs this process may run on, where the OS says (Linux); None elsewhere."""
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return None
    try:
        return frozenset(getter(0))
    except OSError:
        return None


def cpu_list(text: str) -> frozenset[int]:
    """The CPUs of a kernel list such as "0-3,8,10-11"."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return frozenset(cpus)


def linux_physical_cores(cpus: Iterable[int], sys_root: Path = SYS_ROOT) -> int | None:
    """How many distinct cores `cpus` lie on, from /sys topology; None where it is unreadable.

    Two logical CPUs on one core list each other in core_cpus_list (thread_siblings_list
    on kernels before 5.x); a process allowed on only one of them counts that core once.
    """
    cores: set[frozenset[int]] = set()
    for cpu in cpus:
        topology = sys_root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        siblings = None
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                siblings = cpu_list((topology / name).read_text(encoding="ascii"))
                break
            except (OSError, ValueError):
                continue
        if siblings is None:
            return None
        cores.add(siblings)
    return len(cores) or None


def mac_physical_cores() -> int | None:
    try:
        done = subprocess.run(
            ["sysctl", "-n", "hw.physicalcpu"], capture_output=True, text=True, timeout=5
        )
        return int(done.stdout.strip()) if done.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def cgroup_cpu_limit(cgroup_root: Path = SYS_ROOT / "fs" / "cgroup") -> int | None:
    """Whole CPUs a container's CPU quota allows (cgroup v2 cpu.max, v1 cfs files), if any."""
    try:
        quota, _, period = (cgroup_root / "cpu.max").read_text(encoding="ascii").partition(" ")
        if quota.strip() != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def physical_cores(
    cpus: Iterable[int] | None = None,
    *,
    sys_root: Path = SYS_ROOT,
    platform: str = sys.platform,
) -> int:
    """Physical cores among `cpus` (default: this process's allowed CPUs), at least 1."""
    allowed = allowed_cpus() if cpus is None else frozenset(cpus)
    found = None
    if platform.startswith("linux") and allowed:
        found = linux_physical_cores(sorted(allowed), sys_root)
    elif platform == "darwin":
        found = mac_physical_cores()
    if found is None:
        found = len(allowed) if allowed else os.cpu_count() or 1
    quota = cgroup_cpu_limit(sys_root / "fs" / "cgroup") if platform.startswith("linux") else None
    return max(1, min(found, quota or found))


@lru_cache(maxsize=1)
def usable_cores() -> int:
    """physical_cores() for this process, read once (the topology does not change)."""
    cores = physical_cores()
    log.debug("DTG: %d physical cores usable (%s logical)", cores, os.cpu_count())
    return cores


# ---------------------------------------------------------------- the load


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds spent on our CPUs by everyone, and by this process, at a moment."""

    wall_s: float
    busy_s: float
    own_s: float


def busy_seconds(stat_text: str, cpus: frozenset[int] | None) -> float:
    """Busy CPU seconds in /proc/stat, over `cpus` (None: the machine's total line)."""
    total = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu"):
            break  # the cpu lines come first
        number = name[3:]
        wanted = number == "" if cpus is None else number.isdigit() and int(number) in cpus
        if wanted:
            columns = [int(v) for v in rest.split()]
            total += sum(columns[i] for i in _BUSY_COLUMNS if i < len(columns))
    return total / _CLOCK_TICKS


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def read_sample(cpus: frozenset[int] | None, stat_path: Path = PROC_STAT) -> CpuSample | None:
    """Now's counters, or None where /proc/stat does not exist (macOS, Windows)."""
    try:
        text = stat_path.read_text(encoding="ascii")
    except OSError:
        return None
    return CpuSample(time.monotonic(), busy_seconds(text, cpus), own_cpu_seconds())


def others_busy(before: CpuSample, after: CpuSample) -> float:
    """How many cores other processes kept busy, on average, between two samples."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, others / wall)


def auto_threads(cores: int, others: float, capacity: int | None = None) -> int:
    """Our cores, fewer when others hold so many of the `capacity` CPUs we may use (all
    allowed logical CPUs; `cores` when not given) that fewer than `cores` stay free. A CPU
    counts as held once others use HELD_FRACTION of it. At least 1.

    `others` is measured over every allowed CPU, so it is set against all of them: in a
    container capped at 4 cores on a 64-CPU host, others busy on 40 CPUs leave 24 free
    and we keep our 4."""
    held = math.floor(others + 1 - HELD_FRACTION)
    return max(1, min(cores, (capacity or cores) - held))


class ThreadPolicy:
    """One backend's thread count: fixed, or "auto" and chosen again before each generation.

    `n_threads` given (a caller's explicit count) wins over DTG_THREADS, which is read
    again at each call, so changing it applies from the next generation on.
    """

    def __init__(
        self,
        n_threads: int | None = None,
        *,
        cores: int | None = None,
        sampler: Any = None,
    ) -> None:
        self.explicit = parse_threads(n_threads) if n_threads is not None else None
        self.cores = cores or usable_cores()
        cpus = allowed_cpus()
        self.capacity = max(self.cores, len(cpus)) if cpus else self.cores
        self._sampler = sampler or (lambda: read_sample(cpus))
        self._last = self._sampler()
        self._wall_at_last = time.monotonic()
        fixed = self.fixed()
        self.at_load = fixed or self.cores
        self.current = self.at_load

    def fixed(self) -> int | None:
        """The count the caller or DTG_THREADS sets, or None for "auto"."""
        return self.explicit or configured_threads()

    def choose(self) -> int:
        """The thread count for the next generation (cheap: one read of /proc/stat)."""
        fixed = self.fixed()
        if fixed is not None:
            self.current = fixed
            return fixed
        others = self._others_since_last()
        if others is not None:
            chosen = auto_threads(self.cores, others, self.capacity)
            if chosen != self.current:
                log.info(
                    "DTG: other work holds %.1f of %d cores; decoding on %d threads",
                    others, self.cores, chosen,
                )  # fmt: skip
            self.current = chosen
        return self.current

    def _others_since_last(self) -> float | None:
        now = time.monotonic()
        if now - self._wall_at_last < MIN_WINDOW_S:
            return None
        self._wall_at_last = now
        sample = self._sampler()
        if sample is None or self._last is None:
            # Without /proc/stat (macOS, Windows) the count stays as it is: the load
            # average counts our own recent decoding for a minute after it ends, so it
            # would take threads away with nothing else running.
            self._last = sample
            return None
        before, self._last = self._last, sample
        return others_busy(before, sample)

    def apply(self, llm: Any, llama_cpp: Any = None) -> int:
        """Choose, and hand the count to a loaded llama-cpp-python `Llama` (its `ctx`).

        The backend calls this before each generation. llama.cpp reads its thread count at
        every decode, so this is all a change takes; setting it is two stores, so it is set
        every time rather than tracked. `llama_cpp`: the module (imported when not given).
        """
        if llama_cpp is None:
            import llama_cpp
        chosen = self.choose()
        llama_cpp.llama_set_n_threads(llm.ctx, chosen, chosen)
        return chosen

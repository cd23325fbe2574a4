"""Quantizing a model published only as F16 (TIPO) on the user's machine, once.

`tipo-500m:Q8_0` names `TIPO-500M_epoch5-Q8_0.local-quant.gguf` in the model folder. The
first request makes it from the F16 file (downloaded first if need be) with llama.cpp's
own quantizer, `llama_model_quantize`; later requests find it on disk.

Why a child process: the quantizer is one C call. ctypes releases the GIL during it, so
other threads would go on, but the call cannot be interrupted (Ctrl-C waits for it to
return), and a failed assertion or an out-of-memory kill inside it would take the whole
webui down. In a child, a crash is an error message, an interruption kills the child at
once, and a child whose parent dies (its stdin pipe closes) exits by itself. Its log lines
(`[  12/ 219] blk.1.attn_q.weight ...`) give the progress per tensor, which the Python
API has no callback for.

Atomic: the child writes a hidden temporary file beside the final one; it is validated
like a download and renamed only when complete. A file lock makes two requests (threads or
processes) quantize once; leftovers of an attempt that was killed are deleted by the next.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .common import GGUF_KIND, ModelCorrupt, ModelError
from .names import LOCAL_QUANTS, ModelSpec, ProgressEvent, ProgressFn, variant_spec
from .validation import record_size, validate_model_file

log = logging.getLogger("dtg")

# llama.cpp's llama_ftype values (llama.h; stable since llama.cpp's GGUF files began).
QUANT_FTYPES = {"Q8_0": 7, "Q6_K": 18}
assert set(LOCAL_QUANTS) <= set(QUANT_FTYPES)

INSTALL_HINT = "pip install llama-cpp-python (0.2.80 or newer)"
_PARTIAL_SUFFIX = ".partial"
_LOCK_SUFFIX = ".lock"
_LOCK_POLL_S = 0.2
_LOG_TAIL = 20
# One tensor of llama.cpp's quantization log: "[  12/ 219]  blk.1.attn_q.weight - ..."
_TENSOR_LINE = re.compile(rb"^\[\s*(\d+)\s*/\s*(\d+)\]")
# What the child says before exiting with these codes.
_NO_LLAMA, _NO_QUANTIZER, _QUANTIZER_FAILED, _ORPHANED = 4, 5, 6, 3

# The child: only llama_cpp and the standard library, so that it needs nothing of this
# package on its path (a webui adds the extension's folder to sys.path only in-process).
_CHILD_CODE = f"""
import ctypes, os, sys, threading

def _exit_when_orphaned():
    # Unbuffered reads: a buffered reader's lock held at shutdown is a fatal error.
    while os.read(0, 64):
        pass
    os._exit({_ORPHANED})  # EOF: the parent is gone

threading.Thread(target=_exit_when_orphaned, daemon=True).start()
try:
    import llama_cpp
except ImportError as exc:
    print("llama-cpp-python is not installed:", exc, file=sys.stderr, flush=True)
    sys.exit({_NO_LLAMA})
quantize = getattr(llama_cpp, "llama_model_quantize", None)
defaults = getattr(llama_cpp, "llama_model_quantize_default_params", None)
if quantize is None or defaults is None:
    version = getattr(llama_cpp, "__version__", "?")
    print("llama-cpp-python", version, "has no llama_model_quantize", file=sys.stderr, flush=True)
    sys.exit({_NO_QUANTIZER})
params = defaults()
params.ftype = int(sys.argv[3])
params.nthread = int(sys.argv[4])
status = quantize(os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2]), ctypes.byref(params))
sys.stderr.flush()
os._exit(0 if status == 0 else {_QUANTIZER_FAILED})
"""

# Threads of this process take turns; the file lock covers other processes.
_IN_PROCESS = threading.Lock()


class QuantizeFailed(ModelError):
    """llama.cpp could not make the local quantization; nothing was left under its name."""


def local_quant_plan(spec: ModelSpec) -> tuple[str, ModelSpec] | None:
    """(quantization, spec of the published file it is made from) when `spec` names a
    local quantization (`tipo-500m:Q8_0`); None for every other spec."""
    entry = spec.entry
    if entry is None or spec.local_path is not None or entry.quantized_from(spec.filename) is None:
        return None
    quant = next(q for q in entry.local_quants if entry.gguf_files[q] == spec.filename)
    return quant, variant_spec(entry, entry.default_variant)


def make_local_quant(
    source: Path,
    target: Path,
    quant: str,
    progress: ProgressFn | None = None,
    *,
    threads: int = 0,
) -> Path:
    """Quantize the F16/F32 GGUF `source` to `quant` at `target`, unless a valid file is
    there already (made by another thread or process while this one waited).

    `threads` 0 lets llama.cpp use every core. Raises QuantizeFailed (or ModelError when
    llama-cpp-python is missing); on any failure or interruption nothing is left at
    `target` and the temporary file is gone.
    """
    if quant not in QUANT_FTYPES:
        raise ModelError(
            f"llama.cpp quantization {quant!r} is not offered here; use one of "
            f"{', '.join(QUANT_FTYPES)}."
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _IN_PROCESS, _file_lock(target, progress):
            if _valid_file(target):
                return target
            _remove_leftovers(target)
            _check_llama_cpp()
            _quantize_atomically(Path(source), target, quant, progress, threads)
    except OSError as exc:  # a model folder that cannot be written, a vanished source
        raise QuantizeFailed(
            f"could not make {target.name} in {target.parent.name}/ ({exc.strerror or exc}); "
            "the folder must be writable, or use the F16 file (the model's :F16 variant)"
        ) from exc
    return target


def _valid_file(target: Path) -> bool:
    """A complete file at `target`; a damaged one is deleted, to be made again."""
    if not target.is_file():
        return False
    try:
        validate_model_file(target, GGUF_KIND)
    except ModelCorrupt as exc:
        log.warning("Deleting a damaged local quantization to make it again: %s", exc)
        try:
            target.unlink()
        except OSError as gone_wrong:
            raise ModelCorrupt(f"{exc} It could not be deleted: {gone_wrong}") from exc
        record_size(target.parent, target.name, None)
        return False
    return True


def _check_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelError(
            "Making a quantized model on this machine needs llama-cpp-python, which is not "
            f"installed: {INSTALL_HINT}. Or use the model's F16 or hf variant."
        )


def _quantize_atomically(
    source: Path, target: Path, quant: str, progress: ProgressFn | None, threads: int
) -> None:
    attempt = f"{os.getpid()}-{threading.get_ident()}"
    partial = target.with_name(f".{target.name}.{attempt}{_PARTIAL_SUFFIX}")
    size_mb = source.stat().st_size / 1e6
    what = f"{source.name} ({size_mb:.0f} MB) to {quant}"
    log.info("Quantizing %s on this machine, once, into %s", what, target)
    shown = _QuantizeProgress(progress, f"Quantizing {what} (once)")
    started = time.perf_counter()
    try:
        _run_child(source, partial, quant, shown, threads)
        _keep_if_valid(partial, source, quant)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise
    record_size(target.parent, target.name, target.stat().st_size)
    seconds = time.perf_counter() - started
    done = f"Quantized {source.name} to {quant} in {seconds:.0f} s"
    log.info("%s: %s (%.0f MB)", done, target, target.stat().st_size / 1e6)
    shown.finished(done)


class _QuantizeProgress:
    """The caller's progress, one "quantize" bar counting tensors as llama.cpp logs them."""

    def __init__(self, progress: ProgressFn | None, message: str) -> None:
        self._progress = progress
        self._message = message
        self._total: int | None = None
        _tell(progress, ProgressEvent("quantize", message, 0, None, "tensors"))

    def log_line(self, line: bytes) -> None:
        match = _TENSOR_LINE.match(line)
        if match is None:
            return
        self._total = int(match.group(2))
        done = int(match.group(1))
        _tell(
            self._progress, ProgressEvent("quantize", self._message, done, self._total, "tensors")
        )

    def finished(self, message: str) -> None:
        total = self._total or 1
        _tell(self._progress, ProgressEvent("quantize", message, total, total, "tensors"))


def _run_child(
    source: Path, partial: Path, quant: str, shown: _QuantizeProgress, threads: int
) -> None:
    if not sys.executable:
        raise QuantizeFailed(
            "Cannot start a Python process to quantize in: this Python does not say where "
            "its executable is. Use the model's F16 variant."
        )
    command = [
        sys.executable,
        "-c",
        _CHILD_CODE,
        os.fsdecode(source),
        os.fsdecode(partial),
        str(QUANT_FTYPES[quant]),
        str(threads),
    ]
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    # cwd: the model folder, so that nothing in the caller's working folder shadows a module.
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=partial.parent,
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console on Windows
    )
    try:
        assert child.stderr is not None
        for line in child.stderr:
            tail.append(line.decode("utf-8", "replace").rstrip())
            shown.log_line(line)
        status = child.wait()
    except BaseException:
        child.kill()
        child.wait()
        raise
    finally:
        for pipe in (child.stdin, child.stderr):
            if pipe is not None:
                pipe.close()
    if status != 0:
        raise _child_failure(status, source, quant, tail)


def _child_failure(status: int, source: Path, quant: str, tail: deque[str]) -> ModelError:
    said = " | ".join(line for line in tail if line.strip())[-1500:] or "nothing"
    if status == _NO_LLAMA:
        return ModelError(
            "Making a quantized model on this machine needs llama-cpp-python, which this "
            f"Python cannot import: {INSTALL_HINT}. Or use the model's F16 or hf variant."
        )
    if status == _NO_QUANTIZER:
        return ModelError(
            f"The installed llama-cpp-python has no quantizer ({said}); {INSTALL_HINT}, "
            "or use the model's F16 or hf variant."
        )
    return QuantizeFailed(
        f"llama.cpp could not quantize {source} to {quant} (exit status {status}); nothing "
        f"was kept. Its last words: {said}. Use the F16 variant, or check that the F16 file "
        "is a model llama.cpp loads and that the disk has room."
    )


def _keep_if_valid(partial: Path, source: Path, quant: str) -> None:
    try:
        validate_model_file(partial, GGUF_KIND)
    except ModelCorrupt as exc:
        raise QuantizeFailed(
            f"llama.cpp wrote a damaged {quant} file from {source}; it was deleted. {exc}"
        ) from exc


def _tell(progress: ProgressFn | None, event: ProgressEvent) -> None:
    if progress is not None:
        progress(event)


def _remove_leftovers(target: Path) -> None:
    """Delete temporary files of earlier attempts that were killed (this one holds the lock,
    so no live attempt owns them)."""
    for stale in target.parent.glob(f".{target.name}.*{_PARTIAL_SUFFIX}"):
        try:
            stale.unlink()
        except OSError as exc:
            log.warning("Could not delete the leftover %s: %s", stale, exc)
        else:
            log.info("Deleted %s, left by an interrupted quantization", stale)


# ---------------------------------------------------------------- the file lock


@contextlib.contextmanager
def _file_lock(target: Path, progress: ProgressFn | None) -> Iterator[None]:
    """Hold `.<target>.lock` beside `target`; the system releases it if this process dies."""
    lock_path = target.with_name(f".{target.name}{_LOCK_SUFFIX}")
    with lock_path.open("a+b") as handle:
        told = False
        while not _try_lock(handle):
            if not told:
                message = f"Waiting for another process that is making {target.name}"
                log.info("%s", message)
                _tell(progress, ProgressEvent("quantize", message))
                told = True
            time.sleep(_LOCK_POLL_S)
        try:
            yield
        finally:
            _unlock(handle)


# errno values a lock held by someone else gives (POSIX flock; Windows msvcrt.locking).
_HELD = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK})


def _try_lock(handle: BinaryIO) -> bool:
    """True once locked; False while another holds it. A file system without locks (some
    network shares) is logged and treated as locked: the in-process lock still holds."""
    fileno = handle.fileno()
    try:
        if os.name == "nt":
            import msvcrt

            os.lseek(fileno, 0, os.SEEK_SET)
            msvcrt.locking(fileno, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fileno, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _HELD:
            return False
        log.warning("Cannot lock %s (%s); quantizing without a file lock", handle.name, exc)
    return True


def _unlock(handle: BinaryIO) -> None:
    fileno = handle.fileno()
    with contextlib.suppress(OSError):
        if os.name == "nt":
            import msvcrt

            os.lseek(fileno, 0, os.SEEK_SET)
            msvcrt.locking(fileno, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fileno, fcntl.LOCK_UN)

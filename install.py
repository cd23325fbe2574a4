"""DanTagGen's installer; the webui runs it as a subprocess at every start-up (cwd = webui root).

It installs only what is missing or too old, through the webui's own helpers
(`launch.is_installed`, `launch.run_pip`), and never touches the packages the
webui pins: every pip call carries a constraints file holding them at their
installed versions. It imports nothing from dtg_lib (the extension's packages
are not importable here, and their imports may need what is being installed).

Nothing here may stop the webui from starting: each failure is one printed
line, and when llama-cpp-python cannot be had a status file tells the panel to
say so (the torch backend still works).

The decisions are pure functions of their inputs so tests can run them without pip.
Environment: DTG_LLAMA_CPP=auto (default) | cpu (CPU build only) | skip (leave it out).
Flag (in COMMANDLINE_ARGS, registered by preload.py): --dtg-no-llama-build, prebuilt
wheels only, never the source build (minutes, and it needs a compiler).

In a venv without pip (made by uv), packages go in through `uv pip install --python`.
For ComfyUI (its first import of the node pack, and ComfyUI Manager running this file in
the node folder) `install_for_comfyui` runs `install_prebuilt`: prebuilt wheels only.

One file of ~700 lines on purpose: the webui runs it alone, by path, before any of the
extension's packages can be imported, so it cannot be split into modules it imports.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

EXTENSION_DIR = Path(__file__).resolve().parent
STATUS_FILE = EXTENSION_DIR / "dtg_install_status.json"
PREFIX = "[DanTagGen]"

# The webui (A1111 or Forge) owns these versions; an extension that moves them breaks it.
PROTECTED = (
    "torch",
    "torchvision",
    "transformers",
    "tokenizers",
    "safetensors",
    "gradio",
    "gradio-client",
    "numpy",
    "huggingface-hub",
    "protobuf",
    "pydantic",
    "fastapi",
    "starlette",
)

LLAMA_INDEX = "https://abetlen.github.io/llama-cpp-python/whl/{tag}"
# Prebuilt wheels on that index (llama-cpp-python's release workflows): CPU, Metal, and
# CUDA 11.8, 12.1-12.5, 13.0 and 13.2 (11.8 and 13.x from 0.3.25 on; pip takes the newest).
CUDA_WHEELS = ((11, 8), (12, 1), (12, 2), (12, 3), (12, 4), (12, 5), (13, 0), (13, 2))
# Up to 0.3.19 a wheel was built for each CPython up to 3.12; from 0.3.20 on each one is
# tagged py3-none (the library is loaded through ctypes) and installs on any Python 3.
CP_WHEEL_PYTHONS = ((3, 10), (3, 11), (3, 12))
PY3_WHEELS_SINCE = "0.3.20"
WHEEL_ARCHES = ("x86_64", "amd64", "arm64", "aarch64")
NO_BUILD_FLAG = "--dtg-no-llama-build"
BUILD_NOTICE = (
    "building llama-cpp-python from source (CPU); this often takes 5-15 minutes and needs "
    f"a C++ compiler and CMake. To skip it, add {NO_BUILD_FLAG} to COMMANDLINE_ARGS "
    "(or set DTG_LLAMA_CPP=skip): the torch backend works without it."
)
LLAMA_MODES = ("auto", "cpu", "skip")
SKIPPED = "llama-cpp-python installation is turned off (DTG_LLAMA_CPP=skip)"
# A failed llama-cpp-python install (a source build takes minutes) is not tried again
# at every start-up: only after this long, or when Python, torch or the mode change.
RETRY_AFTER_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Requirement:
    dist: str  # the name pip knows
    module: str  # the name Python imports
    minimum: str
    no_deps: bool = False  # tipo-kgen: only its tag lists are wanted, not its torch requirement


REQUIREMENTS = (
    Requirement("platformdirs", "platformdirs", "3.0"),
    Requirement("tipo-kgen", "kgen", "0.1.0", no_deps=True),
)
LLAMA = Requirement("llama-cpp-python", "llama_cpp", "0.2.80")


# --- versions -----------------------------------------------------------------


def version_tuple(text: str) -> tuple[int, ...]:
    """Fallback parser: the leading numbers of a version, "0.3.1rc1+cu121" -> (0, 3, 1)."""
    numbers = []
    for part in text.split("+", 1)[0].split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def at_least(installed: str, minimum: str) -> bool:
    """Proper version order (10 > 9), with packaging when it is there, else numeric tuples."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return version_tuple(installed) >= version_tuple(minimum)
    try:
        return Version(installed) >= Version(minimum)
    except InvalidVersion:
        return version_tuple(installed) >= version_tuple(minimum)


def needs_install(installed: str | None, requirement: Requirement) -> bool:
    return installed is None or not at_least(installed, requirement.minimum)


# --- platform -----------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    system: str  # platform.system(): Linux, Windows, Darwin
    arch: str  # platform.machine(), lower case
    python: tuple[int, int]
    torch_version: str | None = None  # "2.1.2+cu121"
    # Version of the CUDA runtime wheel torch pulled in: nvidia-cuda-runtime-cu12 up to
    # torch 2.8 or so, nvidia-cuda-runtime (no suffix; 13.x) with the CUDA 13 builds.
    cuda_runtime: str | None = None


@dataclass(frozen=True)
class Accelerator:
    kind: str  # cuda, rocm, metal, cpu
    version: tuple[int, ...] = ()


CUDA_RUNTIME_WHEELS = (
    "nvidia-cuda-runtime",
    "nvidia-cuda-runtime-cu13",
    "nvidia-cuda-runtime-cu12",
)


def cuda_runtime_version() -> str | None:
    """The CUDA runtime torch installed from PyPI, whichever name its wheel has; the newest
    when a torch switch left an older runtime's metadata behind."""
    found = [v for v in (installed_version(name) for name in CUDA_RUNTIME_WHEELS) if v]
    return max(found, key=version_tuple) if found else None


def detect_accelerator(machine: Machine) -> Accelerator:
    """What torch was built for, read from its version tag: no import of torch needed."""
    local = (machine.torch_version or "").partition("+")[2].lower()
    cuda = re.fullmatch(r"cu(\d+)(\d)", local)
    if cuda:
        return Accelerator("cuda", (int(cuda.group(1)), int(cuda.group(2))))
    if local.startswith("rocm"):
        return Accelerator("rocm", version_tuple(local.removeprefix("rocm")))
    if machine.system == "Darwin" and machine.arch in ("arm64", "aarch64"):
        return Accelerator("metal")
    if not local and machine.cuda_runtime and machine.system != "Darwin":
        # torch from PyPI on Linux is a CUDA build without a "+cu" tag.
        return Accelerator("cuda", version_tuple(machine.cuda_runtime)[:2])
    return Accelerator("cpu")


def gpu_wheel_tag(accelerator: Accelerator) -> str | None:
    """The llama-cpp-python wheel index for this accelerator, or None when there is none."""
    if accelerator.kind == "metal":
        return "metal"
    if accelerator.kind != "cuda" or len(accelerator.version) < 2:
        return None
    # A wheel built for an older CUDA 12 runs on a newer CUDA 12 runtime, not the reverse.
    usable = [v for v in CUDA_WHEELS if v[0] == accelerator.version[0] and v <= accelerator.version]
    if not usable:
        return None
    major, minor = max(usable)
    return f"cu{major}{minor}"


@dataclass(frozen=True)
class PipStep:
    description: str
    args: str  # everything after "pip "
    env: tuple[tuple[str, str], ...] = ()
    notice: str = ""  # printed before the step runs


def wheel_minimum(python: tuple[int, int]) -> str | None:
    """The oldest llama-cpp-python with a prebuilt wheel for this Python; None: there is none."""
    if python in CP_WHEEL_PYTHONS:
        return LLAMA.minimum
    if python >= (3, 13):
        return PY3_WHEELS_SINCE
    return None


def llama_steps(machine: Machine, mode: str = "auto", build: bool = True) -> list[PipStep]:
    """Ways to get llama-cpp-python, best first: GPU wheel, CPU wheel, source build (CPU)."""
    if mode == "skip":
        return []
    steps = _wheel_steps(machine, mode)
    if build:
        steps.append(_source_build_step(machine, wheels_tried=bool(steps)))
    return steps


def _wheel_steps(machine: Machine, mode: str) -> list[PipStep]:
    minimum = wheel_minimum(machine.python)
    if minimum is None or machine.arch not in WHEEL_ARCHES:
        return []
    spec = f'"{LLAMA.dist}>={minimum}"'
    tags = [] if mode == "cpu" else [gpu_wheel_tag(detect_accelerator(machine))]
    binary = f"install {spec} --only-binary {LLAMA.dist} --extra-index-url"
    return [
        PipStep(f"llama-cpp-python ({tag} wheel)", f"{binary} {LLAMA_INDEX.format(tag=tag)}")
        for tag in [*[t for t in tags if t], "cpu"]
    ]


def _source_build_step(machine: Machine, wheels_tried: bool) -> PipStep:
    # Compiled for the CPU only: GPU builds need a toolkit most users lack, and DTG is
    # small enough for the CPU.
    why = "" if wheels_tried else f"no prebuilt wheel fits {_described(machine)}; "
    return PipStep(
        "llama-cpp-python (source build, CPU)",
        f'install "{LLAMA.dist}>={LLAMA.minimum}" --no-binary {LLAMA.dist}',
        (("CMAKE_ARGS", "-DGGML_CUDA=off -DGGML_METAL=off"),),
        notice=f"{PREFIX} {why}{BUILD_NOTICE}",
    )


def _why_none(machine: Machine, mode: str) -> str:
    """Why llama_steps has nothing to try."""
    if mode == "skip":
        return SKIPPED
    return (
        f"no prebuilt llama-cpp-python wheel fits {_described(machine)} and {NO_BUILD_FLAG} is set"
    )


def _described(machine: Machine) -> str:
    python = ".".join(map(str, machine.python))
    if wheel_minimum(machine.python) is None:
        return f"Python {python}"
    return f"{machine.system} on {machine.arch}"


def requirement_step(requirement: Requirement) -> PipStep:
    no_deps = " --no-deps" if requirement.no_deps else ""
    return PipStep(
        requirement.dist,
        f'install "{requirement.dist}>={requirement.minimum}"{no_deps}',
    )


def constraints_text(installed: Mapping[str, str | None]) -> str:
    """Pins for the webui's own packages, for pip's -c: installed ones stay exactly as they are."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(installed.items()) if version)


def with_constraints(step: PipStep, constraints_path: str | None) -> PipStep:
    if not constraints_path:
        return step
    args = f'{step.args} -c "{constraints_path}"'
    return PipStep(step.description, args, step.env)


# --- the webui's flags ----------------------------------------------------------


def skip_requested(launch: Any, argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """--skip-install, as the webui parsed it, or as passed on (argv, COMMANDLINE_ARGS)."""
    if getattr(getattr(launch, "args", None), "skip_install", False):
        return True
    return "--skip-install" in _flags(argv, environ)


def build_allowed(launch: Any, argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """False with --dtg-no-llama-build, as the webui parsed it or as passed on."""
    if getattr(getattr(launch, "args", None), "dtg_no_llama_build", False):
        return False
    return NO_BUILD_FLAG not in _flags(argv, environ)


def _flags(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    try:
        return [*argv, *shlex.split(environ.get("COMMANDLINE_ARGS", ""))]
    except ValueError:  # unbalanced quotes: fall back to what argv says
        return list(argv)


def llama_mode(environ: Mapping[str, str]) -> str:
    mode = environ.get("DTG_LLAMA_CPP", "auto").strip().lower() or "auto"
    return mode if mode in LLAMA_MODES else "auto"


# --- running ------------------------------------------------------------------


def last_line(error: BaseException) -> str:
    """Why run_pip failed, short: pip's own last word (run_pip's error ends with pip's stderr)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # A one-line stderr sits on run_pip's "stderr: " line.
    return lines[-1].removeprefix("stderr: ").removeprefix("stdout: ")


def one_line(error: BaseException) -> str:
    """The useful part of run_pip's multi-line error: its first and its last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


@dataclass
class Installer:
    """Runs the steps through the webui's helpers; every failure becomes one message."""

    run_pip: Callable[..., Any]
    is_installed: Callable[[str], bool]
    version_of: Callable[[str], str | None]
    verify_llama: Callable[[], bool]
    constraints_path: str | None = None
    echo: Callable[[str], None] = print
    last_error: str = ""
    last_reason: str = ""  # the short form of last_error, for the fallback lines
    no_installer: bool = False  # nothing can install packages here

    def ensure(self, requirement: Requirement) -> bool:
        """True when the requirement is there afterwards."""
        installed = self.version_of(requirement.dist)
        if installed is None and self.is_installed(requirement.module):
            return True  # present without metadata (a copied folder): keep it
        if not needs_install(installed, requirement):
            return True
        return self.run(requirement_step(requirement))

    def run(self, step: PipStep, *, quiet: bool = False) -> bool:
        if step.notice:
            self.echo(step.notice)
        step = with_constraints(step, self.constraints_path)
        saved = {key: os.environ.get(key) for key, _ in step.env}
        os.environ.update(dict(step.env))
        try:
            self.run_pip(step.args, step.description)
        except Exception as exc:  # run_pip raises RuntimeError; start-up must go on regardless
            self.last_error = one_line(exc)
            self.last_reason = last_line(exc)
            self.no_installer = isinstance(exc, NoInstaller)
            if not quiet:
                self.echo(f"{PREFIX} could not install {step.description}: {self.last_error}")
            return False
        finally:
            _restore(saved)
        return True

    def _say_fallback(self, failed: PipStep, following: PipStep) -> None:
        # run_pip printed "Installing ..." for both; without this line the second
        # looks like a second thing to install rather than the first one's replacement.
        self.echo(
            f"{PREFIX} {failed.description} failed ({self.last_reason}); "
            f"trying {following.description}"
        )

    def llama_in_place(self) -> bool:
        installed = self.version_of(LLAMA.dist)
        return installed is not None and not needs_install(installed, LLAMA)

    def ensure_llama(self, steps: Iterable[PipStep], nothing_to_try: str = SKIPPED) -> str | None:
        """None when llama-cpp-python is usable, else why not (for the status file).

        `nothing_to_try` is the reason when there are no steps."""
        if self.llama_in_place():
            return None  # keep what the user has, whichever build it is
        steps = list(steps)
        tried = []
        broken = False  # an earlier step installed a build that does not import
        for number, step in enumerate(steps):
            if self.run(_force_reinstall(step) if broken else step, quiet=True):
                if self.verify_llama():
                    return None
                broken = True
                self.last_error = self.last_reason = "it installed but does not import"
            tried.append(step.description)
            if self.no_installer:
                break
            if number + 1 < len(steps):
                self._say_fallback(step, steps[number + 1])
        if not tried:
            return nothing_to_try
        last = f"; last error: {self.last_error}" if self.last_error else ""
        return f"could not install llama-cpp-python (tried: {'; '.join(tried)}{last})"


def _force_reinstall(step: PipStep) -> PipStep:
    # A build that installed but does not import (say, a CUDA wheel without CUDA
    # libraries) is replaced by the next one; --no-deps keeps its dependencies as they are.
    return PipStep(step.description, f"{step.args} --force-reinstall --no-deps", step.env)


def _restore(saved: Mapping[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def status_for(
    llama_problem: str | None, attempt: str = "", attempted_at: float | None = 0.0
) -> dict[str, Any] | None:
    """What the panel shows; None (no file) when everything is in place.

    `attempt` names the conditions of the failed install (see `attempt_key`), so the
    next start-up can tell whether trying again could turn out differently; an
    `attempted_at` of None (nothing could run) makes it try again at once.
    """
    if llama_problem is None:
        return None
    return {
        "llama_cpp": False,
        "problem": llama_problem,
        "message": (
            f"{llama_problem}. DanTagGen uses the torch backend (Hugging Face models) instead; "
            "to use GGUF models, install llama-cpp-python into this Python (the webui's or "
            "ComfyUI's) yourself and restart."
        ),
        "attempt": attempt,
        "attempted_at": attempted_at,
    }


def attempt_key(machine: Machine, mode: str, build: bool = True) -> str:
    """What a llama-cpp-python install depends on; a change is worth another try."""
    python = ".".join(map(str, machine.python))
    key = f"python {python}, torch {machine.torch_version}, mode {mode}, {LLAMA.minimum}"
    return key if build else f"{key}, no build"


def retry_due(previous: Mapping[str, Any] | None, attempt: str, now: float) -> bool:
    """Whether to try installing llama-cpp-python again after an earlier failure."""
    if not isinstance(previous, Mapping) or previous.get("llama_cpp", True):
        return True
    if previous.get("attempt") != attempt:
        return True
    attempted_at = previous.get("attempted_at")
    if not isinstance(attempted_at, (int, float)):
        return True
    return not 0 <= now - attempted_at < RETRY_AFTER_S


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_status(status: dict[str, Any] | None, path: Path = STATUS_FILE) -> None:
    if status is None:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps(status, indent=2), encoding="utf-8")


# --- pip, or uv in a venv without pip --------------------------------------------

NO_INSTALLER = (
    "this Python has no pip and no uv was found (python -m ensurepip adds pip; or put uv on PATH)"
)


class NoInstaller(RuntimeError):
    """Neither pip nor uv: every install fails the same way, so one try is enough."""


@dataclass(frozen=True)
class UvPip:
    """The webui's run_pip, through `uv pip ... --python <this Python>` (a venv uv made
    has no pip, and the webui's run_pip calls `python -m pip`)."""

    uv: str  # the command line that starts uv, quoted for the shell
    python: str

    def __call__(self, command: str, desc: str | None = None) -> str:
        print(f"Installing {desc} (uv)", flush=True)
        index_url = os.environ.get("INDEX_URL")  # as the webui's run_pip honours it
        index = f" --index-url {index_url}" if index_url else ""
        line = f'{self.uv} pip {command} --python "{self.python}"{index}'
        done = subprocess.run(
            line, shell=True, capture_output=True, text=True, errors="ignore", check=False
        )
        if done.returncode != 0:
            output = [
                f"{name}: {text}"
                for name, text in (("stdout", done.stdout), ("stderr", done.stderr))
                if text
            ]
            raise RuntimeError(
                "\n".join(
                    [
                        f"Couldn't install {desc}.",
                        f"Command: {line}",
                        f"Error code: {done.returncode}",
                        *output,
                    ]
                )
            )
        return done.stdout or ""


def no_installer(command: str, desc: str | None = None) -> str:
    raise NoInstaller(NO_INSTALLER)


def find_uv(python: str) -> str | None:
    """uv beside this Python (a venv's own), on PATH, or as this Python's module."""
    found = shutil.which("uv", path=str(Path(python).parent)) or shutil.which("uv")
    if found:
        return f'"{found}"'
    if importlib.util.find_spec("uv") is not None:
        return f'"{python}" -m uv'
    return None


def pip_runner(
    webui_run_pip: Callable[..., Any], has_pip: bool, uv: str | None, python: str
) -> Callable[..., Any]:
    """The webui's run_pip where this Python has pip, else uv, else one clear failure."""
    if has_pip:
        return webui_run_pip
    if uv is not None:
        return UvPip(uv, python)
    return no_installer


# --- the real world -------------------------------------------------------------


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def this_machine() -> Machine:
    return Machine(
        system=platform.system(),
        arch=platform.machine().lower(),
        python=sys.version_info[:2],
        torch_version=installed_version("torch"),
        cuda_runtime=cuda_runtime_version(),
    )


def llama_imports() -> bool:
    """llama_cpp imports in a fresh interpreter, after torch as in the webui (its CUDA libs)."""
    code = "import importlib.util as u\nif u.find_spec('torch'): import torch\nimport llama_cpp"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    return result.returncode == 0


def write_constraints() -> str | None:
    text = constraints_text({name: installed_version(name) for name in PROTECTED})
    if not text:
        return None
    with tempfile.NamedTemporaryFile(
        "w", suffix="-dtg-constraints.txt", delete=False, encoding="utf-8"
    ) as handle:
        handle.write(text)
    return handle.name


def install(launch: Any, environ: Mapping[str, str], argv: Sequence[str]) -> None:
    if skip_requested(launch, argv, environ):
        return
    constraints = write_constraints()
    python = sys.executable
    run_pip = pip_runner(
        launch.run_pip, importlib.util.find_spec("pip") is not None, find_uv(python), python
    )
    installer = Installer(
        run_pip=run_pip,
        is_installed=launch.is_installed,
        version_of=installed_version,
        verify_llama=llama_imports,
        constraints_path=constraints,
    )
    try:
        for requirement in REQUIREMENTS:
            installer.ensure(requirement)
        build = build_allowed(launch, argv, environ)
        _install_llama(installer, this_machine(), llama_mode(environ), time.time(), build)
    finally:
        if constraints:
            Path(constraints).unlink(missing_ok=True)


def _install_llama(
    installer: Installer, machine: Machine, mode: str, now: float, build: bool = True
) -> None:
    attempt = attempt_key(machine, mode, build)
    previous = read_status(STATUS_FILE)
    waiting = previous is not None and not retry_due(previous, attempt, now)
    if waiting and not installer.llama_in_place():
        when = time.strftime("%Y-%m-%d", time.gmtime(previous["attempted_at"] + RETRY_AFTER_S))
        print(
            f"{PREFIX} llama-cpp-python failed to install earlier; not retried before {when} "
            f"(delete {STATUS_FILE.name} to retry now); models on Hugging Face folders use "
            "the torch backend.",
            flush=True,
        )
        return
    problem = installer.ensure_llama(llama_steps(machine, mode, build), _why_none(machine, mode))
    # Without pip or uv nothing was really tried: the next start-up tries again.
    write_status(status_for(problem, attempt, None if installer.no_installer else now))
    if problem:
        print(
            f"{PREFIX} {problem}; models on Hugging Face folders use the torch backend.", flush=True
        )


def subprocess_run_pip(command: str, desc: str | None = None) -> str:
    """`python -m pip <command>` for hosts without the webui's run_pip (ComfyUI); raises
    RuntimeError with pip's output, as run_pip does, so Installer reads it the same way."""
    print(f"{PREFIX} installing {desc}", flush=True)
    line = f'"{sys.executable}" -m pip {command}'
    done = subprocess.run(
        line, shell=True, capture_output=True, text=True, errors="ignore", check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"Couldn't install {desc}.\nstderr: {done.stderr.strip()}")
    return done.stdout or ""


def install_prebuilt(environ: Mapping[str, str]) -> None:
    """The same decisions for a host that is not the webui (ComfyUI's first import of the
    node pack): the missing requirements, then llama-cpp-python from prebuilt wheels only,
    never a source build at start-up. Every failure is one printed line."""
    if llama_mode(environ) == "skip":
        return
    constraints = write_constraints()
    python = sys.executable
    run_pip = pip_runner(
        subprocess_run_pip, importlib.util.find_spec("pip") is not None, find_uv(python), python
    )
    installer = Installer(
        run_pip=run_pip,
        is_installed=lambda module: importlib.util.find_spec(module) is not None,
        version_of=installed_version,
        verify_llama=llama_imports,
        constraints_path=constraints,
    )
    try:
        for requirement in REQUIREMENTS:
            installer.ensure(requirement)
        _install_llama(installer, this_machine(), llama_mode(environ), time.time(), build=False)
    finally:
        if constraints:
            Path(constraints).unlink(missing_ok=True)


# --- ComfyUI ----------------------------------------------------------------------

COMFY_SWITCH = "DTG_COMFY_INSTALL"  # "0": the node pack installs nothing (tests set it)


def comfyui_host(environ: Mapping[str, str], extension_dir: Path = EXTENSION_DIR) -> bool:
    """Whether this file runs for ComfyUI rather than outside any host.

    ComfyUI Manager runs a node folder's install.py (`python install.py`, cwd at the
    folder, after requirements.txt) with COMFYUI_PATH set, as comfy-cli does; an older
    Manager, or a person, runs it without: then the folder tells, ComfyUI/custom_nodes/
    <this folder> with ComfyUI's own folder_paths.py above."""
    if environ.get("COMFYUI_PATH", "").strip():
        return True
    custom_nodes = extension_dir.parent
    comfyui = custom_nodes.parent
    return custom_nodes.name == "custom_nodes" and (comfyui / "folder_paths.py").is_file()


def install_for_comfyui(environ: Mapping[str, str]) -> None:
    """ComfyUI's one way in, for the pack's first import (dtg_comfy.first_start) and for
    ComfyUI Manager's run of this file: install_prebuilt, unless DTG_COMFY_INSTALL=0."""
    if environ.get(COMFY_SWITCH, "1").strip() == "0":
        return
    install_prebuilt(environ)


def _main_for_comfyui(environ: Mapping[str, str]) -> None:
    print(f"{PREFIX} installing for ComfyUI (prebuilt llama-cpp-python wheels only)", flush=True)
    try:
        install_for_comfyui(environ)
    except Exception as exc:  # ComfyUI Manager must not see a failed install: torch works
        print(f"{PREFIX} installer failed, the node pack may lack packages: {exc!r}", flush=True)


def main() -> None:
    try:
        import launch
    except ImportError as exc:
        if comfyui_host(os.environ):
            _main_for_comfyui(os.environ)
            return
        print(
            f"{PREFIX} install.py must be run by the webui (cannot import launch: {exc}) "
            "or from ComfyUI's custom_nodes folder",
            flush=True,
        )
        return
    try:
        install(launch, os.environ, sys.argv)
    except Exception as exc:  # whatever happens, the webui must start
        print(f"{PREFIX} installer failed, the extension may lack packages: {exc!r}", flush=True)


if __name__ == "__main__":
    main()

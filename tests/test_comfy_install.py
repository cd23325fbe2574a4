"""install.py run by ComfyUI Manager (`python install.py` in the node folder), without pip:
pip is stood in by a recorder, as in test_install.py; the webui's path stays its own."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_install():
    spec = importlib.util.spec_from_file_location("dtg_install_comfy_test", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


inst = _load_install()


def comfyui_tree(base: Path, folder: str = "custom_nodes") -> Path:
    """A ComfyUI checkout in small (its folder_paths.py) with the pack under `folder`."""
    (base / "ComfyUI" / "folder_paths.py").parent.mkdir(parents=True)
    (base / "ComfyUI" / "folder_paths.py").write_text("# ComfyUI's own\n", encoding="utf-8")
    pack = base / "ComfyUI" / folder / "dtg-upsampler"
    pack.mkdir(parents=True)
    shutil.copy(ROOT / "install.py", pack / "install.py")
    return pack


def test_comfyui_is_told_by_managers_variable_or_by_the_folder(tmp_path):
    pack = comfyui_tree(tmp_path)
    assert inst.comfyui_host({}, pack)
    assert inst.comfyui_host({"COMFYUI_PATH": "/opt/ComfyUI"}, tmp_path / "anywhere")
    assert not inst.comfyui_host({}, tmp_path / "anywhere")
    webui = tmp_path / "webui" / "extensions" / "dtg-upsampler"
    webui.mkdir(parents=True)
    assert not inst.comfyui_host({"COMFYUI_PATH": " "}, webui)
    # custom_nodes without ComfyUI above it is not ComfyUI.
    assert not inst.comfyui_host({}, comfyui_tree(tmp_path / "other", "extensions"))


class Pip:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, command: str, desc: str | None = None) -> str:
        self.calls.append(command)
        raise RuntimeError(f"Couldn't install {desc}.\nstderr: ERROR: No matching distribution")


@pytest.fixture
def managers_run(monkeypatch, tmp_path):
    """install.py's main() as ComfyUI Manager starts it: no launch module, COMFYUI_PATH
    set; pip is a recorder that fails, and the machine is a CUDA 12.1 Linux."""
    pip = Pip()

    def pip_runner(host_pip, has_pip, uv, python):
        assert host_pip is inst.subprocess_run_pip  # `python -m pip`: ComfyUI has no run_pip
        return pip

    versions = {"platformdirs": "4.2", "tipo-kgen": "0.3.1", "torch": "2.1.2+cu121"}
    monkeypatch.setitem(sys.modules, "launch", None)
    for name in ("COMFYUI_PATH", "DTG_COMFY_INSTALL", "DTG_LLAMA_CPP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    monkeypatch.setattr(inst, "pip_runner", pip_runner)
    monkeypatch.setattr(inst, "installed_version", versions.get)
    monkeypatch.setattr(inst, "llama_imports", lambda: False)
    machine = inst.Machine("Linux", "x86_64", (3, 11), "2.1.2+cu121")
    monkeypatch.setattr(inst, "this_machine", lambda: machine)
    status = tmp_path / "status.json"
    monkeypatch.setattr(inst, "STATUS_FILE", status)
    monkeypatch.setattr(inst, "write_status", lambda s: status.write_text(json.dumps(s)))
    return pip, status


def test_managers_run_tries_prebuilt_wheels_only_and_never_fails(managers_run, capsys):
    pip, status = managers_run
    inst.main()  # returns: Manager sees exit code 0
    assert len(pip.calls) == 2
    assert inst.LLAMA_INDEX.format(tag="cu121") in pip.calls[0]
    assert inst.LLAMA_INDEX.format(tag="cpu") in pip.calls[1]
    for command in pip.calls:
        assert "--only-binary llama-cpp-python" in command and "--no-binary" not in command
        assert '-c "' in command  # ComfyUI's torch and the rest are held where they are
    assert json.loads(status.read_text())["llama_cpp"] is False
    out = capsys.readouterr().out
    assert "installing for ComfyUI" in out and "torch backend" in out
    assert "must be run by the webui" not in out and "building" not in out


def test_managers_run_honours_the_switches(managers_run, monkeypatch, capsys):
    pip, status = managers_run
    for name, value in (("DTG_COMFY_INSTALL", "0"), ("DTG_LLAMA_CPP", "skip")):
        with monkeypatch.context() as switched:
            switched.setenv(name, value)
            inst.main()
    assert pip.calls == [] and not status.exists()


def test_the_webui_path_comes_first_even_with_comfyui_around(monkeypatch):
    launch = types.SimpleNamespace(args=types.SimpleNamespace(skip_install=False))
    monkeypatch.setitem(sys.modules, "launch", launch)
    monkeypatch.setenv("COMFYUI_PATH", "/opt/ComfyUI")
    ran = []
    monkeypatch.setattr(inst, "install", lambda *args: ran.append(("webui", args[0])))
    monkeypatch.setattr(inst, "install_for_comfyui", lambda environ: ran.append("comfyui"))
    inst.main()
    assert ran == [("webui", launch)]


@pytest.mark.parametrize(
    ("folder", "expected"),
    [("custom_nodes", "installing for ComfyUI"), ("extensions", "must be run by the webui")],
)
def test_python_install_py_in_the_node_folder(tmp_path, folder, expected):
    """The real `python install.py`, cwd at the node folder as Manager runs it (an older
    Manager: no COMFYUI_PATH); DTG_LLAMA_CPP=skip keeps pip out of it."""
    pack = comfyui_tree(tmp_path, folder)
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "PYTHONPATH")}
    env["DTG_LLAMA_CPP"] = "skip"
    done = subprocess.run(
        [sys.executable, "install.py"],
        cwd=pack,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert not (pack / "dtg_install_status.json").exists()

"""install.py's decisions, run without pip: the webui's helpers are replaced by recorders."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_install():
    spec = importlib.util.spec_from_file_location("dtg_install_under_test", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up by name while install.py runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


inst = _load_install()
Machine = inst.Machine


def linux(torch: str | None = None, python=(3, 10), cuda_runtime=None, arch="x86_64"):
    return Machine("Linux", arch, python, torch, cuda_runtime)


class Pip:
    """Records run_pip calls; fails those whose arguments contain a marker."""

    def __init__(self, fail_on: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_on = fail_on

    def __call__(self, command: str, desc: str | None = None) -> str:
        self.calls.append((command, desc))
        if any(marker in command for marker in self.fail_on):
            raise RuntimeError(f"Couldn't install {desc}.\nCommand: pip {command}\nError code: 1")
        return ""


def installer(pip: Pip, versions: dict[str, str] | None = None, verify=lambda: True, **kw):
    messages: list[str] = []
    chosen = versions or {}
    made = inst.Installer(
        run_pip=pip,
        is_installed=lambda module: False,
        version_of=chosen.get,
        verify_llama=verify,
        echo=messages.append,
        **kw,
    )
    return made, messages


# --- versions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "minimum", "expected"),
    [
        ("0.10.0", "0.9.0", True),  # a string comparison says False
        ("0.2.9", "0.2.80", False),  # and True here
        ("0.2.80", "0.2.80", True),
        ("0.3.1+cu121", "0.3.1", True),
        ("1.0.0rc1", "1.0.0", False),
        ("3.10.0", "3.9", True),
    ],
)
def test_versions_compare_as_numbers(installed, minimum, expected):
    assert inst.at_least(installed, minimum) is expected


def test_fallback_parser_without_packaging(monkeypatch):
    monkeypatch.setitem(sys.modules, "packaging.version", None)  # import now fails
    assert inst.at_least("0.10.0", "0.9.0")
    assert not inst.at_least("0.2.9", "0.2.80")
    assert inst.version_tuple("0.3.1rc1+cu121") == (0, 3, 1)
    assert inst.version_tuple("weird") == ()


def test_invalid_version_falls_back_to_numbers():
    assert inst.at_least("2.1.0-custom build", "2.0")


# --- platform -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "kind", "version"),
    [
        (linux("2.1.2+cu121"), "cuda", (12, 1)),
        (linux("2.0.1+cu118"), "cuda", (11, 8)),
        (linux("2.3.1+cu124"), "cuda", (12, 4)),
        (linux("2.3.0+rocm5.7"), "rocm", (5, 7)),
        (linux("2.3.1+cpu"), "cpu", ()),
        (linux("2.3.1", cuda_runtime="12.1.105"), "cuda", (12, 1)),  # torch from PyPI
        (linux(None), "cpu", ()),
        (Machine("Darwin", "arm64", (3, 10), "2.3.1"), "metal", ()),
        (Machine("Darwin", "x86_64", (3, 10), "2.0.1"), "cpu", ()),
        (Machine("Windows", "amd64", (3, 10), "2.1.2+cu121"), "cuda", (12, 1)),
    ],
)
def test_accelerator_from_torch_build(machine, kind, version):
    assert inst.detect_accelerator(machine) == inst.Accelerator(kind, version)


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        # torch 2.14 from PyPI is a CUDA 13 build; its runtime wheel has no -cu suffix.
        ({"nvidia-cuda-runtime": "13.0.96"}, "13.0.96"),
        ({"nvidia-cuda-runtime-cu12": "12.4.127"}, "12.4.127"),
        # A cu12 torch upgraded to a CUDA 13 one may leave the old runtime's metadata.
        ({"nvidia-cuda-runtime-cu12": "12.8.90", "nvidia-cuda-runtime": "13.0.96"}, "13.0.96"),
        ({}, None),
    ],
)
def test_cuda_runtime_read_under_each_wheel_name(monkeypatch, installed, expected):
    monkeypatch.setattr(inst, "installed_version", installed.get)
    assert inst.cuda_runtime_version() == expected


def test_pypi_torch_with_cuda_13_gets_the_cuda_13_wheels(monkeypatch):
    monkeypatch.setattr(inst, "installed_version", {"nvidia-cuda-runtime": "13.0.96"}.get)
    machine = linux("2.14.1", cuda_runtime=inst.cuda_runtime_version())
    assert inst.gpu_wheel_tag(inst.detect_accelerator(machine)) == "cu130"


@pytest.mark.parametrize(
    ("accelerator", "tag"),
    [
        (inst.Accelerator("cuda", (12, 1)), "cu121"),
        (inst.Accelerator("cuda", (12, 8)), "cu125"),  # newest wheel the runtime can load
        (inst.Accelerator("cuda", (11, 8)), "cu118"),
        (inst.Accelerator("cuda", (11, 7)), None),
        (inst.Accelerator("cuda", (13, 0)), "cu130"),
        (inst.Accelerator("cuda", (13, 1)), "cu130"),
        (inst.Accelerator("cuda", (13, 2)), "cu132"),
        (inst.Accelerator("rocm", (5, 7)), None),
        (inst.Accelerator("metal"), "metal"),
        (inst.Accelerator("cpu"), None),
    ],
)
def test_gpu_wheel_index(accelerator, tag):
    assert inst.gpu_wheel_tag(accelerator) == tag


def _indexes(steps):
    return [s.args.split("whl/")[1] if "whl/" in s.args else "source" for s in steps]


def test_cuda_gets_its_wheel_then_cpu_wheel_then_source():
    steps = inst.llama_steps(linux("2.1.2+cu121"))
    assert _indexes(steps) == ["cu121", "cpu", "source"]
    assert "--only-binary llama-cpp-python" in steps[0].args
    assert "--no-binary llama-cpp-python" in steps[-1].args
    assert dict(steps[-1].env)["CMAKE_ARGS"]


def test_rocm_and_old_cuda_get_the_cpu_wheel():
    assert _indexes(inst.llama_steps(linux("2.3.0+rocm5.7"))) == ["cpu", "source"]
    assert _indexes(inst.llama_steps(linux("1.13.1+cu117"))) == ["cpu", "source"]


def test_apple_silicon_gets_metal():
    machine = Machine("Darwin", "arm64", (3, 11), "2.3.1")
    assert _indexes(inst.llama_steps(machine)) == ["metal", "cpu", "source"]


def _minimums(steps):
    return [s.args.split('"')[1].split(">=")[1] for s in steps]


@pytest.mark.parametrize("python", [(3, 13), (3, 14)])
def test_python_313_gets_the_py3_wheels(python):
    """From llama-cpp-python 0.3.20 on every wheel on the index is tagged py3-none."""
    steps = inst.llama_steps(linux("2.9.1+cu130", python=python))
    assert _indexes(steps) == ["cu130", "cpu", "source"]
    assert _minimums(steps) == ["0.3.20", "0.3.20", inst.LLAMA.minimum]
    windows = Machine("Windows", "amd64", python, "2.6.0+cu124")
    assert _indexes(inst.llama_steps(windows)) == ["cu124", "cpu", "source"]
    metal = Machine("Darwin", "arm64", python, "2.6.0")
    assert _indexes(inst.llama_steps(metal)) == ["metal", "cpu", "source"]


def test_python_312_keeps_its_own_minimum():
    steps = inst.llama_steps(linux("2.3.1+cu121", python=(3, 12)))
    assert set(_minimums(steps)) == {inst.LLAMA.minimum}


def test_python_without_wheels_builds_from_source_and_says_so():
    (step,) = inst.llama_steps(linux("2.0.1+cu118", python=(3, 9)))
    assert _indexes([step]) == ["source"]
    assert step.notice.startswith("[DanTagGen] no prebuilt wheel fits Python 3.9; building")
    assert "minutes" in step.notice and inst.NO_BUILD_FLAG in step.notice
    assert "\n" not in step.notice
    (riscv,) = inst.llama_steps(linux("2.3.1", arch="riscv64"))
    assert "no prebuilt wheel fits Linux on riscv64" in riscv.notice


def test_build_notice_is_printed_once_before_the_build():
    pip = Pip(fail_on=("llama",))
    made, messages = installer(pip)
    made.ensure_llama(inst.llama_steps(linux("2.3.1", python=(3, 9))))
    assert len(messages) == 1 and "5-15 minutes" in messages[0]
    (build_call,) = pip.calls
    assert "--no-binary" in build_call[0]


def test_no_build_flag_from_every_place_the_webui_puts_it():
    plain = types.SimpleNamespace(args=types.SimpleNamespace())
    parsed = types.SimpleNamespace(args=types.SimpleNamespace(dtg_no_llama_build=True))
    assert inst.build_allowed(plain, ["install.py"], {})
    assert not inst.build_allowed(parsed, [], {})
    assert not inst.build_allowed(plain, ["install.py", inst.NO_BUILD_FLAG], {})
    assert not inst.build_allowed(None, [], {"COMMANDLINE_ARGS": f"--api {inst.NO_BUILD_FLAG}"})
    steps = inst.llama_steps(linux("2.6.0+cu124", python=(3, 13)), build=False)
    assert _indexes(steps) == ["cu124", "cpu"]


def test_no_build_and_no_wheel_names_the_flag(status_writer, capsys):
    pip = Pip()
    made, _ = installer(pip, verify=lambda: False)
    inst._install_llama(made, linux("2.3.1", python=(3, 9)), "auto", 1000.0, build=False)
    assert pip.calls == []
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and inst.NO_BUILD_FLAG in out[0] and "Python 3.9" in out[0]
    assert "DTG_LLAMA_CPP=skip" not in out[0]
    problem = json.loads(status_writer.read_text())["problem"]
    assert problem.startswith("no prebuilt llama-cpp-python wheel fits Python 3.9")
    # Turning the build back on is worth another try at once.
    inst._install_llama(made, linux("2.3.1", python=(3, 9)), "auto", 1000.0 + DAY)
    assert len(pip.calls) == 1


def test_modes_from_the_environment():
    assert inst.llama_mode({}) == "auto"
    assert inst.llama_mode({"DTG_LLAMA_CPP": " CPU "}) == "cpu"
    assert inst.llama_mode({"DTG_LLAMA_CPP": "nonsense"}) == "auto"
    assert _indexes(inst.llama_steps(linux("2.1.2+cu121"), "cpu")) == ["cpu", "source"]
    assert inst.llama_steps(linux("2.1.2+cu121"), "skip") == []


# --- the webui's flags ------------------------------------------------------------


def test_skip_install_from_every_place_the_webui_puts_it():
    parsed = types.SimpleNamespace(args=types.SimpleNamespace(skip_install=True))
    plain = types.SimpleNamespace(args=types.SimpleNamespace(skip_install=False))
    assert inst.skip_requested(parsed, [], {})
    assert not inst.skip_requested(plain, ["install.py"], {})
    assert inst.skip_requested(plain, ["install.py", "--skip-install"], {})
    assert inst.skip_requested(None, [], {"COMMANDLINE_ARGS": "--api --skip-install"})
    assert not inst.skip_requested(None, [], {"COMMANDLINE_ARGS": '--api "unbalanced'})


def test_skip_install_runs_no_pip(monkeypatch):
    pip = Pip()
    launch = types.SimpleNamespace(
        args=types.SimpleNamespace(skip_install=True), run_pip=pip, is_installed=lambda m: False
    )
    inst.install(launch, {}, ["install.py"])
    assert pip.calls == []


# --- installing -----------------------------------------------------------------


def test_installs_only_what_is_missing_or_too_old():
    pip = Pip()
    made, messages = installer(pip, {"platformdirs": "2.6.0", "tipo-kgen": "0.3.1"})
    for requirement in inst.REQUIREMENTS:
        assert made.ensure(requirement)
    assert [desc for _, desc in pip.calls] == ["platformdirs"]
    assert messages == []


def test_tipo_kgen_without_its_dependencies():
    pip = Pip()
    made, _ = installer(pip, {"platformdirs": "4.0"})
    made.ensure(inst.REQUIREMENTS[1])
    (command, _), *_ = pip.calls
    assert "tipo-kgen" in command and "--no-deps" in command


def test_module_present_without_metadata_is_kept():
    pip = Pip()
    made, _ = installer(pip)
    made.is_installed = lambda module: True
    assert made.ensure(inst.REQUIREMENTS[0])
    assert pip.calls == []


def test_every_pip_call_holds_the_webui_packages(tmp_path):
    text = inst.constraints_text({"torch": "2.1.2+cu121", "numpy": "1.26.2", "gradio": None})
    assert text == "numpy==1.26.2\ntorch==2.1.2+cu121\n"
    pip = Pip()
    made, _ = installer(pip, constraints_path=str(tmp_path / "c.txt"))
    made.ensure(inst.REQUIREMENTS[0])
    assert f'-c "{tmp_path / "c.txt"}"' in pip.calls[0][0]


def test_never_installs_a_protected_package():
    steps = [inst.requirement_step(r) for r in inst.REQUIREMENTS]
    steps += inst.llama_steps(linux("2.1.2+cu121"))
    for step in steps:
        installs = step.args.split('"')[1].split(">=")[0]
        assert installs not in inst.PROTECTED


def test_pip_failure_is_one_message_and_no_exception():
    pip = Pip(fail_on=("platformdirs",))
    made, messages = installer(pip)
    assert made.ensure(inst.REQUIREMENTS[0]) is False
    assert len(messages) == 1
    assert messages[0].startswith("[DanTagGen] could not install platformdirs")
    assert "\n" not in messages[0]


def test_existing_llama_is_kept_whatever_its_build():
    pip = Pip()
    made, _ = installer(pip, {"llama-cpp-python": "0.3.2"})
    assert made.ensure_llama(inst.llama_steps(linux("2.1.2+cu121"))) is None
    assert pip.calls == []


def test_llama_falls_back_from_gpu_wheel_to_cpu_wheel_and_says_why():
    pip = Pip(fail_on=("whl/cu121",))
    made, messages = installer(pip)
    assert made.ensure_llama(inst.llama_steps(linux("2.1.2+cu121"))) is None
    assert _indexes([inst.PipStep("", c) for c, _ in pip.calls]) == ["cu121", "cpu"]
    assert messages == [
        "[DanTagGen] llama-cpp-python (cu121 wheel) failed (Error code: 1); "
        "trying llama-cpp-python (cpu wheel)"
    ]


def test_a_fallback_line_carries_pips_own_reason():
    def pip(command, desc=None):
        if "whl/cpu" in command:
            raise RuntimeError(
                f"Couldn't install {desc}.\nCommand: pip {command}\nError code: 1\n"
                "stderr: ERROR: Could not find a version that satisfies the requirement\n"
                "ERROR: No matching distribution found for llama-cpp-python>=0.2.80\n"
            )

    made, messages = installer(pip, verify=iter([True]).__next__)
    assert made.ensure_llama(inst.llama_steps(linux("2.3.1+cpu"))) is None
    assert messages[0] == (
        "[DanTagGen] llama-cpp-python (cpu wheel) failed (ERROR: No matching distribution "
        "found for llama-cpp-python>=0.2.80); trying llama-cpp-python (source build, CPU)"
    )
    assert "5-15 minutes" in messages[1] and len(messages) == 2


def test_a_build_that_does_not_import_is_named_as_the_reason():
    verdicts = iter([False, True])
    made, messages = installer(Pip(), verify=lambda: next(verdicts))
    made.ensure_llama(inst.llama_steps(linux("2.1.2+cu121")))
    assert messages == [
        "[DanTagGen] llama-cpp-python (cu121 wheel) failed (it installed but does not import); "
        "trying llama-cpp-python (cpu wheel)"
    ]


def test_build_that_does_not_import_is_replaced():
    pip = Pip()
    verdicts = iter([False, True])  # the CUDA wheel installs but does not import
    made, _ = installer(pip, verify=lambda: next(verdicts))
    assert made.ensure_llama(inst.llama_steps(linux("2.1.2+cu121"))) is None
    first, second = (command for command, _ in pip.calls)
    assert "--force-reinstall" not in first
    assert "--force-reinstall --no-deps" in second and "whl/cpu" in second


def test_llama_unavailable_writes_a_status_for_the_panel(tmp_path):
    pip = Pip(fail_on=("llama",))
    made, _ = installer(pip)
    problem = made.ensure_llama(inst.llama_steps(linux("2.1.2+cu121")))
    assert problem.startswith("could not install llama-cpp-python")
    assert "cu121 wheel" in problem and "source build" in problem and "Error code: 1" in problem
    path = tmp_path / "status.json"
    inst.write_status(inst.status_for(problem), path)
    data = json.loads(path.read_text())
    assert data["llama_cpp"] is False and "torch backend" in data["message"]
    inst.write_status(inst.status_for(None), path)
    assert not path.exists(), "a later success removes the status"


def test_skipped_llama_says_so():
    made, _ = installer(Pip())
    assert "DTG_LLAMA_CPP=skip" in made.ensure_llama([])


def test_environment_of_a_step_is_restored(monkeypatch):
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    seen = []
    made, _ = installer(Pip())
    made.run_pip = lambda command, desc=None: seen.append(inst.os.environ.get("CMAKE_ARGS"))
    made.run(inst.PipStep("x", "install x", (("CMAKE_ARGS", "-DX=on"),)))
    assert seen == ["-DX=on"]
    assert "CMAKE_ARGS" not in inst.os.environ


def test_main_outside_the_webui_prints_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "launch", None)
    inst.main()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "must be run by the webui" in out[0]


def test_main_survives_anything(monkeypatch, capsys):
    launch = types.SimpleNamespace(args=types.SimpleNamespace(skip_install=False))
    monkeypatch.setitem(sys.modules, "launch", launch)

    def explode(*args):
        raise OSError("disk full")

    monkeypatch.setattr(inst, "install", explode)
    inst.main()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "disk full" in out[0]


def test_whole_run_with_fake_launch(monkeypatch, tmp_path, capsys):
    pip = Pip(fail_on=("llama",))
    launch = types.SimpleNamespace(
        args=types.SimpleNamespace(skip_install=False), run_pip=pip, is_installed=lambda m: False
    )
    versions = {"platformdirs": "4.2", "tipo-kgen": "0.3.1", "torch": "2.1.2+cu121"}
    monkeypatch.setattr(inst, "installed_version", versions.get)
    monkeypatch.setattr(inst, "STATUS_FILE", tmp_path / "status.json")
    monkeypatch.setattr(inst, "write_status", lambda s: inst.STATUS_FILE.write_text(json.dumps(s)))
    monkeypatch.setattr(inst, "this_machine", lambda: linux("2.1.2+cu121"))
    inst.install(launch, {}, ["install.py"])
    assert [desc.split(" ")[0] for _, desc in pip.calls] == ["llama-cpp-python"] * 3
    assert all('-c "' in command for command, _ in pip.calls)
    assert json.loads((tmp_path / "status.json").read_text())["llama_cpp"] is False
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 4, "two fallbacks, the build notice, the outcome: one line each"
    assert "(cu121 wheel) failed" in out[0] and "trying llama-cpp-python (cpu wheel)" in out[0]
    assert "(cpu wheel) failed" in out[1] and "(source build, CPU)" in out[1]
    assert "building llama-cpp-python from source" in out[2]
    assert "Hugging Face folders use the torch backend" in out[3]


# --- a failed llama-cpp-python install is not retried at every start-up -----------

DAY = 24 * 3600


@pytest.fixture
def status_writer(monkeypatch, tmp_path):
    real = inst.write_status
    monkeypatch.setattr(inst, "STATUS_FILE", tmp_path / "status.json")
    monkeypatch.setattr(inst, "write_status", lambda s: real(s, tmp_path / "status.json"))
    return tmp_path / "status.json"


def _llama_calls(pip):
    return [desc for _, desc in pip.calls if desc.startswith("llama-cpp-python")]


def test_a_failed_llama_install_waits_a_week_before_trying_again(status_writer, capsys):
    pip = Pip(fail_on=("llama",))
    made, _ = installer(pip)
    inst._install_llama(made, linux("2.1.2+cu121"), "auto", 1000.0)
    tries = len(_llama_calls(pip))
    assert tries == 3 and json.loads(status_writer.read_text())["attempted_at"] == 1000.0
    capsys.readouterr()

    inst._install_llama(made, linux("2.1.2+cu121"), "auto", 1000.0 + 6 * DAY)
    assert len(_llama_calls(pip)) == tries  # no pip run at all
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "not retried before 1970-01-08" in out[0]
    assert status_writer.exists(), "the panel still says why"

    inst._install_llama(made, linux("2.1.2+cu121"), "auto", 1000.0 + 8 * DAY)
    assert len(_llama_calls(pip)) == 2 * tries


def test_a_new_torch_or_python_is_worth_another_try(status_writer):
    pip = Pip(fail_on=("llama",))
    made, _ = installer(pip)
    inst._install_llama(made, linux("2.1.2+cu121"), "auto", 1000.0)
    tries = len(_llama_calls(pip))
    inst._install_llama(made, linux("2.3.1+cu121"), "auto", 1000.0 + DAY)
    assert len(_llama_calls(pip)) == 2 * tries


def test_llama_installed_by_hand_meanwhile_clears_the_status(status_writer):
    made, _ = installer(Pip(fail_on=("llama",)))
    inst._install_llama(made, linux("2.1.2+cu121"), "auto", 1000.0)
    assert status_writer.exists()
    by_hand, _ = installer(Pip(), {"llama-cpp-python": "0.3.2"})
    inst._install_llama(by_hand, linux("2.1.2+cu121"), "auto", 1000.0 + DAY)
    assert not status_writer.exists()


@pytest.mark.parametrize(
    ("previous", "due"),
    [
        (None, True),
        ({"llama_cpp": True}, True),
        ({"llama_cpp": False, "attempt": "other", "attempted_at": 0.0}, True),
        ({"llama_cpp": False, "attempt": "key", "attempted_at": "yesterday"}, True),
        ({"llama_cpp": False, "attempt": "key", "attempted_at": 10 * DAY}, True),  # future
        ({"llama_cpp": False, "attempt": "key", "attempted_at": 0.0}, False),
    ],
)
def test_retry_rules(previous, due):
    assert inst.retry_due(previous, "key", 3 * DAY) is due


# --- a venv without pip (made by uv) ------------------------------------------------

FAKE_UV = """\
import json, sys
with open(sys.argv[0] + ".calls", "a", encoding="utf-8") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if "broken" in sys.argv:
    print("error: No solution found when resolving dependencies", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def fake_uv(tmp_path):
    """A stand-in uv that records its arguments; `python script` as the command line."""
    script = tmp_path / "uv.py"
    script.write_text(FAKE_UV, encoding="utf-8")
    calls = tmp_path / "uv.py.calls"

    def recorded():
        text = calls.read_text(encoding="utf-8") if calls.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    return f'"{sys.executable}" "{script}"', recorded


def test_pip_runner_uses_the_webuis_pip_where_there_is_one(fake_uv):
    webui_pip = Pip()
    assert inst.pip_runner(webui_pip, True, fake_uv[0], sys.executable) is webui_pip
    uv = inst.pip_runner(webui_pip, False, fake_uv[0], sys.executable)
    assert isinstance(uv, inst.UvPip)
    assert inst.pip_runner(webui_pip, False, None, sys.executable) is inst.no_installer


def test_uv_installs_into_this_python(fake_uv, monkeypatch, capsys):
    command, recorded = fake_uv
    monkeypatch.delenv("INDEX_URL", raising=False)
    runner = inst.UvPip(command, sys.executable)
    runner('install "platformdirs>=3.0" -c "/tmp/c d.txt"', "platformdirs")
    assert recorded() == [
        ["pip", "install", "platformdirs>=3.0", "-c", "/tmp/c d.txt", "--python", sys.executable]
    ]
    assert capsys.readouterr().out.strip() == "Installing platformdirs (uv)"
    with pytest.raises(RuntimeError) as failed:
        runner("install broken", "broken")
    assert str(failed.value).startswith("Couldn't install broken.")
    assert inst.last_line(failed.value) == "error: No solution found when resolving dependencies"


def test_whole_run_in_a_venv_without_pip_goes_through_uv(monkeypatch, tmp_path, fake_uv):
    command, recorded = fake_uv
    webui_pip = Pip()
    launch = types.SimpleNamespace(
        args=types.SimpleNamespace(skip_install=False),
        run_pip=webui_pip,
        is_installed=lambda m: False,
    )
    real_find_spec = inst.importlib.util.find_spec
    monkeypatch.setattr(
        inst.importlib.util,
        "find_spec",
        lambda name: None if name == "pip" else real_find_spec(name),
    )
    monkeypatch.setattr(inst, "find_uv", lambda python: command)
    monkeypatch.setattr(inst, "installed_version", {"torch": "2.1.2+cu121"}.get)
    monkeypatch.setattr(inst, "STATUS_FILE", tmp_path / "status.json")
    monkeypatch.setattr(inst, "write_status", lambda s: None)
    monkeypatch.setattr(inst, "llama_imports", lambda: True)
    monkeypatch.setattr(inst, "this_machine", lambda: linux("2.1.2+cu121"))
    inst.install(launch, {}, ["install.py"])
    assert webui_pip.calls == [], "the webui's run_pip calls `python -m pip`: not here"
    installed = [call[2] for call in recorded()]
    assert installed == ["platformdirs>=3.0", "tipo-kgen>=0.1.0", "llama-cpp-python>=0.2.80"]
    assert all(call[-2:] == ["--python", sys.executable] for call in recorded())


def test_neither_pip_nor_uv_is_one_clear_line_per_package():
    made, messages = installer(Pip())
    made.run_pip = inst.no_installer
    assert not made.ensure(inst.REQUIREMENTS[0])
    assert messages == [f"[DanTagGen] could not install platformdirs: {inst.NO_INSTALLER}"]
    problem = made.ensure_llama(inst.llama_steps(linux("2.1.2+cu121")))
    assert len(messages) == 1, "no fallback lines: nothing can install anything here"
    assert problem.endswith(f"last error: {inst.NO_INSTALLER})")
    assert "(tried: llama-cpp-python (cu121 wheel); last error" in problem, "one try only"


def test_without_pip_or_uv_the_next_start_up_tries_again(status_writer):
    made, _ = installer(Pip())
    made.run_pip = inst.no_installer
    inst._install_llama(made, linux("2.1.2+cu121"), "auto", 1000.0)
    assert json.loads(status_writer.read_text())["llama_cpp"] is False
    pip = Pip(fail_on=("llama",))
    with_pip, _ = installer(pip)
    inst._install_llama(with_pip, linux("2.1.2+cu121"), "auto", 1000.0 + DAY)
    assert len(_llama_calls(pip)) == 3, "no week's wait: nothing could be tried before"

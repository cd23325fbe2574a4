import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dtg_lib import cli
from dtg_lib.categories import Category

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DTG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DTG_MODEL_DIR", str(tmp_path / "models"))


def test_dry_run_shows_classification_and_model_input(capsys, tmp_path):
    csv = tmp_path / "tags.csv"
    csv.write_text('hatsune_miku,4,100,"miku"\nvocaloid,3,100,""\n', encoding="utf-8")
    code = cli.main(
        [
            "--dry-run",
            "--tag-csv",
            str(csv),
            "--width",
            "832",
            "--height",
            "1216",
            "1girl, miku, (smile:1.2), <lora:x:0.5>",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "characters: hatsune miku" in out
    assert "aspect ratio: 0.7" in out
    assert "general: 1girl, smile<|input_end|>" in out
    assert "extra_network" in out and "<lora:x:0.5>" in out


def test_dry_run_json_lists_every_item(capsys):
    assert cli.main(["--dry-run", "--json", "--target", "short", "1girl, (smile:1.2), BREAK"]) == 0
    data = json.loads(capsys.readouterr().out)
    kinds = [(i["kind"], i["text"], i["weight"]) for i in data["items"]]
    assert kinds == [("tag", "1girl", 1.0), ("tag", "(smile:1.2)", 1.2), ("break", "BREAK", None)]
    assert data["items"][0]["category"] == Category.SPECIAL.value
    assert "target: <|short|>" in data["model_input"]


def test_models_without_quality_line(capsys):
    assert cli.main(["--dry-run", "--model", "gamma", "1girl"]) == 0
    assert "quality:" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "0", "1girl"], "temperature"),
        (["--target", "endless", "1girl"], "unknown target"),
        (["--ban", "/(/", "1girl"], "not a valid regex"),
    ],
)
def test_bad_settings_exit_2_with_a_message(capsys, args, message):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_missing_model_offline_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["--offline", "1girl"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_list_models(capsys):
    assert cli.main(["--list-models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "delta-rev2" in data["registry"] and data["local"] == []


def test_seed_minus_one_draws_a_seed_and_prints_it(capsys, monkeypatch):
    import types

    seen = []

    class RecordingUpsampler:
        def upsample(self, prompt, settings, seed, width, height, progress=None):
            seen.append(seed)
            return types.SimpleNamespace(final_prompt=f"{prompt}, more")

    monkeypatch.setattr(cli, "_upsampler", lambda args: RecordingUpsampler())
    monkeypatch.setattr(cli.random, "randrange", lambda limit: 123456)
    assert cli.main(["--seed", "-1", "1girl"]) == 0
    assert seen == [123456]
    captured = capsys.readouterr()
    assert captured.err.strip() == "seed: 123456" and captured.out.strip() == "1girl, more"
    assert cli.main(["--seed", "7", "1girl"]) == 0
    assert seen[-1] == 7 and capsys.readouterr().err == ""


@pytest.mark.parametrize("fails", [False, True])
def test_the_model_is_closed_before_the_cli_returns(capsys, monkeypatch, fails):
    # Left to the collector at interpreter exit, llama-cpp-python's clean-up prints a
    # traceback; the CLI closes the model itself, after a failure too.
    import types

    unloads = []

    class ClosingUpsampler:
        def upsample(self, prompt, settings, seed, width, height, progress=None):
            if fails:
                raise RuntimeError("the model ran out of memory")
            return types.SimpleNamespace(final_prompt=prompt)

        def unload(self):
            unloads.append(1)

    monkeypatch.setattr(cli, "_upsampler", lambda args: ClosingUpsampler())
    assert cli.main(["1girl"]) == (1 if fails else 0)
    assert unloads == [1]


def test_serve_runs_the_app_in_a_child_process_and_never_imports_it():
    # A bad port is refused by the app's own parser: the exit code and message are the child's.
    script = (
        "import sys; from dtg_lib import cli\n"
        "code = cli.main(['serve', '--port', '99999'])\n"
        "print(code, 'dtg_app' in sys.modules, 'gradio' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.stdout.split() == ["2", "False", "False"]
    assert "--port" in done.stderr and "python -m dtg_app" in done.stderr


def test_serve_without_the_app_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dtg_app", None)  # as if it were not installed
    assert cli.main(["serve", "--port", "7870"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the app is not installed")


def test_run_child_returns_the_child_exit_code():
    assert cli.run_child([sys.executable, "-c", "raise SystemExit(3)"]) == 3


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to one process")
def test_ctrl_c_sent_to_serve_alone_reaches_the_app():
    # The parent gets SIGINT and the child does not (as with `kill -INT`): the parent
    # passes it on after its grace time, and exits with the child's own exit code.
    child = (
        "import sys, time\n"
        "print('ready', flush=True)\n"
        "try:\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n    sys.exit(7)\n"
    )
    parent = (
        "import sys; from dtg_lib import cli\n"
        "cli.CHILD_INTERRUPT_GRACE_S = 0.2\n"
        f"sys.exit(cli.run_child([sys.executable, '-c', {child!r}]))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 7
    finally:
        process.kill()
        process.stdout.close()


@pytest.mark.skipif(os.name != "posix", reason="sends SIGTERM to one process")
def test_sigterm_sent_to_serve_alone_stops_the_app_too():
    # A service manager stopping `python -m dtg_lib serve` must not leave the app running.
    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(5))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import sys; from dtg_lib import cli\n"
        f"sys.exit(cli.run_child([sys.executable, '-c', {child!r}]))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        process.terminate()
        assert process.wait(timeout=30) == 5
    finally:
        process.kill()
        process.stdout.close()

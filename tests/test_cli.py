import json

import pytest

from dtg_lib import cli
from dtg_lib.categories import Category


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


@pytest.fixture
def fake_server(monkeypatch):
    """`dtg_app.server` replaced by one that records the call instead of serving."""
    import sys
    import types

    calls = []
    module = types.SimpleNamespace(serve=lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setitem(sys.modules, "dtg_app.server", module)
    return calls


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_serve_refuses_a_port_that_is_none(fake_server, capsys, port):
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--port", port])
    assert exited.value.code == 2
    assert "--port" in capsys.readouterr().err
    assert fake_server == []


def test_serve_says_when_the_port_is_taken_before_saying_where_it_listens(fake_server, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert fake_server == []


def test_serve_hands_a_free_port_to_the_server(fake_server):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert cli.main(["serve", "--port", str(port), "--offline"]) == 0
    ((args, kwargs),) = fake_server
    assert args == ("127.0.0.1", port) and kwargs["allow_download"] is False


def test_seed_minus_one_draws_a_seed_and_prints_it(capsys, monkeypatch):
    import types

    seen = []

    class RecordingUpsampler:
        def upsample(self, prompt, settings, seed, width, height):
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


def test_serve_passes_its_request_time_limit_to_the_server(fake_server):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert cli.main(["serve", "--port", str(port), "--request-timeout", "90"]) == 0
    ((_, kwargs),) = fake_server
    assert kwargs["request_timeout_s"] == 90.0


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "soon"])
def test_serve_refuses_a_time_limit_that_is_none(fake_server, capsys, value):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--request-timeout", value])
    assert "--request-timeout" in capsys.readouterr().err
    assert fake_server == []

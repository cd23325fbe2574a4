"""`python -m dtg_app`: the serve arguments and their checks, before any server starts."""

import socket
import types

import pytest

from dtg_app import __main__ as app_main


@pytest.fixture
def fake_server(monkeypatch):
    """dtg_app.server replaced by one that records the call instead of serving."""
    calls = []
    module = types.SimpleNamespace(serve=lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(app_main, "load_server", lambda: module)
    return calls


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_refuses_a_port_that_is_none(fake_server, capsys, port):
    with pytest.raises(SystemExit) as exited:
        app_main.main(["--port", port])
    assert exited.value.code == 2
    assert "--port" in capsys.readouterr().err
    assert fake_server == []


def test_says_when_the_port_is_taken_before_saying_where_it_listens(fake_server, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app_main.main(["--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert fake_server == []


def test_hands_a_free_port_to_the_server(fake_server):
    port = free_port()
    assert app_main.main(["--port", str(port), "--offline"]) == 0
    ((args, kwargs),) = fake_server
    assert args == ("127.0.0.1", port) and kwargs["allow_download"] is False


def test_passes_its_request_time_limit_to_the_server(fake_server):
    assert app_main.main(["--port", str(free_port()), "--request-timeout", "90"]) == 0
    ((_, kwargs),) = fake_server
    assert kwargs["request_timeout_s"] == 90.0


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "soon"])
def test_refuses_a_time_limit_that_is_none(fake_server, capsys, value):
    with pytest.raises(SystemExit):
        app_main.main(["--request-timeout", value])
    assert "--request-timeout" in capsys.readouterr().err
    assert fake_server == []


def test_without_gradio_says_what_to_install(monkeypatch, capsys):
    def missing():
        raise ImportError("No module named 'gradio'")

    monkeypatch.setattr(app_main, "load_server", missing)
    assert app_main.main(["--port", str(free_port())]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'dtg-upsampler[app]'" in err[0]

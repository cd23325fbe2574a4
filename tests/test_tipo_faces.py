"""TIPO through the command line and the HTTP routes: gen_meta, the licences in both model
lists, and the four uses (extend tags, a sentence into tags, caption tags, extend both) run
for real on the tiny TIPO model."""

from __future__ import annotations

import json
import shutil

import pytest
from fake_lookup import FakeLookup

from dtg_lib import cli
from dtg_lib.backends import BackendCache
from dtg_lib.upsampler import Upsampler

URL = "/dtg/v1/upsample"
NL = "a girl reading in a (library:1.2)"
# The four uses as (tags, natural-language text, settings); the text stays as typed.
USES = {
    "extend tags": ("1girl, solo, (smile:1.1)", "", {}),
    "a sentence into tags": ("", NL, {}),
    "caption tags": ("1girl, solo", "", {"caption": True, "nl_length": "very_short"}),
    "extend both": ("1girl, solo", "a girl (reading:1.3)", {"nl_length": "short"}),
}


@pytest.fixture
def tipo_folder(tiny_tipo_model, tmp_path):
    """A model folder holding the tiny TIPO model under its own name and in TIPO-500M's
    registry layout (so it is listed as that registry model, with its licence)."""
    pytest.importorskip("llama_cpp")
    shutil.copy(tiny_tipo_model.gguf_f16, tmp_path / "tiny-tipo.gguf")
    registry = tmp_path / "TIPO-500M"
    registry.mkdir()
    shutil.copy(tiny_tipo_model.gguf_f16, registry / "TIPO-500M_epoch5-F16.gguf")
    return tmp_path


# ----------------------------------------------------------------- command line


def test_gen_meta_is_a_cli_flag_off_by_default():
    parser = cli.build_parser()
    assert cli.settings_from_args(parser.parse_args(["1girl"])).gen_meta is False
    assert cli.settings_from_args(parser.parse_args(["--gen-meta", "1girl"])).gen_meta is True


def test_the_dry_run_shows_gen_meta_on_the_last_pass(capsys, tmp_path):
    argv = ["--dry-run", "--json", "--offline", "--model", "tipo-500m", "--model-dir"]
    argv += [str(tmp_path), "--target", "short", "--gen-meta", "1girl, solo"]
    assert cli.main(argv) == 0
    # Tags alone are one pass, so it is the last one and carries the flag.
    shown = json.loads(capsys.readouterr().out)["model_input"]
    assert "target: <|short|> <|gen_meta|>\ntag: 1girl, solo" in shown
    assert cli.main([*argv[:-2], "1girl, solo"]) == 0
    assert "<|gen_meta|>" not in json.loads(capsys.readouterr().out)["model_input"]


def test_the_dry_run_shows_the_first_input_for_a_sentence_alone(capsys, tmp_path):
    argv = ["--dry-run", "--json", "--offline", "--model", "tipo-500m", "--model-dir"]
    argv += [str(tmp_path), "--nl", NL, "--target", "short", "--nl-length", "long", ""]
    assert cli.main(argv) == 0
    shown = json.loads(capsys.readouterr().out)["model_input"]
    # A sentence alone: the model reads it as `long`, without the webui weight, continues it
    # and then writes the tags (the "expand" form ends on the last content; no <|input_end|>).
    # aspect_ratio is width/height with one decimal; an empty header line is left out.
    assert shown.splitlines() == [
        "aspect_ratio: 1.0",
        "target: <|short|> <|long_to_tag|>",
        "long: a girl reading in a library",
    ]
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


def test_the_cli_model_list_shows_the_licence_of_a_local_registry_model(capsys, tipo_folder):
    assert cli.main(["--list-models", "--model-dir", str(tipo_folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    local = lines[lines.index(next(x for x in lines if x.startswith("Local"))) + 1 :]
    rows = {line.split()[0]: line.split() for line in local}
    assert rows["tipo-500m:F16"][1:4] == ["gguf", "tipo", "kohaku-license-1.0"]
    assert rows["tiny-tipo.gguf"][1:4] == ["gguf", "tipo", "-"]  # one's own file: no licence
    assert cli.main(["--list-models", "--json", "--model-dir", str(tipo_folder)]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["local"]}
    assert listed["tipo-500m:F16"]["licence"] == "kohaku-license-1.0"
    assert listed["tiny-tipo.gguf"]["licence"] == ""


@pytest.mark.parametrize("use", list(USES))
def test_the_four_uses_through_the_cli(capsys, tipo_folder, use):
    tags, text, given = USES[use]
    argv = ["--json", "--offline", "--model-dir", str(tipo_folder), "--model", "tiny-tipo.gguf"]
    argv += ["--target", "very_short", "--seed", "3", *_cli_flags(given)]
    argv += [*(["--nl", text] if text else []), tags]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli.main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    _check_use(use, first, tags, text)
    assert first["final_prompt"] == again["final_prompt"]  # reproducible per seed
    # The first pass: tags alone take no operation token (a caption comes in a later pass).
    operation = {"a sentence into tags": " <|long_to_tag|>", "extend both": " <|short_to_tag|>"}
    assert f"target: <|very_short|>{operation.get(use, '')}\n" in first["model_input"]


def _cli_flags(given: dict) -> list[str]:
    flags = ["--caption"] if given.get("caption") else []
    return flags + (["--nl-length", given["nl_length"]] if "nl_length" in given else [])


def _check_use(use: str, result: dict, tags: str, text: str) -> None:
    """What each use gives, the same through every face."""
    if tags:
        assert result["final_prompt"].startswith(tags.split(",")[0])
        assert tags.split(", ")[-1] in result["final_prompt"]  # weights kept as typed
    if text:
        assert text in result["final_prompt"]  # the text as typed, weights included
    if use == "extend tags":
        assert result["new_tags"] and result["extended"] == result["generated"] == ""
    if use == "a sentence into tags":
        # The tiny model may go on with the sentence instead of writing tags (its output is
        # noise); either way the sentence leads the final prompt as typed.
        assert result["final_prompt"].startswith(text)
    if use == "caption tags":
        assert result["generated"] and result["extended"] == ""
    if use == "extend both":
        assert result["new_tags"] and result["generated"].startswith("a girl reading")
        assert result["final_prompt"].index(text) > result["final_prompt"].index("solo")


# ----------------------------------------------------------------- HTTP


@pytest.fixture
def client(tipo_folder):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from dtg_lib.http_api import create_router

    cache = BackendCache()
    engine = Upsampler(model_dir=tipo_folder, lookup=FakeLookup(), backends=cache)
    app = FastAPI()
    app.include_router(create_router(lambda: engine, model_dir=tipo_folder))
    yield TestClient(app)
    cache.unload()


def test_the_models_route_gives_family_and_licence_of_every_model(client):
    data = client.get("/dtg/v1/models").json()
    local = {m["name"]: m for m in data["local"]}
    assert local["tipo-500m:F16"]["family"] == "tipo"
    assert local["tipo-500m:F16"]["licence"] == "kohaku-license-1.0"
    assert (local["tiny-tipo.gguf"]["family"], local["tiny-tipo.gguf"]["licence"]) == ("tipo", "")
    assert all(str(m["size"]) and "path" not in m for m in local.values())  # no server path
    registry = {m["name"]: m for m in data["models"]}
    assert registry["tipo-200m"]["family"] == "tipo"
    assert registry["tipo-200m"]["licence"] == "apache-2.0"
    assert registry["delta-rev2"]["family"] == "dtg"


def test_gen_meta_is_a_setting_over_http(client):
    body = {"prompt": "1girl, solo", "seed": 1, "settings": {"model": "tiny-tipo.gguf"}}
    wrong = client.post(URL, json={**body, "settings": {"gen_meta": "yes"}})
    assert wrong.status_code == 422
    assert "gen_meta must be true or false" in wrong.json()["detail"]
    settings = {"model": "tiny-tipo.gguf", "target": "very_short", "gen_meta": True}
    answer = client.post(URL, json={**body, "settings": settings})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["new_tags"]


@pytest.mark.parametrize("use", list(USES))
def test_the_four_uses_over_http(client, use):
    tags, text, given = USES[use]
    settings = {"model": "tiny-tipo.gguf", "target": "very_short", **given}
    body = {"prompt": tags, "seeds": [3, 3], "settings": settings}
    if text:
        body["nl_prompt"] = text
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    first, again = response.json()["results"]
    _check_use(use, first, tags, text)
    assert first["final_prompt"] == again["final_prompt"]  # the same seed twice
    # Tags and sentences come apart: no sentence is among the new tags.
    sentences = {first["extended"], first["generated"]} - {""}
    assert not sentences & set(first["new_tags"])

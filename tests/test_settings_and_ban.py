import pytest

from dtg_lib.ban import BanListError, compile_ban_list
from dtg_lib.dtg_format import parse_model_output
from dtg_lib.settings import SettingsError, UpsampleSettings


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"target": "huge"}, "unknown target 'huge'"),
        ({"temperature": 0}, "temperature must be in"),
        ({"temperature": -1.0}, "temperature must be in"),
        ({"top_k": -1}, "top_k must be between"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"backend": "onnx"}, "unknown backend"),
        ({"ban_tags": "/(/"}, "not a valid regex"),
        ({"ban_tags": "/abc"}, "no closing /"),
        ({"format": "pretty please"}, "neither a preset"),
        ({"colour": "blue"}, "unknown setting"),
        ({"temperature": "hot"}, "must be a number"),
        ({"top_k": 2.5}, "whole number"),
        ({"sampling": 3}, "sampling must be"),
        ({"device": "banana"}, "unknown device 'banana'"),
        ({"device": ["cuda"]}, "device must be text"),
        ({"format": "<|generals|>"}, "unknown placeholder"),
    ],
)
def test_bad_settings_say_what_is_wrong(data, message):
    with pytest.raises(SettingsError, match=message):
        UpsampleSettings.from_dict(data)


def test_settings_round_trip_through_json():
    settings = UpsampleSettings.from_dict(
        {"target": "short", "temperature": 0.7, "sampling": {"top_k": 5}, "ban_tags": "hat"}
    )
    assert settings.sampling.temperature == 0.7 and settings.sampling.top_k == 5
    assert UpsampleSettings.from_json(settings.to_json()) == settings
    assert settings.target_tags == 16


@pytest.mark.parametrize(
    ("entries", "banned", "kept"),
    [
        ("hat", ["hat", "HAT", " hat "], ["witch hat", "hat ornament"]),
        ("*hat", ["hat", "witch hat"], ["hat ornament"]),
        ("hat*", ["hat", "hat ornament"], ["witch hat"]),
        ("hair_ribbon", ["hair ribbon", "Hair_Ribbon"], ["ribbon"]),
        ("/.*(cap|hood)/", ["baseball cap", "HOOD"], ["capelet"]),
        ("/a{1,3}/, b", ["aaa", "b"], ["aaaa"]),
        ("", [], ["anything"]),
        # Spelt as Danbooru does (the backslash is part of the tag) or webui-escaped.
        (r"\m/", [r"\m/"], ["m", r"double \m/"]),
        (r"double \m/, \(^o^)/", [r"double \m/", r"\(^o^)/"], [r"\m/"]),
        (r"ganyu \(genshin impact\)", ["ganyu (genshin impact)"], ["ganyu"]),
    ],
)
def test_ban_entries_match_whole_tags(entries, banned, kept):
    bans = compile_ban_list(entries)
    assert all(bans.bans(t) for t in banned)
    assert not any(bans.bans(t) for t in kept)


def test_invalid_regex_is_a_clear_error():
    with pytest.raises(BanListError, match="not a valid regex"):
        compile_ban_list("ok, /[a-/")


def test_model_output_parsing():
    text = "general: 1girl<|input_end|>long hair, , <|empty|>smile ,  blue eyes</s>"
    assert parse_model_output(text) == ["long hair", "smile", "blue eyes"]
    assert parse_model_output("") == []

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webui_attention import char_weights

from dtg_lib.prompt_syntax import ItemKind, attention_weights, escape_tag, parse


def kinds(text):
    return [(i.kind.value, i.text) for i in parse(text).items if i.kind is not ItemKind.SEPARATOR]


def tags(text):
    return [(t.name, round(t.weight, 6)) for _, t in parse(text).tags()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smile", [("smile", 1.0)]),
        ("(smile:1.2)", [("smile", 1.2)]),
        ("((smile))", [("smile", 1.21)]),
        ("[smile]", [("smile", round(1 / 1.1, 6))]),
        ("(a, b:0.8)", [("a", 0.8), ("b", 0.8)]),
        ("((a), b:1.5)", [("a", 1.65), ("b", 1.5)]),
        ("ganyu \\(genshin impact\\)", [("ganyu (genshin impact)", 1.0)]),
        ("(ganyu \\(genshin impact\\):1.3)", [("ganyu (genshin impact)", 1.3)]),
        (
            "(re:zero kara hajimeru isekai seikatsu:1.1)",
            [("re:zero kara hajimeru isekai seikatsu", 1.1)],
        ),
        ("(a:1.2:1.3)", [("a:1.2", 1.3)]),
        ("asuna (sao)", [("asuna (sao)", 1.0)]),
        ("(rem (re:zero):1.2)", [("rem (re:zero)", 1.2)]),
        # square brackets around a qualified name: kept verbatim as text, not sent
        ("[asuna (sao)]", []),
        # an unclosed bracket weights the rest of the part, as in the webui
        ("(a, b", [("a", 1.1), ("b", 1.1)]),
        ("((a, b), c", [("a", 1.21), ("b", 1.21), ("c", 1.1)]),
        ("[a:b:0.4], c", [("c", 1.0)]),
        ("(x, [a:b:0.4]), c", [("c", 1.0)]),
        ("(c:1.4), [p|q]", [("c", 1.4)]),
        ("<lora:x:0.5>, (c)", [("c", 1.1)]),
    ],
)
def test_weights(text, expected):
    assert tags(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "1girl, hatsune miku, (smile:1.2), <lora:x:0.5>",
            [
                ("tag", "1girl"),
                ("tag", "hatsune miku"),
                ("tag", "(smile:1.2)"),
                ("extra_network", "<lora:x:0.5>"),
            ],
        ),
        (
            "<hypernet:h:1> <lyco:l:0.3>,a",
            [("extra_network", "<hypernet:h:1>"), ("extra_network", "<lyco:l:0.3>"), ("tag", "a")],
        ),
        ("1girl <lora:x:1>", [("tag", "1girl"), ("extra_network", "<lora:x:1>")]),
        ("BREAK, 1girl", [("break", "BREAK"), ("tag", "1girl")]),
        ("a BREAK b", [("tag", "a"), ("break", "BREAK"), ("tag", "b")]),
        ("BREAKfast", [("tag", "BREAKfast")]),
        ("a AND b :0.5", [("tag", "a"), ("and", "AND"), ("tag", "b"), ("part_weight", ":0.5")]),
        ("a :1.2 AND b", [("tag", "a"), ("part_weight", ":1.2 "), ("and", "AND"), ("tag", "b")]),
        # After a separator too: its space must not hide the weight ("1girl, :0.7").
        ("a, :0.7 AND b", [("tag", "a"), ("part_weight", ":0.7 "), ("and", "AND"), ("tag", "b")]),
        ("[a:b:0.4]", [("editing", "[a:b:0.4]")]),
        ("[a:0.4]", [("editing", "[a:0.4]")]),
        ("[a::0.4]", [("editing", "[a::0.4]")]),
        ("[red, blue:green:10]", [("editing", "[red, blue:green:10]")]),
        ("[a|b|c]", [("alternation", "[a|b|c]")]),
        ("__colors__ hair", [("wildcard", "__colors__ hair")]),
        ("{red|blue, green} eyes", [("wildcard", "{red|blue, green} eyes")]),
        ("embedding:easynegative", [("embedding", "embedding:easynegative")]),
        ("a), b", [("text", "a)"), ("tag", "b")]),
        ("a\nb,\n\nc", [("tag", "a"), ("tag", "b"), ("tag", "c")]),
    ],
)
def test_items(text, expected):
    assert kinds(text) == expected
    assert parse(text).render() == text


def test_known_embeddings_are_not_tags():
    assert kinds("easynegative, (bad_hands_5:0.8), cat") == [
        ("tag", "easynegative"),
        ("tag", "(bad_hands_5:0.8)"),
        ("tag", "cat"),
    ]
    found = kinds2 = [
        (i.kind.value, i.text)
        for i in parse(
            "easynegative, (bad_hands_5:0.8), cat", {"easynegative", "bad_hands_5"}
        ).items
        if i.kind is not ItemKind.SEPARATOR
    ]
    assert (
        found
        == kinds2
        == [("embedding", "easynegative"), ("embedding", "(bad_hands_5:0.8)"), ("tag", "cat")]
    )


def test_escape_round_trips_through_the_parser():
    name = "ganyu (genshin impact) [cosplay]"
    escaped = escape_tag(name)
    assert escaped == "ganyu \\(genshin impact\\) \\[cosplay\\]"
    assert tags(escaped) == [(name, 1.0)]


# --- property tests -------------------------------------------------------

_word = st.text(alphabet="abcxyz_ ", min_size=1, max_size=6).filter(str.strip)
_piece = st.one_of(
    _word,
    st.sampled_from(["(", ")", "[", "]", ", ", ",", "\\(", "\\)", ":1.2)", ":0.5)", "\n", " "]),
)
_bracket_prompt = st.lists(_piece, max_size=25).map("".join)


def _item_offsets(parsed):
    at = 0
    for item in parsed.items:
        yield at, item
        at += len(item.text)


@settings(max_examples=400, deadline=None)
@given(_bracket_prompt)
def test_tag_weights_match_the_webui(text):
    expected = char_weights(text)
    parsed = parse(text)
    for at, item in _item_offsets(parsed):
        if item.kind is not ItemKind.TAG:
            continue
        (tag,) = item.tags
        raw = escape_tag(tag.name)
        if raw not in item.text:  # `asuna (sao)`: the weight is the one of its base name
            raw = tag.name.rsplit(" (", 1)[0]
        start = at + item.text.index(raw)
        for offset, char in enumerate(raw):
            if char not in " \\":
                assert math.isclose(expected[start + offset], tag.weight, rel_tol=1e-12), text


@settings(max_examples=300, deadline=None)
@given(_bracket_prompt)
def test_attention_pass_matches_the_model_on_every_character(text):
    ours = attention_weights(text)
    model = char_weights(text)
    for index, weight in model.items():
        assert ours[index] is not None and math.isclose(ours[index], weight, rel_tol=1e-12)
    assert {i for i, w in enumerate(ours) if w is not None} == set(model)


_syntax = st.sampled_from(
    [
        "BREAK",
        " AND ",
        "<lora:x:0.7>",
        "[a:b:0.4]",
        "[a|b]",
        "__w__",
        "{a|b}",
        ":0.5",
        "\\",
        "<",
        ">",
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.text(max_size=80), st.lists(st.one_of(_piece, _syntax), max_size=20).map("".join))
)
def test_parse_never_raises_and_round_trips(text):
    parsed = parse(text)
    assert parsed.render() == text
    assert all(item.text for item in parsed.items)
    for _, tag in parsed.tags():
        assert tag.name.strip() and tag.weight is not None

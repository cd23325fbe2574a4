import re
from collections import Counter

import pytest
from fake_lookup import FakeLookup
from hypothesis import given, settings
from hypothesis import strategies as st

from dtg_lib.assemble import (
    FormatError,
    assemble,
    leaves_bracket_open,
    new_tags_to_add,
    resolve_format,
)
from dtg_lib.dtg_format import classify_prompt
from dtg_lib.prompt_syntax import ItemKind, parse

LOOKUP = FakeLookup()


def classified(text):
    return classify_prompt(parse(text), LOOKUP)


def test_default_template_sorts_items_into_slots_and_cleans_up():
    prompt = classified("masterpiece, hatsune miku, 1girl, (smile:1.2), vocaloid, highres")
    out = assemble(prompt, ["twintails", "aqua hair"])
    assert out == (
        "1girl, hatsune miku, vocaloid,\n\n"
        "(smile:1.2), twintails, aqua hair,\n\n"
        "masterpiece, highres"
    )


def test_new_tags_with_a_category_go_in_their_own_slot():
    """TIPO's gen_meta writes artists and characters: they join the user's of their kind."""
    prompt = classified("masterpiece, hatsune miku, 1girl, (smile:1.2), vocaloid, highres")
    categories = {"kagamine rin": "character", "wlop": "artist"}
    out = assemble(prompt, ["twintails", "kagamine rin", "wlop"], categories=categories)
    assert out == (
        "1girl, hatsune miku, kagamine rin, vocaloid,\nwlop,\n\n"
        "(smile:1.2), twintails,\n\n"
        "masterpiece, highres"
    )
    # Without categories (DTG) every new tag is general, as before.
    plain = assemble(prompt, ["twintails", "kagamine rin", "wlop"])
    assert "(smile:1.2), twintails, kagamine rin, wlop," in plain
    # Append mode keeps the order it was given; an unknown category counts as general.
    assert assemble(prompt, ["wlop"], "append", categories={"wlop": "nonsense"}).endswith("wlop")


def test_empty_slots_leave_no_stray_commas_blank_lines_or_placeholders():
    out = assemble(classified("cat"), ["dog"])
    assert out == "cat, dog"
    out = assemble(classified(""), [])
    assert out == ""


def test_one_line_and_custom_templates():
    prompt = classified("1girl, hatsune miku, smile, masterpiece")
    assert assemble(prompt, ["twintails"], "one line") == (
        "1girl, hatsune miku, smile, twintails, masterpiece"
    )
    custom = "<|quality|>, <|Meta|>\n<|general|>\n<|special|>, <|characters|>"
    assert assemble(prompt, ["twintails"], custom) == (
        "masterpiece,\nsmile, twintails,\n1girl, hatsune miku"
    )


@pytest.mark.parametrize("template", ["<|generals|>", "<|general|>, <|qualty|>"])
def test_a_misspelt_placeholder_is_an_error_not_a_lost_slot(template):
    with pytest.raises(FormatError, match=r"unknown placeholder.*the placeholders are"):
        resolve_format(template)


def test_slots_a_template_leaves_out_keep_their_tags_on_a_last_line():
    prompt = classified("masterpiece, hatsune miku, <lora:miku:0.8>, 1girl, smile")
    out = assemble(prompt, ["blue eyes"], "<|characters|>")
    assert out.splitlines()[0] == "hatsune miku,"
    for kept in ["masterpiece", "<lora:miku:0.8>", "1girl", "smile", "blue eyes"]:
        assert kept in out.splitlines()[1]
    assert Counter(i.text for i in parse(out).items if i.kind is not ItemKind.SEPARATOR) == (
        Counter(i.text for i in prompt.parsed.items if i.kind is not ItemKind.SEPARATOR)
        + Counter(["blue eyes"])
    )


@pytest.mark.parametrize("fmt", ["default", "append", "one line"])
@pytest.mark.parametrize("tail", ["", " AND cat", "\nAND cat"])
def test_a_new_tag_that_looks_like_a_weight_never_ends_an_and_part(fmt, tail):
    prompt = classified(f"1girl, solo{tail}")
    out = assemble(prompt, ["smile", ":3", ">:3"], fmt)
    assert ">:3," in out
    parts = [i for i in parse(out).items if i.kind is ItemKind.PART_WEIGHT]
    assert parts == []  # nothing the webui would read as the weight of a part


def test_a_users_own_part_weight_is_left_to_end_its_part():
    prompt = classified("1girl, solo :1.2 AND cat")
    out = assemble(prompt, [":3"], "append")
    weights = [i.text.strip() for i in parse(out).items if i.kind is ItemKind.PART_WEIGHT]
    assert weights == [":1.2"]


def test_bad_format_is_a_clear_error():
    with pytest.raises(FormatError, match="neither a preset"):
        resolve_format("my favourite")


def test_append_keeps_the_prompt_verbatim():
    text = "1girl,  (smile:1.2) , <lora:x:0.5>\n[a:b:0.4]"
    assert assemble(classified(text), ["twintails"], "append") == text + ", twintails"


def test_append_goes_before_the_first_and():
    text = "1girl, smile AND cat :0.5"
    assert assemble(classified(text), ["twintails"], "append") == (
        "1girl, smile, twintails AND cat :0.5"
    )
    text = "1girl :1.2 AND cat"
    assert assemble(classified(text), ["tail"], "append") == "1girl, tail :1.2 AND cat"


def test_template_keeps_everything_after_break_in_place():
    text = "masterpiece, smile BREAK hatsune miku, 1girl"
    out = assemble(classified(text), ["twintails"])
    assert out == "smile, twintails,\n\nmasterpiece\nBREAK hatsune miku, 1girl"


def test_leading_break_does_not_crash_and_is_kept():
    out = assemble(classified("BREAK, 1girl"), ["solo"])
    assert out.endswith("BREAK, 1girl") and "solo" in out
    assert assemble(classified("BREAK"), [], "append") == "BREAK"


def test_new_tags_are_escaped_and_deduplicated_against_the_prompt():
    prompt = classified("Hatsune_Miku, (long hair:1.3), ganyu \\(genshin impact\\)")
    kept = new_tags_to_add(
        prompt, ["long hair", "hatsune miku", "twintails", "Twintails", "ganyu (genshin impact)"]
    )
    assert kept == ["twintails"]
    out = assemble(prompt, ["keqing (genshin impact)"], "append")
    assert out.endswith(", keqing \\(genshin impact\\)")
    (added,) = [t for _, t in parse(out).tags() if t.name.startswith("keqing")]
    assert added.weight == 1.0


_items = st.sampled_from(
    [
        "1girl",
        "hatsune miku",
        "(smile:1.2)",
        "((a))",
        "[b]",
        "(c, d:0.8)",
        "<lora:x:0.5>",
        "BREAK",
        "AND",
        "[a:b:0.4]",
        "[p|q]",
        "__w__",
        "{x|y}",
        "ganyu \\(genshin impact\\)",
        "masterpiece",
        "highres",
        "vocaloid",
        "(",
        ")",
        "]",
        ":0.5",
        "\n",
        "",
        "cat",
    ]
)
_prompts = st.lists(
    st.tuples(_items, st.sampled_from([", ", ",", " ", "\n", ",\n"])), max_size=12
).map(lambda pairs: "".join(a + b for a, b in pairs))


@settings(max_examples=300, deadline=None)
@given(_prompts, st.sampled_from(["default", "one line", "append"]))
def test_every_user_item_survives(text, fmt):
    prompt = classified(text)
    out = assemble(prompt, ["new tag"], fmt)
    wanted = Counter(
        i.text.strip() for i in prompt.parsed.items if i.kind is not ItemKind.SEPARATOR
    )
    for item_text, count in wanted.items():
        assert out.count(item_text) >= count, (text, out)
    assert "<|" not in out.replace(text, "")
    if fmt == "append":
        # the prompt is only ever split once, for the insertion
        cut = out.find(", new tag")
        if cut == -1:  # nothing before the insertion point: the tags lead, then ", "
            rest = out.replace("new tag", "", 1)
            main_part = re.split(r"\bAND\b", text)[0]
            rest = rest.removeprefix(", ") if leaves_bracket_open(main_part) else rest
            assert "".join(rest.split()) == "".join(text.split())
        else:
            assert out[:cut] + out[cut + len(", new tag") :] == text


def _word_weights(text):
    from webui_attention import char_weights

    weights = char_weights(text)
    return {m.group(): round(weights[m.start()], 4) for m in re.finditer(r"[a-z]+", text)}


@pytest.mark.parametrize("fmt", ["default", "append", "one line"])
@pytest.mark.parametrize(
    "text",
    [
        "1girl, smile, (hatsune miku",
        "masterpiece, 1girl, [smile",
        "(solo, smile",
        "masterpiece, (cat, [dog:1.2), sky",
        "1girl, (hatsune miku AND landscape",
        # A closer of the other kind closes nothing: the bracket stays open.
        "1girl, [smile), sky",
        "1girl, (smile], sky",
        "cat, (dog, [sky) AND x",
    ],
)
def test_a_bracket_left_open_keeps_every_weight(fmt, text):
    """An unclosed bracket weights everything after it in its part: the user's words keep
    their weights, and the new tags stay out of its reach."""
    out = assemble(classified(text), ["blue eyes"], fmt)
    before = _word_weights(text.split("AND")[0])
    after = _word_weights(out.split("AND")[0])
    assert {w: after[w] for w in before} == before
    assert after["blue"] == after["eyes"] == 1.0


# The webui's AND split and an AND part's trailing weight, written from its documented rule.
_AND_SPLIT = re.compile(r"\bAND\b")
_PART_WEIGHT_RULE = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def _part_weights(text):
    return [float(_PART_WEIGHT_RULE.search(p).group(2) or 1) for p in _AND_SPLIT.split(text)]


@pytest.mark.parametrize("fmt", ["append", "default", "one line"])
@pytest.mark.parametrize(
    "text", ["1girl, solo, :0.7 AND cat", "1girl, solo, :0.5", "1girl,:1.3 AND cat :0.2"]
)
def test_a_part_weight_the_user_wrote_after_a_comma_keeps_ending_its_part(fmt, text):
    out = assemble(classified(text), ["blue eyes", ":3"], fmt)
    assert _part_weights(out) == _part_weights(text), out

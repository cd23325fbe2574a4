"""TIPO's format layer on its own: the planner, one pass's input, reading the output."""

from __future__ import annotations

import pytest

from dtg_lib.categories import Category
from dtg_lib.dtg_format import classify_prompt
from dtg_lib.prompt_syntax import parse
from dtg_lib.tipo_format import (
    TIPO_TARGETS,
    TipoFormatError,
    TipoPass,
    TipoRequest,
    TipoSampling,
    build_model_input,
    cap_new_tags,
    meets_target,
    next_pass_content,
    parse_model_output,
    plan_passes,
    sentences,
)
from tests.fake_lookup import FakeLookup

TAGS = {Category.SPECIAL: ["1girl"], Category.GENERAL: ["solo", "smile"]}
TEXT = "A girl smiles."


def plan(**wishes) -> list[tuple[str | None, str, bool]]:
    return [(p.operation, p.length, p.expand) for p in plan_passes(TipoRequest(**wishes))]


# --- planner ------------------------------------------------------------------------


def test_nothing_given_writes_tags_then_a_caption():
    assert plan(tag_length="short", text_length="very_long") == [
        (None, "short", True),
        ("tag_to_long", "very_long", True),
    ]
    assert plan(caption=False) == [(None, "long", True)]


def test_tags_only():
    assert plan(tags=TAGS) == [(None, "long", True), ("tag_to_long", "long", False)]
    assert plan(tags=TAGS, caption=False) == [(None, "long", True)]
    assert plan(tags=TAGS, expand_tags=False) == [("tag_to_long", "long", False)]
    assert plan(tags=TAGS, expand_tags=False, caption=False) == []


def test_text_only_expands_the_text_and_writes_tags():
    assert plan(text=TEXT, tag_length="very_short") == [
        ("long_to_tag", "very_short", True),
        ("short_to_tag_to_long", "long", False),
    ]
    assert plan(text=TEXT, expand_text=False, caption=False) == [("long_to_tag", "long", False)]


def test_tags_and_text_tags_first_or_text_first():
    both = {"tags": TAGS, "text": TEXT, "tag_length": "short", "text_length": "very_long"}
    assert plan(**both) == [
        ("short_to_tag", "short", True),
        ("tag_to_long", "very_long", True),
        ("short_to_tag_to_long", "very_long", False),
    ]
    assert plan(**both, tags_first=False, caption=False) == [
        ("tag_to_long", "very_long", True),
        ("long_to_tag", "short", True),
    ]


def test_tags_and_text_expanding_one_of_them():
    both = {"tags": TAGS, "text": TEXT, "tag_length": "short", "text_length": "very_long"}
    assert plan(**both, expand_text=False, caption=False) == [
        ("short_to_tag", "short", True),
        ("short_to_tag_to_long", "very_long", False),
    ]
    # The caption is expanded with the caption's length token (kgen sends the tag one).
    assert plan(**both, expand_tags=False, caption=False) == [
        ("tag_to_long", "very_long", True),
        ("tag_to_short_to_long", "very_long", False),
    ]
    assert plan(**both, expand_tags=False, expand_text=False) == [
        ("short_to_tag_to_long", "very_long", False)
    ]
    assert plan(**both, expand_tags=False, expand_text=False, caption=False) == []


def test_blank_text_and_blank_tags_count_as_not_given():
    assert plan(tags={Category.GENERAL: [" ", ""]}, text=" \n ") == plan()


def test_gen_meta_marks_only_the_last_pass():
    passes = plan_passes(TipoRequest(tags=TAGS, gen_meta=True))
    assert [p.gen_meta for p in passes] == [False, True]
    assert (
        plan_passes(TipoRequest(tags=TAGS, expand_tags=False, caption=False, gen_meta=True)) == ()
    )


def test_every_planned_pass_is_a_known_operation():
    for tags in ({}, TAGS):
        for text in ("", TEXT):
            for flags in range(16):
                wishes = dict(
                    zip(
                        ("expand_tags", "expand_text", "tags_first", "caption"),
                        (bool(flags & 1), bool(flags & 2), bool(flags & 4), bool(flags & 8)),
                    )
                )
                passes = plan_passes(TipoRequest(tags=tags, text=text, **wishes))
                assert 0 <= len(passes) <= 3
                for step in passes:
                    TipoPass(step.operation, step.length, step.expand)  # validates


def test_bad_values_are_refused_with_a_clear_message():
    with pytest.raises(TipoFormatError, match="unknown tag_length 'medium'"):
        TipoRequest(tag_length="medium")
    with pytest.raises(TipoFormatError, match="unknown TIPO operation 'tag_to_tag'"):
        TipoPass("tag_to_tag", "long", True)
    with pytest.raises(ValueError, match="positive"):
        TipoRequest(width=0)


# --- input of one pass ---------------------------------------------------------------


def test_input_header_order_and_aspect_ratio():
    request = TipoRequest(
        tags={
            Category.QUALITY: ["masterpiece"],
            Category.COPYRIGHT: ["vocaloid"],
            Category.CHARACTER: ["hatsune miku"],
            Category.ARTIST: ["wlop"],
            Category.RATING: ["general"],
            Category.META: ["highres", "absurdres"],
            **TAGS,
        },
        width=832,
        height=1216,
    )
    assert build_model_input(request, plan_passes(request)[0]) == (
        "meta: highres, absurdres\nrating: general\nartist: wlop\ncharacters: hatsune miku\n"
        "copyrights: vocaloid\nquality: masterpiece\naspect_ratio: 0.7\n"
        "target: <|long|>\ntag: 1girl, solo, smile"
    )


def test_generate_opens_the_next_section_and_keeps_empty_ones():
    request = TipoRequest(tags=TAGS, text=TEXT)
    step = TipoPass("short_to_tag_to_long", "short", False, gen_meta=True)
    assert build_model_input(request, step, tags=[]) == (
        "aspect_ratio: 1.0\ntarget: <|short|> <|short_to_tag_to_long|> <|gen_meta|>\n"
        "short: A girl smiles.\ntag: \nlong:"
    )


def test_text_goes_to_long_unless_the_operation_has_short():
    request = TipoRequest(tags=TAGS, text=TEXT)
    long_pass = build_model_input(request, TipoPass("tag_to_long", "long", True))
    short_pass = build_model_input(request, TipoPass("short_to_tag", "long", True))
    assert long_pass.endswith("tag: 1girl, solo, smile\nlong: A girl smiles.")
    assert short_pass.endswith("short: A girl smiles.\ntag: 1girl, solo, smile")


def test_a_repeated_tag_is_sent_once():
    repeated = {
        Category.CHARACTER: ["hatsune miku", " hatsune miku "],
        Category.GENERAL: ["a", "a"],
    }
    text = build_model_input(TipoRequest(tags=repeated), TipoPass(None, "long", True))
    assert text == "characters: hatsune miku\naspect_ratio: 1.0\ntarget: <|long|>\ntag: a"


def test_request_from_a_classified_prompt():
    classified = classify_prompt(parse("1girl, hatsune miku, vocaloid, smile, 1girl"), FakeLookup())
    request = TipoRequest.from_classified(classified, "A girl.", tag_length="short")
    text = build_model_input(request, plan_passes(request)[0])
    assert "characters: hatsune miku\ncopyrights: vocaloid\n" in text
    assert text.endswith("short: A girl.\ntag: 1girl, smile")


# --- reading output ----------------------------------------------------------------


def test_output_tags_split_by_category_and_texts():
    read = parse_model_output(
        "characters: hatsune miku\ntarget: <|long|> <|short_to_tag_to_long|>\n"
        "short: A girl.\ntag: 1girl, vocaloid, smile, wlop, absurdres\n"
        "long: A girl with teal twintails sings. The crowd cheers.</s>",
        FakeLookup(),
    )
    assert read.tags == {
        Category.CHARACTER: ("hatsune miku",),
        Category.SPECIAL: ("1girl",),
        Category.COPYRIGHT: ("vocaloid",),
        Category.GENERAL: ("smile",),
        Category.ARTIST: ("wlop",),
        Category.META: ("absurdres",),
    }
    assert read.extended == "A girl."
    assert read.generated == "A girl with teal twintails sings. The crowd cheers."


def test_output_missing_sections_and_empty_captions():
    read = parse_model_output("target: <|long|>\nshort: <|empty|>\nlong:", FakeLookup())
    assert (read.tags, read.extended, read.generated) == ({}, None, None)


def test_next_pass_gets_tags_and_the_newest_caption():
    read = parse_model_output("tag: 1girl, smile\nshort: Short.\nlong: Long one.", FakeLookup())
    assert next_pass_content(read, "Old.") == (["1girl", "smile"], "Long one.")
    read = parse_model_output("tag: 1girl\nshort: Short.", FakeLookup())
    assert next_pass_content(read, "Old.") == (["1girl"], "Short.")
    assert next_pass_content(parse_model_output("tag: solo", FakeLookup()), "Old.") == (
        ["solo"],
        "Old.",
    )


# --- targets -------------------------------------------------------------------------


def test_targets_table_and_sampling_defaults():
    assert [(t.min_tags, t.max_tags) for t in TIPO_TARGETS.values()] == [
        (6, 18),
        (18, 36),
        (36, 54),
        (54, 72),
    ]
    assert [t.min_sentences for t in TIPO_TARGETS.values()] == [1, 2, 4, 8]
    assert TIPO_TARGETS["very_long"].max_sentences is None
    assert TipoSampling() == TipoSampling(0.35, 0.1, 0.95, 60, 512)


def test_meets_target_counts_tags_or_sentences():
    tags = ", ".join(f"tag {i}" for i in range(5))
    read = parse_model_output(f"tag: 1girl, {tags}\nlong: One. Two.", FakeLookup())
    assert meets_target(read, TipoPass(None, "very_short", True))  # 6 tags
    assert not meets_target(read, TipoPass(None, "short", True))
    assert meets_target(read, TipoPass("tag_to_long", "short", False))  # 2 sentences
    assert not meets_target(read, TipoPass("tag_to_long", "long", False))
    assert not meets_target(read, TipoPass("tag_to_short", "very_short", False))  # no short
    assert sentences("One. Two. ") == ["One", "Two"]


def test_new_tags_are_capped_by_the_tag_maximum():
    given = [f"given {i}" for i in range(10)]
    found = given + [f"new {i}" for i in range(30)]
    capped = cap_new_tags(given, found, "very_short")  # at most 18 tags
    assert capped == given + [f"new {i}" for i in range(8)]
    # kgen's post_generate_process cuts by the sentence maximum (2 here): 10 + 0 new.
    assert len(cap_new_tags(given * 2, found, "very_short")) == 18
    many = [f"given {i}" for i in range(20)]
    assert cap_new_tags(many, found, "very_short") == many  # the user's tags are all kept


def test_kgen_caps_new_tags_by_the_sentence_maximum():
    """Difference O6, shown on the reference: our cap keeps 8 new tags where kgen keeps 0."""
    pytest.importorskip("torch", reason="kgen's executor imports torch")
    pytest.importorskip("transformers", reason="kgen's executor imports transformers")
    kgen_tipo = pytest.importorskip("kgen.executor.tipo", reason="tipo-kgen not installed")
    given = [f"given {i}" for i in range(10)]
    found = given + [f"new {i}" for i in range(30)]
    parsed = {"general": list(found)}
    result = kgen_tipo.post_generate_process(parsed, ", ".join(given), "", None, "very_short")
    assert len(result["general"]) == 10  # max(2 - 10, 0) new tags: none
    assert len(cap_new_tags(given, found, "very_short")) == 18

"""TIPO's model input and output reading against the author's library, case by case.

The reference is tipo-kgen 0.3.1: `kgen.formatter.seperate_tags` splits the prompt,
`kgen.executor.tipo.parse_tipo_request` plans the passes and `apply_tipo_prompt`
writes each one, with `aspect_ratio: W/H` (one decimal) added to the header after
planning as the author's webui extension (z-tipo-extension) adds it. Output is read
by `parse_tipo_result`. Both sides classify tags with the tag lists shipped in the
tipo-kgen wheel.

Where we differ on purpose (each has a test below):

Input and plan
- I1 `tag_to_long` expanding the user's text (tags and text given, only the text
  expanded) gets the text length token; kgen sends the tag length for a caption.
- I2 A tag the prompt repeats is sent once (kgen sends `smile, smile`).
- I3 The caption is written on one line, whitespace collapsed: a newline inside it
  could start what reads as a new `key:` section.
- I4 A generate pass whose output section already has text continues that text;
  kgen writes the section twice (`long: X` then `long:`). kgen's own plans never
  do this; only its retry (which feeds a caption back) does.
- I5 Tags are classified by the project's lookup (case-insensitive, weights and
  escapes understood), as on the DTG path; see tests/test_reference_corpus.py.
- I6 Lengths are the four tokens with underscores; z-tipo passes the NL length
  radio's "very short" unconverted, so kgen writes `<|very short|>`. We refuse it.

Output
- O1 `<s>` and `</s>` are removed as tokens; kgen strips the characters `<`, `s`,
  `>`, `/` from both ends, clipping a final `blue eyes` to `blue eye`.
- O2 Special tokens (`<|...|>`) inside the tag section are not tags.
- O3 Each tag is listed once per category (kgen lists a name the header and the
  tag section both have twice).
- O4 Captions come back on one line, whitespace collapsed, special tokens removed.
- O5 An unknown tag comes back in its canonical form (lower case, single spaces).
- O6 Post-processing (not in this module's reader, but in `cap_new_tags`) caps new
  tags by the tag maximum; kgen's `post_generate_process` caps them by the sentence
  maximum (see tests/test_tipo_format.py).
"""

from __future__ import annotations

import itertools

import pytest

from dtg_lib.categories import Category
from dtg_lib.dtg_format import classify_prompt
from dtg_lib.prompt_syntax import parse
from dtg_lib.tipo_format import (
    LONG_SECTION,
    SHORT_SECTION,
    TipoFormatError,
    TipoPass,
    TipoRequest,
    build_model_input,
    parse_model_output,
    plan_passes,
)

pytest.importorskip("torch", reason="kgen's executor imports torch")
pytest.importorskip("transformers", reason="kgen's executor imports transformers")
kgen_tipo = pytest.importorskip("kgen.executor.tipo", reason="tipo-kgen not installed")
from kgen.formatter import seperate_tags  # noqa: E402

from dtg_lib.tag_lookup import TagLookup, TagSource, kgen_tag_list_dir  # noqa: E402

KGEN_KEYS = {
    Category.META: "meta",
    Category.RATING: "rating",
    Category.ARTIST: "artist",
    Category.CHARACTER: "characters",
    Category.COPYRIGHT: "copyrights",
    Category.QUALITY: "quality",
    Category.SPECIAL: "special",
    Category.GENERAL: "general",
}
LENGTHS = ("very_short", "short", "long", "very_long")
LENGTH_PAIRS = list(itertools.product(LENGTHS, LENGTHS))
SIZES = [(1024, 1024), (832, 1216), (1216, 832), (640, 1536)]
PROMPTS = [
    "",
    "1girl, solo, smile",
    "1girl, hatsune miku, vocaloid, twintails, general",
    "scenery, no humans, masterpiece, absurdres, mountain",
    "2girls, hakurei reimu, kirisame marisa, touhou, wlop, yuri",
]
TEXTS = [
    "",
    "A girl with long hair stands in the rain.",
    "Two girls share an umbrella. They smile at each other",
]
FLAGS = list(itertools.product((True, False), repeat=4))  # expand tags/text, tags first, caption
CASES = [(prompt, text, *flags) for prompt, text, flags in itertools.product(PROMPTS, TEXTS, FLAGS)]
FED_TAGS_EXTRA = "looking at viewer"
FED_TEXT = "A caption written by an earlier pass. It has two sentences"


@pytest.fixture(scope="module")
def lookup(tmp_path_factory):
    lists = kgen_tag_list_dir()
    if lists is None:
        pytest.skip("tipo-kgen tag lists not installed")
    index = tmp_path_factory.mktemp("index") / "kgen.sqlite"
    with TagLookup.open([TagSource(lists, "kgen-dir")], index) as opened:
        yield opened


def make_request(lookup, prompt, text, flags, lengths, size) -> TipoRequest:
    expand_tags, expand_text, tags_first, caption = flags
    return TipoRequest.from_classified(
        classify_prompt(parse(prompt), lookup),
        text,
        tag_length=lengths[0],
        text_length=lengths[1],
        expand_tags=expand_tags,
        expand_text=expand_text,
        tags_first=tags_first,
        caption=caption,
        width=size[0],
        height=size[1],
    )


def reference_plan(prompt, text, flags, lengths, size):
    """kgen's header, passes, tag section and caption, as z-tipo calls it."""
    expand_tags, expand_text, tags_first, caption = flags
    meta, operations, general, nl_prompt = kgen_tipo.parse_tipo_request(
        seperate_tags(prompt.split(",")),
        text,
        expand_tags=expand_tags,
        expand_prompt=expand_text,
        generate_extra_nl_prompt=caption,
        tag_first=tags_first,
        tag_length_target=lengths[0],
        nl_length_target=lengths[1],
    )
    meta["aspect_ratio"] = f"{size[0] / size[1]:.1f}"
    return meta, [tuple(op) for op in operations], general, nl_prompt


def with_i1(operations, prompt, text, flags, lengths):
    """kgen's plan with difference I1 applied."""
    expand_tags, expand_text = flags[0], flags[1]
    if prompt and text and not expand_tags and expand_text:
        assert operations[0] == ("tag_to_long", lengths[0], True)
        return [("tag_to_long", lengths[1], True), *operations[1:]]
    return operations


def fed_state(passes, index, general, text):
    """What pass `index` is given: kgen's runner hands on the tags and the newest caption."""
    if index == 0:
        return general, text
    tags = ", ".join(t for t in [general, FED_TAGS_EXTRA] if t)
    wrote_caption = any(p.output_section in (SHORT_SECTION, LONG_SECTION) for p in passes[:index])
    return tags, FED_TEXT if wrote_caption else text


def test_the_corpus_is_large_and_varied():
    assert len(CASES) >= 50
    assert {c[0] == "" for c in CASES} == {True, False}
    assert {c[1] == "" for c in CASES} == {True, False}
    assert len(CASES) >= len(LENGTH_PAIRS) * len(SIZES)  # every length pair and size is used


@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_plan_and_inputs_as_the_reference(lookup, case):
    prompt, text, *flags = CASES[case]
    lengths, size = LENGTH_PAIRS[case % len(LENGTH_PAIRS)], SIZES[case % len(SIZES)]
    request = make_request(lookup, prompt, text, flags, lengths, size)
    meta, operations, general, nl_prompt = reference_plan(prompt, text, flags, lengths, size)

    passes = plan_passes(request)
    assert [(p.operation, p.length, p.expand) for p in passes] == with_i1(
        operations, prompt, text, flags, lengths
    )
    for index, step in enumerate(passes):
        tags, caption = fed_state(passes, index, general, nl_prompt)
        expected = kgen_tipo.apply_tipo_prompt(
            meta, tags, caption, step.operation, step.length, step.expand
        )
        ours = build_model_input(request, step, tags=tags.split(", ") if tags else [], text=caption)
        assert ours == expected, f"pass {index}: {step}"


def test_gen_meta_goes_on_the_last_pass_only(lookup):
    prompt, text, flags = "1girl, solo", "A girl.", (True, True, True, True)
    request = make_request(lookup, prompt, text, flags, ("long", "short"), (1024, 1024))
    request = TipoRequest(**{**request.__dict__, "gen_meta": True})
    meta, _, general, nl_prompt = reference_plan(
        prompt, text, flags, ("long", "short"), (1024, 1024)
    )
    passes = plan_passes(request)
    assert [p.gen_meta for p in passes] == [False, False, True]
    last = passes[-1]
    expected = kgen_tipo.apply_tipo_prompt(
        meta, general, nl_prompt, last.operation, last.length, last.expand, gen_meta=True
    )
    assert build_model_input(request, last) == expected
    assert "<|short|> <|short_to_tag_to_long|> <|gen_meta|>" in expected


# --- input: deliberate differences -------------------------------------------------


def test_i1_expanding_the_text_uses_the_text_length(lookup):
    flags, lengths = (False, True, True, False), ("very_long", "very_short")
    request = make_request(lookup, "1girl, solo", "A girl.", flags, lengths, (1024, 1024))
    _, operations, _, _ = reference_plan("1girl, solo", "A girl.", flags, lengths, (1024, 1024))
    assert operations[0] == ("tag_to_long", "very_long", True)
    assert plan_passes(request)[0] == TipoPass("tag_to_long", "very_short", True)


def test_i2_a_repeated_tag_is_sent_once(lookup):
    flags, lengths = (True, True, True, False), ("long", "long")
    prompt = "1girl, smile, smile, solo"
    request = make_request(lookup, prompt, "", flags, lengths, (1024, 1024))
    meta, operations, general, nl_prompt = reference_plan(prompt, "", flags, lengths, (1024, 1024))
    step = plan_passes(request)[0]
    reference = kgen_tipo.apply_tipo_prompt(meta, general, nl_prompt, *operations[0])
    assert "tag: 1girl, smile, smile, solo" in reference
    assert build_model_input(request, step).endswith("tag: 1girl, smile, solo")


def test_i3_the_caption_stays_on_one_line(lookup):
    text = "A girl in the rain.\nnote: she smiles.  "
    flags, lengths = (True, True, True, False), ("long", "long")
    request = make_request(lookup, "1girl", text, flags, lengths, (1024, 1024))
    meta, operations, general, nl_prompt = reference_plan(
        "1girl", text, flags, lengths, (1024, 1024)
    )
    reference = kgen_tipo.apply_tipo_prompt(meta, general, nl_prompt, *operations[1])
    assert "\nnote: she smiles." in reference  # reads back as a section called "note"
    ours = build_model_input(request, plan_passes(request)[1])
    assert ours.endswith("long: A girl in the rain. note: she smiles.")


def test_i4_a_written_section_is_continued_not_opened_twice(lookup):
    request = make_request(lookup, "1girl", "", (True, True, True, True), ("long", "long"), (1, 1))
    step = TipoPass("tag_to_long", "long", False)
    meta, _, general, _ = reference_plan("1girl", "", (True,) * 4, ("long", "long"), (1, 1))
    reference = kgen_tipo.apply_tipo_prompt(meta, general, "A caption.", *step.__dict__.values())
    assert reference.endswith("long: A caption.\nlong:")
    assert build_model_input(request, step, text="A caption.").endswith(
        "tag: 1girl\nlong: A caption."
    )


def test_i5_tags_are_classified_by_the_project_lookup(lookup):
    flags, lengths = (True, True, True, False), ("long", "long")
    prompt = "1girl, Hatsune Miku, (smile:1.2)"
    request = make_request(lookup, prompt, "", flags, lengths, (1024, 1024))
    meta, operations, general, nl_prompt = reference_plan(prompt, "", flags, lengths, (1024, 1024))
    reference = kgen_tipo.apply_tipo_prompt(meta, general, nl_prompt, *operations[0])
    ours = build_model_input(request, plan_passes(request)[0])
    assert "characters:" not in reference and "(smile:1.2)" in reference
    assert "characters: hatsune miku\n" in ours and ours.endswith("tag: 1girl, smile")


def test_i6_a_length_with_a_space_is_refused():
    meta, operations, general, _ = kgen_tipo.parse_tipo_request(
        {"general": ["solo"]}, "", generate_extra_nl_prompt=True, nl_length_target="very short"
    )
    assert kgen_tipo.apply_tipo_prompt(meta, general, "", *operations[-1]).count("<|very short|>")
    with pytest.raises(TipoFormatError, match="very_short"):
        TipoRequest(text_length="very short")


# --- output -------------------------------------------------------------------------

HEADER = "rating: general\ncharacters: hatsune miku\naspect_ratio: 0.7\n"
# Crafted texts (model input followed by what the model wrote) both readers agree on.
AGREED_OUTPUTS = [
    HEADER + "target: <|long|>\ntag: 1girl, solo, twintails, smile",
    HEADER + "target: <|long|> <|tag_to_long|>\ntag: 1girl, solo\nlong: A girl sings on stage.",
    "target: <|short|> <|short_to_tag|>\nshort: A girl.\ntag: 1girl, umbrella, rain",
    "target: <|long|> <|tag_to_long|>\ntag: 1girl, solo\nlong: A girl sings in the ra",  # cut
    "target: <|long|> <|tag_to_long|>\ntag: 1girl, solo\nlong:",  # cut before the caption
    "target: <|long|> <|tag_to_long|>\ntag: 1girl, solo, long hai",  # cut inside a tag
    "target: <|long|>\ntag: 1girl, solo,",  # cut after a comma
    "target: <|long|> <|short_to_tag_to_long|>\nshort: A girl.\ntag: 1girl\nlong: She waves.",
    "target: <|long|> <|tag_to_short|>\ntag: 1girl, solo\nshort: <|empty|>\ntarget: echo",
    "tag: 1girl, smile\ntag: 2girls, frown",  # a repeated key: the first counts
    "tag: 1girl\nlong: <|empty|>\nlong: A second try at a caption.",  # first non-empty caption
    "tag: 1girl\nshort: \nshort: Filled later.",
    "tag:1girl,solo ,  smile\nlong:   A girl.   ",  # odd spacing
    "  \ntag: 1girl, solo\n\n\nlong: A girl.\n\n",  # blank lines around
    "rating: sensitive\nartist: wlop\ntag: 1girl, general, portrait",  # rating inside tags
    "copyrights: touhou\ntag: 1girl, hakurei reimu, red bow",  # a character in the tag list
    "meta: highres\nquality: masterpiece\ntag: 1girl, absurdres, best quality",
    "garbage before any key\ntag: 1girl, solo",
    "tag: 1girl, rem (re:zero), maid",  # a colon inside a tag
    "tag: 1girl, solo\nunknown_key: something else\nlong: A girl.",
    "general: smile\nspecial: 1girl\ntag: solo, 1boy",  # category lines before the tags
    "tag: 1girl, solo\nartist: wlop",  # a header line after the tags is an echo, dropped
    "<s> rating: general\ntarget: <|long|>\ntag: 1girl, solo, smile",
    "tag: 1girl, smile\nlong: A girl smiles. She is happy.</s>",
    "",
    "no keys at all",
]


def reference_output(text: str) -> dict:
    parsed = kgen_tipo.parse_tipo_result(text)
    tags = {c: tuple(parsed[k]) for c, k in KGEN_KEYS.items() if parsed.get(k)}
    return {"tags": tags, "extended": parsed.get("extended"), "generated": parsed.get("generated")}


def our_output(text: str, lookup) -> dict:
    read = parse_model_output(text, lookup)
    return {"tags": read.tags, "extended": read.extended, "generated": read.generated}


def test_the_output_corpus_is_large_enough():
    assert len(AGREED_OUTPUTS) >= 20


@pytest.mark.parametrize("text", AGREED_OUTPUTS)
def test_same_reading_as_the_reference(lookup, text):
    assert our_output(text, lookup) == reference_output(text)


def test_o1_boundary_tokens_are_removed_as_tokens(lookup):
    text = "<s> tag: 1girl, blue eyes</s>"
    assert reference_output(text)["tags"][Category.GENERAL] == ("blue eye",)
    assert our_output(text, lookup)["tags"][Category.GENERAL] == ("blue eyes",)
    plain = "tag: 1girl, long hairs"  # llama.cpp returns no </s>; kgen clips it all the same
    assert reference_output(plain)["tags"][Category.GENERAL] == ("long hair",)
    assert our_output(plain, lookup)["tags"][Category.GENERAL] == ("long hairs",)
    first = "special: 1girl\ntag: 1boy"  # the first key loses its "s" too
    assert reference_output(first)["tags"][Category.SPECIAL] == ("1boy",)
    assert our_output(first, lookup)["tags"][Category.SPECIAL] == ("1girl", "1boy")
    empty_last = "tag: 1girl\nshort: <|empty|>"  # and a final <|empty|> its ">"
    assert reference_output(empty_last)["extended"] == "<|empty|"
    assert our_output(empty_last, lookup)["extended"] is None


def test_o2_special_tokens_are_not_tags(lookup):
    text = "tag: 1girl, <|empty|>, smile"
    assert reference_output(text)["tags"][Category.GENERAL] == ("<|empty|>", "smile")
    assert our_output(text, lookup)["tags"][Category.GENERAL] == ("smile",)


def test_o3_each_tag_once_per_category(lookup):
    text = "characters: hatsune miku\ntag: 1girl, hatsune miku, smile, smile"
    reference = reference_output(text)["tags"]
    assert reference[Category.CHARACTER] == ("hatsune miku", "hatsune miku")
    assert reference[Category.GENERAL] == ("smile", "smile")
    ours = our_output(text, lookup)["tags"]
    assert ours[Category.CHARACTER] == ("hatsune miku",)
    assert ours[Category.GENERAL] == ("smile",)


def test_o4_captions_on_one_line(lookup):
    text = "tag: 1girl\nlong: A girl smiles.\nShe waves <|long|> at us."
    assert reference_output(text)["generated"] == "A girl smiles.\nShe waves <|long|> at us."
    assert our_output(text, lookup)["generated"] == "A girl smiles. She waves at us."


def test_o5_unknown_tags_in_canonical_form(lookup):
    text = "tag: 1girl, Glowing  Sword"
    assert reference_output(text)["tags"][Category.GENERAL] == ("Glowing  Sword",)
    assert our_output(text, lookup)["tags"][Category.GENERAL] == ("glowing sword",)

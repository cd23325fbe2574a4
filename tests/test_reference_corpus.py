"""Our model input against the reference library's, prompt by prompt.

The reference (`tipo-kgen`: `kgen.formatter.seperate_tags` then
`kgen.executor.dtg.apply_dtg_prompt`) gets the prompt split on commas, as
the author's extension gives it. Both sides use the same tag lists: the
ones shipped in the tipo-kgen wheel.
"""

from __future__ import annotations

import pytest

from dtg_lib.dtg_format import build_model_input, classify_prompt
from dtg_lib.prompt_syntax import parse

kgen_models = pytest.importorskip("kgen.models", reason="tipo-kgen (and torch) not installed")
from kgen.executor.dtg import apply_dtg_prompt  # noqa: E402
from kgen.formatter import seperate_tags  # noqa: E402

from dtg_lib.tag_lookup import TagLookup, TagSource, kgen_tag_list_dir  # noqa: E402

SAME = [
    "1girl, solo, dragon girl, dragon horns, dragon tail",
    "1girl, hatsune miku, vocaloid, twintails, aqua hair, long hair",
    "2girls, hakurei reimu, kirisame marisa, touhou, yuri",
    "1boy, male focus, solo, armor, sword",
    "1girl, solo, masterpiece, best quality, smile",
    "masterpiece, 1girl, remilia scarlet, touhou, wings, red eyes",
    "1girl, wlop, portrait, realistic",
    "scenery, no humans, mountain, sky, cloud",
    "1girl, safe, looking at viewer",
    "1girl, explicit, nude",
    "1girl, nsfw",
    "cat, no humans, animal focus",
    "1girl, highres, absurdres, solo",
    "1girl, solo, newest, very aesthetic",
    "score_9, score_8_up, 1girl, solo",
    "1girl, frieren, sousou no frieren, elf, pointy ears",
    "1girl, ganyu (genshin impact), genshin impact, horns",
    "1girl, rem (re:zero), re:zero kara hajimeru isekai seikatsu, maid",
    "1girl, saber (fate), fate (series), armor, ahoge",
    "1girl, gawr gura, hololive, hololive english, shark tail",
    "multiple girls, 3girls, school uniform, classroom",
    "1other, ambiguous gender, robot",
    "6+girls, crowd",
    "1girl, 1boy, hetero, couple",
    "1girl, solo, long hair, very long hair, blonde hair, blue eyes",
    "1girl, ^_^, closed eyes, smile",
    "1girl, o_o, surprised",
    "1girl, solo, white dress, flower field, wind",
    "1girl, makima (chainsaw man), chainsaw man, ringed eyes",
    "1girl, anya (spy x family), spy x family, pink hair",
    "1girl, kantoku, school uniform",
    "1girl, mika pikazo, colorful",
    "1girl, hatsune miku, kagamine rin, kagamine len, vocaloid, 1boy, 2girls",
    "solo, sitting, chair, indoors",
    "1girl, blue archive, halo",
    "1girl, arknights, animal ears",
    "1girl, azur lane, military uniform",
    "1girl, commentary request, translated, solo",
    "1girl, best quality, great quality, good quality",
    "1girl, low quality, worst quality",
    "1girl, sensitive, swimsuit, beach",
    "general, 1girl, solo",
    "1girl, long_hair, blue_eyes, school_uniform",
    "1girl, hatsune_miku, vocaloid",
    "1girl,solo,smile",
    "  1girl ,  solo  , smile  ",
    "1girl, solo, red scarf, winter, snow",
    "1girl, sword art online, asuna (sao)",
    "no humans, still life, food, fruit",
    "1girl, holding umbrella, rain, night, city lights",
    "1girl, touhou, flandre scarlet, wings, side ponytail",
    "1girl, genshin impact, raiden shogun, purple hair",
]

# Prompts where our input differs on purpose; `expect` is in our input, `reason` says why.
BETTER = [
    ("1girl, (smile:1.2), (blush)", "smile, blush<", "weights are syntax, not part of the tag"),
    ("1girl, Hatsune Miku, Vocaloid", "characters: hatsune miku", "case-insensitive lookup"),
    (
        "1girl, ganyu \\(genshin impact\\)",
        "characters: ganyu (genshin impact)",
        "escaped parentheses are understood",
    ),
    ("1girl, <lora:detail:0.5>, smile", "1girl, smile<", "extra networks are not tags"),
    ("BREAK, 1girl, solo", "1girl, solo<", "BREAK is structure, not a tag"),
    ("1girl, smile, smile, solo", "1girl, smile, solo<", "duplicates are sent once"),
    ("1girl, by wlop, portrait", "artist: wlop", "`by NAME` names an artist"),
    ("1girl, [cat:dog:0.5], solo", "1girl, solo<", "prompt editing is not a tag"),
    ("1girl\nsolo\nsmile", "1girl, solo, smile<", "newlines separate tags"),
    ("1girl, solo AND cat", "1girl, solo, cat<", "AND is structure, not a tag"),
]


@pytest.fixture(scope="module")
def lookup(tmp_path_factory):
    lists = kgen_tag_list_dir()
    if lists is None:
        pytest.skip("tipo-kgen tag lists not installed")
    index = tmp_path_factory.mktemp("index") / "kgen.sqlite"
    with TagLookup.open([TagSource(lists, "kgen-dir")], index) as opened:
        yield opened


def reference_input(
    prompt: str, width: int, height: int, target: str, *, intended_default: bool = True
) -> str:
    kgen_models.current_model_name = "DanTagGen-delta-rev2"
    tag_map = seperate_tags(prompt.split(","))
    if intended_default and not tag_map["quality"]:
        # apply_dtg_prompt falls back to "masterpiece" only when the key is absent, but
        # seperate_tags always sets it, so the reference writes an empty "quality: ".
        # We send the default it meant; test_empty_quality_line shows the difference.
        del tag_map["quality"]
    return apply_dtg_prompt(tag_map, target, width / height)


def our_input(lookup, prompt: str, width: int, height: int, target: str) -> str:
    classified = classify_prompt(parse(prompt), lookup)
    return build_model_input(classified, width=width, height=height, target=target)


SIZES = [
    (1024, 1024, "long"),
    (832, 1216, "short"),
    (1216, 832, "very_long"),
    (640, 1536, "very_short"),
]


def test_the_corpus_is_large_and_varied():
    assert len(SAME) + len(BETTER) >= 50
    assert len(set(SAME)) == len(SAME)


@pytest.mark.parametrize("prompt", SAME)
def test_same_input_as_the_reference(lookup, prompt):
    width, height, target = SIZES[SAME.index(prompt) % len(SIZES)]
    assert our_input(lookup, prompt, width, height, target) == reference_input(
        prompt, width, height, target
    )


def test_empty_quality_line(lookup):
    prompt = "1girl, solo"
    reference = reference_input(prompt, 1024, 1024, "long", intended_default=False)
    assert reference.startswith("quality: \n")
    assert our_input(lookup, prompt, 1024, 1024, "long").startswith("quality: masterpiece\n")


@pytest.mark.parametrize(("prompt", "expect", "reason"), BETTER)
def test_deliberately_better_than_the_reference(lookup, prompt, expect, reason):
    ours = our_input(lookup, prompt, 1024, 1024, "long")
    assert ours != reference_input(prompt, 1024, 1024, "long"), reason
    assert expect.replace("<", "<|input_end|>") in ours, reason

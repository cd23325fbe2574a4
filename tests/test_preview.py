"""The preview: categories marked, new tags set apart, user text escaped."""

from __future__ import annotations

import re

from dtg_lib.preview import (
    classify_items,
    render_preview_grid,
    render_preview_html,
    render_preview_text,
    render_sentences_html,
)
from dtg_lib.upsampler import Result, Timings


def make_result(**changes):
    data = dict(
        prompt="1girl, hatsune miku, vocaloid, (smile:1.2), <lora:x:0.5>",
        final_prompt=(
            "1girl, hatsune miku, vocaloid,\n\n(smile:1.2), long hair, twintails, "
            "<lora:x:0.5>,\n\nmasterpiece"
        ),
        new_tags=("long hair", "twintails"),
        model_input="",
        seed=42,
        rounds=2,
        prompt_tokens=10,
        completion_tokens=20,
        timings=Timings(total_s=1.234),
        model="delta-rev2:Q8_0",
        backend="llama.cpp",
        device="cpu",
        tag_categories={
            "1girl": "special",
            "hatsune miku": "character",
            "vocaloid": "copyright",
            "smile": "general",
            "masterpiece": "quality",
        },
    )
    data.update(changes)
    return Result(**data)


def chips(html):
    return re.findall(r'<span class="dtg-tag ([^"]*)"[^>]*>(.*?)</span>', html)


def test_each_item_is_marked_by_its_category_in_order():
    found = chips(render_preview_html(make_result()))
    assert [(c.split()[0], text.split("&#8202;")[-1]) for c, text in found] == [
        ("dtg-cat-special", "1girl"),
        ("dtg-cat-character", "hatsune miku"),
        ("dtg-cat-copyright", "vocaloid"),
        ("dtg-cat-general", "(smile:1.2)"),
        ("dtg-cat-general", "long hair"),
        ("dtg-cat-general", "twintails"),
        ("dtg-cat-other", "&lt;lora:x:0.5&gt;"),
        ("dtg-cat-quality", "masterpiece"),
    ]


def test_new_tags_are_set_apart_and_user_tags_are_not():
    found = {
        text.split("&#8202;")[-1]: classes
        for classes, text in chips(render_preview_html(make_result()))
    }
    assert "dtg-new" in found["long hair"] and "dtg-new" in found["twintails"]
    assert all("dtg-user" in found[t] for t in ["1girl", "hatsune miku", "(smile:1.2)"])
    html = render_preview_html(make_result())
    assert html.count("dashed") >= 3  # two new chips and the legend's "+ new"


def test_legend_lists_the_categories_present_and_summary_shows_rounds_and_time():
    html = render_preview_html(make_result())
    legend = html[html.index('class="dtg-legend"') :]
    for name in ["special", "character", "copyright", "general", "quality", "other", "+ new"]:
        assert name in legend
    assert "artist" not in legend and "rating" not in legend
    assert "2 new tags" in html and "2 rounds" in html and "1.23 s" in html and "seed 42" in html


def test_template_line_breaks_are_kept():
    assert render_preview_html(make_result()).count('<br class="dtg-break">') == 4


def test_user_text_is_escaped():
    evil = '<script>alert("x")</script>, <img src=x onerror=alert(1)>, "quoted" & more'
    result = make_result(
        prompt=evil,
        final_prompt=evil + ", new&tag",
        new_tags=("new&tag",),
        tag_categories={},
        notices=("<b>notice</b>",),
        model='<i onmouseover="x">m</i>',
    )
    html = render_preview_html(result)
    assert "<script" not in html and "<img" not in html and "<b>notice" not in html
    assert "<i " not in html
    assert "&lt;script&gt;" in html and "&amp; more" in html and "new&amp;tag" in html
    assert "&lt;b&gt;notice&lt;/b&gt;" in html


def test_json_results_render_the_same_as_results():
    from dtg_lib.http_api import result_to_json

    result = make_result()
    assert render_preview_html(result_to_json(result)) == render_preview_html(result)


def test_grid_has_one_card_per_result():
    html = render_preview_grid([make_result(seed=1), make_result(seed=2)])
    assert html.count('class="dtg-preview-card"') == 2 and "seed 1" in html and "seed 2" in html


def test_text_preview():
    text = render_preview_text(make_result(notices=("fell back to torch",)))
    assert text.startswith("1girl, hatsune miku")
    assert "new: long hair, twintails" in text and "2 rounds, 1.23 s" in text
    assert "note: fell back to torch" in text


def test_tags_the_engine_did_not_classify_count_as_general():
    rows = classify_items(make_result(final_prompt="odd tag, BREAK, x", tag_categories={}))
    kinds = [(item.text.strip(), category) for item, category, _ in rows if item.text.strip(", ")]
    assert kinds == [("odd tag", "general"), ("BREAK", "other"), ("x", "general")]


def test_a_tipo_results_new_tags_are_set_apart_with_their_own_categories():
    # A TIPO result's categories also name its new tags (gen_meta's artists, say).
    result = make_result(
        prompt="1girl, solo",
        final_prompt="1girl, wlop,\n\nsolo, long hair,\n\nA girl reads.",
        new_tags=("wlop", "long hair"),
        tag_categories={"1girl": "special", "solo": "general", "wlop": "artist"},
        generated="A girl reads.",
    )
    found = {text.split("&#8202;")[-1]: c for c, text in chips(render_preview_html(result))}
    assert "dtg-new" in found["wlop"] and "dtg-cat-artist" in found["wlop"]
    assert "dtg-new" in found["long hair"] and "dtg-cat-general" in found["long hair"]
    assert "dtg-user" in found["1girl"] and "dtg-user" in found["solo"]
    sentences = render_sentences_html(result, ", seed 42")
    assert 'class="dtg-sentence dtg-generated"' in sentences and "dtg-extended" not in sentences
    assert "Generated caption, seed 42" in sentences and "A girl reads." in sentences
    assert render_sentences_html(make_result()) == ""  # a DTG result has none

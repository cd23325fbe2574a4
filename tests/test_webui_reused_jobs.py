"""Host features that run several jobs on one `p`, or on shallow copies of it.

The X/Y/Z plot and "Prompts from file" copy `p` per job (the copies share
`extra_generation_params`); the img2img batch tab and loopback call process_images
on the same `p` again. Each job must stand alone: its own infotext keys, and in
"before" mode its own expansion of the prompt the user wrote.
"""

from __future__ import annotations

from copy import copy

import pytest
from test_webui_script import ORIGINAL_KEY, PARAMS_KEY, on, params, webui  # noqa: F401
from test_xyz import grid  # noqa: F401

from dtg_lib.settings import SettingsError
from dtg_webui.args import ScriptArgs
from dtg_webui.infotext import ERROR_KEY


def test_a_copy_whose_expansion_failed_carries_no_earlier_copys_keys(webui):  # noqa: F811
    p = webui.txt2img(on(), prompt="", seed=1)
    first, second = copy(p), copy(p)  # as "Prompts from file" makes one per line
    first.prompt, second.prompt = "1girl, red hair", "landscape, mountain"
    webui.run(first)
    webui.engine.fail = True
    failed = webui.run(second)
    assert failed.all_prompts == ["landscape, mountain"]
    keys = params(failed.infotexts[0])
    # Its own keys (a failed job records its prompt as written), none of the first copy's.
    assert keys[ORIGINAL_KEY] == "landscape, mountain"
    assert ERROR_KEY in keys
    assert webui.paste(failed.infotexts[0])["Prompt"] == "landscape, mountain"


def test_xyz_cells_after_a_failed_cell_report_no_error(webui, grid):  # noqa: F811
    webui.callbacks.before_ui_callback()
    p = webui.txt2img(on(), prompt="1girl", seed=10)
    cells = grid.cells(p, [(grid.option("[DTG] Temperature"), ["0", "1.0", "0"])])
    bad, good, bad_again = (webui.run(cell) for cell in cells)
    assert ERROR_KEY in params(bad.infotexts[0])
    assert good.all_prompts == ["1girl, dtg 10"]
    assert ERROR_KEY not in params(good.infotexts[0])
    assert PARAMS_KEY in params(good.infotexts[0])
    assert bad_again.all_prompts == ["1girl"]
    assert PARAMS_KEY not in params(bad_again.infotexts[0])
    assert ORIGINAL_KEY not in params(bad_again.infotexts[0])


def test_a_job_with_dtg_off_after_one_with_it_on_records_nothing(webui):  # noqa: F811
    p = webui.txt2img(on(), prompt="1girl", seed=3)
    webui.run(p)
    p.script_args = p.scripts.script_args = [False]
    off = webui.run(p)
    assert off.all_prompts == ["1girl"]
    assert not {PARAMS_KEY, ORIGINAL_KEY} & set(params(off.infotexts[0]))


def test_before_mode_on_a_reused_p_expands_what_the_user_wrote(webui):  # noqa: F811
    p = webui.processing.StableDiffusionProcessingImg2Img(
        scripts=webui.runner(on(timing="before")), prompt="1girl", seed=5, init_images=["a"]
    )
    first = webui.run(p)
    p.seed = 6  # loopback's next round
    second = webui.run(p)
    assert first.all_prompts == ["1girl, dtg 5"]
    assert second.all_prompts == ["1girl, dtg 6"]
    assert params(second.infotexts[0])[ORIGINAL_KEY] == "1girl"
    assert [call["prompts"] for call in webui.engine.calls] == [["1girl"], ["1girl"]]


def test_before_mode_keeps_a_prompt_changed_between_jobs(webui):  # noqa: F811
    # The img2img batch tab with "PNG info" puts each file's own prompt into p.prompt.
    p = webui.processing.StableDiffusionProcessingImg2Img(
        scripts=webui.runner(on(timing="before")), prompt="1girl", seed=5, init_images=["a"]
    )
    webui.run(p)
    p.prompt = "1boy"
    assert webui.run(p).all_prompts == ["1boy, dtg 5"]


def test_grid_infotext_names_no_hires_prompt_the_user_did_not_write(webui):  # noqa: F811
    p = webui.txt2img(on(), prompt="1girl", seed=3, batch_size=2, enable_hr=True)
    webui.run(p)
    # The host writes the grid's infotext for p.main_prompt, the prompt as written.
    grid_text = webui.processing.create_infotext(
        p, p.all_prompts, p.all_seeds, use_main_prompt=True, index=0
    )
    assert "Hires prompt" not in grid_text
    assert webui.paste(grid_text)["Hires prompt"] == ""  # the hires box stays empty


def test_grid_infotext_keeps_the_hires_prompt_the_user_wrote(webui):  # noqa: F811
    p = webui.txt2img(
        on(), prompt="1girl", seed=3, batch_size=2, enable_hr=True, hr_prompt="1girl, hd"
    )
    webui.run(p)
    grid_text = webui.processing.create_infotext(
        p, p.all_prompts, p.all_seeds, use_main_prompt=True, index=0
    )
    assert params(grid_text)["Hires prompt"] == "1girl, hd"


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("true", True), (0, False)])
def test_api_enabled_words_mean_what_they_say(webui, value, expected):  # noqa: F811
    processed = webui.run(webui.txt2img([value], prompt="1girl", seed=2))
    assert processed.all_prompts == (["1girl, dtg 2"] if expected else ["1girl"])


def test_api_enabled_that_is_no_switch_is_an_error_and_keeps_the_prompt(webui):  # noqa: F811
    processed = webui.run(webui.txt2img(["maybe"], prompt="1girl", seed=2))
    assert processed.all_prompts == ["1girl"]
    assert "enabled must be true or false" in params(processed.infotexts[0])[ERROR_KEY]
    assert webui.engine.calls == []


def test_enabled_parsing():
    assert ScriptArgs(enabled=" Off ").is_enabled() is False
    assert ScriptArgs(enabled=1).is_enabled() is True
    with pytest.raises(SettingsError, match="true or false"):
        ScriptArgs(enabled=2).is_enabled()


@pytest.mark.parametrize("image", [0, 1, 639])
def test_upscale_finds_any_image_of_a_big_before_job(webui, image):  # noqa: F811
    # 640 images (the UI allows 8 x 100): more than the recent-expansion cache holds
    # one by one, so "before" files the job once for its whole run of seeds.
    first = webui.run(
        webui.txt2img(on(timing="before"), prompt="1girl", seed=21, batch_size=8, n_iter=80)
    )
    calls = len(webui.engine.calls)
    p = webui.txt2img(on(timing="before"), prompt="1girl", seed=21 + image, enable_hr=True)
    p.txt2img_upscale = True
    processed = webui.run(p)
    assert processed.all_prompts == [first.all_prompts[image]]
    assert len(webui.engine.calls) == calls


def test_upscale_of_a_seed_outside_the_before_job_is_not_found(webui):  # noqa: F811
    webui.run(webui.txt2img(on(timing="before"), prompt="1girl", seed=21, batch_size=2))
    p = webui.txt2img(on(timing="before"), prompt="1girl", seed=23, enable_hr=True)
    p.txt2img_upscale = True
    assert webui.run(p).all_prompts == ["1girl"]

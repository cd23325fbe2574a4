"""Prompt styles: a job expands the styled prompt ("after") or styles the expansion
("before"); a pasted infotext and the Preview must agree with what the job did."""

from __future__ import annotations

import re
from html import unescape

import pytest
from test_webui_script import ORIGINAL_KEY, on, params, webui  # noqa: F401
from webui_fakes import ResultEngine

from dtg_webui import engine, preview_ui


@pytest.fixture
def styled(webui):  # noqa: F811
    webui.shared.prompt_styles.add("quality", "masterpiece")
    webui.shared.prompt_styles.add("frame", "cinematic, {prompt}, film grain", "blurry")
    return webui


@pytest.mark.parametrize("styles", [["quality"], ["frame"], ["quality", "frame"]])
def test_paste_gives_the_prompt_as_written_and_its_styles(styled, styles):
    job = styled.run(styled.txt2img(on(), prompt="1girl", seed=7, styles=styles))
    pasted = styled.paste(job.infotexts[0])
    assert pasted["Prompt"] == "1girl"
    assert pasted["Styles array"] == styles
    assert pasted["Negative prompt"] == ""
    again = styled.run(styled.txt2img(on(), prompt=pasted["Prompt"], seed=7, styles=styles))
    assert again.all_prompts == job.all_prompts  # the same expansion, not a double style


def test_paste_without_styles_is_the_original_prompt(styled):
    job = styled.run(styled.txt2img(on(), prompt="1girl, solo", seed=7))
    pasted = styled.paste(job.infotexts[0])
    assert pasted["Prompt"] == "1girl, solo" and "Styles array" not in pasted


def test_paste_keeps_the_styles_the_host_read_in_before_mode(styled):
    job = styled.run(
        styled.txt2img(on(timing="before"), prompt="1girl", seed=7, styles=["quality"])
    )
    assert job.all_prompts == ["1girl, dtg 7, masterpiece"]  # styles land on the expansion
    pasted = styled.paste(job.infotexts[0])
    assert pasted["Prompt"] == "1girl" and pasted["Styles array"] == ["quality"]


def test_paste_with_style_reading_off_keeps_the_styled_original(styled):
    styled.shared.opts.infotext_styles = "Ignore"
    job = styled.run(styled.txt2img(on(), prompt="1girl", seed=7, styles=["quality"]))
    pasted = styled.paste(job.infotexts[0])
    assert pasted["Prompt"] == params(job.infotexts[0])[ORIGINAL_KEY] == "1girl, masterpiece"
    assert "Styles array" not in pasted


@pytest.mark.parametrize(
    ("timing", "expanded"), [("after", "1girl, masterpiece"), ("before", "1girl")]
)
def test_preview_expands_what_the_job_would(styled, timing, expanded):
    job = styled.run(styled.txt2img(on(timing=timing), prompt="1girl", seed=7, styles=["quality"]))
    made = ResultEngine()
    engine.set_factory(lambda model_dir, embeddings: made)
    preview_ui.run_preview("1girl", 7, 512, 512, ["quality"], *on(timing=timing))
    assert made.calls[0]["prompts"] == [expanded] == styled.engine.calls[0]["prompts"]
    assert job.all_prompts  # the job ran


class PromptResetScript:
    """sd-dynamic-prompts' process(): p.prompt becomes the first prompt, styles applied."""

    args_from = args_to = 0

    def title(self):
        return "dynamic prompts"

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def process(self, p, *args):
        p.prompt = p.all_prompts[0]


def test_before_mode_on_a_reused_p_with_styles_and_dynamic_prompts(styled):
    p = styled.processing.StableDiffusionProcessingImg2Img(
        scripts=styled.runner(on(timing="before"), before=[PromptResetScript()]),
        prompt="1girl",
        seed=5,
        init_images=["a"],
        styles=["quality"],
    )
    styled.run(p)
    p.seed = 6  # loopback's next round
    second = styled.run(p)
    assert styled.engine.calls[1]["prompts"] == ["1girl"]
    assert second.all_prompts == ["1girl, dtg 6, masterpiece"]


@pytest.mark.parametrize("styles", [["quality"], ["frame"]])
def test_use_in_prompt_then_generate_applies_the_styles_once(styled, styles):
    engine.set_factory(lambda model_dir, embeddings: ResultEngine())
    html, applied = preview_ui.preview("1girl", 7, 512, 512, styles, *on())
    copied = re.search(r'class="dtg-preview-final"[^>]*>(.*?)</pre>', html, re.S).group(1)
    left = preview_ui.styles_after_copy(applied, styles)  # what "Use in prompt" leaves
    assert left == []
    job = styled.run(styled.txt2img([False], prompt=unescape(copied), seed=7, styles=left))
    assert job.all_prompts == [unescape(copied)]
    once = styled.shared.prompt_styles.apply_styles_to_prompt("1girl", styles)
    assert job.all_prompts[0].startswith(once)


def test_use_in_prompt_keeps_the_styles_in_before_mode(styled):
    engine.set_factory(lambda model_dir, embeddings: ResultEngine())
    _, applied = preview_ui.preview("1girl", 7, 512, 512, ["quality"], *on(timing="before"))
    assert preview_ui.styles_after_copy(applied, ["quality"]) == ["quality"]

"""The upsampling loop, driven by a scripted backend so each rule is checked exactly.

The real backends are tested end to end with the tiny model elsewhere; here
the model's answers are chosen by the test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fake_lookup import FakeLookup

from dtg_lib.backends import BackendCache
from dtg_lib.dtg_format import INPUT_END
from dtg_lib.model_selection import ModelChoice
from dtg_lib.prompt_syntax import parse
from dtg_lib.settings import UpsampleSettings
from dtg_lib.upsampler import Upsampler

VOCAB = [f"tag{i}" for i in range(200)]


@dataclass
class Generation:
    text: str
    prompt_tokens: int = 10
    completion_tokens: int = 5
    prompt_eval_s: float = 0.001
    generation_s: float = 0.002
    stopped_by_eos: bool = True


@dataclass
class ScriptedBackend:
    """Answers each call with `per_round` tags drawn from VOCAB by the call's seed."""

    per_round: int = 5
    vocab: list[str] = field(default_factory=lambda: list(VOCAB))
    calls: list[tuple[str, int]] = field(default_factory=list)
    name: str = "scripted"
    device: str = "cpu"
    context: int = 2048
    notices: tuple[str, ...] = ()

    def generate(self, prompt, sampling, seed):
        self.calls.append((prompt, seed))
        picked = random.Random(seed).sample(self.vocab, min(self.per_round, len(self.vocab)))
        fed = prompt.split(INPUT_END, 1)[1]
        return Generation((", " if fed else "") + ", ".join(picked))

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        """Nothing to free."""


def make(backend, monkeypatch):
    cache = BackendCache(loader=lambda *args, **options: backend)
    upsampler = Upsampler(lookup=FakeLookup(), backends=cache)
    choice = ModelChoice("llama.cpp", Path("scripted.gguf"), "scripted", True)
    monkeypatch.setattr(upsampler, "_choose_model", lambda settings, progress=None: choice)
    return upsampler


def test_rounds_continue_until_the_target_and_feed_found_tags_back(monkeypatch):
    backend = ScriptedBackend(per_round=5)
    result = make(backend, monkeypatch).upsample(
        "1girl, solo", UpsampleSettings(target="short"), seed=7
    )
    # short = 16 tags including the user's 2 general/special tags
    assert len(result.new_tags) >= 14
    assert result.rounds == len(backend.calls) >= 3
    assert [seed for _, seed in backend.calls] == list(range(7, 7 + result.rounds))
    first, second = backend.calls[0][0], backend.calls[1][0]
    assert first.endswith(INPUT_END)
    assert second.startswith(first) and len(second) > len(first)
    assert result.prompt_tokens == 10 * result.rounds
    assert result.final_prompt.startswith("1girl,")


def test_same_seed_same_result_and_different_seed_different_result(monkeypatch):
    settings = UpsampleSettings(target="long")
    one = make(ScriptedBackend(), monkeypatch).upsample("1girl", settings, seed=3)
    two = make(ScriptedBackend(), monkeypatch).upsample("1girl", settings, seed=3)
    other = make(ScriptedBackend(), monkeypatch).upsample("1girl", settings, seed=4)
    assert one.final_prompt == two.final_prompt
    assert one.final_prompt != other.final_prompt


def test_banned_and_known_tags_never_appear(monkeypatch):
    backend = ScriptedBackend(per_round=20, vocab=[*VOCAB[:40], "witch hat", "hat", "smile"])
    settings = UpsampleSettings(target="very_long", ban_tags="*hat, /tag1\\d/")
    result = make(backend, monkeypatch).upsample("hat, (smile:1.2)", settings, seed=1)
    assert "hat" not in result.new_tags and "witch hat" not in result.new_tags
    assert not any(t.startswith("tag1") and len(t) == 5 for t in result.new_tags)
    assert "smile" not in result.new_tags
    # the user's own "hat" is never banned away
    assert result.final_prompt.count("hat") == 1 and "(smile:1.2)" in result.final_prompt
    assert len(set(result.new_tags)) == len(result.new_tags)


def test_stops_when_the_model_has_nothing_new(monkeypatch):
    backend = ScriptedBackend(per_round=3, vocab=["a", "b", "c"])
    result = make(backend, monkeypatch).upsample("1girl", UpsampleSettings(), seed=0)
    assert sorted(result.new_tags) == ["a", "b", "c"]
    assert result.rounds == 4  # one productive round, then three that add nothing


def test_rounds_are_bounded(monkeypatch):
    backend = ScriptedBackend(per_round=1)
    result = make(backend, monkeypatch).upsample(
        "1girl", UpsampleSettings(target="very_long", max_rounds=5), seed=0
    )
    assert result.rounds == 5


def test_no_special_tokens_or_empty_tags_in_the_output(monkeypatch):
    class Junk(ScriptedBackend):
        def generate(self, prompt, sampling, seed):
            self.calls.append((prompt, seed))
            return Generation(", , <|long|>, tag1 <|empty|>,</s>, tag2,")

    result = make(Junk(), monkeypatch).upsample("1girl", UpsampleSettings(), seed=0)
    assert result.new_tags == ("tag1", "tag2")
    assert "<|" not in result.final_prompt and "</s>" not in result.final_prompt


def test_upsample_many_gives_each_image_its_own_seed(monkeypatch):
    upsampler = make(ScriptedBackend(), monkeypatch)
    settings = UpsampleSettings(target="short")
    many = upsampler.upsample_many(["1girl", "1girl", "1boy"], settings, [5, 6, 5])
    alone = [
        upsampler.upsample(p, settings, s) for p, s in [("1girl", 5), ("1girl", 6), ("1boy", 5)]
    ]
    assert [r.final_prompt for r in many] == [r.final_prompt for r in alone]
    assert many[0].final_prompt != many[1].final_prompt
    with pytest.raises(ValueError, match="one seed each"):
        upsampler.upsample_many(["a", "b"], settings, [1])


def test_result_carries_what_happened(monkeypatch):
    result = make(ScriptedBackend(), monkeypatch).upsample(
        "1girl, hatsune miku", UpsampleSettings(target="very_short"), seed=2, width=832, height=1216
    )
    data = result.to_dict()
    assert data["model_input"].startswith("quality: masterpiece\n")
    assert "aspect ratio: 0.7" in data["model_input"]
    assert data["backend"] == "scripted" and data["seed"] == 2
    assert data["timings"]["generation_s"] > 0
    assert data["tag_categories"] == {"1girl": "special", "hatsune miku": "character"}


def test_a_backslash_in_a_model_tag_is_part_of_its_name(monkeypatch):
    r"""Danbooru's `\m/` and `\o/` keep their backslash; the final prompt escapes it for
    the webui, and the user's own `\\m/` (a literal backslash) is not added again."""
    backend = ScriptedBackend(per_round=3, vocab=[r"\m/", r"\o/", "smile"])
    settings = UpsampleSettings(target="very_short", max_rounds=1)
    result = make(backend, monkeypatch).upsample(r"1girl, \\m/", settings, seed=1)
    assert set(result.new_tags) == {r"\o/", "smile"}
    assert r"\\o/" in result.final_prompt and r"\\m/" in result.final_prompt
    names = [tag.name for _, tag in parse(result.final_prompt).tags()]
    assert sorted(names) == sorted(["1girl", r"\m/", r"\o/", "smile"])
    assert r"general: 1girl, \m/" in result.model_input


@dataclass
class CutShortBackend(ScriptedBackend):
    """Every answer ends mid-tag, stopped by the token budget rather than by EOS."""

    def generate(self, prompt, sampling, seed):
        self.calls.append((prompt, seed))
        fed = prompt.split(INPUT_END, 1)[1]
        answer = ["tag1", "tag2", "ta"] if not fed else ["tag3", "thigh"]
        text = (", " if fed else "") + ", ".join(answer)
        return Generation(text, stopped_by_eos=False)


def test_a_tag_cut_short_by_the_token_budget_is_not_kept(monkeypatch):
    backend = CutShortBackend()
    settings = UpsampleSettings(target="very_long", max_rounds=2)
    result = make(backend, monkeypatch).upsample("1girl", settings, seed=3)
    assert result.new_tags == ("tag1", "tag2", "tag3")


@dataclass
class NoTagFinishes(ScriptedBackend):
    """A budget so small that no round gets as far as a comma."""

    def generate(self, prompt, sampling, seed):
        self.calls.append((prompt, seed))
        return Generation("long ha", completion_tokens=3, stopped_by_eos=False)


def test_rounds_that_never_finish_a_tag_say_why_there_are_no_tags(monkeypatch):
    settings = UpsampleSettings(target="short")
    result = make(NoTagFinishes(), monkeypatch).upsample("1girl", settings, seed=3)
    assert result.new_tags == ()
    assert result.final_prompt == "1girl"
    assert result.notices == (
        "a round stopped after 3 tokens, before it finished a tag; a larger max_new_tokens "
        "lets rounds finish theirs",
    )

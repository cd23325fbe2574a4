"""gen_meta: the last TIPO pass asks for meta lines (`<|gen_meta|>`), and the artists,
characters, copyrights... the model writes become new tags of their categories, apart
from the user's, through the ban list. Crafted model outputs check the rules; the tiny
TIPO model checks the plumbing for real. DTG models ignore the setting."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from fake_lookup import FakeLookup
from test_upsample_loop import ScriptedBackend, make

from dtg_lib.backends import BackendCache, load_backend
from dtg_lib.backends.base import Generation
from dtg_lib.categories import Category
from dtg_lib.model_selection import ModelChoice
from dtg_lib.models import TIPO_FAMILY
from dtg_lib.settings import UpsampleSettings
from dtg_lib.tipo_format import GEN_META
from dtg_lib.tipo_run import written_meta
from dtg_lib.upsampler import Upsampler

META_LINES = "\nartist: wlop, new painter\ncharacters: hatsune miku\ncopyrights: vocaloid"
INPUT = "rating: safe\ntarget: <|very_short|> <|gen_meta|>\ntag: 1girl, solo"


# ------------------------------------------------------------------ reading meta lines


def test_meta_lines_the_model_wrote_are_read_by_category():
    found = written_meta(INPUT, ", smile, hat" + META_LINES)
    assert found == {
        Category.ARTIST: ["wlop", "new painter"],
        Category.CHARACTER: ["hatsune miku"],
        Category.COPYRIGHT: ["vocaloid"],
    }


def test_only_lines_the_model_wrote_count_and_the_users_line_wins():
    given = "artist: someone\n" + INPUT
    found = written_meta(given, ", smile\nartist: other\nrating: explicit\nmeta: highres")
    # The input's own lines are the user's; a key the input has already is not read again.
    assert found == {Category.META: ["highres"]}


def test_the_first_line_of_a_key_counts_and_tokens_and_blanks_are_dropped():
    written = "\ncharacters: <|empty|>\ncharacters: miku\nartist: a,, b </s>\ntag: x"
    found = written_meta(INPUT.replace("\ntag: 1girl, solo", "\ntag:"), written)
    assert found == {Category.CHARACTER: [], Category.ARTIST: ["a", "b"]}


def test_a_caption_line_with_a_colon_is_not_a_meta_line():
    written = " She says: hello. It rains."
    assert written_meta("target: <|short|> <|tag_to_long|>\nlong:", written) == {}


# ------------------------------------------------------------------ scripted TIPO model


@dataclass
class MetaWriter:
    """Continues the `tag` section with `tags`, then always writes META_LINES."""

    tags: str = "smile, hat, sky"
    calls: list[str] = field(default_factory=list)
    name: str = "scripted"
    device: str = "cpu"
    context: int = 1024
    notices: tuple[str, ...] = ()

    def generate(self, prompt, sampling, seed):
        self.calls.append(prompt)
        lead = ", " if prompt.rstrip().rsplit("\n", 1)[-1] != "tag:" else " "
        return Generation(lead + self.tags + META_LINES, 10, 10, 0.0, 0.0, True)

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        """Nothing to free."""


def _tipo(backend, monkeypatch) -> Upsampler:
    cache = BackendCache(loader=lambda *args, **options: backend)
    upsampler = Upsampler(lookup=FakeLookup(), backends=cache)
    choice = ModelChoice("torch", Path("scripted"), "scripted", False, family=TIPO_FAMILY)
    monkeypatch.setattr(upsampler, "_choose_model", lambda settings, progress=None: choice)
    return upsampler


META = UpsampleSettings(target="very_short", gen_meta=True)


def test_gen_meta_asks_the_last_pass_and_keeps_its_meta_tags(monkeypatch):
    backend = MetaWriter(tags=", ".join(f"thing{i}" for i in range(8)))
    result = _tipo(backend, monkeypatch).upsample("1girl, solo", META, seed=1)
    assert backend.calls[-1].split("\n")[-2] == f"target: <|very_short|> {GEN_META}"
    meta = ["wlop", "new painter", "hatsune miku", "vocaloid"]
    assert list(result.new_tags[:4]) == meta
    assert {result.tag_categories[n] for n in meta} == {"artist", "character", "copyright"}
    assert result.tag_categories["new painter"] == "artist"
    assert set(result.new_tags[4:]) == {f"thing{i}" for i in range(8)}
    for name in ["1girl", "solo", *meta]:
        assert result.final_prompt.count(name) == 1
    # The default template puts them in their own slots: characters and copyrights on
    # the first line with the people count, artists on theirs, not among general tags.
    lines = [line for line in result.final_prompt.split("\n") if line]
    assert lines[:2] == ["1girl, hatsune miku, vocaloid,", "wlop, new painter,"]
    assert lines[2].startswith("solo, thing")


def test_without_gen_meta_the_same_lines_are_ignored(monkeypatch):
    backend = MetaWriter()
    result = _tipo(backend, monkeypatch).upsample("1girl, solo", replace(META, gen_meta=False), 1)
    assert GEN_META not in backend.calls[-1]
    assert list(result.new_tags) == ["smile", "hat", "sky"]
    assert "wlop" not in result.final_prompt


def test_meta_tags_pass_the_ban_list_and_skip_the_users_own(monkeypatch):
    settings = replace(META, ban_tags="wlop, vocal*")
    result = _tipo(MetaWriter(), monkeypatch).upsample("1girl, hatsune miku", settings, 2)
    assert "wlop" not in result.new_tags and "vocaloid" not in result.new_tags
    assert "new painter" in result.new_tags
    # The user gave the character: the input has that line, so the model's is not read.
    assert "hatsune miku" not in result.new_tags
    assert result.final_prompt.count("hatsune miku") == 1


def test_meta_tags_are_outside_the_tag_cap(monkeypatch):
    backend = MetaWriter(tags=", ".join(f"thing{i}" for i in range(30)))
    result = _tipo(backend, monkeypatch).upsample("1girl, solo", META, 3)
    general = [n for n in result.new_tags if n.startswith("thing")]
    assert len(general) == 18 - 2  # very_short's tag maximum, the user's tags counted
    assert len(result.new_tags) == len(general) + 4


def test_a_token_budget_trims_the_tag_sections_new_tags_before_meta_tags(monkeypatch):
    from dtg_lib.budget import require_vocabulary
    from dtg_lib.clip_tokens import ClipVocabularyMissing

    try:
        require_vocabulary("fill")
    except ClipVocabularyMissing as missing:
        pytest.skip(f"{missing} (pip install --no-deps open_clip_torch)")
    backend = MetaWriter(tags=", ".join(f"very long descriptive thing {i}" for i in range(30)))
    settings = replace(META, budget="chunks:1")
    result = _tipo(backend, monkeypatch).upsample("1girl, solo", settings, 3)
    # Trimming to the budget takes new tags from the end: the meta tags stay.
    assert len(result.new_tags) < 20 and result.new_tags[:4] == (
        "wlop",
        "new painter",
        "hatsune miku",
        "vocaloid",
    )


def test_a_dtg_model_ignores_gen_meta(monkeypatch):
    plain = make(ScriptedBackend(), monkeypatch).upsample("1girl", UpsampleSettings(), 4)
    asked = make(ScriptedBackend(), monkeypatch).upsample(
        "1girl", UpsampleSettings(gen_meta=True), 4
    )
    assert asked.final_prompt == plain.final_prompt and asked.model_input == plain.model_input
    assert asked.notices == plain.notices


# ------------------------------------------------------------------ tiny TIPO model


class _AddsMeta:
    """A real backend whose answers to a gen_meta input end with META_LINES."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.device, self.context = inner.name, inner.device, inner.context
        self.notices = inner.notices

    def generate(self, prompt, sampling, seed):
        made = self.inner.generate(prompt, sampling, seed)
        if GEN_META not in prompt:
            return made
        return replace(made, text=made.text.rstrip() + META_LINES, stopped_by_eos=True)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    def close(self):
        self.inner.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torch", "llama.cpp"])
def test_gen_meta_on_the_tiny_tipo_model(tiny_tipo_model, kind, monkeypatch):
    pytest.importorskip("llama_cpp" if kind == "llama.cpp" else "torch")
    path = tiny_tipo_model.gguf_f16 if kind == "llama.cpp" else tiny_tipo_model.hf_dir
    settings = UpsampleSettings(model=str(path), backend=kind, target="very_short", gen_meta=True)
    cache = BackendCache()
    real = Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    try:
        first = real.upsample("1girl, solo", settings, 6)
        again = real.upsample("1girl, solo", settings, 6)
        plain = real.upsample("1girl, solo", replace(settings, gen_meta=False), 6)
    finally:
        cache.unload()
    assert first.model_input.endswith(f"target: <|very_short|> {GEN_META}\ntag: 1girl, solo")
    assert GEN_META not in plain.model_input
    assert (first.final_prompt, first.new_tags) == (again.final_prompt, again.new_tags)
    assert first.new_tags and first.rounds >= 1
    # The model's answer, with crafted meta lines added at its end, gives meta tags.
    wrapped = BackendCache(loader=lambda *a, **o: _AddsMeta(load_backend(*a, **o)))
    crafted = Upsampler(lookup=FakeLookup(), backends=wrapped, allow_download=False)
    try:
        result = crafted.upsample("1girl, solo", settings, 6)
    finally:
        wrapped.unload()
    assert result.new_tags[:4] == ("wlop", "new painter", "hatsune miku", "vocaloid")
    assert result.tag_categories["vocaloid"] == "copyright"
    assert "new painter" in result.final_prompt

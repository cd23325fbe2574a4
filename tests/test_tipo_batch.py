"""A job's TIPO rows advance together: each step sends every unfinished row's next call
(whatever its pass and try) in one generate_batch call, and each row gives exactly what
it gives alone with the same seed. Scripted backends check the driver's rules; the tiny
TIPO model checks it for real on every backend that batches, and that a backend that
does not batch expands the rows one after another."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fake_lookup import FakeLookup

from dtg_lib.backends import BackendCache
from dtg_lib.backends.base import BatchBackend, Generation
from dtg_lib.categories import Category
from dtg_lib.model_selection import ModelChoice
from dtg_lib.models import TIPO_FAMILY
from dtg_lib.settings import SamplingSettings, UpsampleSettings
from dtg_lib.tipo_format import TipoPass, TipoRequest, build_model_input
from dtg_lib.tipo_run import retry_seed
from dtg_lib.upsampler import Upsampler

VOCAB = [f"thing{i}" for i in range(60)]
ROWS = [  # (tags, natural-language prompt): 1 to 3 passes each
    ("1girl, solo", ""),
    ("", "a girl reading in a library"),
    ("1boy, hat", "a boy in the rain"),
    ("", ""),
    ("dragon girl", ""),
]
_FIELDS = ("final_prompt", "new_tags", "extended", "generated", "model_input", "rounds")


def _target(prompt: str) -> tuple[str, ...]:
    """The sections of the pass a TIPO input asks for, from its `target:` line."""
    line = next(x for x in prompt.split("\n") if x.startswith("target:"))
    operation = next((t[2:-2] for t in line.split()[2:] if "_to_" in t), None)
    return tuple(operation.split("_to_")) if operation else ("tag",)


@dataclass
class ScriptedTipo:
    """Answers a TIPO input in its format, with as much as the seed says (2 to 12 tags, 0
    to 3 sentences), so that some tries fall short and are tried again."""

    calls: list[tuple[str, int]] = field(default_factory=list)
    name: str = "scripted"
    device: str = "cpu"
    context: int = 1024
    notices: tuple[str, ...] = ()

    def generate(self, prompt, sampling, seed):
        self.calls.append((prompt, seed))
        rng = random.Random(seed)
        section = _target(prompt)[-1]
        last = prompt.rsplit("\n", 1)[-1]
        if section == "tag":
            body = ", ".join(rng.sample(VOCAB, rng.randint(2, 12)))
        else:
            body = " ".join(f"It has {w}." for w in rng.sample(VOCAB, rng.randint(0, 3)))
        if last == f"{section}:":
            text = f" {body}"
        elif last.startswith(f"{section}:"):
            text = f", {body}" if section == "tag" else f" {body}"
        else:
            text = f"\n{section}: {body}"
        return Generation(text, len(prompt.split()), 10, 0.001, 0.01, True)

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        """Nothing to free."""


@dataclass
class BatchedTipo(ScriptedTipo):
    batches: list[list[tuple[str, int]]] = field(default_factory=list)

    def generate_batch(self, prompts, sampling, seeds):
        self.batches.append(list(zip(prompts, seeds)))
        return [self.generate(p, sampling, s) for p, s in zip(prompts, seeds)]


def _scripted(backend, monkeypatch) -> Upsampler:
    cache = BackendCache(loader=lambda *args, **options: backend)
    upsampler = Upsampler(lookup=FakeLookup(), backends=cache)
    choice = ModelChoice("torch", Path("scripted"), "scripted", False, family=TIPO_FAMILY)
    monkeypatch.setattr(upsampler, "_choose_model", lambda settings, progress=None: choice)
    return upsampler


def _same(many, alone):
    for together, single in zip(many, alone):
        for name in _FIELDS:
            assert getattr(together, name) == getattr(single, name), name


# ------------------------------------------------------------ scripted driver


def test_rows_advance_together_and_each_gives_what_it_gives_alone(monkeypatch):
    settings = UpsampleSettings(target="very_short", nl_length="short", caption=True)
    prompts, texts = [p for p, _ in ROWS], [t for _, t in ROWS]
    seeds = [5, 100, 200, 300, 400]
    backend = BatchedTipo()
    many = _scripted(backend, monkeypatch).upsample_many(prompts, settings, seeds, nl_prompts=texts)
    assert isinstance(backend, BatchBackend)
    # The first step asks every row for its first pass's first try.
    assert [seed for _, seed in backend.batches[0]] == seeds
    assert sum(len(b) for b in backend.batches) == sum(r.rounds for r in many)
    assert len(backend.batches) == max(r.rounds for r in many) < sum(r.rounds for r in many)
    # Rows drop out as their last pass ends: the batches only shrink.
    sizes = [len(batch) for batch in backend.batches]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < len(ROWS)
    # Some step mixes rows at different passes (different targets) or tries.
    assert any(len({_target(p) for p, _ in batch}) > 1 for batch in backend.batches)
    assert {s for batch in backend.batches for _, s in batch} - set(seeds)  # retries ran
    alone = _scripted(ScriptedTipo(), monkeypatch)
    singles = [
        alone.upsample(p, settings, s, nl_prompt=t) for p, t, s in zip(prompts, texts, seeds)
    ]
    _same(many, singles)


def test_a_retry_sends_the_same_text_with_the_next_retry_seed(monkeypatch):
    """What llama.cpp's prefix reuse needs: a retry repeats its input byte for byte."""
    backend = ScriptedTipo()
    result = _scripted(backend, monkeypatch).upsample(
        "1girl", UpsampleSettings(target="long", max_rounds=3), seed=11
    )
    assert result.rounds == 3  # long asks for 36 tags: no try of 2-12 reaches it
    assert [seed for _, seed in backend.calls] == [retry_seed(11, k) for k in range(3)]
    assert backend.calls[0][1] == 11
    assert len({prompt for prompt, _ in backend.calls}) == 1
    assert "wrote less than the long length asks for in 3 tries" in result.notices[-1]


def test_neighbouring_seeds_do_not_share_tries(monkeypatch):
    """A webui batch runs seeds 11, 12, ... on one input. With seed + k retries, seed 11's
    second try was seed 12's first, so both kept the same text (found in a real webui)."""
    backend = ScriptedTipo()
    upsampler = _scripted(backend, monkeypatch)
    settings = UpsampleSettings(target="long", max_rounds=5)
    results = [upsampler.upsample("1girl", settings, seed=seed) for seed in range(11, 19)]
    tries = [seed for _, seed in backend.calls]
    assert len(tries) == len(set(tries)) == 8 * 5  # no seed is used by two images
    assert len({tuple(r.new_tags) for r in results}) == len(results)


def test_one_row_alone_is_not_sent_as_a_batch(monkeypatch):
    backend = BatchedTipo()
    _scripted(backend, monkeypatch).upsample("1girl", UpsampleSettings(target="very_short"), 3)
    assert backend.batches == [] and backend.calls


def test_a_cancelled_job_stops_between_steps(monkeypatch):
    import threading

    from dtg_lib.progress import Cancelled

    cancel = threading.Event()

    class Cancelling(BatchedTipo):
        def generate_batch(self, prompts, sampling, seeds):
            cancel.set()
            return super().generate_batch(prompts, sampling, seeds)

    backend = Cancelling()
    with pytest.raises(Cancelled):
        _scripted(backend, monkeypatch).upsample_many(
            ["1girl", "1boy"], UpsampleSettings(target="long"), [1, 2], cancel=cancel
        )
    assert len(backend.batches) == 1


# --------------------------------------------------------------- tiny TIPO model

BACKENDS = ["torch", "llama.cpp"]


def _model(tiny_tipo_model, kind: str) -> Path:
    if kind == "llama.cpp":
        pytest.importorskip("llama_cpp")
        return tiny_tipo_model.gguf_f16
    pytest.importorskip("torch")
    return tiny_tipo_model.hf_dir


@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKENDS)
def test_a_job_on_the_tiny_tipo_model_equals_its_rows_alone(tiny_tipo_model, kind, monkeypatch):
    """On a backend that batches, rows go through generate_batch together; on one that
    does not, one after another. Either way each row is what it is alone."""
    path = _model(tiny_tipo_model, kind)
    cache = BackendCache()
    upsampler = Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    settings = UpsampleSettings(
        model=str(path),
        backend=kind,
        target="very_short",
        nl_length="very_short",
        caption=True,
        sampling=SamplingSettings(max_new_tokens=160),  # TIPO's other defaults; quicker
    )
    prompts, texts = [p for p, _ in ROWS[:4]], [t for _, t in ROWS[:4]]
    seeds = [1, 2, 3, 4]
    try:
        loaded = cache.get(kind, path)
        batches: list[int] = []
        singles: list[str] = []
        if isinstance(loaded, BatchBackend):
            batch_call = loaded.generate_batch
            monkeypatch.setattr(
                loaded, "generate_batch", lambda *a: batches.append(len(a[0])) or batch_call(*a)
            )
        else:
            single_call = loaded.generate
            monkeypatch.setattr(
                loaded, "generate", lambda *a: singles.append(a[0]) or single_call(*a)
            )
        many = upsampler.upsample_many(prompts, settings, seeds, nl_prompts=texts)
        monkeypatch.undo()
        alone = [
            upsampler.upsample(p, settings, s, nl_prompt=t)
            for p, t, s in zip(prompts, texts, seeds)
        ]
    finally:
        cache.unload()
    _same(many, alone)
    assert [r.completion_tokens for r in many] == [r.completion_tokens for r in alone]
    assert len({r.final_prompt for r in many}) == len(many)
    assert all(r.backend == kind and r.rounds >= 2 for r in many)  # a pass, then the caption
    if batches:
        assert batches[0] == len(prompts) and len(batches) == max(r.rounds for r in many)
    else:
        assert kind == "llama.cpp", "torch is a BatchBackend"
        # One row's calls, then the next row's: the prefix cache sees a row's retries in a row.
        assert len(singles) == sum(r.rounds for r in many)
        starts = [sum(r.rounds for r in many[:i]) for i in range(len(many))]
        assert [singles[i] for i in starts] == [r.model_input for r in many]


@pytest.fixture(scope="module")
def random_tipo_model(tiny_tipo_model, tmp_path_factory):
    """A small random LLaMA with TIPO's 1024 positions and the tiny TIPO tokenizer, over
    TIPO's 32013-token vocabulary: it hardly ever draws EOS, so rows run to their budget."""
    pytest.importorskip("torch")
    from benchmarks import gpu_tipo_check

    shape = {**gpu_tipo_check.TIPO_200M, "hidden_size": 64, "intermediate_size": 128}
    shape.update(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    shape["max_position_embeddings"] = 1024
    out = tmp_path_factory.mktemp("random-tipo") / "hf"
    return gpu_tipo_check.build_shaped_model(out, tiny_tipo_model.hf_dir, shape)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("decode", ["eager", "static"])
def test_torch_batches_tipo_lengths_within_the_1024_context(random_tipo_model, decode):
    """A short input that writes its full budget beside one near the context's end: the
    batch spans more cache slots than the model has positions, each row stays inside
    its own context, and each row is what it is alone."""
    from dtg_lib.backends.torch_backend import TorchBackend

    backend = TorchBackend(random_tipo_model, "cpu", decode=decode)
    try:
        assert backend.context == 1024
        many = [f"thing{i}" for i in range(400)]
        step = TipoPass(None, "very_long", True)
        short = build_model_input(TipoRequest(tags={}), step)
        long = _with(step, many[: _most_that_fit(backend, step, many, backend.context - 120)])
        sampling = SamplingSettings(temperature=1.0, max_new_tokens=200)
        prompts, seeds = [short, long], [1, 2]
        batch = backend.generate_batch(prompts, sampling, seeds)
        alone = [backend.generate(p, sampling, s) for p, s in zip(prompts, seeds)]
    finally:
        backend.close()
    assert [g.text for g in batch] == [g.text for g in alone]
    assert [g.completion_tokens for g in batch] == [g.completion_tokens for g in alone]
    assert batch[0].completion_tokens == 200  # the short row ran to its budget
    # The long row's budget is what its context leaves, less than max_new_tokens.
    assert (
        batch[1].prompt_tokens > 880 and batch[1].prompt_tokens + batch[1].completion_tokens == 1024
    )
    assert batch[1].prompt_tokens + batch[0].completion_tokens > 1024  # wider than the context


def _most_that_fit(backend, step, tags, limit: int) -> int:
    count = len(tags)
    while count and backend.count_tokens(_with(step, tags[:count])) > limit:
        count -= 10
    return count


def _with(step, tags):
    return build_model_input(TipoRequest(tags={Category.GENERAL: tags}), step)


@pytest.mark.slow
def test_llama_cpp_reuses_the_prompt_of_a_retry(tiny_tipo_model, monkeypatch):
    """A retry repeats its input, so llama.cpp's prefix reuse keeps all of it but its last
    canonical chunk, which is evaluated again for fresh logits."""
    from dtg_lib.backends.llama_cpp import CHUNK_TOKENS

    path = _model(tiny_tipo_model, "llama.cpp")
    cache = BackendCache()
    upsampler = Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    # very_long asks for 54 tags: the tiny model's tries fall short, so all 3 run.
    settings = UpsampleSettings(model=str(path), target="very_long", max_rounds=3)
    made: list[Generation] = []
    try:
        loaded = cache.get("llama.cpp", path)
        single_call = loaded.generate
        monkeypatch.setattr(loaded, "generate", lambda *a: made.append(single_call(*a)) or made[-1])
        result = upsampler.upsample("1girl, solo", settings, 8)
    finally:
        cache.unload()
    assert result.rounds == len(made) == 3
    assert made[0].reused_prompt_tokens == 0
    assert all(g.reused_prompt_tokens >= g.prompt_tokens - CHUNK_TOKENS for g in made[1:])

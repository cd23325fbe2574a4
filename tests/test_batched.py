"""Batched expansion: a webui job's prompts advance together, each with its own seed.

The torch tests use the tiny model; the scripted ones check the lockstep driver's
rules exactly.
"""

from __future__ import annotations

import pytest
from fake_lookup import FakeLookup
from test_upsample_loop import ScriptedBackend, make

from dtg_lib.backends import BackendCache, PromptTooLong, load_backend
from dtg_lib.settings import SamplingSettings, UpsampleSettings
from dtg_lib.upsampler import Upsampler

HEAD = (
    "quality: masterpiece\nrating: <|empty|>\nartist: <|empty|>\ncharacters: <|empty|>\n"
    "copyrights: <|empty|>\naspect ratio: 1.0\ntarget: <|long|>\ngeneral: "
)
TAGS = ["1girl", "solo", "long hair", "smile", "dragon girl", "hat", "sky", "outdoors"]
# Different lengths, so rows are padded differently.
PROMPTS = [HEAD + ", ".join(TAGS[: 1 + i]) + "<|input_end|>" for i in range(6)]
SAMPLING = SamplingSettings(temperature=1.0, max_new_tokens=48)


class BatchedScripted(ScriptedBackend):
    """The scripted backend with generate_batch; records each batch's seeds."""

    def __init__(self, **options):
        super().__init__(**options)
        self.batches: list[list[int]] = []

    def generate_batch(self, prompts, sampling, seeds):
        self.batches.append(list(seeds))
        return [self.generate(p, sampling, s) for p, s in zip(prompts, seeds)]


# ------------------------------------------------------------ scripted driver


def test_rounds_advance_in_lockstep_with_each_expansions_seeds(monkeypatch):
    backend = BatchedScripted(per_round=5)
    upsampler = make(backend, monkeypatch)
    settings = UpsampleSettings(target="short")
    many = upsampler.upsample_many(["1girl", "1boy", "1girl"], settings, [5, 100, 9])
    assert backend.batches[0] == [5, 100, 9]
    assert backend.batches[1] == [6, 101, 10]
    alone = make(ScriptedBackend(per_round=5), monkeypatch)
    for result, (prompt, seed) in zip(many, [("1girl", 5), ("1boy", 100), ("1girl", 9)]):
        assert result.final_prompt == alone.upsample(prompt, settings, seed).final_prompt


def test_finished_expansions_leave_the_batch(monkeypatch):
    backend = BatchedScripted(per_round=5)
    upsampler = make(backend, monkeypatch)
    # Ten user tags are ten tags closer to the target: that expansion needs fewer rounds.
    settings = UpsampleSettings(target="short")
    short, long = upsampler.upsample_many(
        ["a, b, c, d, e, f, g, h, i, j", "1girl"], settings, [0, 50]
    )
    assert short.rounds < long.rounds
    sizes = [len(batch) for batch in backend.batches]
    assert sizes == [2] * short.rounds + [1] * (long.rounds - short.rounds)


def test_a_full_context_stops_only_that_expansion(monkeypatch):
    class Filling(BatchedScripted):
        def generate(self, prompt, sampling, seed):
            if seed == 101:  # the second expansion's second round
                raise PromptTooLong("full")
            return super().generate(prompt, sampling, seed)

    backend = Filling(per_round=5)
    one, two = make(backend, monkeypatch).upsample_many(
        ["1girl", "1boy"], UpsampleSettings(target="long"), [1, 100]
    )
    assert two.rounds == 1 and "context is full" in two.notices[-1]
    assert one.rounds > 1 and not one.notices


def test_backends_without_generate_batch_expand_one_after_another(monkeypatch):
    backend = ScriptedBackend(per_round=5)
    results = make(backend, monkeypatch).upsample_many(
        ["1girl", "1boy"], UpsampleSettings(target="short"), [10, 20]
    )
    first = results[0].rounds
    # llama.cpp keeps the previous call's KV cache: each expansion's rounds stay together
    assert [seed for _, seed in backend.calls] == [
        *range(10, 10 + first),
        *range(20, 20 + results[1].rounds),
    ]


# --------------------------------------------------------------- torch, tiny


@pytest.fixture(scope="module")
def torch_backend(tiny_model):
    pytest.importorskip("torch")
    loaded = load_backend("torch", tiny_model.hf_dir)
    yield loaded
    loaded.close()


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize(
    "sampling",
    [SAMPLING, SamplingSettings(temperature=0.9, top_k=0, min_p=0.05, repetition_penalty=1.3)],
)
def test_a_batch_equals_its_prompts_one_by_one(torch_backend, sampling):
    seeds = [3, 1000, 77, 5, 123456789, 42]
    batch = torch_backend.generate_batch(PROMPTS, sampling, seeds)
    alone = [torch_backend.generate(p, sampling, s) for p, s in zip(PROMPTS, seeds)]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert [g.completion_tokens for g in batch] == [g.completion_tokens for g in alone]
    assert [g.prompt_tokens for g in batch] == [g.prompt_tokens for g in alone]
    # Rows that stop early (EOS) sit in the batch with rows that go on to the limit.
    assert any(g.stopped_by_eos for g in batch)
    assert len({g.completion_tokens for g in batch}) > 1


@pytest.mark.torch
@pytest.mark.slow
def test_repetition_penalty_sees_each_rows_tokens_as_transformers_does(torch_backend):
    """Greedy decoding (top-k 1) with a penalty: every step must penalise the row's
    prompt and all it drew so far, as transformers' greedy generate does alone."""
    import torch

    from dtg_lib.backends.torch_backend import new_text

    penalised = SamplingSettings(temperature=1.0, top_k=1, repetition_penalty=1.5)
    ours = torch_backend.generate_batch(PROMPTS, penalised, list(range(len(PROMPTS))))
    tokenizer, model = torch_backend._tokenizer, torch_backend._model
    expected = []
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            repetition_penalty=1.5,
            max_new_tokens=penalised.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
        new = out[0, ids.shape[1] :].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        expected.append(new_text(tokenizer, new))
    assert [g.text for g in ours] == expected
    plain = SamplingSettings(temperature=1.0, top_k=1)
    unpenalised = torch_backend.generate_batch(PROMPTS, plain, list(range(len(PROMPTS))))
    assert [g.text for g in unpenalised] != expected


@pytest.mark.torch
@pytest.mark.slow
def test_a_row_finishing_early_does_not_change_the_others(torch_backend):
    seeds = [3, 1000, 77, 5, 123456789, 42]
    batch = torch_backend.generate_batch(PROMPTS, SAMPLING, seeds)
    early = min(range(len(batch)), key=lambda i: batch[i].completion_tokens)
    assert batch[early].completion_tokens < max(g.completion_tokens for g in batch)
    others = [i for i in range(len(PROMPTS)) if i != early]
    without = torch_backend.generate_batch(
        [PROMPTS[i] for i in others], SAMPLING, [seeds[i] for i in others]
    )
    assert [g.text for g in without] == [batch[i].text for i in others]


@pytest.mark.torch
@pytest.mark.slow
def test_the_same_prompt_with_different_seeds_differs(torch_backend):
    batch = torch_backend.generate_batch([PROMPTS[2]] * 4, SAMPLING, [1, 2, 3, 4])
    assert len({g.text for g in batch}) == 4
    again = torch_backend.generate_batch([PROMPTS[2]] * 2, SAMPLING, [3, 3])
    assert again[0].text == again[1].text == batch[2].text


@pytest.mark.torch
@pytest.mark.slow
def test_batch_rows_share_the_batch_time(torch_backend):
    batch = torch_backend.generate_batch(PROMPTS[:4], SAMPLING, [1, 2, 3, 4])
    times = {(g.prompt_eval_s, g.generation_s) for g in batch}
    assert len(times) == 1 and next(iter(times))[1] > 0


@pytest.mark.torch
@pytest.mark.slow
def test_upsample_many_on_torch_equals_one_by_one(tiny_model, monkeypatch):
    cache = BackendCache()
    upsampler = Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    settings = UpsampleSettings(
        model=str(tiny_model.hf_dir), target="long", max_rounds=4, sampling=SAMPLING
    )
    prompts = ["1girl, solo", "1girl, solo", "dragon girl, hat", "1boy", "sky", "smile, 1girl"]
    seeds = [1, 2, 3, 4, 5, 6]
    try:
        backend = cache.get("torch", tiny_model.hf_dir)
        calls = []
        batch_call = backend.generate_batch
        monkeypatch.setattr(
            backend, "generate_batch", lambda *a: calls.append(len(a[0])) or batch_call(*a)
        )
        many = upsampler.upsample_many(prompts, settings, seeds)
        batched = list(calls)
        alone = [upsampler.upsample(p, settings, s) for p, s in zip(prompts, seeds)]
    finally:
        cache.unload()
    assert [r.to_dict()["new_tags"] for r in many] == [r.to_dict()["new_tags"] for r in alone]
    assert [r.final_prompt for r in many] == [r.final_prompt for r in alone]
    assert [r.completion_tokens for r in many] == [r.completion_tokens for r in alone]
    assert many[0].final_prompt != many[1].final_prompt
    # one call per round, the first with every prompt
    assert batched[0] == len(prompts) and len(batched) == max(r.rounds for r in many)
    assert all(r.timings.generation_s > 0 and r.backend == "torch" for r in many)

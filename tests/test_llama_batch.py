"""llama.cpp rows decoded together (DTG_LLAMA_BATCH=1), and the one-by-one default."""

from __future__ import annotations

import logging

import pytest
from fake_lookup import FakeLookup

from dtg_lib.backends import BackendCache, load_backend
from dtg_lib.backends.base import BatchBackend
from dtg_lib.backends.llama_batch import (
    BATCH_ENV,
    MAX_ROWS,
    BatchingLlamaCppBackend,
    RowDecoder,
    batching_problem,
    batching_wanted,
    groups,
)
from dtg_lib.settings import SamplingSettings, UpsampleSettings
from dtg_lib.upsampler import Upsampler

HEAD = (
    "quality: masterpiece\nrating: <|empty|>\nartist: <|empty|>\ncharacters: <|empty|>\n"
    "copyrights: <|empty|>\naspect ratio: 1.0\ntarget: <|long|>\ngeneral: "
)
TAGS = ["1girl", "solo", "long hair", "smile", "dragon girl", "hat", "sky", "outdoors", "wings"]
# Different lengths, some with tags fed back after the marker (later rounds).
PROMPTS = [HEAD + ", ".join(TAGS[: 1 + i]) + "<|input_end|>" for i in range(6)] + [
    HEAD + "1girl<|input_end|>blush, smile, ",
    HEAD + "1girl, solo<|input_end|>hat",
    "target: <|long|>\ngeneral: 1girl, solo",  # TIPO-like: no marker
]
SEEDS = [3, 1000, 77, 5, 123456789, 42, 8, 9, 10]
SAMPLING = SamplingSettings(temperature=1.0, max_new_tokens=40)


# ------------------------------------------------------------------ planning


def test_groups_keep_order_and_fit_rows_and_cells():
    assert groups([100] * 10, cells=4096, most=8) == [list(range(8)), [8, 9]]
    assert groups([2000, 2000, 2000], cells=4096) == [[0, 1], [2]]
    assert groups([2048], cells=4096) == [[0]]
    assert groups([], cells=4096) == []


def test_batching_is_off_unless_asked_for():
    assert batching_wanted({}) is False
    assert batching_wanted({BATCH_ENV: "0"}) is False
    assert batching_wanted({BATCH_ENV: " Yes "}) is True


# ------------------------------------------------------------ the API it needs


@pytest.mark.llama
def test_this_llama_cpp_python_can_batch():
    llama_cpp = pytest.importorskip("llama_cpp")
    assert batching_problem(llama_cpp) is None


@pytest.mark.llama
@pytest.mark.parametrize("name", ["llama_get_memory", "llama_memory_seq_cp", "llama_batch_init"])
def test_a_missing_function_is_named(monkeypatch, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    monkeypatch.delattr(llama_cpp, name)
    assert name in batching_problem(llama_cpp)


@pytest.mark.llama
@pytest.mark.slow
def test_without_the_api_it_expands_one_by_one_and_says_why(tiny_model, monkeypatch, caplog):
    llama_cpp = pytest.importorskip("llama_cpp")
    monkeypatch.setenv(BATCH_ENV, "1")
    monkeypatch.delattr(llama_cpp, "llama_memory_seq_rm")
    with caplog.at_level(logging.WARNING, logger="dtg"):
        backend = load_backend("llama.cpp", tiny_model.gguf_f16)
    try:
        assert not isinstance(backend, BatchBackend)
        assert "llama_memory_seq_rm" in caplog.text and "one by one" in caplog.text
        assert backend.generate(PROMPTS[0], SAMPLING, 1).completion_tokens > 0
    finally:
        backend.close()


@pytest.mark.llama
@pytest.mark.slow
def test_by_default_the_backend_does_not_batch(tiny_model, monkeypatch):
    pytest.importorskip("llama_cpp")
    monkeypatch.delenv(BATCH_ENV, raising=False)
    backend = load_backend("llama.cpp", tiny_model.gguf_f16)
    try:
        assert not isinstance(backend, BatchBackend)
        assert not backend.notices
    finally:
        backend.close()


# ------------------------------------------------------------- with the model


@pytest.fixture(scope="module")
def q8_file(tiny_model, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from dtg_dev.tiny_model import quantize_gguf

    out = tmp_path_factory.mktemp("batch-q8")
    return quantize_gguf(tiny_model.gguf_f16, out / "tiny-Q8_0.gguf", "Q8_0")


@pytest.fixture(scope="module")
def batching(q8_file):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BATCH_ENV, "1")
        backend = load_backend("llama.cpp", q8_file)
    assert isinstance(backend, BatchingLlamaCppBackend)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def one_by_one(q8_file):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(BATCH_ENV, raising=False)
        backend = load_backend("llama.cpp", q8_file)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def alone(one_by_one):
    """Each prompt generated alone on the default (one-by-one) backend."""
    return [one_by_one.generate(p, SAMPLING, s) for p, s in zip(PROMPTS, SEEDS)]


def _outputs(generations):
    return [(g.text, g.completion_tokens, g.stopped_by_eos) for g in generations]


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("rows", [1, 2, 4, 8, len(PROMPTS)])
def test_a_row_in_a_batch_gives_what_it_gives_alone_on_q8_0(batching, alone, rows):
    """Holds for the tiny Q8_0 model on this CPU (docs/llama-batching.md); not promised
    by llama.cpp, and not true of every file (which is why batching is opt-in)."""
    got = batching.generate_batch(PROMPTS[:rows], SAMPLING, SEEDS[:rows])
    assert _outputs(got) == _outputs(alone[:rows])
    assert [g.prompt_tokens for g in got] == [g.prompt_tokens for g in alone[:rows]]
    if rows >= 4:  # rows that stop early sit with rows that go on
        assert len({g.completion_tokens for g in got}) > 1 and any(g.stopped_by_eos for g in got)


@pytest.mark.llama
@pytest.mark.slow
def test_one_llama_decode_advances_every_live_row(batching, monkeypatch):
    steps = []
    run_steps = RowDecoder._decode_steps

    def recording(self, rows):
        decode = self._decode
        self._decode = lambda entries: steps.append({e[2] for e in entries}) or decode(entries)
        try:
            return run_steps(self, rows)
        finally:
            del self._decode

    monkeypatch.setattr(RowDecoder, "_decode_steps", recording)
    got = batching.generate_batch(PROMPTS[:4], SAMPLING, SEEDS[:4])
    assert len(steps[0]) == 4  # four sequences in one call
    # a row's first token comes from its prompt; each step then draws one for every live row
    assert len(steps) == max(g.completion_tokens for g in got) - 1
    assert [len(s) for s in steps] == sorted((len(s) for s in steps), reverse=True)


@pytest.mark.llama
@pytest.mark.slow
def test_more_rows_than_sequences_run_in_groups(batching, alone):
    prompts = (PROMPTS * 2)[: MAX_ROWS + 3]
    seeds = (SEEDS * 2)[: MAX_ROWS + 3]
    got = batching.generate_batch(prompts, SAMPLING, seeds)
    expected = (alone * 2)[: MAX_ROWS + 3]
    assert _outputs(got) == _outputs(expected)


@pytest.mark.llama
@pytest.mark.slow
def test_rows_share_an_equal_prompt_and_keep_their_own_seeds(batching):
    got = batching.generate_batch([PROMPTS[2]] * 4, SAMPLING, [1, 2, 3, 1])
    assert got[0].text == got[3].text
    assert len({g.text for g in got[:3]}) == 3
    # the later rows copy the first row's evaluated prompt instead of evaluating it
    assert all(g.reused_prompt_tokens >= g.prompt_tokens - 2 for g in got[1:])


@pytest.mark.llama
@pytest.mark.slow
def test_a_call_gives_the_same_whatever_ran_before(batching, alone):
    batching.generate_batch(PROMPTS[3:7], SAMPLING, [50, 51, 52, 53])
    again = batching.generate_batch(PROMPTS[:2], SAMPLING, SEEDS[:2])
    assert _outputs(again) == _outputs(alone[:2])
    assert again[0].reused_prompt_tokens > 0


@pytest.mark.llama
@pytest.mark.slow
def test_upsample_many_on_llama_cpp_equals_one_by_one(q8_file, monkeypatch):
    monkeypatch.setenv(BATCH_ENV, "1")
    cache = BackendCache()
    upsampler = Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    settings = UpsampleSettings(model=str(q8_file), target="long", max_rounds=4, sampling=SAMPLING)
    prompts = ["1girl, solo", "1girl, solo", "dragon girl, hat", "1boy", "sky"]
    seeds = [1, 2, 3, 4, 5]
    try:
        backend = cache.get("llama.cpp", q8_file)
        assert isinstance(backend, BatchingLlamaCppBackend)
        calls = []
        batch_call = backend.generate_batch
        monkeypatch.setattr(
            backend, "generate_batch", lambda *a: calls.append(len(a[0])) or batch_call(*a)
        )
        many = upsampler.upsample_many(prompts, settings, seeds)
        alone = [upsampler.upsample(p, settings, s) for p, s in zip(prompts, seeds)]
    finally:
        cache.unload()
    monkeypatch.delenv(BATCH_ENV)
    plain_cache = BackendCache()
    plain = Upsampler(lookup=FakeLookup(), backends=plain_cache, allow_download=False)
    try:
        default = [plain.upsample(p, settings, s) for p, s in zip(prompts, seeds)]
    finally:
        plain_cache.unload()
    assert calls[0] == len(prompts)
    assert [r.final_prompt for r in many] == [r.final_prompt for r in alone]
    assert [r.final_prompt for r in many] == [r.final_prompt for r in default]
    assert many[0].final_prompt != many[1].final_prompt
    assert any("decoded this job's expansions together" in n for n in many[0].notices)

"""The llama.cpp backend keeps evaluated prompt tokens between calls (rounds and jobs),
deterministically: a warm call gives what a cold one gives."""

from __future__ import annotations

import pytest
from dtg_examples import PROMPT

from dtg_lib.backends.llama_cpp import (
    CHUNK_TOKENS,
    _chunks,
    _Evaluated,
    reusable_prefix,
    segment_ends,
)
from dtg_lib.settings import SamplingSettings

BASE = PROMPT.replace("target: <|short|>", "target: <|long|>")
OTHER_BASE = BASE.replace("rating: safe", "rating: sensitive")
# Another job: the same header, other tags.
OTHER_JOB = BASE.replace("1girl, solo, dragon girl", "1boy, sky, outdoors, hat")
# A TIPO-style prompt: no <|input_end|>, retried with seed + k on the same text.
TIPO_STYLE = "target: <|long|>\ngeneral: 1girl, solo, dragon girl, wings, long hair, smile, sky"
SAMPLING = SamplingSettings(temperature=1.0, top_p=0.95, top_k=100, max_new_tokens=64)
MARKER = 99
C = CHUNK_TOKENS


def evaluated(tokens):
    return _Evaluated(tuple(tokens), segment_ends(tokens, MARKER))


def header(length, start=1000):
    return list(range(start, start + length))


# ------------------------------------------------------------ chunk planning


def test_chunks_end_every_chunk_before_the_first_marker_and_at_the_end():
    assert segment_ends([1, 5, MARKER, 7, 8], MARKER) == (2, 5)
    assert segment_ends([1, 5, MARKER, 7, MARKER, 8], MARKER) == (2, 6)
    assert segment_ends([1, 5, MARKER], MARKER) == (2, 3)
    long = [*header(C + 5), MARKER, *header(C, 5000)]
    assert segment_ends(long, MARKER) == (C, C + 5, 2 * C, 2 * C + 6)


def test_a_prompt_without_the_marker_is_cut_only_every_chunk():
    assert segment_ends([1, 5, 6], MARKER) == (3,)
    assert segment_ends([1, 5, MARKER, 7], None) == (4,)
    assert segment_ends(header(2 * C), None) == (C, 2 * C)


def test_reuse_stops_at_a_chunk_end_both_prompts_share():
    first = evaluated((1, 5, MARKER))  # round one: the bare input
    assert reusable_prefix(first, [1, 5, MARKER, 7, 8], (2, 5)) == 2
    second = evaluated((1, 5, MARKER, 7, 8))
    assert reusable_prefix(second, [1, 5, MARKER, 8, 7], (2, 5)) == 2


def test_no_reuse_when_the_input_differs_or_nothing_was_evaluated():
    assert reusable_prefix(None, [1, 5, MARKER, 7], (2, 4)) == 0
    before = evaluated((1, 6, MARKER, 7))
    assert reusable_prefix(before, [1, 5, MARKER, 7], (2, 4)) == 0


def test_the_last_chunk_is_always_evaluated_again():
    # Its logits are what the first new token is sampled from.
    assert reusable_prefix(evaluated((1, 5, MARKER, 7)), [1, 5, MARKER, 7], (2, 4)) == 2
    assert reusable_prefix(evaluated((1, 5, MARKER)), [1, 5, MARKER], (2, 3)) == 2
    assert reusable_prefix(evaluated((1, 5, 6)), [1, 5, 6], (3,)) == 0
    tipo = header(C + 3)
    assert reusable_prefix(evaluated(tipo), tipo, segment_ends(tipo, MARKER)) == C


def test_a_longer_common_prefix_without_a_shared_chunk_end_is_not_reused():
    # Positions 3..4 were a tail chunk before; now they would sit inside a bigger
    # one, so their cache entries could differ in the last bits.
    before = evaluated((1, 5, MARKER, 7, 8))
    assert reusable_prefix(before, [1, 5, MARKER, 7, 8, 9], (2, 6)) == 2


def test_another_job_keeps_the_whole_chunks_of_the_header_it_shares():
    first = [*header(2 * C + 4), MARKER]
    other = [*header(2 * C + 1), 7, 7, MARKER]  # parts after 2C + 1 tokens
    assert reusable_prefix(evaluated(first), other, segment_ends(other, MARKER)) == 2 * C
    # A prefix that ends at the other prompt's marker is not a chunk end of the first.
    cut_there = [*header(C + 3), MARKER]
    assert reusable_prefix(evaluated(header(C + 9)), cut_there, (C, C + 3, C + 4)) == C


def test_chunks_after_a_kept_prefix():
    assert _chunks(0, (2, 5)) == [(0, 2), (2, 5)]
    assert _chunks(2, (2, 5)) == [(2, 5)]
    assert _chunks(C, (C, 2 * C, 2 * C + 3)) == [(C, 2 * C), (2 * C, 2 * C + 3)]


# ------------------------------------------------------------ with llama.cpp


@pytest.fixture(scope="module")
def fresh(tiny_model):
    """A factory of new backends on the tiny GGUF model, all closed at the end."""
    pytest.importorskip("llama_cpp")
    from dtg_lib.backends import load_backend

    opened = []

    def make():
        backend = load_backend("llama.cpp", tiny_model.gguf_f16)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


def _rounds(tags_per_round):
    return [BASE + ", ".join(tags) for tags in tags_per_round]


ROUND_PROMPTS = _rounds([[], ["blush", "smile"], ["smile", "blush", "wings"], ["horns"]])


@pytest.mark.llama
@pytest.mark.slow
def test_later_rounds_reuse_the_input_and_evaluate_only_the_tags(fresh):
    backend = fresh()
    base_tokens = backend.count_tokens(BASE) - 1  # all but <|input_end|>
    reused = [
        backend.generate(p, SAMPLING, 7 + i).reused_prompt_tokens
        for i, p in enumerate(ROUND_PROMPTS)
    ]
    # The input before the marker, and the marker too where a chunk ends after it.
    assert reused[0] == 0
    assert all(base_tokens <= r <= base_tokens + 1 for r in reused[1:]), reused
    assert base_tokens <= backend.generate(BASE, SAMPLING, 1).reused_prompt_tokens


@pytest.mark.llama
@pytest.mark.slow
def test_another_job_reuses_the_header_it_shares(fresh):
    backend = fresh()
    backend.generate(BASE, SAMPLING, 1)
    shared = _shared_prefix(backend, BASE, OTHER_JOB)
    other = backend.generate(OTHER_JOB, SAMPLING, 2)
    assert shared >= CHUNK_TOKENS
    assert other.reused_prompt_tokens == shared // CHUNK_TOKENS * CHUNK_TOKENS
    assert other.text == fresh().generate(OTHER_JOB, SAMPLING, 2).text


def _shared_prefix(backend, first, second):
    llm = backend._llm
    a, b = (llm.tokenize(t.encode(), add_bos=True, special=True) for t in (first, second))
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


JOBS = [
    [*ROUND_PROMPTS[:index], ROUND_PROMPTS[index]] for index in range(1, len(ROUND_PROMPTS))
] + [
    [BASE, OTHER_JOB],
    [OTHER_JOB + "blush, smile", BASE],
    [ROUND_PROMPTS[2], ROUND_PROMPTS[2]],
    [TIPO_STYLE, TIPO_STYLE],
    [TIPO_STYLE + ", horns", TIPO_STYLE],
]


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("calls", JOBS)
def test_a_reused_prefix_gives_what_a_fresh_backend_gives(fresh, calls):
    warm = fresh()
    for i, prompt in enumerate(calls[:-1]):
        warm.generate(prompt, SAMPLING, 100 + i)
    prompt = calls[-1]
    reused = warm.generate(prompt, SAMPLING, 5)
    cold_backend = fresh()
    cold = cold_backend.generate(prompt, SAMPLING, 5)
    assert reused.reused_prompt_tokens > 0
    assert cold.reused_prompt_tokens == 0
    assert reused.text == cold.text
    assert reused.completion_tokens == cold.completion_tokens
    # Bit for bit: sampling hides differences in the last bits, the cache does not.
    assert _cache_bytes(warm) == _cache_bytes(cold_backend)


def _cache_bytes(backend):
    import ctypes

    import llama_cpp

    ctx = backend._llm.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    data = (ctypes.c_uint8 * size)()
    llama_cpp.llama_state_seq_get_data(ctx, data, size, 0)
    return bytes(data)


@pytest.mark.llama
@pytest.mark.slow
def test_a_different_input_in_between_keeps_only_shared_whole_chunks(fresh):
    backend = fresh()
    backend.generate(OTHER_BASE + "blush", SAMPLING, 1)
    after_other = backend.generate(ROUND_PROMPTS[1], SAMPLING, 2)
    shared = _shared_prefix(backend, OTHER_BASE, ROUND_PROMPTS[1])
    assert after_other.reused_prompt_tokens == shared // CHUNK_TOKENS * CHUNK_TOKENS
    assert after_other.text == fresh().generate(ROUND_PROMPTS[1], SAMPLING, 2).text


@pytest.mark.llama
@pytest.mark.slow
def test_repeating_a_call_repeats_its_output(fresh):
    backend = fresh()
    first = backend.generate(ROUND_PROMPTS[2], SAMPLING, 11)
    again = backend.generate(ROUND_PROMPTS[2], SAMPLING, 11)
    assert 0 < again.reused_prompt_tokens < first.prompt_tokens
    assert (again.text, again.completion_tokens) == (first.text, first.completion_tokens)

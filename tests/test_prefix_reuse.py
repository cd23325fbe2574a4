"""The llama.cpp backend keeps the evaluated DTG input between rounds, deterministically."""

from __future__ import annotations

import pytest
from dtg_examples import PROMPT

from dtg_lib.backends.llama_cpp import _Evaluated, reusable_prefix, segment_ends
from dtg_lib.settings import SamplingSettings

BASE = PROMPT.replace("target: <|short|>", "target: <|long|>")
OTHER_BASE = BASE.replace("rating: safe", "rating: sensitive")
SAMPLING = SamplingSettings(temperature=1.0, top_p=0.95, top_k=100, max_new_tokens=64)
MARKER = 99


# ------------------------------------------------------------ segment planning


def test_segments_end_before_the_first_marker_and_at_the_end():
    assert segment_ends([1, 5, MARKER, 7, 8], MARKER) == (2, 5)
    assert segment_ends([1, 5, MARKER, 7, MARKER, 8], MARKER) == (2, 6)
    assert segment_ends([1, 5, MARKER], MARKER) == (2, 3)


def test_a_prompt_without_the_marker_is_one_segment():
    assert segment_ends([1, 5, 6], MARKER) == (3,)
    assert segment_ends([1, 5, MARKER, 7], None) == (4,)


def test_reuse_stops_at_a_segment_end_both_prompts_share():
    first = _Evaluated((1, 5, MARKER), (2, 3))  # round one: the bare input
    assert reusable_prefix(first, [1, 5, MARKER, 7, 8], (2, 5)) == 2
    second = _Evaluated((1, 5, MARKER, 7, 8), (2, 5))
    assert reusable_prefix(second, [1, 5, MARKER, 8, 7], (2, 5)) == 2


def test_no_reuse_when_the_input_differs_or_nothing_was_evaluated():
    assert reusable_prefix(None, [1, 5, MARKER, 7], (2, 4)) == 0
    before = _Evaluated((1, 6, MARKER, 7), (2, 4))
    assert reusable_prefix(before, [1, 5, MARKER, 7], (2, 4)) == 0


def test_the_last_segment_is_always_evaluated_again():
    # Its logits are what the first new token is sampled from.
    same = _Evaluated((1, 5, MARKER, 7), (2, 4))
    assert reusable_prefix(same, [1, 5, MARKER, 7], (2, 4)) == 2
    bare = _Evaluated((1, 5, MARKER), (2, 3))
    assert reusable_prefix(bare, [1, 5, MARKER], (2, 3)) == 2
    alone = _Evaluated((1, 5, 6), (3,))
    assert reusable_prefix(alone, [1, 5, 6], (3,)) == 0


def test_a_longer_common_prefix_without_a_shared_segment_end_is_not_reused():
    # Positions 3..4 were a tail batch before; now they would sit inside a bigger
    # batch, so their cache entries could differ in the last bits.
    before = _Evaluated((1, 5, MARKER, 7, 8), (2, 5))
    assert reusable_prefix(before, [1, 5, MARKER, 7, 8, 9], (2, 6)) == 2


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
    assert reused == [0, base_tokens, base_tokens, base_tokens]
    assert backend.generate(BASE, SAMPLING, 1).reused_prompt_tokens == base_tokens


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("index", range(1, len(ROUND_PROMPTS)))
def test_a_reused_prefix_gives_what_a_fresh_backend_gives(fresh, index):
    warm = fresh()
    for i, prompt in enumerate(ROUND_PROMPTS[:index]):
        warm.generate(prompt, SAMPLING, 100 + i)
    prompt = ROUND_PROMPTS[index]
    reused = warm.generate(prompt, SAMPLING, 5)
    cold = fresh().generate(prompt, SAMPLING, 5)
    assert reused.reused_prompt_tokens > 0
    assert cold.reused_prompt_tokens == 0
    assert reused.text == cold.text
    assert reused.completion_tokens == cold.completion_tokens


@pytest.mark.llama
@pytest.mark.slow
def test_a_different_input_in_between_is_not_reused(fresh):
    backend = fresh()
    backend.generate(OTHER_BASE + "blush", SAMPLING, 1)
    after_other = backend.generate(ROUND_PROMPTS[1], SAMPLING, 2)
    assert after_other.reused_prompt_tokens == 0
    assert after_other.text == fresh().generate(ROUND_PROMPTS[1], SAMPLING, 2).text


@pytest.mark.llama
@pytest.mark.slow
def test_repeating_a_call_repeats_its_output(fresh):
    backend = fresh()
    first = backend.generate(ROUND_PROMPTS[2], SAMPLING, 11)
    again = backend.generate(ROUND_PROMPTS[2], SAMPLING, 11)
    assert again.reused_prompt_tokens > 0
    assert (again.text, again.completion_tokens) == (first.text, first.completion_tokens)

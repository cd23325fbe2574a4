"""A few property-based cases of the whole path in the regular suite.

The long run (100k+ cases) is `python -m tests.fuzz.run_fuzz`; see the README.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.cases import LEADS, append_prompts, check, check_verbatim, prompts
from tests.fuzz.run_fuzz import real_engine, scripted_engine

QUICK = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def scripted():
    return scripted_engine()


@pytest.fixture(scope="module")
def real(tiny_model):
    pytest.importorskip("llama_cpp")
    engine, chosen = real_engine()
    yield engine, chosen
    engine.unload()


@QUICK
@given(prompt=prompts)
def test_any_prompt_expands_and_keeps_the_users_text(scripted, prompt):
    engine, chosen = scripted
    check(prompt, engine.upsample(prompt, chosen, seed=1).final_prompt)


@pytest.mark.slow
@pytest.mark.llama
@settings(QUICK, max_examples=10)
@given(prompt=prompts)
def test_any_prompt_with_the_tiny_model(real, prompt):
    engine, chosen = real
    check(prompt, engine.upsample(prompt, chosen, seed=1).final_prompt)


@pytest.mark.parametrize(
    "prompt", ["", "BREAK", "<lora:a:1>, <lora:b:0.5>", "((((a", "a))))]]", "\x00", "AND AND"]
)
def test_edge_prompts(scripted, prompt):
    engine, chosen = scripted
    check(prompt, engine.upsample(prompt, chosen, seed=1).final_prompt)


# --- `append` keeps the user's prompt byte for byte --------------------------------


@pytest.fixture(scope="module")
def appending(scripted):
    engine, chosen = scripted
    return engine, replace(chosen, format="append")


@QUICK
@given(prompt=append_prompts)
def test_append_keeps_any_prompt_byte_for_byte(appending, prompt):
    engine, chosen = appending
    result = engine.upsample(prompt, chosen, seed=1)
    check_verbatim(prompt, result.final_prompt, result.new_tags)
    check(prompt, result.final_prompt)


@pytest.mark.parametrize("lead", LEADS)
@pytest.mark.parametrize("rest", ["AND cat", "(cat, dog", "[smile", ":0.5 AND x", "", "cat"])
def test_append_through_the_engine_keeps_what_leads_the_prompt(appending, lead, rest):
    engine, chosen = appending
    prompt = f"{lead}{rest}"
    result = engine.upsample(prompt, chosen, seed=1)
    assert result.new_tags  # something was inserted
    check_verbatim(prompt, result.final_prompt, result.new_tags)

"""Long and deeply nested prompts are read in time linear in their length, and `append`
keeps the user's prompt byte for byte.

The reproductions of issue 13: the parser rescanned the prompt from every `[`
(parse("[" * 16000) took 42 s; a 50,000-character request of `[` then `]` got no
answer in 180 s), and several of its patterns backtracked over long runs of spaces
or digits. Each reproduction runs in a child process under a memory limit and a
timeout, so that a regression fails here instead of hanging the suite.
"""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_lookup import FakeLookup

from dtg_lib import prompt_syntax
from dtg_lib.assemble import assemble
from dtg_lib.dtg_format import build_model_input, classify_prompt
from dtg_lib.prompt_syntax import parse

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
HTTP_LIMIT = 50_000  # characters in one prompt the HTTP API accepts

# Prompts of `chars` characters that took quadratic time (or worse) before.
SHAPES: dict[str, Callable[[int], str]] = {
    "open squares": lambda chars: "[" * chars,
    "balanced squares": lambda chars: "[" * (chars // 2) + "]" * (chars // 2),
    "nested prompt editing": lambda chars: "[a:" * (chars // 8) + "b" + ":0.5]" * (chars // 8),
    "rounds nested around text": lambda chars: "(a" * (chars // 3) + ")" * (chars // 3),
    "weights nested around text": lambda chars: "(a" * (chars // 6) + ":1.2)" * (chars // 6),
    "extra networks never closed": lambda chars: "<a:" * (chars // 3),
    "a run of spaces inside a tag": lambda chars: "a" + " " * (chars - 4) + "b (",
    "a run of spaces before a colon": lambda chars: "a" + " " * (chars - 2) + ":",
    "digits after an editing colon": lambda chars: "[a:" + "1" * (chars - 5) + "x]",
}

CHILD = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
sys.path[:0] = [{repo!r}, {tests!r}]
from test_reliability_syntax import SHAPES, read_and_write
text = SHAPES[sys.argv[1]](int(sys.argv[2]))
started = time.perf_counter()
read_and_write(text)
print(time.perf_counter() - started)
"""


def read_and_write(text: str) -> str:
    """The whole path of a prompt outside the model: parse, classify, model input, output."""
    classified = classify_prompt(parse(text), FakeLookup())
    build_model_input(classified)
    assemble(classified, ["blue eyes"], "default")
    return assemble(classified, ["blue eyes"], "append")


def seconds_in_a_child(shape: str, chars: int, timeout: float = 60.0) -> float:
    code = CHILD.format(repo=str(REPO_ROOT), tests=str(TESTS))
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, shape, str(chars)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{shape}: {chars:,} characters took over {timeout:.0f} s")
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("shape", SHAPES)
def test_a_prompt_at_the_http_limit_is_read_in_seconds(shape):
    assert seconds_in_a_child(shape, HTTP_LIMIT) < 5.0


def test_the_http_reproduction_expands_in_seconds():
    """`[` * 25000 + `]` * 25000 through the whole engine (a scripted model)."""
    code = f"""
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
sys.path[:0] = [{str(REPO_ROOT)!r}, {str(TESTS)!r}]
from tests.fuzz.run_fuzz import scripted_engine
engine, chosen = scripted_engine()
prompt = "[" * 25000 + "]" * 25000
started = time.perf_counter()
result = engine.upsample(prompt, chosen, seed=1)
assert prompt in result.final_prompt and result.new_tags, result.final_prompt[-200:]
print(time.perf_counter() - started)
"""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the 50,000-character request took over 60 s")
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 10.0


def _cpu_seconds(text: str) -> float:
    """The least of three runs, without the garbage collector's pauses."""
    times = []
    gc.disable()
    try:
        for _ in range(3):
            started = time.process_time()
            read_and_write(text)
            times.append(time.process_time() - started)
    finally:
        gc.enable()
    return min(times)


# Where the quadratic cost had a small constant (a regular expression's backtracking, a
# short inner loop), it shows only on longer prompts: measured there.
GROWTH_BASE = {
    "weights nested around text": 12_500,
    "rounds nested around text": 12_500,
    "extra networks never closed": 12_500,
}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_cost_grows_linearly_with_the_length(shape):
    """Four times the text costs about four times as much (here: under eight); quadratic
    growth costs sixteen."""
    make = SHAPES[shape]
    base = GROWTH_BASE.get(shape, 3_000)
    small = _cpu_seconds(make(base))
    large = _cpu_seconds(make(4 * base))
    assert large < 8 * small + 0.02, f"{shape}: {small:.3f} s, then {large:.3f} s"


def test_beyond_the_exact_budget_weights_agree_to_rounding(monkeypatch):
    """Past EXACT_WEIGHTING_BUDGET the factors are grouped: the same items and tags, with
    the same weights to within float rounding."""
    pieces = []
    for index in range(300):
        depth = index % 30
        closing = ":1.3)" + ")" * (depth - 1) if depth else ""
        pieces.append("(" * depth + f"t{index}" + closing)
    text = "[" + ", ".join(pieces)  # the `[` left open weights every tag
    exact = parse(text)
    monkeypatch.setattr(prompt_syntax, "EXACT_WEIGHTING_BUDGET", 0)
    grouped = parse(text)
    assert [(i.kind, i.text) for i in grouped.items] == [(i.kind, i.text) for i in exact.items]
    ours = [tag for _, tag in grouped.tags()]
    theirs = [tag for _, tag in exact.tags()]
    assert len(ours) == len(theirs) == 300
    for mine, reference in zip(ours, theirs):
        assert mine.name == reference.name
        assert math.isclose(mine.weight, reference.weight, rel_tol=1e-12)


# --- `append` keeps the user's prompt byte for byte -----------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # Whitespace or commas alone before the insertion point were dropped or made one space.
        ("\tAND cat", "blue eyes\tAND cat"),
        ("\r\nAND cat", "blue eyes\r\nAND cat"),
        ("\u2029AND cat", "blue eyes\u2029AND cat"),
        ("\u3000AND cat", "blue eyes\u3000AND cat"),
        ("\xa0AND cat", "blue eyes\xa0AND cat"),
        ("  AND cat", "blue eyes  AND cat"),
        (" , AND cat", "blue eyes , AND cat"),
        ("\t:0.5 AND cat", "blue eyes\t:0.5 AND cat"),
        # A bracket left open: the new tags go in front of it, out of its reach.
        ("  (cat, dog", "blue eyes,  (cat, dog"),
        ("\u3000[smile", "blue eyes,\u3000[smile"),
        (" ,\t(cat", "blue eyes ,\t(cat"),
        (",,(cat", "blue eyes,,(cat"),
        # As before where nothing was lost.
        ("AND cat", "blue eyes AND cat"),
        ("(cat", "blue eyes, (cat"),
        ("\tcat \n", "\tcat, blue eyes \n"),
        ("", "blue eyes"),
    ],
)
def test_append_keeps_leading_whitespace_and_commas(prompt, expected):
    out = assemble(classify_prompt(parse(prompt), FakeLookup()), ["blue eyes"], "append")
    assert out == expected

"""The CLIP token counter against the webui's own counter.

tests/data/webui_token_counts.json: the prompt-box counter of a real AUTOMATIC1111
1.10.1 (SD 1.5, transformers 4.30.2, ftfy 6.3.1), read through its own endpoint with
20 steps and no styles. tests/data/webui_token_counts_edge.json: the same counter on
syntax edge cases, with their step counts (`tokens: null` where the webui's counter
itself fails; `negative: true` for the negative prompt box's counter).
tests/data/clip_token_ids.json: ids from that webui's CLIPTokenizer.

Known difference, deliberately not in the corpus: a schedule or alternation whose
brackets touch a stray top-level bracket or colon (`[x:3]:a`, `a)[x:3]`, `[x:3]]`).
The webui's grammar is ambiguous there and lark settles it by hash order, so the
webui's own answer changes between restarts (PYTHONHASHSEED); we read a schedule.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dtg_lib import clip_bpe, clip_tokens
from dtg_lib.clip_tokens import (
    ClipVocabularyMissing,
    PromptWeightError,
    TokenCount,
    attention_fragments,
    count_tokens,
    step_prompts,
    tokenize,
)

DATA = Path(__file__).parent / "data"
WEBUI_COUNTS = DATA / "webui_token_counts.json"
WEBUI_EDGE_COUNTS = DATA / "webui_token_counts_edge.json"

try:
    clip_tokens.vocabulary_path()
except ClipVocabularyMissing as missing:
    pytest.skip(f"{missing} (pip install --no-deps open_clip_torch)", allow_module_level=True)


def words(count: int) -> str:
    return " ".join(["word"] * count)  # "word" is one token


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


# --- the BPE ---------------------------------------------------------------------------


def test_vocabulary_has_clips_ids():
    ids = clip_bpe._vocab().ids
    assert len(ids) == 49408
    assert ids["<|startoftext|>"] == 49406 and ids["<|endoftext|>"] == 49407
    assert ids["!"] == 0 and ids["a</w>"] == 320 and ids[",</w>"] == 267


@pytest.mark.parametrize("case", _load(DATA / "clip_token_ids.json"), ids=lambda case: case["text"])
def test_token_ids_match_the_webuis_tokenizer(case):
    assert tokenize(case["text"]) == case["ids"]


def test_words_split_and_join_as_bpe_merges_say():
    assert tokenize("masterpiece") == [12066]  # one merged word
    assert len(tokenize("supercalifragilisticexpialidocious")) == 9
    assert tokenize("Hello  WORLD") == tokenize("hello world")  # lower case, one space
    assert tokenize("1girl") == [272, 1611]  # digits are tokens of their own
    assert tokenize("") == [] and tokenize(" \n\t ") == []


def test_missing_package_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(clip_bpe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ClipVocabularyMissing) as raised:
        clip_bpe.vocabulary_path()
    message = str(raised.value)
    assert "open_clip_torch" in message and "\n" not in message


@pytest.mark.parametrize("content", [b"not gzip", gzip.compress(b"#version\nab cd\n")])
def test_damaged_vocabulary_is_one_clear_line(monkeypatch, tmp_path, content):
    damaged = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    damaged.write_bytes(content)
    monkeypatch.setattr(clip_bpe, "vocabulary_path", lambda: damaged)
    monkeypatch.setattr(clip_bpe, "_vocabulary", None)
    with pytest.raises(ClipVocabularyMissing) as raised:
        count_tokens("1girl")
    assert "--force-reinstall open_clip_torch" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_counting_imports_neither_open_clip_nor_torch():
    code = (
        "import sys; from dtg_lib.clip_tokens import count_tokens; "
        "print(count_tokens('a photo of a cat').tokens, "
        "'open_clip' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["5", "False", "False"], done.stderr


def test_vocabulary_loads_once_across_threads(monkeypatch):
    monkeypatch.setattr(clip_bpe, "_vocabulary", None)
    loads = []
    real_load = clip_bpe._load_vocabulary

    def counting_load(path):
        loads.append(path)
        return real_load(path)

    monkeypatch.setattr(clip_bpe, "_load_vocabulary", counting_load)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(count_tokens("1girl, solo").tokens))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [4] * 8
    assert len(loads) == 1


# --- chunks ------------------------------------------------------------------------------


def test_exactly_75_tokens_fill_one_chunk():
    assert count_tokens(words(75)) == TokenCount(75, 1, 75, (75,))


def test_the_76th_token_opens_a_second_chunk():
    assert count_tokens(words(76)) == TokenCount(76, 2, 150, (75, 1))


def test_empty_prompt_shows_zero_of_75():
    assert count_tokens("") == TokenCount(0, 1, 75, (0,))


def test_break_ends_the_chunk_and_counts_it_as_75():
    assert count_tokens("a BREAK b") == TokenCount(76, 2, 150, (1, 1))
    assert count_tokens("a BREAK") == TokenCount(75, 1, 75, (1,))  # nothing after it
    assert count_tokens("a BREAK BREAK b").chunk_tokens == (1, 0, 1)


def test_break_inside_brackets_or_glued_is_a_word():
    assert count_tokens("(a BREAK b)").tokens == 3
    assert count_tokens("aBREAK b").tokens == 3


def test_a_comma_in_the_last_20_tokens_moves_the_rest_to_the_next_chunk():
    # 55 words and a comma fill 56 tokens; the 76th token finds that comma 20 back.
    moved = count_tokens(words(55) + ", " + words(20))
    assert moved == TokenCount(95, 2, 150, (56, 20))


def test_a_comma_21_tokens_back_is_too_far():
    kept = count_tokens(words(54) + ", " + words(21))
    assert kept == TokenCount(76, 2, 150, (75, 1))


def test_emphasis_brackets_are_not_tokens_and_equal_weights_merge():
    assert attention_fragments("(a)(b)") == [("ab", 1.1)]
    assert count_tokens("((masterpiece)), [[low quality]], (1girl:1.2)").tokens == 7
    assert attention_fragments(r"\(a\) \\") == [("(a) \\", 1.0)]


def test_extra_networks_are_stripped_before_counting():
    assert count_tokens("1girl, <lora:detail:0.8>, solo").tokens == 5
    assert count_tokens("<lora:a:1><hypernet:b:1>").tokens == 0


def test_an_unreadable_weight_is_a_clear_error():
    with pytest.raises(PromptWeightError, match=r"1\.2\.3"):
        count_tokens("(a:1.2.3)")


# --- AND, prompt editing, alternation ------------------------------------------------------


def test_and_parts_count_apart_and_the_longest_shows():
    assert step_prompts("1girl :1.2 AND a forest at night:0.5") == ["1girl", " a forest at night"]
    assert count_tokens("1girl AND a forest at night").tokens == 4
    assert count_tokens("1girl AND a forest", negative=True).tokens == 5  # AND is a word


def test_prompt_editing_counts_the_longest_schedule():
    assert step_prompts("[cat:a big dog:0.5]") == ["cat", "a big dog"]
    assert count_tokens("[a long descriptive phrase about a cat:a dog:0.5]").tokens == 8
    # a switch after the last step never happens
    assert step_prompts("[cat:a big dog:25]", steps=20) == ["cat"]


def test_alternation_counts_every_option():
    assert step_prompts("[cat|big dog], x", steps=4) == ["cat, x", "big dog, x"]
    assert count_tokens("[cat|a big dog]").tokens == 3


def test_unparsable_schedule_is_counted_as_written():
    assert step_prompts("a | b") == ["a | b"]
    assert step_prompts("[cat:dog:1e400]") == ["[cat:dog:1e400]"]


# --- the real webui's counts ---------------------------------------------------------------


def test_webui_counter_corpus_is_present():
    if not WEBUI_COUNTS.is_file():
        pytest.skip(f"{WEBUI_COUNTS} is absent: no counts from a real webui to compare with")
    assert len(_load(WEBUI_COUNTS)) >= 40


@pytest.mark.parametrize(
    "case",
    _load(WEBUI_COUNTS) if WEBUI_COUNTS.is_file() else [],
    ids=lambda case: case["prompt"][:40],
)
def test_counts_match_the_webuis_counter(case):
    counted = count_tokens(case["prompt"])
    assert (counted.tokens, counted.target) == (case["tokens"], case["target"])


@pytest.mark.parametrize(
    "case",
    _load(WEBUI_EDGE_COUNTS),
    ids=lambda case: f"{case['prompt'][:40]}@{case['steps']}",
)
def test_edge_counts_match_the_webuis_counter(case):
    options = {"steps": case["steps"], "negative": case.get("negative", False)}
    if case["tokens"] is None:  # the webui's counter fails on this prompt
        with pytest.raises(PromptWeightError):
            count_tokens(case["prompt"], **options)
        return
    counted = count_tokens(case["prompt"], **options)
    assert (counted.tokens, counted.target) == (case["tokens"], case["target"])


# --- size --------------------------------------------------------------------------------


def _scrambled_letters(count: int) -> str:
    state, letters = 12345, []
    for _ in range(count):
        state = (state * 1103515245 + 12345) % 2**31
        letters.append(chr(ord("a") + (state >> 16) % 26))
    return "".join(letters)


@pytest.mark.parametrize(
    "prompt",
    [
        ", ".join(["1girl", "(long hair:1.2)", "[cat:dog:0.5]", "BREAK solo"] * 2000)[:50_000],
        "a" * 50_000,  # one BPE word
        _scrambled_letters(50_000),  # one word of many different merges
        "(" * 25_000 + "a" + ")" * 25_000,
        "[" * 50_000,
        "a" + " " * 49_990 + "b BREAK c",
        "a" + ":" * 49_999,
        "[a|b] " * 8_000,
    ],
    ids=["tags", "one-word", "letters", "nested", "open", "spaces", "colons", "alternations"],
)
def test_a_50000_character_prompt_counts_quickly(prompt):
    count_tokens("warm up")
    started = time.perf_counter()
    count_tokens(prompt)
    assert time.perf_counter() - started < 5  # ~0.1 s here; pass-per-merge BPE takes ~30 s

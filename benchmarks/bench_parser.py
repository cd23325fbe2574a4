"""Cost of reading long prompts: the webui-syntax parser and writing the final prompt.

For each shape of prompt, --chars characters long (50,000 by default, the HTTP API's
limit), prints the median over --runs runs of

* parse     dtg_lib.prompt_syntax.parse
* assemble  everything after it on the way to the model and back: classify the tags
            (built-in classes only, no tag index), build the model input, and write
            the final prompt in `append` and `default` formats with two new tags

Shapes: each bracket kind open only, balanced (all opened, then all closed) and
alternating (opened and closed in turn); chains of prompt editing, nested prompt
editing and alternation; escapes, AND, BREAK and extra networks in bulk; and a
realistic long prompt. Target: each well under a second.

    python benchmarks/bench_parser.py [--chars 50000] [--runs 3] [--only nested]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dtg_lib.assemble import assemble  # noqa: E402  (needs the path above)
from dtg_lib.categories import BUILTIN_CLASSES, Category, canonical  # noqa: E402
from dtg_lib.dtg_format import build_model_input, classify_prompt  # noqa: E402
from dtg_lib.prompt_syntax import parse  # noqa: E402

TARGET_S = 1.0
NEW_TAGS = ["blue eyes", ":3"]
REALISTIC_PIECES = (
    "masterpiece",
    "best quality",
    "1girl",
    "solo",
    "(long hair:1.2)",
    "((smile))",
    "[blush]",
    "ganyu \\(genshin impact\\)",
    "asuna (sao)",
    "<lora:detail_tweaker:0.6>",
    "[red hair:blue hair:0.4]",
    "[cat|dog]",
    "(cherry blossoms, petals:0.8)",
    "__colors__ dress",
    "{sunny|rainy} day",
    "outdoors BREAK night sky",
    "embedding:easynegative",
)


def repeat(unit: str, chars: int) -> str:
    return unit * max(1, chars // len(unit))


def halves(opener: str, closer: str, chars: int) -> str:
    count = max(1, chars // (len(opener) + len(closer)))
    return opener * count + closer * count


def realistic(chars: int) -> str:
    pieces = []
    length = 0
    index = 0
    while length < chars:
        piece = REALISTIC_PIECES[index % len(REALISTIC_PIECES)]
        if index % 97 == 96:
            piece = f"{piece} AND"
        pieces.append(piece)
        length += len(piece) + 2
        index += 1
    return ", ".join(pieces)[:chars]


SHAPES: dict[str, Callable[[int], str]] = {
    "( open": lambda n: repeat("(", n),
    "( balanced": lambda n: halves("(", ")", n),
    "( alternating": lambda n: repeat("()", n),
    "( nested around text": lambda n: halves("(a", ")", n),
    "[ open": lambda n: repeat("[", n),
    "[ balanced": lambda n: halves("[", "]", n),
    "[ alternating": lambda n: repeat("[]", n),
    "{ open": lambda n: repeat("{", n),
    "{ balanced": lambda n: halves("{", "}", n),
    "{ alternating": lambda n: repeat("{}", n),
    "<lora: open": lambda n: repeat("<lora:", n),
    "<lora:x:1> chain": lambda n: repeat("<lora:x:1>", n),
    "[a:b:0.5] chain": lambda n: repeat("[a:b:0.5]", n),
    "[a: nested :0.5]": lambda n: halves("[a:", ":0.5]", n),
    "[a|b] chain": lambda n: repeat("[a|b]", n),
    "[a| nested ]": lambda n: halves("[a|", "]", n),
    "(a:1.1) nested": lambda n: halves("(a", ":1.1)", n),
    "escapes \\( \\[": lambda n: repeat("\\(\\[", n),
    "AND": lambda n: repeat("a AND ", n),
    "BREAK": lambda n: repeat("a BREAK ", n),
    "spaces": lambda n: "a" + " " * (n - 3) + "b (",
    "digits after a colon": lambda n: "[a:" + "1" * (n - 5) + "x]",
    "realistic": realistic,
}


@dataclass(frozen=True)
class TagInfo:
    name: str
    category: Category


class BuiltinLookup:
    """Classifies by the built-in classes only: the benchmark measures no tag index."""

    def classify(self, tag: str) -> TagInfo:
        key = canonical(tag)
        category, name = BUILTIN_CLASSES.get(key, (Category.GENERAL, key))
        return TagInfo(name, category)


def time_parse(text: str) -> float:
    started = time.perf_counter()
    parse(text)
    return time.perf_counter() - started


def time_assemble(text: str) -> float:
    parsed = parse(text)
    started = time.perf_counter()
    classified = classify_prompt(parsed, BuiltinLookup())
    build_model_input(classified)
    assemble(classified, NEW_TAGS, "append")
    assemble(classified, NEW_TAGS, "default")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_parser.py")
    parser.add_argument("--chars", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="run the shapes whose name contains this")
    args = parser.parse_args(argv)
    print(f"{args.chars:,} characters, median of {args.runs} runs (target: under {TARGET_S} s)")
    print(f"{'shape':24} {'parse s':>9} {'assemble s':>11}")
    slow = []
    for name, make in SHAPES.items():
        if args.only not in name:
            continue
        text = make(args.chars)
        parse_s = statistics.median(time_parse(text) for _ in range(args.runs))
        assemble_s = statistics.median(time_assemble(text) for _ in range(args.runs))
        print(f"{name:24} {parse_s:9.3f} {assemble_s:11.3f}", flush=True)
        if parse_s + assemble_s > TARGET_S:
            slow.append(name)
    if slow:
        print(f"over {TARGET_S} s: {', '.join(slow)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

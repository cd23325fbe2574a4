"""CLIP's byte-level BPE, as the webui's tokenizer applies it, over the vocabulary that ships
in the `open_clip_torch` wheel (found without importing open_clip, which imports torch).

`tokenize(text)` gives CLIP token ids: the text is cleaned as ftfy and the webui's
tokenizer clean it (entities, quotes, ligatures, full-width forms, controls, NFC,
whitespace, lower case), split by CLIP's pre-tokenising pattern, mapped through CLIP's
byte table and merged by rank. The vocabulary loads once per process, behind a lock;
nothing is downloaded.
"""

from __future__ import annotations

import gzip
import heapq
import html
import importlib.util
import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import regex

from dtg_lib.errors import UNAVAILABLE, DtgError

log = logging.getLogger("dtg")

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_PACKAGE = "open_clip_torch"
# The merges CLIP uses: the file's first line is a header, and CLIP keeps the first
# 49152 - 256 - 2 of the rest (49408 ids = 512 byte tokens + merges + 2 specials).
MERGE_COUNT = 49152 - 256 - 2
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
WORD_END = "</w>"
CACHED_WORD_LENGTH = 64


class ClipVocabularyMissing(DtgError, RuntimeError):
    http_status = UNAVAILABLE


# --- the vocabulary ------------------------------------------------------------------


@dataclass(frozen=True)
class _Vocabulary:
    ranks: dict[tuple[str, str], int]
    ids: dict[str, int]


_vocabulary: _Vocabulary | None = None
_vocabulary_lock = threading.Lock()


def vocabulary_path() -> Path:
    """The BPE file inside the installed open_clip package, found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise ClipVocabularyMissing(
        f"counting CLIP tokens needs the {VOCAB_PACKAGE} package for its vocabulary; "
        f"install it with `pip install --no-deps {VOCAB_PACKAGE}`"
    )


def token_id(symbol: str) -> int:
    """The id of one vocabulary symbol, such as `,</w>`."""
    return _vocab().ids[symbol]


def _vocab() -> _Vocabulary:
    global _vocabulary
    if _vocabulary is None:
        with _vocabulary_lock:
            if _vocabulary is None:
                _vocabulary = _load_vocabulary(vocabulary_path())
    return _vocabulary


def _load_vocabulary(path: Path) -> _Vocabulary:
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ClipVocabularyMissing(
            f"the CLIP vocabulary {path} cannot be read ({error}); reinstall it with "
            f"`pip install --no-deps --force-reinstall {VOCAB_PACKAGE}`"
        ) from None
    merges = [tuple(line.split()) for line in lines[1 : MERGE_COUNT + 1]]
    if len(merges) != MERGE_COUNT or any(len(merge) != 2 for merge in merges):
        raise ClipVocabularyMissing(
            f"the CLIP vocabulary {path} is not CLIP's ({len(merges)} merges); reinstall it "
            f"with `pip install --no-deps --force-reinstall {VOCAB_PACKAGE}`"
        )
    byte_symbols = list(_byte_symbols().values())
    names = byte_symbols + [symbol + WORD_END for symbol in byte_symbols]
    names += [left + right for left, right in merges]
    names += [START_OF_TEXT, END_OF_TEXT]
    log.debug("CLIP vocabulary: %d merges from %s", len(merges), path)
    return _Vocabulary(
        ranks={(left, right): rank for rank, (left, right) in enumerate(merges)},
        ids={name: index for index, name in enumerate(names)},
    )


@lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    """CLIP's byte-to-character table: printable bytes stand for themselves, the other
    bytes take characters from 256 upwards, so no byte is whitespace. The table's order
    (printable bytes first) is the order of the first 256 token ids."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {byte: chr(byte) for byte in printable}
    spare = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(spare)
            spare += 1
    return table


# --- text to BPE tokens --------------------------------------------------------------

# CLIP's pre-tokenizer: the specials, English contractions, runs of letters, single
# digits, runs of anything else that is not whitespace.
_PRE_TOKEN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_SPECIAL_TOKEN = re.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
_WHITESPACE = re.compile(r"\s+")
_HTML_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_TERMINAL_ESCAPE = re.compile(r"\x1b\[[\d;]*[a-zA-Z]")
_QUOTES = {0x2BC: "'", **dict.fromkeys(range(0x2018, 0x201C), "'")}
_QUOTES.update(dict.fromkeys(range(0x201C, 0x2020), '"'))
_CONTROLS = dict.fromkeys([*range(0x0, 0x9), *range(0xE, 0x20), 0x7F, 0xFEFF])
_LIGATURE_LETTERS = "IJ ij ʼn DZ Dz dz DŽ Dž dž LJ Lj lj NJ Nj nj ff fi fl ffi ffl ſt st"
_LIGATURES = dict(zip(map(ord, "ĲĳŉǱǲǳǄǅǆǇǈǉǊǋǌﬀﬁﬂﬃﬄﬅﬆ"), _LIGATURE_LETTERS.split()))


@lru_cache(maxsize=1)
def _plain_forms() -> dict[int, str]:
    """What ftfy.fix_text (run by the webui's tokenizer) replaces in well-formed text:
    curly quotes, ligatures, control characters, full- and half-width forms."""
    table: dict[int, str | None] = {0x3000: " ", **_QUOTES, **_LIGATURES, **_CONTROLS}
    for code in range(0xFF01, 0xFFF0):
        normal = unicodedata.normalize("NFKC", chr(code))
        if normal != chr(code):
            table[code] = normal
    return table


def _fix_text(text: str) -> str:
    """ftfy.fix_text's changes to text that was decoded right (mojibake is not repaired):
    HTML entities on the lines before the first line with a `<`, terminal colour codes,
    `_plain_forms`, NFC."""
    if "&" in text:
        text = _unescape_entities(text)
    if "\x1b" in text:
        text = _TERMINAL_ESCAPE.sub("", text)
    if not text.isascii() or any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        text = text.translate(_plain_forms())
    return unicodedata.normalize("NFC", text)


def _unescape_entities(text: str) -> str:
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if "<" in line:
            break
        lines[index] = _HTML_ENTITY.sub(lambda m: html.unescape(m[0]), line)
    return "\n".join(lines)


def clean_text(text: str) -> str:
    """What CLIP's tokenizer reads: fixed, whitespace collapsed, lower case."""
    return _WHITESPACE.sub(" ", _fix_text(text)).strip().lower()


def tokenize(text: str) -> list[int]:
    """CLIP token ids of `text`, without the start and end tokens added around a prompt.

    The special tokens written out in the text are split off first and the pieces between
    them cleaned and tokenized apart, as transformers' CLIPTokenizer does.
    """
    ids = _vocab().ids
    tokens: list[int] = []
    for index, piece in enumerate(_SPECIAL_TOKEN.split(text)):
        if index % 2:
            tokens.append(ids[piece])
            continue
        for word in _PRE_TOKEN.findall(clean_text(piece)):
            tokens.extend(ids[symbol] for symbol in _bpe(word))
    return tokens


def _bpe(word: str) -> tuple[str, ...]:
    """The BPE pieces of one pre-token. Words of usual length are cached (prompts repeat
    their words); long ones are not, so the cache stays small whatever comes in."""
    return _bpe_cached(word) if len(word) <= CACHED_WORD_LENGTH else _bpe_pieces(word)


@lru_cache(maxsize=65536)
def _bpe_cached(word: str) -> tuple[str, ...]:
    return _bpe_pieces(word)


def _bpe_pieces(word: str) -> tuple[str, ...]:
    if word in (START_OF_TEXT, END_OF_TEXT):
        return (word,)
    table = _byte_symbols()
    symbols = [table[byte] for byte in word.encode("utf-8")]
    symbols[-1] += WORD_END
    return tuple(_merge(symbols, _vocab().ranks))


def _merge(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply merges lowest rank first, leftmost first, in O(n log n).

    A merge only creates pairs of higher rank than its own (a pair with the new symbol
    was learnt after it), so taking pairs from a heap gives the same result as CLIP's
    pass-per-merge loop.
    """
    count = len(symbols)
    following = list(range(1, count + 1))
    preceding = list(range(-1, count - 1))
    alive = [True] * count
    heap: list[tuple[int, int, str, str]] = []

    def offer(left: int) -> None:
        right = following[left]
        if right < count:
            rank = ranks.get((symbols[left], symbols[right]))
            if rank is not None:
                heapq.heappush(heap, (rank, left, symbols[left], symbols[right]))

    for index in range(count - 1):
        offer(index)
    while heap:
        _, left, left_symbol, right_symbol = heapq.heappop(heap)
        right = following[left]
        stale = not alive[left] or right >= count or symbols[left] != left_symbol
        if stale or symbols[right] != right_symbol:
            continue
        symbols[left] = left_symbol + right_symbol
        alive[right] = False
        following[left] = following[right]
        if following[right] < count:
            preceding[following[right]] = left
        if preceding[left] >= 0:
            offer(preceding[left])
        offer(left)
    return [symbol for symbol, kept in zip(symbols, alive) if kept]

"""Tag categories, the built-in tag classes, and the canonical form of a tag name.

The canonical form is what every lookup and comparison uses: lowercase,
underscores as spaces, webui escapes removed, whitespace collapsed. It is
also the text DTG was trained on (Danbooru names with spaces).
"""

from __future__ import annotations

import re
from enum import Enum


class Category(str, Enum):
    RATING = "rating"
    ARTIST = "artist"
    CHARACTER = "character"
    COPYRIGHT = "copyright"
    GENERAL = "general"
    META = "meta"
    SPECIAL = "special"
    QUALITY = "quality"


# People-count tags DTG expects at the head of its "general" line.
SPECIAL_TAGS: tuple[str, ...] = (
    "1girl",
    "2girls",
    "3girls",
    "4girls",
    "5girls",
    "6+girls",
    "multiple girls",
    "1boy",
    "2boys",
    "3boys",
    "4boys",
    "5boys",
    "6+boys",
    "multiple boys",
    "male focus",
    "1other",
    "2others",
    "3others",
    "4others",
    "5others",
    "6+others",
    "multiple others",
)

# Quality, aesthetic, year and Pony-style score tags. None of these is ever
# sent to DTG as a general tag.
QUALITY_TAGS: tuple[str, ...] = (
    "masterpiece",
    "best quality",
    "great quality",
    "good quality",
    "normal quality",
    "low quality",
    "worse quality",
    "very aesthetic",
    "aesthetic",
    "displeasing",
    "very displeasing",
    "newest",
    "recent",
    "mid",
    "early",
    "old",
    "score_9",
    "score_8_up",
    "score_7_up",
    "score_6_up",
    "score_5_up",
    "score_4_up",
    "source_anime",
    "source_cartoon",
    "source_furry",
    "source_pony",
)

RATING_TAGS: tuple[str, ...] = ("safe", "general", "sfw", "sensitive", "nsfw", "explicit")

_ESCAPE = re.compile(r"\\(.)")
_SPACES = re.compile(r"\s+")
# Danbooru keeps underscores in short names: emoticons such as ^_^, o_o, >_<.
_SHORT_NAME = 3


def canonical(name: str) -> str:
    """Return the lookup key of a tag: `Hatsune_Miku`, `hatsune miku ` -> `hatsune miku`.

    `name` is written as in a webui prompt, so `\\(` is `(`; see `raw_key` for a name as
    Danbooru (and the model) writes it.
    """
    unescaped = _ESCAPE.sub(r"\1", name) if "\\" in name else name  # most names: no escapes
    text = _SPACES.sub(" ", unescaped).strip().lower()
    if len(text) <= _SHORT_NAME:
        return text
    return text.replace("_", " ").strip()


def raw_key(name: str) -> str:
    """The lookup key of a tag as Danbooru writes it, where a backslash is part of the
    name (`\\m/`); `canonical` would read it as a webui escape."""
    return canonical(name.replace("\\", "\\\\"))


# canonical name -> (category, the spelling DTG and the reference use)
BUILTIN_CLASSES: dict[str, tuple[Category, str]] = {
    **{canonical(n): (Category.RATING, n) for n in RATING_TAGS},
    **{canonical(n): (Category.QUALITY, n) for n in QUALITY_TAGS},
    **{canonical(n): (Category.SPECIAL, n) for n in SPECIAL_TAGS},
}

"""A small in-memory tag lookup for tests of the prompt side.

It follows the same classification order as dtg_lib.tag_lookup (built-in
classes, then names) over a handful of names, so prompt tests do not need
an index on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtg_lib.categories import BUILTIN_CLASSES, Category, canonical

NAMES = {
    "hatsune miku": Category.CHARACTER,
    "ganyu (genshin impact)": Category.CHARACTER,
    "vocaloid": Category.COPYRIGHT,
    "genshin impact": Category.COPYRIGHT,
    "wlop": Category.ARTIST,
    "highres": Category.META,
    "absurdres": Category.META,
}


@dataclass(frozen=True)
class Info:
    name: str
    category: Category
    known: bool = True


class FakeLookup:
    # As tag_lookup.TagLookup.notices: this lookup always reads its names.
    notices: tuple[str, ...] = ()

    def classify(self, tag: str) -> Info:
        key = canonical(tag)
        if key in BUILTIN_CLASSES:
            category, name = BUILTIN_CLASSES[key]
            return Info(name, category)
        if key in NAMES:
            return Info(key, NAMES[key])
        return Info(key, Category.GENERAL, known=False)

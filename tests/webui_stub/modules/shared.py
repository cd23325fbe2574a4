"""`shared.opts`, `shared.cmd_opts` and `OptionInfo`, reduced to what scripts read."""

from __future__ import annotations

import argparse
from typing import Any

from modules.options import OptionInfo, categories
from modules.shared_state import State
from modules.styles import StyleDatabase

__all__ = ["OptionInfo", "Options", "cmd_opts", "opts", "prompt_styles", "state"]


class Options:
    """Unknown names raise AttributeError, like the webui's, so callers need a default."""

    def __init__(self) -> None:
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info

    def categories_of_sections(self) -> dict[str, str]:
        """Section label -> its category's label, or "Uncategorized" for an unknown or missing
        category: what the host's dumpjson() turns into the page's category headings."""
        found: dict[str, str] = {}
        for info in self.data_labels.values():
            category = categories.mapping.get(getattr(info, "category_id", None))
            found.setdefault(info.section[1], category.label if category else "Uncategorized")
        return found

    def __getattr__(self, item: str) -> Any:
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value


opts = Options()
cmd_opts = argparse.Namespace()
prompt_styles = StyleDatabase()
state = State()

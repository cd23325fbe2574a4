"""`shared.opts`, `shared.cmd_opts` and `OptionInfo`, reduced to what scripts read."""

from __future__ import annotations

import argparse
from typing import Any

from modules.styles import StyleDatabase


class OptionInfo:
    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: Any = None,
        *,
        section: tuple[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.section = section
        self.extra = extra


class Options:
    """Unknown names raise AttributeError, like the webui's, so callers need a default."""

    def __init__(self) -> None:
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info

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

"""`OptionInfo`, `options_section` and the Settings page's categories (webui 1.7+)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class OptionInfo:
    """One setting. `component_args` may be a callable, called whenever the page is built or
    a refresh button is pressed; `refresh` (a callable) gives the field a refresh button."""

    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: Any = None,
        onchange: Any = None,
        section: tuple[str, str] | None = None,
        refresh: Any = None,
        comment_before: str = "",
        comment_after: str = "",
        infotext: str | None = None,
        restrict_api: bool = False,
        category_id: str | None = None,
    ) -> None:
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api


def options_section(section_identifier: tuple, options_dict: dict[str, OptionInfo]) -> dict:
    """(id, label) sets the section; (id, label, category_id) sets the category too."""
    for info in options_dict.values():
        info.section = tuple(section_identifier[:2])
        if len(section_identifier) == 3:
            info.category_id = section_identifier[2]
    return options_dict


@dataclass
class OptionsCategory:
    id: str
    label: str


class OptionsCategories:
    def __init__(self) -> None:
        self.mapping: dict[str, OptionsCategory] = {}

    def register_category(self, category_id: str, label: str) -> str:
        self.mapping.setdefault(category_id, OptionsCategory(category_id, label))
        return category_id


categories = OptionsCategories()
# The host's own categories (modules/shared_options.py in 1.10.1; Forge drops "training").
for _id, _label in (
    ("saving", "Saving images"),
    ("sd", "Stable Diffusion"),
    ("ui", "User Interface"),
    ("system", "System"),
    ("postprocessing", "Postprocessing"),
    ("training", "Training"),
):
    categories.register_category(_id, _label)

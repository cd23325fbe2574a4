"""The page's model list: each model with its family and licence, and the family of
whatever name the user picks or types (the page shows its TIPO controls for TIPO models).

Names come from the same places as elsewhere: the server's own model (trusted, as in the
HTTP routes), the models in the model folder, and the registry. A typed name is checked
by `models.checked_model_spec`, the one rule for names from outside, so the page never
reads a file outside the model folder to tell its family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dtg_lib import models

FAMILY_LABELS = {models.DTG_FAMILY: "DTG", models.TIPO_FAMILY: "TIPO"}


@dataclass(frozen=True)
class ModelOption:
    """One entry of the model list."""

    name: str
    family: str | None  # None: the name is no model the page can read
    licence: str = ""  # a registry model's; "" for one's own file

    @property
    def label(self) -> str:
        """What the list shows: "tipo-500m (TIPO, kohaku-license-1.0)"."""
        facts = [FAMILY_LABELS.get(self.family or "", "")]
        facts.append(self.licence)
        shown = ", ".join(fact for fact in facts if fact)
        return f"{self.name} ({shown})" if shown else self.name

    @property
    def speaks_tipo(self) -> bool:
        return self.family == models.TIPO_FAMILY

    @property
    def choice(self) -> tuple[str, str]:
        """(label, value) for a gradio Dropdown: the value stays the plain name."""
        return self.label, self.name


def model_option(name: str, model_dir: Path, *, trusted: bool = False) -> ModelOption:
    """The family and licence of `name`; `trusted` for the server's own model (any path).

    A name that is no model the page may use gets family None; the Expand button
    then answers with the one clear message the HTTP checks give.
    """
    try:
        if trusted:
            spec = models.parse_model_name(name, model_dir)
        else:
            spec = models.checked_model_spec(name, model_dir)
    except models.ModelError:
        return ModelOption(name, None)
    licence = spec.entry.licence if spec.entry is not None else ""
    return ModelOption(name, spec.family, licence)


def model_options(model_dir: Path, default_model: str) -> list[ModelOption]:
    """The server's model first, then the model folder's, then the registry; each once."""
    options = [model_option(default_model, model_dir, trusted=True)]
    options += [
        ModelOption(m.name, m.family, m.licence) for m in models.list_local_models(model_dir)
    ]
    options += [model_option(name, model_dir) for name in models.model_choices()]
    unique: dict[str, ModelOption] = {}
    for option in options:
        unique.setdefault(option.name, option)  # the first occurrence wins, order kept
    return list(unique.values())

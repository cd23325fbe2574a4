"""What one expansion prepares (`Prepared`, also what --dry-run shows) and gives back
(`Result`: the final prompt, what was added, and what it cost)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .dtg_format import ClassifiedPrompt


@dataclass(frozen=True)
class Timings:
    load_s: float = 0.0
    lookup_s: float = 0.0
    prompt_eval_s: float = 0.0
    generation_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True)
class Result:
    prompt: str
    final_prompt: str
    new_tags: tuple[str, ...]
    model_input: str
    seed: int
    rounds: int
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    model: str
    backend: str
    device: str
    tag_categories: dict[str, str] = field(default_factory=dict)
    notices: tuple[str, ...] = ()  # things the user should be told, such as a backend fallback
    # A TIPO model's texts, kept apart from the tags (empty for DTG): the short text
    # (the natural-language prompt extended) and the long one it generated.
    extended: str = ""
    generated: str = ""
    # The final prompt's CLIP token count and its target (chunks times 75), as the webui's
    # counter shows them; None without the CLIP vocabulary (open_clip_torch).
    tokens: int | None = None
    token_target: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["new_tags"] = list(self.new_tags)
        return data


@dataclass(frozen=True)
class Prepared:
    """Everything decided before the model runs; also what --dry-run shows."""

    classified: ClassifiedPrompt
    model_input: str
    user_tag_count: int
    quality_line: bool = True

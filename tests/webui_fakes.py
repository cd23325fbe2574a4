"""A fake engine that answers with real `dtg_lib.upsampler.Result`s, for the webui's
routes and preview, which read every field of a result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dtg_lib.upsampler import Result, Timings


def make_result(prompt: str, seed: int, *, notices: tuple[str, ...] = ()) -> Result:
    new = (f"dtg {seed}", "smile")
    return Result(
        prompt=prompt,
        final_prompt=f"{prompt}, {', '.join(new)}",
        new_tags=new,
        model_input="",
        seed=seed,
        rounds=2,
        prompt_tokens=10,
        completion_tokens=5,
        timings=Timings(total_s=0.25),
        model="fake-model",
        backend="fake",
        device="cpu",
        tag_categories={"smile": "general"},
        notices=notices,
    )


@dataclass
class ResultEngine:
    fail: Exception | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def upsample_many(self, prompts, settings, seeds, width=1024, height=1024):
        self.calls.append(
            {
                "prompts": list(prompts),
                "seeds": list(seeds),
                "size": (width, height),
                "settings": settings,
            }
        )
        if self.fail is not None:
            raise self.fail
        return [make_result(p, s) for p, s in zip(prompts, seeds)]

"""A fake engine that answers with real `dtg_lib.upsampler.Result`s, for the webui's
routes and preview, which read every field of a result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dtg_lib.upsampler import Result, Timings


def make_result(
    prompt: str, seed: int, *, notices: tuple[str, ...] = (), nl_prompt: str = ""
) -> Result:
    """A DTG-like result; with a natural-language prompt, a TIPO-like one whose sentences
    (`extended`, `generated`) end the final prompt."""
    new = (f"dtg {seed}", "smile")
    extended = f"{nl_prompt} extended with seed {seed}." if nl_prompt else ""
    generated = f"A caption written with seed {seed}." if nl_prompt else ""
    sentences = f"\n\n{extended}\n\n{generated}" if nl_prompt else ""
    return Result(
        prompt=prompt,
        final_prompt=f"{prompt}, {', '.join(new)}{sentences}",
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
        extended=extended,
        generated=generated,
    )


@dataclass
class ResultEngine:
    fail: Exception | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def upsample_many(self, prompts, settings, seeds, width=1024, height=1024, nl_prompts=None):
        self.calls.append(
            {
                "prompts": list(prompts),
                "seeds": list(seeds),
                "size": (width, height),
                "settings": settings,
                "nl_prompts": nl_prompts,
            }
        )
        if self.fail is not None:
            raise self.fail
        texts = nl_prompts or [""] * len(prompts)
        return [make_result(p, s, nl_prompt=nl) for p, s, nl in zip(prompts, seeds, texts)]

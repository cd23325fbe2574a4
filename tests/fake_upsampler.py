"""An upsampler stand-in for tests of the HTTP routes and the page: instant, or failing."""

from __future__ import annotations

import threading

from dtg_lib.upsampler import Result, Timings


class FakeUpsampler:
    """Answers instantly with a result that shows what it was asked; or raises `error`."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls: list[tuple] = []
        self._lock = threading.Lock()

    def upsample_many(self, prompts, settings, seeds, width, height):
        with self._lock:
            self.calls.append((tuple(prompts), settings, tuple(seeds), width, height))
        if self.error is not None:
            raise self.error
        return [self._result(p, s, settings) for p, s in zip(prompts, seeds)]

    @staticmethod
    def _result(prompt, seed, settings):
        return Result(
            prompt=prompt,
            final_prompt=f"{prompt}, tag{seed}",
            new_tags=(f"tag{seed}",),
            model_input="",
            seed=seed,
            rounds=1,
            prompt_tokens=3,
            completion_tokens=2,
            timings=Timings(total_s=0.01),
            model=settings.model,
            backend="fake",
            device="cpu",
            tag_categories={"1girl": "special"},
        )

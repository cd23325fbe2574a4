"""Processing objects and `process_images`, in the hook order of webui 1.10
(before_process, process, before_process_batch, process_batch per batch).

Sampling is replaced by a record of what each image would have been conditioned on
(`Processed.samples`), which is what the script's tests need to check.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from modules import shared
from modules.infotext_utils import quote

_EXTRA_NETWORK = re.compile(r"<(lora|lyco|hypernet):[^>]*>")
_SEED_RANGE = 4294967294


def get_fixed_seed(seed: Any) -> int:
    if seed is None or seed == "":
        seed = -1
    seed = int(seed)
    return random.randrange(_SEED_RANGE) if seed == -1 else seed


def apply_styles(prompt: str, styles: list[str]) -> str:
    return shared.prompt_styles.apply_styles_to_prompt(prompt, styles)


class StableDiffusionProcessing:
    def __init__(
        self,
        prompt: str | list[str] = "",
        negative_prompt: str = "",
        seed: Any = -1,
        batch_size: int = 1,
        n_iter: int = 1,
        width: int = 512,
        height: int = 512,
        styles: list[str] | None = None,
        scripts: Any = None,
    ) -> None:
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.seed = seed
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.width = width
        self.height = height
        self.styles = list(styles or ())
        self.scripts = scripts
        self.script_args = list(scripts.script_args) if scripts else []
        self.extra_generation_params: dict[str, Any] = {}
        self.comments: dict[str, int] = {}
        self.iteration = 0
        self.all_prompts: list[str] = []
        self.all_negative_prompts: list[str] = []
        self.all_seeds: list[int] = []
        self.prompts: list[str] = []
        self.seeds: list[int] = []
        self.main_prompt = ""

    @property
    def total(self) -> int:
        return self.batch_size * self.n_iter

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def setup_prompts(self) -> None:
        prompts = self.prompt if isinstance(self.prompt, list) else self.total * [self.prompt]
        self.all_prompts = [apply_styles(x, self.styles) for x in prompts]
        negative = shared.prompt_styles.apply_negative_styles_to_prompt(
            self.negative_prompt, self.styles
        )
        self.all_negative_prompts = self.total * [negative]
        self.main_prompt = self.all_prompts[0]

    def batch_hires_prompts(self, batch: slice) -> list[str]:
        return []

    def init(self) -> None:
        pass


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, *, enable_hr: bool = False, hr_prompt: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enable_hr = enable_hr
        self.hr_prompt = hr_prompt
        self.all_hr_prompts: list[str] = []
        self.hr_prompts: list[str] = []

    def setup_prompts(self) -> None:
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.hr_prompt = self.prompt
        prompts = (
            self.hr_prompt if isinstance(self.hr_prompt, list) else self.total * [self.hr_prompt]
        )
        self.all_hr_prompts = [apply_styles(x, self.styles) for x in prompts]

    def init(self) -> None:
        # As in 1.10.1's `init()`, which runs after the scripts' `process()`.
        if not self.enable_hr:
            return

        def get_hr_prompt(p: Any, index: int, prompt_text: str, **kwargs: Any) -> str | None:
            hr_prompt = p.all_hr_prompts[index]
            return hr_prompt if hr_prompt != prompt_text else None

        self.extra_generation_params["Hires prompt"] = get_hr_prompt

    def batch_hires_prompts(self, batch: slice) -> list[str]:
        self.hr_prompts = self.all_hr_prompts[batch] if self.enable_hr else []
        return [_strip_networks(x) for x in self.hr_prompts]


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, *, init_images: list[Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init_images = list(init_images or ())
        self.denoising_strength = 0.75


@dataclass
class Sample:
    prompt: str
    hr_prompt: str | None
    seed: int


@dataclass
class Processed:
    all_prompts: list[str]
    all_seeds: list[int]
    infotexts: list[str]
    samples: list[Sample] = field(default_factory=list)


def _strip_networks(prompt: str) -> str:
    return _EXTRA_NETWORK.sub("", prompt)


def process_images(p: StableDiffusionProcessing) -> Processed:
    p.scripts.before_process(p)
    return _process_images_inner(p)


def _process_images_inner(p: StableDiffusionProcessing) -> Processed:
    p.setup_prompts()
    first_seed = get_fixed_seed(p.seed)
    p.all_seeds = [first_seed + i for i in range(p.total)]
    p.scripts.process(p)
    p.init()
    samples: list[Sample] = []
    infotexts: list[str] = []
    for n in range(p.n_iter):
        p.iteration = n
        batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.seeds = p.all_prompts[batch], p.all_seeds[batch]
        p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds)
        p.prompts = [_strip_networks(x) for x in p.prompts]
        hires = p.batch_hires_prompts(batch)
        p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds)
        for i, (prompt, seed) in enumerate(zip(p.prompts, p.seeds)):
            samples.append(Sample(prompt, hires[i] if hires else None, seed))
        p.scripts.postprocess_batch(p, batch_number=n)
        p.prompts = p.all_prompts[batch]
        # As in 1.10.1: `index` is the position inside this batch, not in the job.
        infotexts.extend(
            create_infotext(p, p.prompts, p.seeds, index=i) for i in range(len(p.seeds))
        )
    processed = Processed(list(p.all_prompts), list(p.all_seeds), infotexts, samples)
    p.scripts.postprocess(p, processed)
    return processed


def create_infotext(
    p: StableDiffusionProcessing,
    all_prompts: list[str],
    all_seeds: list[int],
    iteration: int = 0,
    position_in_batch: int = 0,
    use_main_prompt: bool = False,
    index: int | None = None,
) -> str:
    if index is None:
        index = position_in_batch + iteration * p.batch_size
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    params: dict[str, Any] = {
        "Steps": 20,
        "Seed": all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
    }
    # Callables get the infotext's context as keywords; they must accept ones they don't use.
    context = {
        "p": p,
        "all_prompts": all_prompts,
        "all_seeds": all_seeds,
        "iteration": iteration,
        "position_in_batch": position_in_batch,
        "use_main_prompt": use_main_prompt,
        "index": index,
        "prompt_text": prompt_text,
        "params": params,
    }
    for key, value in list(params.items()):
        if isinstance(value, list):
            params[key] = value[index]
        elif callable(value):
            params[key] = value(**context)
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = p.all_negative_prompts[0] if p.all_negative_prompts else ""
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt_text}{negative_line}\n{line}"

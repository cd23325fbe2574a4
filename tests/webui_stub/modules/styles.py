"""Prompt styles as the host applies them, and reads them back out of a pasted infotext.

A style's text either wraps the prompt (it holds "{prompt}") or is appended with ", ".
Reading back removes any style whose texts the prompt (and negative prompt) end with,
or are wrapped in, until none is left; the names come back in applying order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge(style_text: str, prompt: str) -> str:
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def unmerge(style_text: str, prompt: str) -> str | None:
    """`prompt` before `style_text` was merged into it; None when it was not."""
    text, style = prompt.strip(), style_text.strip()
    if PLACEHOLDER in style:
        head, _, tail = style.partition(PLACEHOLDER)
        if text.startswith(head) and text.endswith(tail):
            return text[len(head) : len(text) - len(tail)]
        return None
    if not text.endswith(style):
        return None
    return text[: len(text) - len(style)].removesuffix(", ")


@dataclass
class StyleDatabase:
    styles: dict[str, PromptStyle] = field(default_factory=dict)

    def add(self, name: str, prompt: str = "", negative_prompt: str = "") -> None:
        self.styles[name] = PromptStyle(name, prompt, negative_prompt)

    def apply_styles_to_prompt(self, prompt: str, styles: list[str]) -> str:
        for name in styles:
            prompt = merge(self.styles[name].prompt, prompt)
        return prompt

    def apply_negative_styles_to_prompt(self, prompt: str, styles: list[str]) -> str:
        for name in styles:
            prompt = merge(self.styles[name].negative_prompt, prompt)
        return prompt

    def extract_styles_from_prompt(
        self, prompt: str, negative_prompt: str
    ) -> tuple[list[str], str, str]:
        found: list[str] = []
        left = [s for s in self.styles.values() if s.prompt or s.negative_prompt]
        while True:
            for style in left:
                positive = unmerge(style.prompt, prompt)
                negative = unmerge(style.negative_prompt, negative_prompt)
                if positive is not None and negative is not None:
                    prompt, negative_prompt = positive, negative
                    found.append(style.name)
                    left.remove(style)
                    break
            else:
                return list(reversed(found)), prompt, negative_prompt

"""Prompts as versioned files: `prompts/<name>.v<N>.txt`. A prompt's id and content hash go into lineage,
so every answer can be traced to the exact wording that produced it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROMPTS = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class Prompt:
    id: str
    """`<name>@v<N>`."""
    hash: str
    """sha256 of the template text, first 16 hex digits."""
    template: str

    def render(self, **values: str) -> str:
        return self.template.format(**values)


@lru_cache
def load_prompt(name: str, version: int) -> Prompt:
    template = (PROMPTS / f"{name}.v{version}.txt").read_text(encoding="utf-8")
    return Prompt(
        id=f"{name}@v{version}", hash=hashlib.sha256(template.encode()).hexdigest()[:16], template=template
    )


def prompt_by_ref(ref: str) -> Prompt:
    """A prompt named as in a bot definition: `name@vN`."""
    name, _, version = ref.partition("@v")
    if not name or not version.isdigit():
        raise ValueError(f"a prompt is named `name@vN`, not {ref!r}")
    return load_prompt(name, int(version))

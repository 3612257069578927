"""Chunks that follow the document's structure: never across a heading, a few paragraphs each,
with the last sentence of one chunk repeated at the start of the next as overlap."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dialogue.knowledge.parsing import ParsedDocument

MAX_CHUNK_CHARS = 400
"""Short chunks embed better (MiniLM reads 256 word pieces at most) and cite more precisely."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass
class Chunk:
    heading: str
    text: str


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def chunk(document: ParsedDocument, *, max_chars: int = MAX_CHUNK_CHARS) -> list[Chunk]:
    chunks: list[Chunk] = []
    for section in document.sections:
        current: list[str] = []
        for paragraph in section.paragraphs:
            if current and sum(len(p) for p in current) + len(paragraph) > max_chars:
                chunks.append(Chunk(section.heading, "\n\n".join(current)))
                overlap = sentences(current[-1])[-1:]
                current = overlap if overlap and overlap[0] != paragraph else []
            current.append(paragraph)
        if current:
            chunks.append(Chunk(section.heading, "\n\n".join(current)))
    return chunks

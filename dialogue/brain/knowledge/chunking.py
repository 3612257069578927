"""Chunks that follow the document's structure and fit the embedder's window.

- Never across a heading; a few paragraphs each (about `MAX_CHUNK_CHARS`), the last sentence of one chunk
  repeated at the start of the next as overlap.
- What is embedded (the title, the heading and the chunk's text, `store.indexed_text`) fits the embedding
  model's window, counted with the model's own tokenizer: a longer paragraph is cut between sentences (a
  sentence longer than the window between words), a code block between lines, kept as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dialogue.brain.knowledge.parsing import CODE_MARK, ParsedDocument
from dialogue.brain.nlu.embeddings import MAX_TOKENS, count_tokens

CHUNKER_VERSION = 2
"""Part of a document's content hash (`store.DocumentInput`): ingesting a document again after the chunker
changed makes its chunks anew. 2: Markdown by markdown-it, pieces within the embedder's window."""
MAX_CHUNK_CHARS = 400
"""Short chunks embed better and cite more precisely (the demo's articles: recall@1 on its questions was best
at 200 to 400 characters, bench/quality.py)."""
SPECIAL_TOKENS = 2
"""The model's own markers around every text ([CLS] and [SEP]), inside its window."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n\s*\n")


@dataclass
class Chunk:
    heading: str
    text: str


def sentences(text: str) -> list[str]:
    """The sentences of `text`; a blank line (between paragraphs, list items) always ends one."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def chunk(
    document: ParsedDocument, *, max_chars: int = MAX_CHUNK_CHARS, window: int = MAX_TOKENS
) -> list[Chunk]:
    chunks: list[Chunk] = []
    for section in document.sections:
        # What the model reads of a chunk: its document's title and heading first (`store.indexed_text`).
        budget = window - SPECIAL_TOKENS - count_tokens(f"{document.title} {section.heading}")
        current: list[_Piece] = []
        for paragraph in section.paragraphs:
            for piece in _pieces(paragraph, max_chars, budget):
                if current and not _fits([*current, piece], max_chars, budget):
                    chunks.append(Chunk(section.heading, _joined(current)))
                    current = _overlap(current[-1], piece, max_chars, budget)
                current.append(piece)
        if current:
            chunks.append(Chunk(section.heading, _joined(current)))
    return chunks


@dataclass(frozen=True)
class _Piece:
    text: str
    code: bool = False


def _pieces(paragraph: str, max_chars: int, budget: int) -> list[_Piece]:
    """A paragraph in pieces that each fit: itself; or runs of its sentences; or, for code, of its lines."""
    if paragraph.startswith(CODE_MARK):
        lines = paragraph.removeprefix(CODE_MARK).split("\n")
        return [_Piece(run, code=True) for run in _runs(lines, "\n", max_chars, budget)]
    if len(paragraph) <= max_chars and count_tokens(paragraph) <= budget:
        return [_Piece(paragraph)]
    said: list[str] = []
    for sentence in sentences(paragraph):
        said += [sentence] if count_tokens(sentence) <= budget else _runs(sentence.split(), " ", 0, budget)
    return [_Piece(run) for run in _runs(said, " ", max_chars, budget)]


def _runs(parts: list[str], joint: str, max_chars: int, budget: int) -> list[str]:
    """`parts` joined in runs of at most `max_chars` characters (no limit when 0) and `budget` tokens; a
    part is never cut."""
    runs: list[str] = []
    current: list[str] = []
    for part in parts:
        candidate = joint.join([*current, part])
        too_long = bool(max_chars) and len(candidate) > max_chars
        if current and (too_long or count_tokens(candidate) > budget):
            runs.append(joint.join(current))
            current = []
        current.append(part)
    if current:
        runs.append(joint.join(current))
    return runs


def _overlap(last: _Piece, coming: _Piece, max_chars: int, budget: int) -> list[_Piece]:
    """The start of the next chunk: the last sentence of the chunk before, when prose follows prose."""
    if last.code or coming.code:
        return []
    repeated = sentences(last.text)[-1:]
    if not repeated or repeated[0] == coming.text:
        return []
    start = [_Piece(repeated[0])]
    return start if _fits([*start, coming], max_chars, budget) else []


def _joined(pieces: list[_Piece]) -> str:
    return "\n\n".join(piece.text for piece in pieces)


def _fits(pieces: list[_Piece], max_chars: int, budget: int) -> bool:
    text = _joined(pieces)
    return len(text) <= max_chars and count_tokens(text) <= budget

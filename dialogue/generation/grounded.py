"""The grounded generator: answers with the sentences of the retrieved passages that best match
the question, cites the passages it used, and finds no answer rather than guess."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dialogue.contracts import ContextLineage, Passage, Source
from dialogue.generation.prompts import Prompt
from dialogue.knowledge.chunking import sentences
from dialogue.llm.context import Conversation
from dialogue.text import terms

MAX_ANSWER_CHARS = 420
SUPPORT_RATIO = 0.6
MAX_SENTENCES = 2
"""A further sentence joins the answer when it scores at least this share of the best one."""


@dataclass
class Relevance:
    min_semantic: float = 0.35
    """Cosine similarity a passage needs to be trusted, when embeddings are there."""
    min_lexical: float = 1.0
    """BM25 score a passage needs to be trusted, without embeddings."""

    def trusted(self, passage: Passage) -> bool:
        if passage.semantic_score is not None:
            return passage.semantic_score >= self.min_semantic
        return passage.lexical_score >= self.min_lexical


@dataclass
class Answer:
    text: str
    sources: list[Source]
    found: bool = True
    """False: the generator looked and found no answer in the passages (the bot says so)."""
    context: ContextLineage | None = None
    """What an LLM saw of the conversation."""
    data: dict[str, Any] | None = None
    """A structured reply's object."""


def source_of(passage: Passage) -> Source:
    return Source(
        document_id=passage.document_id,
        title=passage.title,
        url=passage.url,
        snippet=passage.text[:240],
        score=passage.score,
        chunk_id=passage.chunk_id,
        document_version=passage.document_version,
    )


class GroundedGenerator:
    """The default answer generator: no model, no key, no network."""

    name = "grounded"
    prompt: Prompt | None = None
    remote = False

    def __init__(self, relevance: Relevance) -> None:
        self._relevance = relevance

    async def answer(
        self,
        question: str,
        passages: list[Passage],
        *,
        on_token: Callable[[str], None] | None = None,
        redact: bool = True,
        conversation: Conversation | None = None,
    ) -> Answer | None:
        # Nothing leaves the process here: there is nothing to redact for. The passages answer the
        # message alone (a follow-up's were found with its standalone question).
        return grounded_answer(question, passages, self._relevance)


def grounded_answer(question: str, passages: list[Passage], relevance: Relevance) -> Answer | None:
    """The best sentences of the trusted passages, or None when no passage is trusted."""
    trusted = [p for p in passages if relevance.trusted(p)][:2]
    if not trusted:
        return None
    query = set(terms(question))
    candidates: list[tuple[int, int, str, list[str]]] = []
    seen: set[str] = set()
    for rank, passage in enumerate(trusted):
        for position, sentence in enumerate(sentences(passage.text)):
            key = " ".join(sentence.lower().split())
            if key in seen:  # chunks overlap by a sentence: never say it twice
                continue
            seen.add(key)
            candidates.append((rank, position, sentence, terms(sentence)))
    if not candidates:
        return None
    # A question word found in few candidate sentences tells more than one found in all of them.
    frequency = Counter(word for *_, words in candidates for word in set(words))
    weight = {word: math.log(1 + len(candidates) / frequency[word]) for word in query if frequency[word]}
    scored = []
    for rank, position, sentence, words in candidates:
        overlap = sum(weight.get(word, 0.0) for word in set(words))
        # Favour the better passage, then matching words, then shorter sentences.
        score = overlap / (1 + 0.02 * len(words)) + (0.25 if rank == 0 else 0.0)
        scored.append((score, rank, position, sentence))
    scored.sort(key=lambda s: s[0], reverse=True)
    best = scored[0]
    chosen = [best]
    length = len(best[3])
    for candidate in scored[1:]:
        if len(chosen) == MAX_SENTENCES:
            break
        if candidate[0] < SUPPORT_RATIO * best[0] or length + len(candidate[3]) > MAX_ANSWER_CHARS:
            continue
        chosen.append(candidate)
        length += len(candidate[3])
    chosen.sort(key=lambda s: (s[1], s[2]))  # in reading order
    used: list[Passage] = []
    for rank in sorted({rank for _, rank, _, _ in chosen}):
        if trusted[rank].document_id not in {p.document_id for p in used}:
            used.append(trusted[rank])
    return Answer(text=" ".join(s[3] for s in chosen), sources=[source_of(p) for p in used])

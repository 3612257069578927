"""The grounded generator: answers with the sentences of the retrieved passages that best match
the question, cites the passages it used, and finds no answer rather than guess."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dialogue.brain.generation.prompts import Prompt
from dialogue.brain.generation.rubric import dangling_reference
from dialogue.brain.knowledge.chunking import sentences
from dialogue.brain.llm.context import Conversation
from dialogue.brain.text import terms
from dialogue.model.contracts import ContextLineage, Passage, Source

if TYPE_CHECKING:
    from dialogue.brain.generation.model_client import ModelClient

MAX_ANSWER_CHARS = 420
SUPPORT_RATIO = 0.6
"""A further sentence joins the answer when it scores at least this share of the best one."""
REPEATED_WORDS = 0.75
"""A sentence sharing this share of its words with one already said says it again."""
SEMANTIC_WEIGHT = 4.0
"""How much a sentence's closeness in meaning to the question counts beside the words they share: on the
demo's questions (`dialogue kb evaluate --end-to-end`, qa and qa_dev) the expected fact rose from 70.2% to
76.4% of answers and right documents from 83.7% to 85.1%; 3 and 6 did about as well."""
MAX_SENTENCES = 3
"""Sentences in an answer at most: the best, a second one, and a sentence one of them leans on."""


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


Similarity = Callable[[str, list[str]], list[float]]
"""The similarity in meaning of a question to each of some sentences (`dialogue.brain.nlu.embeddings.similarities`)."""


class GroundedGenerator:
    """The default answer generator: no model, no key, no network."""

    name = "grounded"
    prompt: Prompt | None = None
    remote = False
    model_client: ModelClient | None = None
    """No model: the steps around an answer fall back to theirs (extractive summary, heuristic rewrite)."""

    def __init__(self, relevance: Relevance, similarity: Similarity | None = None) -> None:
        self._relevance = relevance
        self._similarity = similarity

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
        return grounded_answer(question, passages, self._relevance, self._similarity)


@dataclass(frozen=True)
class _Sentence:
    rank: int
    """Of the passage it comes from, among the trusted ones."""
    position: int
    text: str
    words: list[str]
    before: str | None
    """The sentence before it in its passage: what a reference at its start leans on."""

    @property
    def leans(self) -> bool:
        return dangling_reference(self.text) is not None


def grounded_answer(
    question: str, passages: list[Passage], relevance: Relevance, similarity: Similarity | None = None
) -> Answer | None:
    """The best sentences of the trusted passages, or None when no passage is trusted.

    The rubric (`rubric.py`) shapes it: the sentence that answers best leads; a sentence that leans on the
    one before it ("Below that, …", "It takes effect …") brings that one along, and one whose antecedent is
    not in its passage is not said at all; a second sentence joins when it answers nearly as well. A
    sentence answers by the question's words it has and, given `similarity`, by how close it is in meaning."""
    trusted = [p for p in passages if relevance.trusted(p)][:2]
    if not trusted:
        return None
    query = set(terms(question))
    candidates: list[_Sentence] = []
    seen: set[str] = set()
    for rank, passage in enumerate(trusted):
        said = sentences(passage.text)
        for position, sentence in enumerate(said):
            key = " ".join(sentence.lower().split())
            if key in seen:  # chunks overlap by a sentence: never say it twice
                continue
            seen.add(key)
            before = said[position - 1] if position else None
            candidates.append(_Sentence(rank, position, sentence, terms(sentence), before))
    if not candidates:
        return None
    # A question word found in few candidate sentences tells more than one found in all of them.
    frequency = Counter(word for c in candidates for word in set(c.words))
    weight = {word: math.log(1 + len(candidates) / frequency[word]) for word in query if frequency[word]}

    meaning = dict.fromkeys((c.text for c in candidates), 0.0)
    if similarity is not None:
        meaning = dict(zip(meaning, similarity(question, list(meaning)), strict=True))

    def score(candidate: _Sentence) -> float:
        overlap = sum(weight.get(word, 0.0) for word in set(candidate.words))
        # Matching words (rare ones most), shorter sentences, the better passage, and the meaning.
        lexical = overlap / (1 + 0.02 * len(candidate.words)) + (0.25 if candidate.rank == 0 else 0.0)
        return lexical + SEMANTIC_WEIGHT * meaning[candidate.text]

    def unit(candidate: _Sentence) -> list[_Sentence] | None:
        """The sentence as it can be said: alone, with the sentence it leans on, or not at all."""
        if not candidate.leans:
            return [candidate]
        if candidate.before is None or dangling_reference(candidate.before) is not None:
            return None  # its antecedent is in another chunk (or leans on yet another): not said
        before = _Sentence(candidate.rank, candidate.position - 1, candidate.before, [], None)
        return [before, candidate]

    ranked = sorted(candidates, key=score, reverse=True)
    said_units = [(score(c), u) for c in ranked if (u := unit(c)) is not None]
    if not said_units:
        return None
    best_score, chosen = said_units[0]  # the sentence that answers best leads
    length = sum(len(c.text) for c in chosen)
    for candidate_score, more in said_units[1:]:  # one more, if one answers nearly as well and fits
        if candidate_score < SUPPORT_RATIO * best_score:
            break
        # Articles repeat each other ("five business days" here, "5 business days" there): say it once.
        extra = [c for c in more if not any(_says_again(c, said) for said in chosen)]
        fits = length + sum(len(c.text) for c in extra) <= MAX_ANSWER_CHARS
        if extra and fits and len(chosen) + len(extra) <= MAX_SENTENCES:
            chosen = chosen + extra
            break
    used: list[Passage] = []
    for rank in sorted({c.rank for c in chosen}):
        if trusted[rank].document_id not in {p.document_id for p in used}:
            used.append(trusted[rank])
    return Answer(text=" ".join(c.text for c in chosen), sources=[source_of(p) for p in used])


def _says_again(candidate: _Sentence, said: _Sentence) -> bool:
    """The same sentence, or one with nearly all the same words (three quarters of their words shared)."""
    if candidate.text == said.text:
        return True
    mine, theirs = set(candidate.words or terms(candidate.text)), set(said.words or terms(said.text))
    return bool(mine | theirs) and len(mine & theirs) >= REPEATED_WORDS * len(mine | theirs)

"""Retrieval evaluation: recall@1, recall@5 and MRR over a set of questions with their documents."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, model_validator

from dialogue.brain.knowledge.search import AnyIndex
from dialogue.brain.llm.followup import standalone_query
from dialogue.platform.jsonl import read_jsonl

DEPTH = 20


class Question(BaseModel):
    """One question and the documents that answer it. A multi-turn exchange gives `turns` instead: the
    user's messages, the last one to be answered (often elliptical: "and to Austria?"). No documents: no
    article answers it (an out-of-domain question), and the bot should decline it."""

    question: str = ""
    turns: list[str] = []
    document_ids: list[str]
    facts: list[str] = []
    """Phrases of the articles that answer it: an answer with one of them states the expected fact."""

    @model_validator(mode="after")
    def _one_or_the_other(self) -> Question:
        if bool(self.question) == bool(self.turns):
            raise ValueError("give `question` or `turns`")
        return self

    def query(self, *, context: bool) -> str:
        """What retrieval searches with: the last message, made standalone from the earlier ones (as a
        conversation does, `dialogue.brain.llm.followup`) when `context` is true."""
        if self.question:
            return self.question
        if not context:
            return self.turns[-1]
        previous: str | None = None
        for message in self.turns:
            previous = standalone_query(message, previous)
        assert previous is not None
        return previous


class RetrievalReport(BaseModel):
    recall_at_1: float
    recall_at_5: float
    mrr: float
    """Mean reciprocal rank of the first relevant document (0 when not in the first 20)."""
    n_questions: int


def read_questions(path: Path) -> list[Question]:
    return read_jsonl(path, Question)


def evaluate_retrieval(
    index: AnyIndex, questions: list[Question], *, context: bool = True
) -> RetrievalReport:
    """Over the questions that some document answers (out-of-domain ones have nothing to find)."""
    questions = [q for q in questions if q.document_ids]
    hits_1 = hits_5 = 0
    reciprocal = 0.0
    for question in questions:
        documents: list[str] = []
        for passage in index.search(question.query(context=context), top_k=DEPTH):
            if passage.document_id not in documents:
                documents.append(passage.document_id)
        rank = next((i + 1 for i, d in enumerate(documents) if d in question.document_ids), None)
        hits_1 += rank == 1
        hits_5 += rank is not None and rank <= 5
        reciprocal += 1 / rank if rank else 0.0
    n = max(len(questions), 1)
    return RetrievalReport(
        recall_at_1=round(hits_1 / n, 4),
        recall_at_5=round(hits_5 / n, 4),
        mrr=round(reciprocal / n, 4),
        n_questions=len(questions),
    )

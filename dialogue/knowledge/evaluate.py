"""Retrieval evaluation: recall@1, recall@5 and MRR over a set of questions with their documents."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from dialogue.jsonl import read_jsonl
from dialogue.knowledge.search import HybridIndex

DEPTH = 20


class Question(BaseModel):
    question: str
    document_ids: list[str]


class RetrievalReport(BaseModel):
    recall_at_1: float
    recall_at_5: float
    mrr: float
    """Mean reciprocal rank of the first relevant document (0 when not in the first 20)."""
    n_questions: int


def read_questions(path: Path) -> list[Question]:
    return read_jsonl(path, Question)


def evaluate_retrieval(index: HybridIndex, questions: list[Question]) -> RetrievalReport:
    hits_1 = hits_5 = 0
    reciprocal = 0.0
    for question in questions:
        documents: list[str] = []
        for passage in index.search(question.question, top_k=DEPTH):
            if passage.document_id not in documents:
                documents.append(passage.document_id)
        rank = next((i + 1 for i, d in enumerate(documents) if d in question.document_ids), None)
        hits_1 += rank == 1
        hits_5 += rank is not None and rank <= 5
        reciprocal += 1 / rank if rank else 0.0
    n = len(questions)
    return RetrievalReport(
        recall_at_1=round(hits_1 / n, 4),
        recall_at_5=round(hits_5 / n, 4),
        mrr=round(reciprocal / n, 4),
        n_questions=n,
    )

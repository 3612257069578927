"""`retrieve`: BM25 over the passages of the bot's knowledge base."""

from __future__ import annotations

from rank_bm25 import BM25Okapi
from temporalio import activity

from dialogue.bot import KnowledgeDocument
from dialogue.text import terms
from workflows.contracts import Passage, RetrieveRequest, RetrieveResult


class Bm25Index:
    """Indexes each paragraph of each document as a passage of its own."""

    def __init__(self, documents: list[KnowledgeDocument]) -> None:
        self._passages = [
            (doc, paragraph.strip())
            for doc in documents
            for paragraph in doc.text.split("\n\n")
            if paragraph.strip()
        ]
        # The title counts as part of each passage: it is often what a question names.
        corpus = [terms(f"{doc.title} {text}") for doc, text in self._passages]
        self._bm25 = BM25Okapi(corpus) if corpus else None

    def search(self, text: str, top_k: int) -> list[Passage]:
        query = terms(text)
        if self._bm25 is None or not query:
            return []
        scores = self._bm25.get_scores(query)
        ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[:top_k]
        return [
            Passage(
                document_id=self._passages[i][0].id,
                title=self._passages[i][0].title,
                url=self._passages[i][0].url,
                text=self._passages[i][1],
                score=round(float(scores[i]), 4),
            )
            for i in ranked
            if scores[i] > 0
        ]


class RetrieveActivity:
    def __init__(self, index: Bm25Index) -> None:
        self._index = index

    @activity.defn(name="retrieve")
    async def retrieve(self, request: RetrieveRequest) -> RetrieveResult:
        """The passages of the knowledge base that best match the user's text."""
        return RetrieveResult(passages=self._index.search(request.text, request.top_k))

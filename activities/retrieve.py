"""`retrieve`: hybrid search (BM25 and dense vectors, rank-fused) over the knowledge base in the SQL store."""

from __future__ import annotations

from temporalio import activity

from dialogue.knowledge.search import HybridIndex
from workflows.contracts import RetrieveRequest, RetrieveResult


class RetrieveActivity:
    def __init__(self, index: HybridIndex) -> None:
        self._index = index

    @activity.defn(name="retrieve")
    async def retrieve(self, request: RetrieveRequest) -> RetrieveResult:
        """The knowledge-base passages that best match the user's text."""
        return RetrieveResult(passages=self._index.search(request.text, request.top_k))

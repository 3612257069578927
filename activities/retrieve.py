"""`retrieve`: hybrid search (BM25 and dense vectors, rank-fused) over the knowledge base in the SQL store."""

from __future__ import annotations

from temporalio import activity

from dialogue.brain.knowledge.search import AnyIndex
from dialogue.brain.llm.followup import standalone_query
from dialogue.brain.nlu.embeddings import shared_within
from dialogue.model.contracts import RetrieveRequest, RetrieveResult


class RetrieveActivity:
    def __init__(self, index: AnyIndex) -> None:
        self._index = index

    @activity.defn(name="retrieve")
    def retrieve(self, request: RetrieveRequest) -> RetrieveResult:
        """The knowledge-base passages that best match the user's text.

        Synchronous, so the worker runs it on a thread: the index checks the store for changes, and a store
        that is slow to answer (an outage: up to the connection time-out) must not stall the event loop
        that every other conversation's workflow tasks and activities share."""
        return self.search(request)

    def search(self, request: RetrieveRequest) -> RetrieveResult:
        """`retrieve`'s work, for the steps that search on their way (understanding weighs the passages)."""
        query = request.standalone or standalone_query(request.text, request.previous)
        with shared_within(activity.info().workflow_id or ""):  # the vector `understand` made, if any
            passages = self._index.search(query, request.top_k)
        return RetrieveResult(passages=passages, query=query if query != request.text else None)

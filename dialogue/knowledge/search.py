"""Hybrid search over the knowledge base's chunks: BM25 and dense vectors, fused by reciprocal rank.

The index lives in memory and follows the store: at most every `reload_seconds` it reads
the knowledge revision (one small query) and rebuilds when documents changed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import bm25s
import numpy as np
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from dialogue.contracts import Passage
from dialogue.db import KnowledgeChunk, KnowledgeDocument
from dialogue.knowledge import store
from dialogue.nlu.embeddings import embed, embeddings_available
from dialogue.text import terms

log = logging.getLogger("dialogue.knowledge")

RRF_K = 60
"""The usual constant of reciprocal-rank fusion: damps the weight of the very first ranks."""
CANDIDATES = 30
LEXICAL_WEIGHT = 0.5
"""BM25 ranks count half as much as semantic ones: on the demo QA set (88 reworded questions) equal weights
lost 3 points of recall@1 against this; lexical matching still breaks ties and catches exact terms and codes."""
SEMANTIC_WEIGHT = 1.0


@dataclass
class _Snapshot:
    revision: int
    pairs: list[tuple[KnowledgeChunk, KnowledgeDocument]]
    bm25: bm25s.BM25 | None
    vectors: np.ndarray | None


RetrievalMode = Literal["hybrid", "lexical", "semantic"]


class HybridIndex:
    def __init__(
        self,
        engine: Engine,
        *,
        reload_seconds: float = 2.0,
        use_embeddings: bool | None = None,
        mode: RetrievalMode = "hybrid",
    ) -> None:
        """`mode` keeps one of the two rankings alone; without embeddings, only the lexical one exists."""
        self._engine = engine
        self._reload_seconds = reload_seconds
        # Lexical search never asks whether embeddings exist: asking imports torch (~290 MB per worker).
        self._use_embeddings = mode != "lexical" and (
            embeddings_available() if use_embeddings is None else use_embeddings
        )
        if mode == "semantic" and not self._use_embeddings:
            raise ValueError("semantic retrieval needs the embeddings extra")
        self._lexical_on = mode != "semantic"
        self._snapshot: _Snapshot | None = None
        self._checked_at = 0.0

    def search(self, text: str, top_k: int = 5) -> list[Passage]:
        snapshot = self._fresh()
        if not snapshot.pairs:
            return []
        lexical = self._lexical(snapshot, text) if self._lexical_on else []
        semantic = self._semantic(snapshot, text)
        fused: dict[int, float] = {}
        for weight, ranking in ((LEXICAL_WEIGHT, lexical), (SEMANTIC_WEIGHT, semantic)):
            for rank, (index, _) in enumerate(ranking):
                fused[index] = fused.get(index, 0.0) + weight / (RRF_K + rank + 1)
        lexical_scores = dict(lexical)
        semantic_scores = dict(semantic)
        best = sorted(fused, key=lambda i: fused[i], reverse=True)[:top_k]
        passages = []
        for index in best:
            chunk_row, document = snapshot.pairs[index]
            passages.append(
                Passage(
                    document_id=document.id,
                    title=document.title,
                    url=document.source if document.source and "://" in document.source else None,
                    text=chunk_row.text,
                    score=round(fused[index], 6),
                    chunk_id=chunk_row.id,
                    heading=chunk_row.heading,
                    document_version=chunk_row.document_version,
                    lexical_score=round(lexical_scores.get(index, 0.0), 4),
                    semantic_score=round(semantic_scores[index], 4) if index in semantic_scores else None,
                )
            )
        return passages

    def _lexical(self, snapshot: _Snapshot, text: str) -> list[tuple[int, float]]:
        query = terms(text)
        if snapshot.bm25 is None or not query:
            return []
        scores = snapshot.bm25.get_scores(query)
        order = np.argsort(scores)[::-1][:CANDIDATES]
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]

    def _semantic(self, snapshot: _Snapshot, text: str) -> list[tuple[int, float]]:
        if snapshot.vectors is None:
            return []
        similarities = snapshot.vectors @ embed([text])[0]
        order = np.argsort(similarities)[::-1][:CANDIDATES]
        return [(int(i), float(similarities[i])) for i in order]

    def _fresh(self) -> _Snapshot:
        now = time.monotonic()
        if self._snapshot is not None and now - self._checked_at < self._reload_seconds:
            return self._snapshot
        self._checked_at = now
        try:
            if self._snapshot is None or store.revision(self._engine) != self._snapshot.revision:
                self._snapshot = self._build()
        except SQLAlchemyError:
            if self._snapshot is None:
                raise
            # The store is unavailable: answer from the index as it was, and look again next time.
            log.warning(
                "knowledge base unreachable; searching the index of revision %s", self._snapshot.revision
            )
        return self._snapshot

    def _build(self) -> _Snapshot:
        revision, pairs = store.all_chunks(self._engine)
        bm25 = None
        if pairs:
            bm25 = bm25s.BM25()
            bm25.index([terms(store.indexed_text(c, d)) or ["∅"] for c, d in pairs], show_progress=False)
        vectors = None
        if self._use_embeddings and pairs and all(c.embedding for c, _ in pairs):
            vectors = np.vstack([np.frombuffer(c.embedding or b"", dtype=np.float32) for c, _ in pairs])
        return _Snapshot(revision, pairs, bm25, vectors)

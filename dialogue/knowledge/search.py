"""Hybrid search over the knowledge base's chunks: BM25 and dense vectors, fused by reciprocal rank.

The index lives in memory and follows the store: at most every `reload_seconds` it reads
the knowledge revision (one small query) and, when documents changed, builds the new index on a
thread of its own while searches go on with the one they have; the new one replaces it in one step
once built. No turn waits for a rebuild. With `reload_seconds` 0 (tests, evaluations) every search
sees the latest revision, built before it answers.
"""

from __future__ import annotations

import logging
import threading
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
from dialogue.metrics import KNOWLEDGE_INDEX_BUILD_SECONDS, KNOWLEDGE_INDEX_BUILT, KNOWLEDGE_INDEX_REVISION
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
        self._building: threading.Thread | None = None
        self._building_lock = threading.Lock()

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
        snapshot = self._snapshot  # this search's index, whatever a rebuild swaps in meanwhile
        now = time.monotonic()
        if snapshot is not None and now - self._checked_at < self._reload_seconds:
            return snapshot
        self._checked_at = now
        try:
            if snapshot is None:
                self._snapshot = snapshot = self._build()
            elif store.revision(self._engine) != snapshot.revision:
                if self._reload_seconds == 0:
                    self._snapshot = snapshot = self._build()
                else:
                    self._rebuild_in_background()
        except SQLAlchemyError:
            if snapshot is None:
                raise
            # The store is unavailable: answer from the index as it was, and look again next time.
            log.warning("knowledge base unreachable; searching the index of revision %s", snapshot.revision)
        return snapshot

    def _rebuild_in_background(self) -> None:
        with self._building_lock:
            if self._building is not None and self._building.is_alive():
                return  # one build at a time; the next check after it sees any later revision
            self._building = threading.Thread(target=self._rebuild, name="knowledge-index", daemon=True)
            self._building.start()

    def _rebuild(self) -> None:
        try:
            built = self._build()
        except Exception:  # the store went away mid-build, say: keep serving the index there is
            log.warning(
                "knowledge index rebuild failed; serving revision %s", self._revision(), exc_info=True
            )
            return
        self._snapshot = built  # one reference: a search under way keeps the snapshot it took

    def _revision(self) -> int | None:
        return self._snapshot.revision if self._snapshot else None

    def wait_for_rebuild(self, timeout: float | None = None) -> None:
        """Block until a background rebuild under way is done (for tools and tests)."""
        building = self._building
        if building is not None:
            building.join(timeout)

    def _build(self) -> _Snapshot:
        started = time.perf_counter()
        revision, pairs = store.all_chunks(self._engine)
        bm25 = None
        if pairs:
            bm25 = bm25s.BM25()
            bm25.index([terms(store.indexed_text(c, d)) or ["∅"] for c, d in pairs], show_progress=False)
        vectors = None
        if self._use_embeddings and pairs and all(c.embedding for c, _ in pairs):
            vectors = np.vstack([np.frombuffer(c.embedding or b"", dtype=np.float32) for c, _ in pairs])
        KNOWLEDGE_INDEX_REVISION.set(revision)
        KNOWLEDGE_INDEX_BUILT.set(time.time())
        KNOWLEDGE_INDEX_BUILD_SECONDS.set(time.perf_counter() - started)
        return _Snapshot(revision, pairs, bm25, vectors)

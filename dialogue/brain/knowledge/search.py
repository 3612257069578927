"""Hybrid search over the knowledge base's chunks: BM25 and dense vectors, fused by reciprocal rank.

Two engines (`DIALOGUE_KNOWLEDGE_INDEX`), the same fusion:
- `memory` (`MemoryIndex`): every worker holds every chunk, a BM25 index (bm25s) and the vector
  matrix in its own memory. Fastest to search; memory grows with the corpus in every worker process.
- `store` (`StoreIndex`): the lexical search runs in the SQL store (`fulltext`: SQLite FTS5 or
  PostgreSQL full-text search, written with the chunks), the vectors are a file per revision that the
  workers of a machine map and share (`vectors`), and a search reads only its results' text from the
  store. A worker holds the chunk ids, not the corpus.

Both follow the store: at most every `reload_seconds` an index reads the knowledge revision (one small
query) and, when documents changed, builds what it holds for the new revision on a thread of its own while
searches go on with the one they have; the new one replaces it in one step once built. No turn waits for a
rebuild. With `reload_seconds` 0 (tests, evaluations) every search sees the latest revision, built before
it answers. The `store` engine's lexical side is never behind: it is the store.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import bm25s
import numpy as np
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from dialogue.brain.knowledge import documents, fulltext
from dialogue.brain.knowledge.vectors import Vectors, open_or_write
from dialogue.brain.nlu.embeddings import embed, embeddings_available
from dialogue.brain.text import stems
from dialogue.model.contracts import Passage
from dialogue.platform.db import KnowledgeChunk, KnowledgeDocument
from dialogue.platform.metrics import (
    KNOWLEDGE_INDEX_BUILD_SECONDS,
    KNOWLEDGE_INDEX_BUILT,
    KNOWLEDGE_INDEX_REVISION,
)

if TYPE_CHECKING:
    from dialogue.platform.settings import Settings

log = logging.getLogger("dialogue.brain.knowledge")

RRF_K = 60
"""The usual constant of reciprocal-rank fusion: damps the weight of the very first ranks."""
CANDIDATES = 30
LEXICAL_WEIGHT = 0.5
"""BM25 ranks count half as much as semantic ones: on the demo QA set (88 reworded questions) equal weights
lost 3 points of recall@1 against this; lexical matching still breaks ties and catches exact terms and codes."""
SEMANTIC_WEIGHT = 1.0
ROUTER_DEPTH = 5
"""Passages the router weighs for a message (`dialogue.brain.nlu.routing`): as many when it is trained."""
REBUILD_REST = 4.0
"""After a background rebuild that took t seconds, the next waits at least REBUILD_REST * t: while a bulk
ingest moves the revision every few seconds, a worker spends at most a fifth of a core rebuilding (a
large corpus's rebuild takes seconds) and its index is at most about five builds behind."""


RetrievalMode = Literal["hybrid", "lexical", "semantic"]
IndexEngine = Literal["memory", "store"]
Key = TypeVar("Key", bound=Hashable)
Ranking = list[tuple[Key, float]]


class _Revisioned:
    revision: int


Snapshot = TypeVar("Snapshot", bound=_Revisioned)


class HybridIndex(Generic[Snapshot, Key]):
    """What both engines share: the fusion of the two rankings, and following the store's revision."""

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
        self._snapshot: Snapshot | None = None
        self._checked_at = 0.0
        self._rest_until = 0.0
        self._building: threading.Thread | None = None
        self._building_lock = threading.Lock()

    def search(self, text: str, top_k: int = 5) -> list[Passage]:
        snapshot = self._fresh()
        query = stems(text)
        lexical = self._lexical(snapshot, query) if self._lexical_on and query else []
        semantic = self._semantic(snapshot, text) if self._use_embeddings else []
        fused: dict[Key, float] = {}
        for weight, ranking in ((LEXICAL_WEIGHT, lexical), (SEMANTIC_WEIGHT, semantic)):
            for rank, (key, _) in enumerate(ranking):
                fused[key] = fused.get(key, 0.0) + weight / (RRF_K + rank + 1)
        # Twice as many as asked: a chunk deleted since the vectors were written drops out of the results.
        best = sorted(fused, key=lambda k: fused[k], reverse=True)[: 2 * top_k]
        lexical_scores, semantic_scores = dict(lexical), dict(semantic)
        return [
            Passage(
                document_id=document.id,
                title=document.title,
                url=document.source if document.source and "://" in document.source else None,
                text=chunk_row.text,
                score=round(fused[key], 6),
                chunk_id=chunk_row.id,
                heading=chunk_row.heading,
                document_version=chunk_row.document_version,
                lexical_score=round(lexical_scores.get(key, 0.0), 4),
                semantic_score=round(semantic_scores[key], 4) if key in semantic_scores else None,
            )
            for key, (chunk_row, document) in self._chunks(snapshot, best)[:top_k]
        ]

    def _lexical(self, snapshot: Snapshot, query: list[str]) -> Ranking[Key]:
        raise NotImplementedError

    def _semantic(self, snapshot: Snapshot, text: str) -> Ranking[Key]:
        """The nearest chunks by embedding; the query is embedded only when there are vectors to compare."""
        raise NotImplementedError

    def _chunks(
        self, snapshot: Snapshot, keys: Sequence[Key]
    ) -> list[tuple[Key, tuple[KnowledgeChunk, KnowledgeDocument]]]:
        """The chunks of `keys` with their documents, in that order (a key whose chunk is gone left out)."""
        raise NotImplementedError

    def _build(self) -> Snapshot:
        raise NotImplementedError

    def _fresh(self) -> Snapshot:
        snapshot = self._snapshot  # this search's index, whatever a rebuild swaps in meanwhile
        now = time.monotonic()
        if snapshot is not None and now - self._checked_at < self._reload_seconds:
            return snapshot
        self._checked_at = now
        try:
            if snapshot is None:
                self._snapshot = snapshot = self._built()
            elif documents.revision(self._engine) != snapshot.revision:
                if self._reload_seconds == 0:
                    self._snapshot = snapshot = self._built()
                elif now >= self._rest_until:
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
        started = time.monotonic()
        try:
            built = self._built()
        except Exception:  # the store went away mid-build, say: keep serving the index there is
            log.warning(
                "knowledge index rebuild failed; serving revision %s", self._revision(), exc_info=True
            )
            return
        self._snapshot = built  # one reference: a search under way keeps the snapshot it took
        finished = time.monotonic()
        self._rest_until = finished + REBUILD_REST * (finished - started)

    def _revision(self) -> int | None:
        return self._snapshot.revision if self._snapshot else None

    def wait_for_rebuild(self, timeout: float | None = None) -> None:
        """Block until a background rebuild under way is done (for tools and tests)."""
        building = self._building
        if building is not None:
            building.join(timeout)

    def _built(self) -> Snapshot:
        started = time.perf_counter()
        snapshot = self._build()
        KNOWLEDGE_INDEX_REVISION.set(snapshot.revision)
        KNOWLEDGE_INDEX_BUILT.set(time.time())
        KNOWLEDGE_INDEX_BUILD_SECONDS.set(time.perf_counter() - started)
        return snapshot


@dataclass
class _InMemory(_Revisioned):
    revision: int
    pairs: list[tuple[KnowledgeChunk, KnowledgeDocument]]
    bm25: bm25s.BM25 | None
    vectors: np.ndarray | None


class MemoryIndex(HybridIndex[_InMemory, int]):
    """The `memory` engine: the corpus, its BM25 index and its vectors in this process (keys: positions)."""

    def _lexical(self, snapshot: _InMemory, query: list[str]) -> Ranking[int]:
        if snapshot.bm25 is None:
            return []
        scores = snapshot.bm25.get_scores(query)
        order = np.argsort(scores)[::-1][:CANDIDATES]
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]

    def _semantic(self, snapshot: _InMemory, text: str) -> Ranking[int]:
        if snapshot.vectors is None:
            return []
        similarities = snapshot.vectors @ embed([text])[0]
        order = np.argsort(similarities)[::-1][:CANDIDATES]
        return [(int(i), float(similarities[i])) for i in order]

    def _chunks(
        self, snapshot: _InMemory, keys: Sequence[int]
    ) -> list[tuple[int, tuple[KnowledgeChunk, KnowledgeDocument]]]:
        return [(key, snapshot.pairs[key]) for key in keys]

    def _build(self) -> _InMemory:
        revision, pairs = documents.all_chunks(self._engine)
        bm25 = None
        if pairs:
            bm25 = bm25s.BM25()
            bm25.index(
                [stems(documents.indexed_text(d.title, c.heading, c.text)) or ["∅"] for c, d in pairs],
                show_progress=False,
            )
        vectors = None
        if self._use_embeddings and pairs and all(c.embedding for c, _ in pairs):
            vectors = np.vstack([np.frombuffer(c.embedding or b"", dtype=np.float32) for c, _ in pairs])
        return _InMemory(revision, pairs, bm25, vectors)


@dataclass
class _OnDisk(_Revisioned):
    revision: int
    vectors: Vectors


class StoreIndex(HybridIndex[_OnDisk, str]):
    """The `store` engine: lexical search in the store, vectors in a shared file under `folder` (keys:
    chunk ids). Searching needs the store; `MemoryIndex` keeps answering from memory while it is down."""

    def __init__(
        self,
        engine: Engine,
        folder: Path,
        *,
        reload_seconds: float = 2.0,
        use_embeddings: bool | None = None,
        mode: RetrievalMode = "hybrid",
    ) -> None:
        super().__init__(engine, reload_seconds=reload_seconds, use_embeddings=use_embeddings, mode=mode)
        # A folder per store: revision numbers of another database (a data folder pointed elsewhere) never
        # name this one's vectors.
        store_key = hashlib.sha256(engine.url.render_as_string(hide_password=True).encode()).hexdigest()
        self._folder = folder / store_key[:16]

    def _lexical(self, snapshot: _OnDisk, query: list[str]) -> Ranking[str]:
        return fulltext.search(self._engine, query, CANDIDATES)

    def _semantic(self, snapshot: _OnDisk, text: str) -> Ranking[str]:
        if not snapshot.vectors.chunk_ids:
            return []
        return snapshot.vectors.nearest(embed([text])[0], CANDIDATES)

    def _chunks(
        self, snapshot: _OnDisk, keys: Sequence[str]
    ) -> list[tuple[str, tuple[KnowledgeChunk, KnowledgeDocument]]]:
        if not keys:
            return []
        with Session(self._engine) as session:
            rows = session.exec(
                select(KnowledgeChunk, KnowledgeDocument)
                .join(KnowledgeDocument, col(KnowledgeDocument.id) == col(KnowledgeChunk.document_id))
                .where(col(KnowledgeChunk.id).in_(list(keys)))
                .options(defer(KnowledgeChunk.embedding), defer(KnowledgeDocument.text))  # type: ignore[arg-type]
            ).all()
        found = {chunk_row.id: (chunk_row, document) for chunk_row, document in rows}
        return [(key, found[key]) for key in keys if key in found]  # a chunk deleted since the vectors went

    def _build(self) -> _OnDisk:
        revision = documents.revision(self._engine)
        if not self._use_embeddings:
            return _OnDisk(revision, Vectors(revision, [], np.zeros((0, 0), dtype=np.float32)))
        return _OnDisk(revision, open_or_write(self._engine, self._folder, revision))


AnyIndex = HybridIndex[Any, Any]


def open_index(
    engine: Engine,
    kind: IndexEngine,
    *,
    folder: Path,
    reload_seconds: float = 2.0,
    mode: RetrievalMode = "hybrid",
) -> AnyIndex:
    """The index of engine `kind`; `folder` holds the `store` engine's vector files."""
    if kind == "store":
        return StoreIndex(engine, folder, reload_seconds=reload_seconds, mode=mode)
    return MemoryIndex(engine, reload_seconds=reload_seconds, mode=mode)


def router_search(engine: Engine, settings: Settings) -> Callable[[str], list[Passage]] | None:
    """The search a bot's router is calibrated with (`dialogue.brain.nlu.routing`): the knowledge base in the
    store as it is now, as the workers search it; None when it holds no document."""
    if documents.list_documents(engine, limit=1, offset=0)[1] == 0:
        return None
    index = open_index(
        engine,
        settings.knowledge_index,
        folder=settings.resolved_knowledge_index_dir,
        reload_seconds=0,
        mode=settings.retrieval,
    )
    return lambda text: index.search(text, ROUTER_DEPTH)

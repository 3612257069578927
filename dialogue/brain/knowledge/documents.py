"""Documents and chunks in the SQL store: ingest (idempotent, versioned), delete, list."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
from sqlalchemy import delete as sql_delete
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from dialogue.brain.knowledge import fulltext
from dialogue.brain.knowledge.chunking import CHUNKER_VERSION, Chunk, chunk
from dialogue.brain.knowledge.parsing import ContentType, ParsedDocument, content_type_of, parse
from dialogue.brain.nlu.embeddings import embed_many, embeddings_available
from dialogue.platform.db import KnowledgeChunk, KnowledgeDocument, KnowledgeRevision

# The columns' sizes: PostgreSQL refuses longer values where SQLite would keep them.
MAX_DOCUMENT_ID = 200
MAX_TITLE = 500
MAX_SOURCE = 1000
MAX_HEADING = 1000


@dataclass
class Ingested:
    document_id: str
    version: int
    chunks: int
    changed: bool
    """False when the same content was already stored: nothing was written."""


def document_id_for(path: Path) -> str:
    # A file name may run to 255 bytes; two that agree in their first 200 are caught as a clash.
    return re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-")[:MAX_DOCUMENT_ID] or "document"


@dataclass(frozen=True)
class DocumentInput:
    """A document to store: what `ingest_batch` takes."""

    document_id: str
    text: str
    content_type: ContentType
    source: str | None = None
    title: str | None = None

    @property
    def content_hash(self) -> str:
        # The chunker's version too: the same text ingested after the chunker changed is chunked anew.
        said = f"{CHUNKER_VERSION}\n{self.content_type}\n{self.title or ''}\n{self.text}"
        return hashlib.sha256(said.encode()).hexdigest()


@dataclass(frozen=True)
class Skipped:
    """A file an ingest left out, and why (unreadable, too large, not UTF-8, a clashing id)."""

    path: Path
    reason: str


MAX_FILE_BYTES = 10 * 1024 * 1024
"""A knowledge file larger than this is skipped: a document that size is a data dump, not an answer."""


def ingest(
    engine: Engine,
    *,
    document_id: str,
    text: str,
    content_type: ContentType,
    source: str | None = None,
    title: str | None = None,
    with_embeddings: bool | None = None,
) -> Ingested:
    """Store a document and its chunks; a changed document gets a new version that replaces its chunks."""
    document = DocumentInput(document_id, text, content_type, source, title)
    return ingest_batch(engine, [document], with_embeddings=with_embeddings)[0]


def ingest_batch(
    engine: Engine, documents: Sequence[DocumentInput], *, with_embeddings: bool | None = None
) -> list[Ingested]:
    """Store documents (distinct ids) and their chunks in one transaction: their chunks embedded in one
    go, one revision for all. Each document is either wholly its new version or wholly its old one,
    also when the process is stopped in the middle (the transaction is not committed)."""
    hashes = {d.document_id: d.content_hash for d in documents}
    with Session(engine) as session:
        # FOR UPDATE (PostgreSQL): two updates of one document take turns instead of both making version n+1.
        found = session.exec(
            select(KnowledgeDocument).where(col(KnowledgeDocument.id).in_(list(hashes))).with_for_update()
        ).all()
        existing = {row.id: row for row in found}
        results: dict[str, Ingested] = {}
        changed: list[tuple[DocumentInput, ParsedDocument, list[Chunk]]] = []
        for document in documents:
            old = existing.get(document.document_id)
            if old is not None and old.content_hash == hashes[document.document_id]:
                results[document.document_id] = Ingested(
                    document.document_id, old.version, old.chunk_count, changed=False
                )
                continue
            fallback = document.title or document.document_id.replace("-", " ").capitalize()
            parsed = parse(document.text, document.content_type, fallback_title=fallback)
            changed.append((document, parsed, chunk(parsed)))
        if not changed:
            return [results[d.document_id] for d in documents]
        now = datetime.now(UTC)
        rows: list[tuple[KnowledgeDocument, list[Chunk]]] = []
        for document, parsed, pieces in changed:
            old = existing.get(document.document_id)
            row = old or KnowledgeDocument(
                id=document.document_id,
                title="",
                content_type=document.content_type,
                content_hash="",
                text="",
                created_at=now,
                updated_at=now,
            )
            row.title = (document.title or parsed.title)[:MAX_TITLE]
            row.source = document.source[:MAX_SOURCE] if document.source else None
            row.content_type = document.content_type
            row.content_hash = hashes[document.document_id]
            row.version = old.version + 1 if old else 1
            row.text = document.text
            row.updated_at = now
            rows.append((row, pieces))
            results[document.document_id] = Ingested(
                document.document_id, row.version, len(pieces), changed=True
            )
        use_embeddings = embeddings_available() if with_embeddings is None else with_embeddings
        _replace_chunks(session, rows, use_embeddings)
        _bump_revision(session)
        session.commit()
    return [results[d.document_id] for d in documents]


def reindex(
    engine: Engine, *, batch_size: int = 64, on_batch: Callable[[int], None] | None = None
) -> tuple[int, int]:
    """Chunk and embed every stored document again from its stored text (after a change of the chunker
    or the model), `batch_size` documents a transaction, each keeping its version; the revision moves
    with each batch, so the workers rebuild their index. Returns the documents and chunks written."""
    documents = chunks = 0
    use_embeddings = embeddings_available()
    while True:
        with Session(engine) as session:
            found = session.exec(
                select(KnowledgeDocument)
                .order_by(col(KnowledgeDocument.id))
                .offset(documents)
                .limit(batch_size)
            ).all()
            if not found:
                return documents, chunks
            rows = [
                (row, chunk(parse(row.text, cast(ContentType, row.content_type), fallback_title=row.title)))
                for row in found
            ]
            _replace_chunks(session, rows, use_embeddings)
            _bump_revision(session)
            session.commit()
        documents += len(rows)
        chunks += sum(len(pieces) for _, pieces in rows)
        if on_batch is not None:
            on_batch(len(rows))


def _replace_chunks(
    session: Session, rows: Sequence[tuple[KnowledgeDocument, list[Chunk]]], use_embeddings: bool
) -> None:
    """Each document's chunks, in place of the ones it had: embedded together, in the session."""
    texts = [indexed_text(row.title, piece.heading, piece.text) for row, pieces in rows for piece in pieces]
    vectors = embed_many(texts) if use_embeddings and texts else None
    document_ids = [r.id for r, _ in rows]
    removed = session.execute(
        sql_delete(KnowledgeChunk).where(col(KnowledgeChunk.document_id).in_(document_ids))
    )
    had_chunks = removed.rowcount > 0  # type: ignore[attr-defined]
    at = 0
    searchable: list[tuple[str, str, str]] = []
    for row, pieces in rows:
        row.chunk_count = len(pieces)
        session.add(row)
        for position, piece in enumerate(pieces):
            # The content hash too: a document deleted and added again restarts at version 1,
            # and lineage must not mistake the new text for the old.
            chunk_id = f"{row.id}:{row.version}:{row.content_hash[:8]}:{position}"
            searchable.append((chunk_id, row.id, texts[at + position]))
            session.add(
                KnowledgeChunk(
                    id=chunk_id,
                    document_id=row.id,
                    document_version=row.version,
                    position=position,
                    heading=piece.heading[:MAX_HEADING],
                    text=piece.text,
                    embedding=vectors[at + position].astype(np.float32).tobytes()
                    if vectors is not None
                    else None,
                )
            )
        at += len(pieces)
    fulltext.replace(session, document_ids if had_chunks else [], searchable)


def read_document(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> DocumentInput:
    """The document in a knowledge file; `SkippedFile` raised when it cannot be one."""
    content_type = content_type_of(path)
    if content_type is None:
        raise SkippedFile(path, "not a Markdown, text or HTML file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SkippedFile(path, f"{size:,} bytes, more than the {max_bytes:,} a document may have")
        raw = path.read_bytes()
    except OSError as err:
        raise SkippedFile(path, f"unreadable: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SkippedFile(path, f"not UTF-8 (byte {err.start})") from None
    return DocumentInput(document_id_for(path), text, content_type, source=str(path))


class SkippedFile(Exception):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.skipped = Skipped(path, reason)


def ingest_path(engine: Engine, path: Path) -> Ingested:
    try:
        document = read_document(path)
    except SkippedFile as err:
        raise ValueError(str(err)) from None
    return ingest_batch(engine, [document])[0]


def ingest_files(
    engine: Engine,
    files: Sequence[Path],
    *,
    batch_size: int = 64,
    max_bytes: int = MAX_FILE_BYTES,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Ingested], list[Skipped]]:
    """Ingest many files, `batch_size` documents a transaction: what was stored, and what was skipped
    (with its path and why). `on_batch(n)` is told of each batch of `n` files done. A file whose id
    another file has already is skipped too. Stopped in the middle (Ctrl-C), the batches committed stay
    and the batch under way is left out whole."""
    stored: list[Ingested] = []
    skipped: list[Skipped] = []
    seen: dict[str, Path] = {}
    for start in range(0, len(files), batch_size):
        batch: list[DocumentInput] = []
        for path in files[start : start + batch_size]:
            try:
                document = read_document(path, max_bytes=max_bytes)
            except SkippedFile as err:
                skipped.append(err.skipped)
                continue
            first = seen.setdefault(document.document_id, path)
            if first != path:
                skipped.append(Skipped(path, f"its id {document.document_id!r} is {first}'s already"))
                continue
            batch.append(document)
        if batch:
            stored += ingest_batch(engine, batch)
        if on_batch is not None:
            on_batch(len(files[start : start + batch_size]))
    return stored, skipped


def knowledge_files(paths: Sequence[Path], *, clashes_skipped: bool = False) -> list[Path]:
    """The ingestible files among `paths`, folders searched recursively, in a stable order.

    Raises ValueError when two files would get the same document id (`faq/returns.md`
    and `legal/returns.html`): one would silently replace the other on every ingest. With
    `clashes_skipped` they are all kept: `ingest_files` reports and skips the second.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and content_type_of(p))
        elif content_type_of(path):
            files.append(path)
    seen: dict[str, Path] = {}
    for path in files:
        other = seen.setdefault(document_id_for(path), path)
        if other != path and not clashes_skipped:
            raise ValueError(
                f"{other} and {path} would both be document {document_id_for(path)!r}; rename one"
            )
    return files


def delete(engine: Engine, document_id: str) -> bool:
    with Session(engine) as session:
        document = session.get(KnowledgeDocument, document_id)
        if document is None:
            return False
        session.execute(sql_delete(KnowledgeChunk).where(col(KnowledgeChunk.document_id) == document_id))
        fulltext.replace(session, [document_id], [])
        session.delete(document)
        _bump_revision(session)
        session.commit()
        return True


def get(engine: Engine, document_id: str) -> KnowledgeDocument | None:
    with Session(engine) as session:
        return session.get(KnowledgeDocument, document_id)


def list_documents(engine: Engine, *, limit: int, offset: int) -> tuple[Sequence[KnowledgeDocument], int]:
    with Session(engine) as session:
        rows = session.exec(
            select(KnowledgeDocument).order_by(col(KnowledgeDocument.id)).offset(offset).limit(limit)
        )
        total = session.exec(select(func.count()).select_from(KnowledgeDocument)).one()
        return rows.all(), total


def revision(engine: Engine) -> int:
    with Session(engine) as session:
        row = session.get(KnowledgeRevision, 1)
        return row.revision if row else 0


def all_chunks(engine: Engine) -> tuple[int, list[tuple[KnowledgeChunk, KnowledgeDocument]]]:
    """Every chunk with its document, and the revision they belong to (read in one transaction)."""
    with Session(engine) as session:
        row = session.get(KnowledgeRevision, 1)
        pairs = session.exec(
            select(KnowledgeChunk, KnowledgeDocument)
            .join(KnowledgeDocument, col(KnowledgeDocument.id) == col(KnowledgeChunk.document_id))
            .order_by(col(KnowledgeChunk.document_id), col(KnowledgeChunk.position))
        ).all()
        return (row.revision if row else 0), [(c, d) for c, d in pairs]


def indexed_text(title: str, heading: str, text: str) -> str:
    """What a chunk is searched and embedded as: the title and heading say what it is about even when its
    text does not repeat them."""
    return " ".join(part for part in (title, heading, text) if part)


def _bump_revision(session: Session) -> None:
    # One atomic UPDATE, so two writers never both move the revision to the same number.
    bumped = session.execute(
        update(KnowledgeRevision)
        .where(col(KnowledgeRevision.id) == 1)
        .values(revision=col(KnowledgeRevision.revision) + 1)
    )
    if bumped.rowcount == 0:  # type: ignore[attr-defined]
        session.add(KnowledgeRevision(id=1, revision=1))

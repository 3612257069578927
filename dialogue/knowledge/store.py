"""Documents and chunks in the SQL store: ingest (idempotent, versioned), delete, list."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import delete as sql_delete
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from dialogue.db import KnowledgeChunk, KnowledgeDocument, KnowledgeRevision
from dialogue.knowledge.chunking import chunk
from dialogue.knowledge.parsing import ContentType, content_type_of, parse
from dialogue.nlu.embeddings import embed, embeddings_available

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
    content_hash = hashlib.sha256(f"{content_type}\n{title or ''}\n{text}".encode()).hexdigest()
    with Session(engine) as session:
        # FOR UPDATE (PostgreSQL): two updates of one document take turns instead of both making version n+1.
        existing = session.get(KnowledgeDocument, document_id, with_for_update=True)
        if existing is not None and existing.content_hash == content_hash:
            return Ingested(document_id, existing.version, existing.chunk_count, changed=False)
        parsed = parse(text, content_type, fallback_title=title or document_id.replace("-", " ").capitalize())
        pieces = chunk(parsed)
        use_embeddings = embeddings_available() if with_embeddings is None else with_embeddings
        vectors = (
            embed([_indexed_text(parsed.title, c.heading, c.text) for c in pieces])
            if use_embeddings and pieces
            else None
        )
        now = datetime.now(UTC)
        version = existing.version + 1 if existing else 1
        document = existing or KnowledgeDocument(
            id=document_id,
            title="",
            content_type=content_type,
            content_hash="",
            text="",
            created_at=now,
            updated_at=now,
        )
        document.title = (title or parsed.title)[:MAX_TITLE]
        document.source = source[:MAX_SOURCE] if source else None
        document.content_type = content_type
        document.content_hash = content_hash
        document.version = version
        document.text = text
        document.chunk_count = len(pieces)
        document.updated_at = now
        session.add(document)
        session.execute(sql_delete(KnowledgeChunk).where(col(KnowledgeChunk.document_id) == document_id))
        for position, piece in enumerate(pieces):
            session.add(
                KnowledgeChunk(
                    # The content hash too: a document deleted and added again restarts at version 1,
                    # and lineage must not mistake the new text for the old.
                    id=f"{document_id}:{version}:{content_hash[:8]}:{position}",
                    document_id=document_id,
                    document_version=version,
                    position=position,
                    heading=piece.heading[:MAX_HEADING],
                    text=piece.text,
                    embedding=vectors[position].astype(np.float32).tobytes() if vectors is not None else None,
                )
            )
        _bump_revision(session)
        session.commit()
        return Ingested(document_id, version, len(pieces), changed=True)


def ingest_path(engine: Engine, path: Path) -> Ingested:
    content_type = content_type_of(path)
    if content_type is None:
        raise ValueError(f"{path}: not a Markdown, text or HTML file")
    return ingest(
        engine,
        document_id=document_id_for(path),
        text=path.read_text(encoding="utf-8"),
        content_type=content_type,
        source=str(path),
    )


def knowledge_files(paths: Sequence[Path]) -> list[Path]:
    """The ingestible files among `paths`, folders searched recursively, in a stable order.

    Raises ValueError when two files would get the same document id (`faq/returns.md`
    and `legal/returns.html`): one would silently replace the other on every ingest.
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
        if other != path:
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


def _indexed_text(title: str, heading: str, text: str) -> str:
    # The title and heading say what a chunk is about even when its text does not repeat them.
    return " ".join(part for part in (title, heading, text) if part)


def indexed_text(chunk_row: KnowledgeChunk, document: KnowledgeDocument) -> str:
    return _indexed_text(document.title, chunk_row.heading, chunk_row.text)


def _bump_revision(session: Session) -> None:
    # One atomic UPDATE, so two writers never both move the revision to the same number.
    bumped = session.execute(
        update(KnowledgeRevision)
        .where(col(KnowledgeRevision.id) == 1)
        .values(revision=col(KnowledgeRevision.revision) + 1)
    )
    if bumped.rowcount == 0:  # type: ignore[attr-defined]
        session.add(KnowledgeRevision(id=1, revision=1))

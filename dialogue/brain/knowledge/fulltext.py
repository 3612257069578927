"""The lexical index kept in the SQL store itself: SQLite's FTS5, or PostgreSQL's full-text search.

One row per chunk: its id, its document's id, and its terms (`dialogue.brain.text.stems` of the chunk's
indexed text, joined by spaces: the stems the in-memory BM25 indexes, so both dialects only need to split
on spaces; migration 0004 wrote them again when they became stems). It is written in the transaction that writes the chunks (ingest, reindex, delete), so it is
never behind them, and a worker searching it holds none of the corpus. Not one of the models' tables:
FTS5 makes a virtual table, which SQLAlchemy cannot describe; migration 0003 creates it.

SQLite ranks by FTS5's BM25; PostgreSQL by `ts_rank` (term frequency, no inverse document frequency),
which is why the two engines' lexical rankings differ (measured in docs/knowledge.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from dialogue.brain.text import stems

TABLE = "knowledge_fts"
_PLAIN = re.compile(r"[a-z0-9]+")


def create(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # unicode61 lower-cases and splits on what is not a letter or digit: the terms are lower-case words.
        connection.execute(
            text(f"CREATE VIRTUAL TABLE {TABLE} USING fts5(chunk_id UNINDEXED, document_id UNINDEXED, terms)")
        )
        return
    connection.execute(
        text(
            f"CREATE TABLE {TABLE} (chunk_id VARCHAR(300) PRIMARY KEY, document_id VARCHAR(200) NOT NULL,"
            " terms TEXT NOT NULL)"
        )
    )
    connection.execute(text(f"CREATE INDEX ix_{TABLE}_document_id ON {TABLE} (document_id)"))
    connection.execute(
        text(f"CREATE INDEX ix_{TABLE}_terms ON {TABLE} USING gin (to_tsvector('simple', terms))")
    )


def drop(connection: Connection) -> None:
    connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))


def indexed_terms(indexed_text: str) -> str:
    return " ".join(stems(indexed_text))


PAGE = 2000


def refill(connection: Connection) -> None:
    """Every chunk's row written again from the stored chunks (with their document's title), a page at a
    time: a large store is not read into memory."""
    from dialogue.brain.knowledge.documents import indexed_text

    connection.execute(text(f"DELETE FROM {TABLE}"))
    after = ""
    while True:
        page = connection.execute(
            text(
                "SELECT c.id, c.document_id, d.title, c.heading, c.text FROM knowledge_chunk c"
                " JOIN knowledge_document d ON d.id = c.document_id WHERE c.id > :after ORDER BY c.id LIMIT :n"
            ),
            {"after": after, "n": PAGE},
        ).all()
        if not page:
            return
        replace(
            connection,
            [],
            [
                (chunk_id, document_id, indexed_text(title, heading, body))
                for chunk_id, document_id, title, heading, body in page
            ],
        )
        after = page[-1][0]


def replace(
    connection: Connection | Session,
    document_ids: Sequence[str],
    chunks: Iterable[tuple[str, str, str]],
) -> None:
    """The documents' rows, replaced by `chunks` (chunk id, document id, indexed text)."""
    if document_ids:
        # FTS5 scans for an unindexed column; one scan per batch of documents, only when some were stored.
        connection.execute(
            text(f"DELETE FROM {TABLE} WHERE document_id IN :ids").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": list(document_ids)},
        )
    rows = [
        {"chunk_id": chunk_id, "document_id": document_id, "terms": indexed_terms(body)}
        for chunk_id, document_id, body in chunks
    ]
    if rows:
        connection.execute(
            text(
                f"INSERT INTO {TABLE} (chunk_id, document_id, terms) VALUES (:chunk_id, :document_id, :terms)"
            ),
            rows,
        )


def search(engine: Engine, query: Sequence[str], limit: int) -> list[tuple[str, float]]:
    """The chunks that share a term with `query` (stems as `dialogue.brain.text.stems` gives them), best first,
    with their score (higher is better)."""
    words = sorted({part for term in query for part in _PLAIN.findall(term)})
    if not words:
        return []
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            rows = connection.execute(
                text(
                    f"SELECT chunk_id, -bm25({TABLE}) FROM {TABLE} WHERE {TABLE} MATCH :query"
                    f" ORDER BY bm25({TABLE}) LIMIT :limit"
                ),
                {"query": " OR ".join(f'"{word}"' for word in words), "limit": limit},
            )
        else:
            rows = connection.execute(
                text(
                    f"SELECT chunk_id, ts_rank(to_tsvector('simple', terms), query) AS score"
                    f" FROM {TABLE}, to_tsquery('simple', :query) AS query"
                    " WHERE to_tsvector('simple', terms) @@ query ORDER BY score DESC LIMIT :limit"
                ),
                {"query": " | ".join(words), "limit": limit},
            )
        return [(str(chunk_id), float(score)) for chunk_id, score in rows]

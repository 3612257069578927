"""The knowledge base's lexical index in the store (`knowledge_fts`: SQLite FTS5, PostgreSQL full-text).

Filled from the chunks already stored, so a store upgraded to this revision can be searched by the
`store` index engine at once. Not a table of the models (see `dialogue.knowledge.fulltext`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dialogue.knowledge import fulltext, store

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

PAGE = 2000


def upgrade() -> None:
    connection = op.get_bind()
    fulltext.create(connection)
    # The chunks with their document's title, a page at a time: a large store is not read into memory.
    after = ""
    while True:
        page = connection.execute(
            sa.text(
                "SELECT c.id, c.document_id, d.title, c.heading, c.text FROM knowledge_chunk c"
                " JOIN knowledge_document d ON d.id = c.document_id WHERE c.id > :after ORDER BY c.id LIMIT :n"
            ),
            {"after": after, "n": PAGE},
        ).all()
        if not page:
            return
        fulltext.replace(
            connection,
            [],
            [
                (chunk_id, document_id, store.indexed_text(title, heading, body))
                for chunk_id, document_id, title, heading, body in page
            ],
        )
        after = page[-1][0]


def downgrade() -> None:
    fulltext.drop(op.get_bind())

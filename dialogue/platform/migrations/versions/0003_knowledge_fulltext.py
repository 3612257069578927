"""The knowledge base's lexical index in the store (`knowledge_fts`: SQLite FTS5, PostgreSQL full-text).

Filled from the chunks already stored, so a store upgraded to this revision can be searched by the
`store` index engine at once. Not a table of the models (see `dialogue.brain.knowledge.fulltext`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

from dialogue.brain.knowledge import fulltext

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    connection = op.get_bind()
    fulltext.create(connection)
    fulltext.refill(connection)


def downgrade() -> None:
    fulltext.drop(op.get_bind())

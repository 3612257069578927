"""The knowledge base's full-text rows written again as stems (`dialogue.brain.text.stems`, Snowball), the terms the
lexical search now indexes and searches with on both sides; before, they were the words.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from dialogue.brain.knowledge import fulltext

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    fulltext.refill(op.get_bind())


def downgrade() -> None:
    """The rows stay stems: a search by words would find fewer of them, never a wrong one."""

"""End users' memory across conversations (`memory_item`) and their consent to it (`memory_consent`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "memory_item",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("user", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("conversation_id", sa.String(length=200), nullable=True),
        sa.Column("turn_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "user", "kind"),
    )
    op.create_index("ix_memory_item_user", "memory_item", ["tenant", "user"])
    op.create_index("ix_memory_item_updated_at", "memory_item", ["updated_at"])
    op.create_table(
        "memory_consent",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("user", sa.String(length=128), nullable=False),
        sa.Column("consented", sa.Boolean(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "user"),
    )


def downgrade() -> None:
    op.drop_table("memory_consent")
    op.drop_index("ix_memory_item_updated_at", table_name="memory_item")
    op.drop_index("ix_memory_item_user", table_name="memory_item")
    op.drop_table("memory_item")

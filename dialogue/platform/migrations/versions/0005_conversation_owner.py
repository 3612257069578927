"""The end user each conversation belongs to (`conversation_owner`), when it has one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "conversation_owner",
        sa.Column("conversation_id", sa.String(length=200), nullable=False),
        sa.Column("user", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id"),
    )
    op.create_index("ix_conversation_owner_user", "conversation_owner", ["user"])


def downgrade() -> None:
    op.drop_index("ix_conversation_owner_user", table_name="conversation_owner")
    op.drop_table("conversation_owner")

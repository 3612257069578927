"""Messaging platforms: what was delivered to them and the dead letters (`channel_delivery`), and the
conversation each of their threads is holding (`channel_thread`).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "channel_delivery",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("conversation_id", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("platform_id", sa.String(length=200), nullable=True),
        sa.Column("delivery", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_channel_delivery_tenant", "channel_delivery", ["tenant"])
    op.create_index("ix_channel_delivery_status", "channel_delivery", ["status"])
    op.create_index("ix_channel_delivery_updated_at", "channel_delivery", ["updated_at"])
    op.create_table(
        "channel_thread",
        sa.Column("thread", sa.String(length=200), nullable=False),
        sa.Column("conversation_id", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("thread"),
    )


def downgrade() -> None:
    op.drop_table("channel_thread")
    op.drop_index("ix_channel_delivery_updated_at", table_name="channel_delivery")
    op.drop_index("ix_channel_delivery_status", table_name="channel_delivery")
    op.drop_index("ix_channel_delivery_tenant", table_name="channel_delivery")
    op.drop_table("channel_delivery")

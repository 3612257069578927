"""Published bot versions and their releases (`bot_version`, `bot_release`), and what the numbers per
version count (`bot_turn`, `satisfaction`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "bot_version",
        sa.Column("bot", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=True),
        sa.Column("archive", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("bot", "version"),
    )
    op.create_table(
        "bot_release",
        sa.Column("bot", sa.String(length=100), nullable=False),
        sa.Column("stable", sa.String(length=64), nullable=False),
        sa.Column("canary", sa.String(length=64), nullable=True),
        sa.Column("canary_percent", sa.Float(), nullable=False),
        sa.Column("move_running", sa.Boolean(), nullable=False),
        sa.Column("previous", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("bot"),
    )
    op.create_table(
        "bot_turn",
        sa.Column("conversation_id", sa.String(length=200), nullable=False),
        sa.Column("turn_id", sa.String(length=200), nullable=False),
        sa.Column("bot", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("degraded", sa.Boolean(), nullable=False),
        sa.Column("fallback", sa.Boolean(), nullable=False),
        sa.Column("out_of_scope", sa.Boolean(), nullable=False),
        sa.Column("handoff", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("conversation_id", "turn_id"),
    )
    op.create_index("ix_bot_turn_bot_version_at", "bot_turn", ["bot", "version", "at"])
    op.create_table(
        "satisfaction",
        sa.Column("conversation_id", sa.String(length=200), nullable=False),
        sa.Column("bot", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("comment", sa.String(), nullable=True),
        sa.Column("author", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id"),
    )
    op.create_index("ix_satisfaction_bot", "satisfaction", ["bot"])


def downgrade() -> None:
    op.drop_index("ix_satisfaction_bot", table_name="satisfaction")
    op.drop_table("satisfaction")
    op.drop_index("ix_bot_turn_bot_version_at", table_name="bot_turn")
    op.drop_table("bot_turn")
    op.drop_table("bot_release")
    op.drop_table("bot_version")

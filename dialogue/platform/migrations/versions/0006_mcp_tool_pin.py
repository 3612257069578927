"""What each MCP server's tools looked like when a bot first listed them (`mcp_tool_pin`).

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "mcp_tool_pin",
        sa.Column("bot", sa.String(length=200), nullable=False),
        sa.Column("server", sa.String(length=32), nullable=False),
        sa.Column("tool", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("bot", "server", "tool"),
    )


def downgrade() -> None:
    op.drop_table("mcp_tool_pin")

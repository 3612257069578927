"""The demo's shop system, which its agent tools act on: returns and delivery-address changes, kept in a
SQLite file of their own (`data_dir/northwind-shop.sqlite`), as a real shop's order system would be
another service than the chatbot's store.

Each action is keyed by the tool call's idempotency key: a call retried after a worker died in the
middle presents the same key and gets the first call's result back, so the effect happens once.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SHOP_FILE = "northwind-shop.sqlite"
LATENCY_VARIABLE = "NORTHWIND_SHOP_LATENCY_SECONDS"
"""How long the shop takes to answer after it acted (default none): a real service's round trip, during
which the worker that called it can die. The fault tests set it to kill a worker at that moment."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS shop_action (
    idempotency_key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    order_id TEXT NOT NULL,
    reference TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""


class Shop:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / SHOP_FILE

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10)
        connection.execute(_SCHEMA)
        return connection

    def act(self, kind: str, idempotency_key: str, order_id: str, detail: str) -> dict[str, Any]:
        """Do the action once per key; the same key again returns what the first call did."""
        reference = f"{kind[:2].upper()}-{secrets.token_hex(4).upper()}"
        with closing(self._connect()) as connection, connection:
            connection.execute(
                "INSERT OR IGNORE INTO shop_action VALUES (?, ?, ?, ?, ?, ?)",
                (idempotency_key, kind, order_id, reference, detail, datetime.now(UTC).isoformat()),
            )
            row = connection.execute(
                "SELECT kind, order_id, reference, detail, created_at FROM shop_action WHERE idempotency_key = ?",
                (idempotency_key,),
            ).fetchone()
        time.sleep(float(os.environ.get(LATENCY_VARIABLE, "0")))
        kind, order_id, reference, detail, created_at = row
        return {
            "kind": kind,
            "order_id": order_id,
            "reference": reference,
            "detail": detail,
            "at": created_at,
        }

    def actions(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every action done, oldest first (what the tests count)."""
        if not self.path.exists():
            return []
        with closing(self._connect()) as connection:
            rows = connection.execute(
                "SELECT idempotency_key, kind, order_id, reference, detail FROM shop_action "
                "WHERE ? IS NULL OR kind = ? ORDER BY created_at",
                (kind, kind),
            ).fetchall()
        return [
            dict(zip(("idempotency_key", "kind", "order_id", "reference", "detail"), r, strict=True))
            for r in rows
        ]

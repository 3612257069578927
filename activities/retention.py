"""`purge_expired`: erase the conversations the bot's retention period has run out on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.client import Client

from dialogue.model.contracts import RetentionReport
from dialogue.platform import memory, store
from dialogue.security.erasure import erase_conversation


class RetentionActivities:
    def __init__(self, client: Client, engine: Engine, retention_days: float | None) -> None:
        self._client = client
        self._engine = engine
        self._retention_days = retention_days

    @activity.defn(name="purge_expired")
    async def purge_expired(self) -> RetentionReport:
        """Erase conversations not updated within the retention period, a batch at a time; forget the
        items of end users' memory whose retention ran out (each has its own expiry, set when it was said)."""
        forgotten = await asyncio.to_thread(memory.expire, self._engine, now=datetime.now(UTC))
        if self._retention_days is None:
            return RetentionReport(erased=0, retention_days=None, memory_forgotten=forgotten)
        cutoff = datetime.now(UTC) - timedelta(days=self._retention_days)
        erased, failed = 0, 0
        while keys := await asyncio.to_thread(
            store.expired_conversations, self._engine, before=cutoff, limit=100, offset=failed
        ):
            for key in keys:
                activity.heartbeat(erased)
                try:
                    await erase_conversation(
                        self._client, self._engine, key, actor="retention", reason="retention"
                    )
                    erased += 1
                except Exception:  # one conversation that cannot be erased now must not stop the others
                    activity.logger.exception("retention could not erase %s; the next run retries", key)
                    failed += 1
        return RetentionReport(
            erased=erased,
            failed=failed,
            retention_days=self._retention_days,
            cutoff=cutoff,
            memory_forgotten=forgotten,
        )

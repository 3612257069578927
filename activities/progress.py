"""Progress of a step that makes (part of) a reply: heartbeats, and for a streamed turn its events in the
conversation's event log (tokens, tool calls and results, a restart after a retried attempt)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from dialogue.model.contracts import Reply, StreamTarget
from dialogue.platform import events

HEARTBEAT_SECONDS = 1.0
_WORDS = re.compile(r"\S+\s*")


class Progress:
    """Heartbeats while the reply is being made and, for a streamed turn, writes its events.

    Tokens are buffered and written by one background task: while a write is in progress
    the next tokens gather, so a fast generator costs few writes and a slow one is sent
    token by token. Heartbeats let Temporal notice a lost worker within the heartbeat
    timeout and deliver a cancellation (the turn's deadline, an interrupting turn).
    """

    def __init__(
        self,
        engine: Engine,
        target: StreamTarget | None,
        opening: Sequence[tuple[events.EventKind, dict[str, Any]]] = (),
    ) -> None:
        """`opening`: the events a streamed step starts with (a reply's NLU result and sources)."""
        self._engine = engine
        self._target: StreamTarget | None = target
        self._pending: list[events.NewEvent] = []
        self._wake = asyncio.Event()
        self._done = False
        self._streamed_tokens = 0
        if self._target is not None:
            if activity.info().attempt > 1:
                # The client saw part of an earlier attempt's reply: tell it to start over.
                self.add("restart", {"attempt": activity.info().attempt})
            for kind, data in opening:
                self.add(kind, data)

    async def __aenter__(self) -> Progress:
        self._writer = asyncio.create_task(self._write_loop())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._done = True
        self._wake.set()
        if kind is None:
            await self._writer  # the last tokens are in the log before the reply is returned
        else:
            self._writer.cancel()

    def token(self, text: str) -> None:
        if self._target is not None:
            self._streamed_tokens += 1
            self.add("token", {"text": text})

    def finish(self, reply: Reply) -> None:
        """A reply made all at once (a template, the grounded generator) is streamed word by word."""
        if self._target is not None and self._streamed_tokens == 0:
            for word in _WORDS.findall(reply.text):
                self.add("token", {"text": word})

    def add(self, kind: events.EventKind, data: dict[str, Any]) -> None:
        """An event for a streamed turn (nothing otherwise)."""
        if self._target is None:
            return
        self._pending.append(events.NewEvent(kind=kind, data=data, turn_id=self._target.turn_id))
        self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # no news: heartbeat all the same
                await asyncio.wait_for(self._wake.wait(), timeout=HEARTBEAT_SECONDS)
            self._wake.clear()
            # A reply made in under a second needs no heartbeat (one RPC less per turn); a local activity
            # has none (it lives inside a workflow task).
            if not self._done and not activity.info().is_local:
                activity.heartbeat()
            if self._pending and self._target is not None:
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(events.append, self._engine, self._target.conversation_id, batch)
                except (SQLAlchemyError, events.EventLogBusy) as err:
                    # The store is unavailable: the reply matters, its live stream does not. The client
                    # gets the whole reply in the final event, which comes from Temporal.
                    activity.logger.warning("event log unavailable; the turn goes on unstreamed: %s", err)
                    self._target, self._pending = None, []
            if self._done and not self._pending:
                return

"""Reading the conversation event log for the streams that follow it: one reader per conversation.

Every open `GET …/events` stream of a conversation subscribes to that conversation's feed. The feed is one
task that reads the event log while the conversation has subscribers, and hands each subscriber the rows
after the last one it was given; it stops when the last subscriber leaves. So N streams on a conversation
cost one store query per poll, not N, and the queries go through the worker threads authentication uses
too. (A streamed turn's own stream polls by itself: it lasts one turn, and is counted by admission.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from dialogue.platform import events
from dialogue.platform.db import ConversationEvent
from dialogue.platform.metrics import EVENT_FEEDS

log = logging.getLogger("dialogue.api")

POLL_SECONDS = 0.05
"""How often a conversation's feed looks for new events while it has subscribers."""
STORE_RETRY_SECONDS = 1.0
"""How often a reader looks at the event log again while the store is unavailable."""
PAGE = 500
"""Rows one read returns at most (`events.read`'s limit): a full page is followed by the next at once."""
MAX_BACKLOG = 2000
"""Rows a subscriber may have waiting: one that reads slower than that is ended (it resumes by its
`Last-Event-ID`) rather than held in memory without bound."""


async def read_events(
    engine: Engine, conversation_id: str, *, after: int, turn_id: str | None = None
) -> Sequence[ConversationEvent]:
    """The logged events after `after`; none while the store cannot be read. A turn's stream then still
    ends with its reply, from Temporal, and a conversation's stream picks up where it was once it can."""
    try:
        return await run_in_threadpool(
            events.read, engine, conversation_id, after=after, turn_id=turn_id, limit=PAGE
        )
    except SQLAlchemyError as err:
        log.warning("event log unavailable for %s: %s", conversation_id, err.__class__.__name__)
        await asyncio.sleep(STORE_RETRY_SECONDS)
        return []


class Subscription:
    """One stream's place in its conversation's feed: the rows handed to it and not yet sent."""

    def __init__(self, after: int) -> None:
        self.last = after
        """The newest event handed to this subscriber (the feed reads after the lowest of these)."""
        self.overflowed = False
        """It fell MAX_BACKLOG rows behind: its stream ends, and the client resumes."""
        self._rows: list[ConversationEvent] = []
        self._ready = asyncio.Event()

    def offer(self, rows: Sequence[ConversationEvent]) -> None:
        """Hand over the rows after the last one this subscriber was given."""
        new = [row for row in rows if row.seq > self.last]
        if not new or self.overflowed:
            return
        if len(self._rows) + len(new) > MAX_BACKLOG:
            self.overflowed = True  # ends, having sent what it was given; the client resumes after that
        else:
            self._rows.extend(new)
        self.last = new[-1].seq  # either way: the feed reads on after these
        self._ready.set()

    async def next(self, within: float) -> list[ConversationEvent]:
        """The rows handed over since the last call, waiting up to `within` seconds for some."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), within)
        rows, self._rows = self._rows, []
        self._ready.clear()
        return rows


@dataclass
class _Feed:
    subscribers: set[Subscription] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class EventFeeds:
    """The conversations' feeds in this API process, keyed by the conversation's tenant-scoped key."""

    def __init__(self, engine: Engine, *, poll_seconds: float = POLL_SECONDS) -> None:
        self._engine = engine
        self._poll_seconds = poll_seconds
        self._feeds: dict[str, _Feed] = {}
        self.readers_started = 0
        """Feeds started since the process began: one per conversation while it has subscribers."""

    def subscribers(self, conversation_key: str) -> int:
        """How many streams follow the conversation in this process now."""
        feed = self._feeds.get(conversation_key)
        return len(feed.subscribers) if feed else 0

    @property
    def readers(self) -> int:
        """Conversations whose event log is being read now: one reader each."""
        return len(self._feeds)

    @contextlib.asynccontextmanager
    async def subscribe(self, conversation_key: str, *, after: int) -> AsyncIterator[Subscription]:
        """Follow the conversation's events after `after` for the block; the feed starts with its first
        subscriber and stops after its last."""
        feed = self._feeds.get(conversation_key)
        if feed is None:
            feed = self._feeds[conversation_key] = _Feed()
            feed.task = asyncio.create_task(
                self._read(conversation_key, feed), name=f"feed {conversation_key}"
            )
            self.readers_started += 1
            EVENT_FEEDS.inc()
        subscription = Subscription(after)
        feed.subscribers.add(subscription)
        feed.wake.set()  # read now: the new subscriber may be behind the others (a client resuming)
        try:
            yield subscription
        finally:
            feed.subscribers.discard(subscription)

    async def close(self) -> None:
        """Stop every feed (the API is stopping)."""
        tasks = [feed.task for feed in self._feeds.values() if feed.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, conversation_key: str, feed: _Feed) -> None:
        try:
            # No await between the test for subscribers and leaving: a subscriber that comes in meanwhile
            # finds either this feed still reading, or none and starts the next.
            while feed.subscribers:
                feed.wake.clear()
                after = min(s.last for s in feed.subscribers)
                rows = await read_events(self._engine, conversation_key, after=after)
                for subscriber in list(feed.subscribers):
                    subscriber.offer(rows)
                if len(rows) < PAGE and feed.subscribers:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(feed.wake.wait(), self._poll_seconds)
        finally:
            if self._feeds.get(conversation_key) is feed:
                del self._feeds[conversation_key]
            EVENT_FEEDS.dec()

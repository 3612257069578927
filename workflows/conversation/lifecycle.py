"""A run's life: turns and a person's actions one at a time in arrival order, the idle timeout, and when
the run continues as new."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from temporalio import workflow

from workflows.conversation import decisions
from workflows.conversation.state import Conversation

T = TypeVar("T")


class Lifecycle:
    def __init__(self, conversation: Conversation) -> None:
        self._conversation = conversation
        # asyncio.Lock is FIFO: turns (and a person's messages) that wait for it run in arrival order.
        self._turn_lock = asyncio.Lock()
        self.in_flight = 0
        self._touched = False
        self._last_touch = datetime.min.replace(tzinfo=UTC)
        """When the conversation's quiet spell began (set from the workflow's clock in `start`)."""
        self.messages_this_run = 0

    def start(self) -> None:
        self._last_touch = workflow.now()

    async def in_order(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run a turn or a person's action after those that arrived before it, one at a time."""
        self.in_flight += 1
        self.touch()
        evicted = False
        try:
            async with self._turn_lock:
                result = await work()
                self.messages_this_run += 1
                return result
        except GeneratorExit:
            evicted = True  # the run left the worker's cache: it is gone, and its clock with it
            raise
        finally:
            if not evicted:
                self.in_flight -= 1
                self.touch()

    def touch(self) -> None:
        """Something happened: the conversation's quiet spell (its idle timeout) starts again now."""
        self._touched = True
        self._last_touch = workflow.now()

    def time_to_continue(self, can_continue: bool) -> bool:
        return decisions.time_to_continue(
            can_continue,
            self.messages_this_run,
            self._conversation.input.turns_per_run,
            workflow.info().is_continue_as_new_suggested(),
        )

    async def wait_while_active(
        self, idle: timedelta, time_to_continue: Callable[[], bool], busy: Callable[[], bool]
    ) -> None:
        """Wait until the conversation ends, it is time to continue as new, or it has been quiet for `idle`
        (then it ends, unless it is `busy`: a turn running or an approval awaited). One timer per quiet
        spell: a turn moves the time the spell started, not the timer, which on firing waits out what is left."""
        conversation = self._conversation
        left = decisions.idle_wait(idle, workflow.now() - self._last_touch, busy=busy())
        if left is None:
            conversation.close("idle_timeout")
            return
        with contextlib.suppress(TimeoutError):  # the loop looks again at how long it has been quiet
            await workflow.wait_condition(lambda: not conversation.active or time_to_continue(), timeout=left)

    async def wait_for_a_touch(self, idle: timedelta, busy: Callable[[], bool]) -> None:
        """Before the lean-turn patch: an idle timer started again at every turn."""
        conversation = self._conversation
        self._touched = False
        try:
            await workflow.wait_condition(lambda: self._touched or not conversation.active, timeout=idle)
        except TimeoutError:
            if not busy():
                conversation.close("idle_timeout")

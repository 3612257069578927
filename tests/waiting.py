"""Waiting in tests on the thing itself, never for a while.

A test that needs something to have happened before its next step (a turn running, a request the stand-in
received, a stream open, a metric counted) polls for it until it holds, with a deadline; a fixed sleep would
be too short on a busy machine and too long everywhere else.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T]], what: str, *, within: float = ..., interval: float = ...
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T], what: str, *, within: float = ..., interval: float = ...
) -> T: ...


async def eventually(
    predicate: Callable[[], Any], what: str, *, within: float = 15.0, interval: float = 0.02
) -> Any:
    """Call `predicate` (plain or async) until it returns something truthy, and return that.

    Past `within` seconds it fails, naming `what` it waited for and what `predicate` last returned."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what} (last: {result!r})")
        await asyncio.sleep(interval)

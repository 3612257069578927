"""Faults as production has them, for tests: a database server that stops answering, a SQLite file that
can no longer be written (each cut for as long as a test wants, then restored), and where in a
workflow's history a dead worker's work was handed to another."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from temporalio.client import WorkflowHandle

from tests.conftest import free_port


class StoreOutage(Protocol):
    url: str
    """The store's URL for the worker and the API: through the outage."""

    def cut(self) -> None: ...

    def restore(self) -> None: ...


class TcpProxy:
    """A TCP proxy in front of a database server, on a thread and event loop of its own (the worker and
    the API under test share the test's loop: a proxy there would wait on the code it serves).

    `cut` closes every open connection and refuses new ones, as a server that crashed or a network
    that dropped; `restore` listens again on the same port."""

    def __init__(self, url: str, host: str = "127.0.0.1", port: int = 5432) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.url = url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/")
        assert self.url != url, f"no {host}:{port} in {url}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._thread.start()
        self.restore()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def restore(self) -> None:
        async def listen() -> None:
            if self._server is None:
                self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

        self._call(listen())

    def cut(self) -> None:
        async def drop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._links):
                writer.transport.abort()  # a reset, not a goodbye: the client sees the connection die
            self._links.clear()

        self._call(drop())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._links |= {client_writer, server_writer}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
        self._links -= {client_writer, server_writer}


class StoreLock:
    """Holds the SQLite store's write lock, so the worker's `record_turn` blocks inside the activity.

    The store runs in WAL mode: the API still reads while the lock is held.
    """

    def __init__(self, database_url: str) -> None:
        assert database_url.startswith("sqlite:///")
        self.path = database_url.removeprefix("sqlite:///")
        self.connection: sqlite3.Connection | None = None

    def acquire(self) -> None:
        self.connection = sqlite3.connect(self.path, isolation_level=None)
        self.connection.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.connection is not None:
            self.connection.execute("ROLLBACK")
            self.connection.close()
            self.connection = None


class UnwritableSqlite:
    """A SQLite store whose files cannot be written: reads go on, every write fails at once ("disk I/O
    error", "attempt to write a readonly database"), through connections already open too.

    Root ignores file permissions, so as root the files are made immutable (`chattr +i`); otherwise
    read-only. The shared-memory index (`-shm`) stays writable: SQLite maps it, and a write to an
    immutable mapping kills the process with SIGBUS, which is another fault than the one meant here."""

    def __init__(self, url: str) -> None:
        assert url.startswith("sqlite:///")
        self.url = url
        path = Path(url.removeprefix("sqlite:///"))
        self._files = [path, path.with_name(path.name + "-wal")]

    def cut(self) -> None:
        for file in self._files:
            file.touch()
            if os.geteuid() == 0:
                subprocess.run(["chattr", "+i", str(file)], check=True)
            else:
                file.chmod(0o444)

    def restore(self) -> None:
        for file in self._files:
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(file)], check=True)
            else:
                file.chmod(0o644)


async def steps_redone_after_a_timeout(workflow: WorkflowHandle[Any, Any]) -> set[str]:
    """What the server gave to another worker because the first one went silent: activity names,
    and "workflow task". Proves where a kill landed."""
    history = await workflow.fetch_history()
    names: dict[int, str] = {}
    redone: set[str] = set()
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            names[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            if started.attempt > 1 and started.last_failure.HasField("timeout_failure_info"):
                redone.add(names[started.scheduled_event_id])
        elif event.HasField("workflow_task_timed_out_event_attributes"):
            redone.add("workflow task")
    return redone

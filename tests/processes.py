"""The app's own processes for tests that need them real: `python -m worker` and `dialogue api`,
each reading its settings from `DIALOGUE_*` variables as deployed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from dialogue.settings import PROJECT_ROOT, Settings

START_TIMEOUT = 60.0


def process_env(settings: Settings) -> dict[str, str]:
    """The environment of a process that reads `settings`: each field as its `DIALOGUE_*` variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")}
    for name, value in settings.model_dump(mode="json", exclude_none=True).items():
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):
            value = secret.get_secret_value()  # dumped masked
        # Complex values (lists, dicts) are read back as JSON.
        env[f"DIALOGUE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


async def spawn(module: list[str], settings: Settings, log: Path) -> asyncio.subprocess.Process:
    """`python -m <module…>` reading `settings` from its environment, its output appended to `log`."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *module,
            cwd=PROJECT_ROOT,
            env=process_env(settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


class WorkerProcess:
    """`python -m worker` in its own OS process, as deployed: something SIGKILL can hit mid-turn."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Start it and wait until it polls its task queue; returns how long that took."""
        started = time.monotonic()
        self.process = await spawn(["worker"], self.settings, self.log)
        while b"worker polling task queue" not in self.log.read_bytes():
            assert self.process.returncode is None, f"the worker exited:\n{self.log.read_text()}"
            assert time.monotonic() < started + START_TIMEOUT, f"no worker:\n{self.log.read_text()}"
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    def freeze(self) -> None:
        """SIGSTOP: its polls stay open, so the server goes on handing it tasks it will never finish."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    async def stop(self) -> None:
        """SIGTERM, as an orchestrator stops it: it finishes the tasks in hand and exits."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 30)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()  # SIGKILL: no shutdown, no goodbye to the server
            await asyncio.wait_for(self.process.wait(), 10)


class ApiProcess:
    """`python -m dialogue api` in its own OS process, on `settings.api_port`."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.base_url = f"http://{settings.api_host}:{settings.api_port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        started = time.monotonic()
        self.process = await spawn(["dialogue", "api"], self.settings, self.log)
        host, port = self.settings.api_host, self.settings.api_port
        while True:
            assert self.process.returncode is None, f"the API exited:\n{self.log.read_text()}"
            assert time.monotonic() < started + START_TIMEOUT, f"no API:\n{self.log.read_text()}"
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            return

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 20)

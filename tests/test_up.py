"""`dialogue up` end to end, as a user runs it: start, talk, stop, start again, continue."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dialogue.supervisor import port_is_free
from tests.conftest import free_port

START_TIMEOUT = 120


class Stack:
    def __init__(self, data_dir: Path, nlu_model_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = {"temporal": free_port(), "ui": free_port(), "api": free_port(), "metrics": free_port()}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")} | {
            "DIALOGUE_DATA_DIR": str(data_dir),
            "DIALOGUE_TEMPORAL_ADDRESS": f"127.0.0.1:{self.ports['temporal']}",
            "DIALOGUE_TEMPORAL_UI_PORT": str(self.ports["ui"]),
            "DIALOGUE_API_PORT": str(self.ports["api"]),
            "DIALOGUE_WORKER_METRICS_PORT": str(self.ports["metrics"]),
            # The session's trained demo model: `up` finds it up to date instead of training again.
            "DIALOGUE_NLU_MODEL_DIR": str(nlu_model_dir),
        }
        self.api = f"http://127.0.0.1:{self.ports['api']}"
        self.process: subprocess.Popen[str] | None = None
        self.log = data_dir.parent / "up.log"

    def start(self) -> str:
        """Start `dialogue up`; returns the API key it printed."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dialogue", "up"],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
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

    def processes_left(self) -> list[str]:
        """Processes still running with this stack's data folder in their command line or environment."""
        marker = str(self.data_dir).encode()
        left = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "cmdline").read_bytes() or marker in (proc / "environ").read_bytes():
                    left.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        return left


@pytest.fixture
def stack(tmp_path: Path, demo_model_dir: Path) -> Iterator[Stack]:
    running = Stack(tmp_path / "data", demo_model_dir)
    yield running
    if running.process and running.process.poll() is None:
        running.process.kill()


def test_dialogue_up_runs_stops_cleanly_and_keeps_conversations(stack: Stack) -> None:
    key = stack.start()
    assert (stack.data_dir / "api_key").read_text().strip() == key
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.api, headers=headers, timeout=30) as http:
        first = http.post("/v1/conversations/demo-1/turns", json={"text": "hello"})
        assert first.status_code == 200, first.text
        assert first.json()["nlu"]["intent"]["name"] == "greet"
        assert http.get("/readyz").json()["checks"] == {"temporal": "ok", "database": "ok", "worker": "ok"}
    ui = httpx.get(f"http://127.0.0.1:{stack.ports['ui']}/", timeout=10)
    assert ui.status_code == 200
    worker_metrics = httpx.get(f"http://127.0.0.1:{stack.ports['metrics']}/metrics", timeout=10).text
    assert 'dialogue_step_duration_seconds_count{outcome="ok",step="understand"} 1.0' in worker_metrics
    assert "temporal_worker_task_slots_available" in worker_metrics
    # A terminal shows text lines under `dialogue up`, not JSON.
    assert "INFO dialogue.worker: worker polling task queue" in stack.log.read_text()

    assert stack.stop(signal.SIGINT) == 0
    assert all(port_is_free("127.0.0.1", port) for port in stack.ports.values())
    assert stack.processes_left() == []

    assert stack.start() == key  # the generated key is kept in the data folder
    with httpx.Client(base_url=stack.api, headers=headers, timeout=30) as http:
        state = http.get("/v1/conversations/demo-1").json()
        assert (state["status"], state["turn_count"]) == ("active", 1)
        assert http.get("/v1/conversations/demo-1/messages").json()["total"] == 2
        again = http.post("/v1/conversations/demo-1/turns", json={"text": "how do I return an item?"})
        assert again.status_code == 200, again.text
        assert again.json()["turn_index"] == 1
    replayed = subprocess.run(
        [sys.executable, "-m", "dialogue", "replay", "demo-1"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "conv-default/demo-1 run 1/1" in replayed.stdout and "replayed" in replayed.stdout
    assert stack.stop(signal.SIGTERM) == 0
    assert stack.processes_left() == []

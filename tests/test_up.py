"""`dialogue up` end to end, as a user runs it: start, talk, stop, start again, continue."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dialogue.supervisor import port_is_free
from tests.processes import UpStack


@pytest.fixture
def stack(tmp_path: Path, demo_model_dir: Path) -> Iterator[UpStack]:
    running = UpStack(tmp_path / "data", demo_model_dir)
    yield running
    running.kill()


def test_dialogue_up_runs_stops_cleanly_and_keeps_conversations(stack: UpStack) -> None:
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

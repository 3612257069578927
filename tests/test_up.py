"""`dialogue up` end to end, as a user runs it: start, talk, stop, start again, continue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dialogue.apps.supervisor import port_is_free
from dialogue.platform.worker_builds import code_build_id
from tests.platforms import PlatformStandIn, Webhook, channels, telegram_message
from tests.processes import ServedInThread, UpStack


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

    # Started again as another build of the workflow code (as after changing it): `up` runs one build at
    # a time, makes it current and carries the open conversations over to it.
    first_build = code_build_id()
    assert f"Workflow build  {first_build} of deployment dialogue" in stack.log.read_text()
    stack.env["DIALOGUE_WORKER_BUILD_ID"] = "next-build"
    assert stack.start() == key  # the generated key is kept in the data folder
    assert f"carried over 1 open workflows of build {first_build}" in stack.log.read_text()
    builds = subprocess.run(
        [sys.executable, "-m", "dialogue", "build", "list"], env=stack.env, capture_output=True, text=True
    )
    assert "deployment dialogue: current next-build" in builds.stdout, builds.stdout + builds.stderr
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


def test_dialogue_up_restarts_a_killed_worker_while_the_api_answers(stack: UpStack) -> None:
    """SIGKILL the worker of a running stack: the API goes on answering, the supervisor starts the
    worker again within seconds, and a turn sent in the gap is answered once it is back."""
    key = stack.start()
    with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {key}"}, timeout=40) as http:
        assert http.post("/v1/conversations/gap/turns", json={"text": "hello"}).status_code == 200
        [worker] = stack.pids("-m worker")
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        assert http.get("/healthz").status_code == 200
        assert http.get("/v1/conversations/gap/messages").json()["total"] == 2  # the store answers alone
        turn = {"text": "how do I return an item?"}
        while (
            reply := http.post("/v1/conversations/gap/turns", json=turn, headers={"Idempotency-Key": "gap-1"})
        ).status_code in (503, 504):
            assert time.monotonic() - killed < 90, reply.text
        assert reply.status_code == 200, reply.text
        print(f"\nthe turn sent in the gap answered {time.monotonic() - killed:.1f} s after the kill")
        assert reply.json()["turn_index"] == 1
        assert [m["role"] for m in http.get("/v1/conversations/gap/messages").json()["items"]] == [
            "user",
            "bot",
        ] * 2
        assert stack.pids("-m worker") not in ([], [worker])
    assert (
        "dialogue up: worker exited with code -9; starting it again in 1 s (restart 1)"
        in stack.log.read_text()
    )
    assert stack.stop(signal.SIGTERM) == 0
    assert stack.processes_left() == []


def test_dialogue_up_with_two_workers_keeps_serving_when_one_dies(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    """`DIALOGUE_WORKER_PROCESSES=2`: two workers, each with its metrics port; one SIGKILLed, the other
    answers the turns meanwhile, and the dead one is started again."""
    stack = UpStack(tmp_path / "data", demo_model_dir, env={"DIALOGUE_WORKER_PROCESSES": "2"})
    try:
        key = stack.start()
        metrics = stack.ports["metrics"]
        for port in (metrics, metrics + 1):  # each worker serves its metrics once it has started
            deadline = time.monotonic() + 60
            while not port_answers(port):
                assert time.monotonic() < deadline, stack.log.read_text()
                time.sleep(0.2)
        first, _ = sorted(stack.pids("-m worker"))
        os.kill(first, signal.SIGKILL)
        with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {key}"}, timeout=40) as http:
            for n in range(5):
                reply = http.post(f"/v1/conversations/two-{n}/turns", json={"text": "hello"})
                assert reply.status_code == 200, reply.text
        deadline = time.monotonic() + 60
        while len(stack.pids("-m worker")) < 2 or "worker 1 exited with code -9" not in stack.log.read_text():
            assert time.monotonic() < deadline, stack.log.read_text()
            time.sleep(0.2)
        assert first not in stack.pids("-m worker")
        assert stack.stop(signal.SIGTERM) == 0
        assert stack.processes_left() == []
    finally:
        stack.kill()


def port_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_a_reminder_scheduled_before_the_whole_stack_stops_is_sent_after_it_starts_again(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    """A Telegram user's conversation gets a reminder; the whole stack (Temporal, worker, API) stops before
    it is due and starts again after: the reminder is said, in the transcript and on Telegram, once."""
    platform = PlatformStandIn()
    with ServedInThread(platform.app(), "telegram-stand-in") as telegram:
        config = {"chat": channels(telegram.base_url, "http://unused")["shop-telegram"]}
        stack = UpStack(tmp_path / "data", demo_model_dir, env={"DIALOGUE_CHANNELS": json.dumps(config)})
        try:
            key = stack.start()
            headers = {"Authorization": f"Bearer {key}"}
            hook = telegram_message("hello", message_id=1, chat_id=4242)
            hook = Webhook("/v1/channels/chat", hook.headers, hook.body)
            with httpx.Client(base_url=stack.api, headers=headers, timeout=30) as http:
                assert http.post(hook.path, content=hook.body, headers=hook.headers).status_code == 200
                deadline = time.monotonic() + 60
                while not http.get("/v1/conversations").json()["items"]:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
                [conversation] = http.get("/v1/conversations").json()["items"]
                url = f"/v1/conversations/{conversation['conversation_id']}"
                text = "Your order ships today."
                scheduled = http.post(f"{url}/reminders", json={"text": text, "in_seconds": 12})
                assert scheduled.status_code == 201, scheduled.text
                due = time.monotonic() + 12
            assert stack.stop(signal.SIGTERM) == 0
            time.sleep(max(0.0, due + 2 - time.monotonic()))  # due while nothing runs
            assert [m.text for m in platform.sent if m.text == text] == []
            stack.start()
            with httpx.Client(base_url=stack.api, headers=headers, timeout=30) as http:
                deadline = time.monotonic() + 60
                while not any(m["text"] == text for m in http.get(f"{url}/messages").json()["items"]):
                    assert time.monotonic() < deadline, http.get(f"{url}/messages").json()
                    time.sleep(0.2)
                while [m.text for m in platform.sent][-1:] != [text]:
                    assert time.monotonic() < deadline, platform.sent
                    time.sleep(0.2)
                time.sleep(2)
                assert [m.text for m in platform.sent].count(text) == 1 and platform.sent[-1].to == "4242"
                assert http.get(url).json()["reminders"] == []
            assert stack.stop(signal.SIGTERM) == 0
        finally:
            stack.kill()

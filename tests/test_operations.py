"""What operators rely on: metrics, traces, JSON logs, readiness, search attributes, and scale-out.

Real Temporal dev server, real workers and APIs (in this process, or as their own OS processes
for the scale-out test), real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client
from temporalio.worker import Worker

from api import create_app
from dialogue.platform.settings import Settings
from dialogue.platform.telemetry import temporal_interceptors, tracer_provider
from dialogue.platform.temporal import conversation_key, workflow_id
from tests.conftest import TEST_API_KEY, api_client, free_port, worker_for
from tests.processes import ApiProcess, WorkerProcess

KB_QUESTION = "How long does delivery take?"
API_OPTIONS: list[dict[str, Any]] = [{"tracing_exporter": "console"}, {"log_message_text": True}]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (n, got), value in found.items() if n == name and wanted <= got)


async def metrics(http: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_count_turns_by_outcome_and_time_each_step(client: Client, settings: Settings) -> None:
    # The LLM is unreachable: its questions get the fallback, marked degraded.
    degrading = settings.model_copy(
        update={"generator": "openai", "llm_base_url": f"http://127.0.0.1:{free_port()}/v1"}
    )
    async with worker_for(client, degrading), api_client(create_app(degrading, temporal=client)) as http:
        before = await metrics(http)
        ok = await http.post("/v1/conversations/m1/turns", json={"text": "hello"})
        assert ok.status_code == 200 and not ok.json()["degraded"], ok.text
        rejected = await http.post("/v1/conversations/m1/turns", json={"text": "   "})
        assert rejected.status_code == 422
        degraded = await http.post("/v1/conversations/m2/turns", json={"text": KB_QUESTION})
        assert degraded.status_code == 200 and degraded.json()["degraded"], degraded.text
        after = await metrics(http)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("dialogue_turns_total", outcome="ok") == 1
    assert delta("dialogue_turns_total", outcome="rejected") == 1
    assert delta("dialogue_turns_total", outcome="degraded") == 1
    assert delta("dialogue_turn_duration_seconds_count", outcome="degraded") == 1
    route = "/v1/conversations/{conversation_id}/turns"
    assert delta("dialogue_http_request_duration_seconds_count", route=route, status="422") == 1
    assert delta("dialogue_http_request_duration_seconds_count", route=route, status="200") == 2
    # Each step of the two answered turns, timed in the worker (same process here); both searched the
    # knowledge base (the router weighs its evidence before the policy decides).
    for step in ("understand", "retrieve", "record_turn"):
        assert delta("dialogue_step_duration_seconds_count", step=step, outcome="ok") == 2, step
    assert delta("dialogue_step_duration_seconds_count", step="generate", outcome="error") >= 1
    assert delta("dialogue_llm_errors_total") >= 1


async def test_a_trace_runs_from_the_request_through_the_workflow_to_every_activity(
    client: Client, settings: Settings
) -> None:
    exporter = InMemorySpanExporter()
    provider = tracer_provider(settings, "test", exporter=exporter)
    config = client.config()
    config["interceptors"] = temporal_interceptors(provider)
    traced = Client(**config)
    async with (
        worker_for(traced, settings),
        api_client(create_app(settings, temporal=traced, tracing=provider)) as http,
    ):
        response = await http.post("/v1/conversations/traced/turns", json={"text": KB_QUESTION})
    assert response.status_code == 200, response.text
    trace_id = response.headers["x-trace-id"]
    assert provider is not None
    provider.force_flush()
    spans = [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    by_id = {s.context.span_id: s for s in spans}

    def ancestry(span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    names = {s.name for s in spans}
    root = "POST /v1/conversations/{conversation_id}/turns"
    assert root in names, sorted(names)
    # Local activities (understanding, retrieval, the grounded reply and its record are `respond_here`)
    # are traced like regular ones.
    for step in ("respond_here",):
        run = [s for s in spans if s.name == f"RunActivity:{step}"]
        assert run, f"no span for {step}: {sorted(names)}"
        chain = ancestry(run[0])
        # The activity ran under the workflow's call of it, under the update the request sent.
        assert chain[0] == f"StartActivity:{step}", chain
        assert "StartUpdateWithStartWorkflow:ConversationWorkflow" in chain, chain
        assert chain[-1] == root, chain


async def test_readiness_names_what_is_missing(client: Client, settings: Settings, worker: Worker) -> None:
    async with api_client(create_app(settings, temporal=client)) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"temporal": "ok", "database": "ok", "worker": "ok"}
    nobody = settings.model_copy(update={"task_queue": f"unserved-{uuid.uuid4()}"})
    async with api_client(create_app(nobody, temporal=client)) as http:
        not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.headers["retry-after"]
        assert not_ready.json()["checks"]["worker"].startswith("no worker polls task queue")


async def test_search_attributes_find_degraded_and_handed_off_conversations(
    client: Client, settings: Settings
) -> None:
    degrading = settings.model_copy(
        update={"generator": "openai", "llm_base_url": f"http://127.0.0.1:{free_port()}/v1"}
    )
    async with worker_for(client, degrading), api_client(create_app(degrading, temporal=client)) as http:
        turn = await http.post("/v1/conversations/sa-1/turns", json={"text": KB_QUESTION})
        assert turn.json()["degraded"], turn.text
        handoff = await http.post("/v1/conversations/sa-1/handoff", json={"reason": "angry customer"})
        assert handoff.status_code == 200, handoff.text
        calm = await http.post("/v1/conversations/sa-2/turns", json={"text": "hello"})
        assert calm.status_code == 200
        query = (
            f"TaskQueue = '{settings.task_queue}' AND DialogueTenant = 'default' "
            "AND DialogueDegradedCount > 0 AND DialogueHandoff = true"
        )
        found: list[str] = []
        for _ in range(100):  # visibility is eventually consistent
            found = [w.id async for w in client.list_workflows(query)]
            if found:
                break
            await asyncio.sleep(0.1)
        assert found == [workflow_id(conversation_key("default", "sa-1"))]
        # The summary the Web UI shows under "Current details" (a query: the worker answers it).
        handle = client.get_workflow_handle(found[0])
        metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "1 degraded turns" in metadata.current_details
    assert "handed off to a person" in metadata.current_details


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{") and '"level"' in line:
            lines.append(json.loads(line))
    return lines


@pytest.mark.timeout(300)
async def test_two_workers_and_two_apis_answer_every_turn_once(settings: Settings, tmp_path: Path) -> None:
    """Scale-out: two worker processes and two API processes on one Temporal; turns of each conversation
    alternate between the APIs. Every turn is answered once, recorded once, in order; each API logs one
    JSON line per turn with its ids and trace id, and no user text."""
    workers = [
        WorkerProcess(
            settings.model_copy(update={"worker_metrics_port": free_port()}), tmp_path / f"worker{i}.log"
        )
        for i in range(2)
    ]
    # The first exports its spans (to its console); the second exports none, but still gives each
    # response and log line a trace id, and logs the words of each turn, as configured.
    apis = [
        ApiProcess(
            settings.model_copy(update={"api_port": free_port(), **options}),
            tmp_path / f"api{i}.log",
        )
        for i, options in enumerate(API_OPTIONS)
    ]
    conversations = [f"scale-{i}" for i in range(6)]
    turns_each = 4
    secret_word = "zanzibar-" + uuid.uuid4().hex[:8]  # must not reach the logs
    try:
        await asyncio.gather(*(w.start() for w in workers), *(a.start() for a in apis))
        headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
        async with (
            httpx.AsyncClient(base_url=apis[0].base_url, headers=headers, timeout=60) as first,
            httpx.AsyncClient(base_url=apis[1].base_url, headers=headers, timeout=60) as second,
        ):
            for http in (first, second):
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text

            async def converse(conversation_id: str) -> list[httpx.Response]:
                replies = []
                for index in range(turns_each):
                    http = (first, second)[index % 2]
                    replies.append(
                        await http.post(
                            f"/v1/conversations/{conversation_id}/turns",
                            json={"text": f"hello {secret_word} {index}"},
                            headers={"Idempotency-Key": f"{conversation_id}-t{index}"},
                        )
                    )
                return replies

            results = await asyncio.gather(*(converse(c) for c in conversations))
            for conversation_id, replies in zip(conversations, results, strict=True):
                assert [r.status_code for r in replies] == [200] * turns_each
                assert [r.json()["turn_index"] for r in replies] == list(range(turns_each))
                transcript = (await second.get(f"/v1/conversations/{conversation_id}/messages")).json()
                assert [(m["turn_index"], m["role"]) for m in transcript["items"]] == [
                    (i, role) for i in range(turns_each) for role in ("user", "bot")
                ]
            worker_metrics = []
            for w in workers:
                port = w.settings.worker_metrics_port
                async with httpx.AsyncClient() as plain:
                    scraped = await plain.get(f"http://127.0.0.1:{port}/metrics")
                assert scraped.status_code == 200
                worker_metrics.append(samples(scraped.text))
        trace_ids = {r.headers["x-trace-id"] for replies in results for r in replies}
    finally:
        await asyncio.gather(*(a.stop() for a in apis), *(w.stop() for w in workers))

    total_turns = len(conversations) * turns_each
    # Each turn understood exactly once, across both workers (a turn run twice would count twice).
    understood = [
        total(found, "dialogue_step_duration_seconds_count", step="understand", outcome="ok")
        for found in worker_metrics
    ]
    assert sum(understood) == total_turns, understood
    # The Temporal SDK's own worker metrics are served beside the app's.
    assert any(name.startswith("temporal_") for found in worker_metrics for name, _ in found)
    assert sum(total(found, "dialogue_turn_queue_depth_count") for found in worker_metrics) == total_turns

    lines = [line for api in apis for line in json_lines(api.log)]
    turn_lines = [line for line in lines if line.get("route") == "/v1/conversations/{conversation_id}/turns"]
    assert len(turn_lines) == total_turns
    for line in turn_lines:
        assert line["tenant"] == "default"
        assert line["conversation_id"] in conversations
        assert line["turn_id"].startswith(line["conversation_id"])
        assert line["turn_outcome"] == "ok"
    assert {line["trace_id"] for line in turn_lines} == trace_ids
    worded = [line for line in json_lines(apis[1].log) if "user_text" in line]
    assert len(worded) == total_turns // 2
    assert all(secret_word in line["user_text"] and line["reply_text"] for line in worded)
    for log in [apis[0].log, *(w.log for w in workers)]:
        assert secret_word not in log.read_text(), log


def test_payload_keys_rotate_then_promote_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from dialogue.apps.cli import app
    from dialogue.platform.settings import get_settings

    monkeypatch.setenv("DIALOGUE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DIALOGUE_ENVIRONMENT", "development")  # where a missing key file is made
    monkeypatch.delenv("DIALOGUE_PAYLOAD_KEYS", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()
    try:

        def listed() -> list[str]:
            result = runner.invoke(app, ["payload-keys", "list"])
            assert result.exit_code == 0, result.output
            return result.output.split("\n")[:-1]

        missing = runner.invoke(app, ["payload-keys", "list"])
        assert missing.exit_code == 1 and "no key file" in missing.output
        assert not (tmp_path / "payload-keys").exists()  # listing creates nothing
        get_settings().payload_codec_keys()  # as the API does in development: makes the file
        first = listed()
        assert len(first) == 1 and first[0].endswith("(current)")
        old_id = first[0].split()[0]
        assert runner.invoke(app, ["payload-keys", "rotate", "--not-current"]).exit_code == 0
        keys = listed()
        assert keys[0] == f"{old_id}  (current)" and len(keys) == 2  # decodable, not yet sealing
        new_id = keys[1]
        assert runner.invoke(app, ["payload-keys", "promote", new_id]).exit_code == 0
        assert listed() == [f"{new_id}  (current)", old_id]
        monkeypatch.setenv("DIALOGUE_PAYLOAD_KEYS", runner.invoke(app, ["payload-keys", "generate"]).output)
        get_settings.cache_clear()
        refused = runner.invoke(app, ["payload-keys", "rotate"])
        assert refused.exit_code == 2 and "edit that variable" in refused.output
    finally:
        get_settings.cache_clear()

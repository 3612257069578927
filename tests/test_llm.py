"""The `openai` generator against an OpenAI-compatible server over real HTTP, alone and inside a turn."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from dialogue.brain.generation.openai_chat import ChatClient, OpenAIChatGenerator
from dialogue.model.contracts import Passage
from dialogue.platform.bot import LlmSettings
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import conversation_key, workflow_id
from tests.conftest import free_port, served_llm
from tests.fake_llm import FakeLlm, Plan
from tests.test_workflow import send_turn
from worker import build_worker

PASSAGES = [
    Passage(
        document_id="shipping",
        title="Shipping",
        text="Express costs 12.90 euros.",
        score=0.03,
        semantic_score=0.8,
        chunk_id="shipping:1:0",
        document_version=1,
    ),
    Passage(
        document_id="returns",
        title="Returns",
        text="Returns are free within 30 days.",
        score=0.02,
        semantic_score=0.6,
        chunk_id="returns:1:0",
        document_version=1,
    ),
    Passage(document_id="weak", title="Weak", text="Unrelated.", score=0.01, semantic_score=0.1),
]


@pytest.fixture
async def llm() -> AsyncIterator[tuple[FakeLlm, str]]:
    fake = FakeLlm()
    async with served_llm(fake) as url:
        yield fake, url


def generator(base_url: str, timeout: float = 5, **llm: Any) -> OpenAIChatGenerator:
    client = ChatClient(base_url=base_url, model="test-model", api_key="sk-test", timeout_seconds=timeout)
    return OpenAIChatGenerator(client, LlmSettings(**llm))


async def test_a_streamed_answer_cites_the_passages_it_used(llm: tuple[FakeLlm, str]) -> None:
    fake, base_url = llm
    fake.plans = [Plan(text="Express shipping costs 12.90 euros [1].")]
    tokens: list[str] = []
    answer = await generator(base_url).answer("How much is express?", PASSAGES, on_token=tokens.append)

    assert answer is not None
    assert answer.text == "Express shipping costs 12.90 euros [1]."
    assert "".join(tokens) == answer.text and len(tokens) > 3  # it streamed
    assert [s.document_id for s in answer.sources] == ["shipping"]
    sent = fake.requests[0]
    assert sent["model"] == "test-model" and sent["stream"] is True
    system, documents, question = sent["messages"]
    assert system["role"] == "system" and "Express" not in system["content"]
    # The passages are data in a message of their own, not the system's word.
    assert documents["role"] == "user"
    assert (
        '<document number="1" id="shipping" title="Shipping">Express costs 12.90 euros.</document>'
        in (documents["content"])
    )
    assert "Unrelated." not in documents["content"]  # untrusted passages never reach the model
    assert question == {"role": "user", "content": "How much is express?"}


async def test_no_answer_from_the_model_or_no_trusted_passage_is_not_found(llm: tuple[FakeLlm, str]) -> None:
    fake, base_url = llm
    fake.plans = [Plan(text="NO_ANSWER")]
    nothing = await generator(base_url).answer("What is the meaning of life?", PASSAGES)
    assert nothing is not None and not nothing.found and nothing.context is not None
    assert await generator(base_url).answer("anything", PASSAGES[2:]) is None
    assert len(fake.requests) == 1  # the second question never called the model


@pytest.mark.parametrize(
    ("plan", "retryable", "delay"),
    [
        (Plan(status=429, headers={"Retry-After": "3"}), True, timedelta(seconds=3)),
        (Plan(status=503), True, None),
        (Plan(status=408), True, None),
        (Plan(status=400), False, None),
        (Plan(status=401), False, None),
    ],
)
async def test_errors_say_whether_retrying_helps(
    llm: tuple[FakeLlm, str], plan: Plan, retryable: bool, delay: timedelta | None
) -> None:
    fake, base_url = llm
    fake.plans = [plan]
    with pytest.raises(ApplicationError) as raised:
        await generator(base_url).answer("How much is express?", PASSAGES)
    assert raised.value.non_retryable is not retryable
    assert raised.value.next_retry_delay == delay
    assert len(fake.requests) == 1  # the client itself never retries: Temporal does


async def test_an_unreachable_endpoint_is_retryable() -> None:
    with pytest.raises(ApplicationError) as raised:
        await generator(f"http://127.0.0.1:{free_port()}/v1", timeout=2).answer(
            "How much is express?", PASSAGES
        )
    assert raised.value.type == "LlmUnavailable" and not raised.value.non_retryable


async def test_a_turn_retries_the_llm_after_its_retry_after_then_answers(
    client: Client, settings: Settings, llm: tuple[FakeLlm, str]
) -> None:
    fake, base_url = llm
    fake.plans = [
        Plan(status=429, headers={"Retry-After": "1"}),
        Plan(text="Express shipping costs 12.90 euros [1]."),
    ]
    llm_settings = settings.model_copy(
        update={"generator": "openai", "llm_base_url": base_url, "llm_model": "test-model"}
    )
    conversation_id = f"llm-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(4) as executor:
        async with build_worker(client, llm_settings, executor=executor):
            reply = await send_turn(
                client, llm_settings, conversation_id, "How much does express shipping cost?"
            )

    assert not reply.degraded
    assert reply.reply.text == "Express shipping costs 12.90 euros [1]."
    assert reply.reply.sources[0].document_id == "shipping"
    assert reply.lineage is not None
    assert (reply.lineage.generator, reply.lineage.prompt_id) == ("openai:test-model", "grounded_answer@v3")
    assert reply.lineage.prompt_hash and reply.lineage.documents[0].document_id == "shipping"
    assert len(fake.requests) == 2
    history = [
        e
        async for e in client.get_workflow_handle(
            workflow_id(conversation_key("default", conversation_id))
        ).fetch_history_events()
    ]
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert max(attempts) == 2  # the 429 was retried by Temporal, once


async def test_a_rejected_llm_request_degrades_the_turn_at_once(
    client: Client, settings: Settings, llm: tuple[FakeLlm, str]
) -> None:
    fake, base_url = llm
    fake.plans = [Plan(status=400)]
    llm_settings = settings.model_copy(update={"generator": "openai", "llm_base_url": base_url})
    with ThreadPoolExecutor(4) as executor:
        async with build_worker(client, llm_settings, executor=executor):
            reply = await send_turn(
                client, llm_settings, f"llm-{uuid.uuid4().hex[:8]}", "How much does express shipping cost?"
            )
    assert reply.degraded and reply.degraded_reason == "generate failed"
    assert len(fake.requests) == 1  # non-retryable: no second attempt


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}


async def test_a_structured_reply_is_asked_for_validated_and_said(llm: tuple[FakeLlm, str]) -> None:
    fake, base_url = llm
    fake.plans = [Plan(text='{"answer": "Express costs 12.90 euros [1].", "confidence": 0.9}')]
    answer = await generator(base_url, response_format=SCHEMA).answer("How much is express?", PASSAGES)
    assert answer is not None and answer.found
    assert answer.data == {"answer": "Express costs 12.90 euros [1].", "confidence": 0.9}
    assert answer.text == "Express costs 12.90 euros [1]."
    sent = fake.requests[0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == SCHEMA


async def test_an_invalid_structured_reply_gets_one_more_try_then_fails_for_good(
    llm: tuple[FakeLlm, str],
) -> None:
    fake, base_url = llm
    fake.plans = [
        Plan(text="Sure! It costs 12.90."),
        Plan(text='{"answer": "It costs 12.90 [1].", "confidence": 1}'),
    ]
    answer = await generator(base_url, response_format=SCHEMA).answer("How much is express?", PASSAGES)
    assert answer is not None and answer.data == {"answer": "It costs 12.90 [1].", "confidence": 1}
    assert (
        answer.context is not None and "the first reply did not conform to the schema" in answer.context.notes
    )
    assert fake.requests[1]["messages"][-1]["content"].startswith("That reply is not valid: not JSON")

    fake.plans = [Plan(text='{"answer": 3}')]
    with pytest.raises(ApplicationError) as raised:
        await generator(base_url, response_format=SCHEMA).answer("How much is express?", PASSAGES)
    assert raised.value.type == "InvalidStructuredReply" and raised.value.non_retryable


async def test_an_endpoint_without_response_format_gets_the_schema_in_the_instructions(
    llm: tuple[FakeLlm, str],
) -> None:
    fake, base_url = llm
    fake.route = lambda body: (
        Plan(status=400, error="response_format json_schema is not supported by this server")
        if "response_format" in body
        else None
    )
    fake.plans = [Plan(text='{"answer": "12.90 euros [1].", "confidence": 0.5}')]
    answering = generator(base_url, response_format=SCHEMA)
    answer = await answering.answer("How much is express?", PASSAGES)
    assert answer is not None and answer.data == {"answer": "12.90 euros [1].", "confidence": 0.5}
    fallback = fake.requests[1]
    assert "response_format" not in fallback and '"confidence"' in fallback["messages"][0]["content"]
    await answering.answer("How much is express?", PASSAGES)  # learnt: asked in words at once
    assert "response_format" not in fake.requests[2] and len(fake.requests) == 3


async def test_a_model_that_floods_is_cut_at_max_tokens(llm: tuple[FakeLlm, str]) -> None:
    fake, base_url = llm
    fake.plans = [Plan(text="Express costs 12.90 euros [1]. " + "again and again " * 2000)]
    answer = await generator(base_url, max_tokens=40).answer("How much is express?", PASSAGES)
    assert answer is not None and answer.context is not None
    assert "the reply was cut at max_tokens (40)" in answer.context.notes
    assert len(answer.text.split()) <= 40

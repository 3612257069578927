"""What an LLM call sees of the conversation: the budget, whole turns newest first, the summary, the
current message cut when it alone is too long, redaction of every message; and, through a real
worker, API and stand-in model over HTTP, the earlier turns of a conversation in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from api import create_app
from dialogue.brain.llm.context import (
    AGENT_PREFIX,
    MEMORY_HEADING,
    SUMMARY_HEADING,
    TRUNCATED,
    Said,
    assemble,
    messages_digest,
)
from dialogue.brain.llm.notes import NOTES_PROMPT
from dialogue.brain.llm.tokenizer import ESTIMATE, MESSAGE_OVERHEAD, TokenCounter, counter_for
from dialogue.model.contracts import RollingSummary
from dialogue.platform.settings import Settings
from tests.conftest import api_client, bot_with, served_llm, worker_for
from tests.fake_llm import FakeLlm, Plan
from tests.waiting import eventually

ESTIMATED = TokenCounter(ESTIMATE)


def said(*turns: tuple[str, str], start: int = 0) -> list[Said]:
    """A transcript of (user, bot) turns."""
    return [
        s
        for index, (user, bot) in enumerate(turns, start=start)
        for s in (Said(index, "user", user), Said(index, "bot", bot))
    ]


def test_the_conversation_goes_in_order_between_the_instructions_and_the_current_message() -> None:
    earlier = said(("hello", "Hi! How can I help?"), ("how much is express?", "12.90 euros [1]."))
    context = assemble(
        system="SYSTEM",
        current="and to Austria?",
        earlier=earlier[::-1],
        summary=None,
        budget=1000,
        counter=ESTIMATED,
    )
    assert context.messages == [
        {"role": "system", "content": "SYSTEM"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "how much is express?"},
        {"role": "assistant", "content": "12.90 euros [1]."},
        {"role": "user", "content": "and to Austria?"},
    ]
    assert context.lineage.turns == [0, 1] and context.lineage.dropped == []
    assert context.lineage.messages_sha256 == messages_digest(context.messages)
    assert context.lineage.context_tokens == ESTIMATED.messages(context.messages[1:])


def test_the_budget_keeps_the_newest_whole_turns_and_names_the_rest() -> None:
    earlier = said(*[(f"question number {n} " * 5, f"answer number {n} " * 5) for n in range(10)])
    budget = 200
    context = assemble(
        system="S", current="and then?", earlier=earlier, summary=None, budget=budget, counter=ESTIMATED
    )
    lineage = context.lineage
    assert lineage.turns and lineage.turns == list(
        range(lineage.turns[0], 10)
    )  # contiguous, up to the newest
    assert lineage.dropped == list(range(lineage.turns[0]))
    assert lineage.context_tokens <= budget
    assert ESTIMATED.messages(context.messages[1:]) == lineage.context_tokens
    # A turn goes in whole: never a reply without the words it answers.
    roles = [m["role"] for m in context.messages[1:-1]]
    assert roles == ["user", "assistant"] * len(lineage.turns)


def test_the_summary_stands_for_the_turns_it_covers() -> None:
    earlier = said(("old question", "old answer"), ("newer question", "newer answer"))
    summary = RollingSummary(text="The customer asked about an old thing.", version=3, through=1)
    context = assemble(
        system="S", current="now?", earlier=earlier, summary=summary, budget=500, counter=ESTIMATED
    )
    assert context.messages[1] == {"role": "system", "content": SUMMARY_HEADING + summary.text}
    assert "old question" not in str(context.messages)  # covered by the summary
    assert (context.lineage.turns, context.lineage.summary_version, context.lineage.summary_through) == (
        [1],
        3,
        1,
    )


def test_a_current_message_over_the_budget_is_cut_with_a_marker() -> None:
    context = assemble(
        system="S",
        current="word " * 2000,
        earlier=said(("a", "b")),
        summary=None,
        budget=100,
        counter=ESTIMATED,
    )
    current = context.messages[-1]["content"]
    assert current.endswith(TRUNCATED) and context.lineage.truncated
    assert ESTIMATED.count(current) + MESSAGE_OVERHEAD <= 100
    assert context.lineage.turns == [] and context.lineage.dropped == [0]


def test_every_message_is_redacted_and_people_and_notices_are_marked() -> None:
    earlier = [
        Said(0, "user", "mail me at ana@example.com"),
        Said(0, "bot", "Sure, ana@example.com."),
        Said(1, "system", "Handed off to ana (requested)."),
        Said(2, "agent", "Hi, I am Ana: write to ana@example.com"),
    ]
    summary = RollingSummary(text="They gave ana@example.com.", through=0)
    context = assemble(
        system="S",
        current="again: ana@example.com",
        earlier=earlier,
        summary=summary,
        budget=1000,
        counter=ESTIMATED,
        redact=lambda text: text.replace("ana@example.com", "[EMAIL]"),
        expected=range(0, 4),
    )
    assert "ana@example.com" not in str(context.messages)
    assert context.messages[-2] == {
        "role": "assistant",
        "content": AGENT_PREFIX + "Hi, I am Ana: write to [EMAIL]",
    }
    assert context.messages[-3]["content"].startswith("[Note: Handed off")
    assert context.lineage.missing == [3]  # place 3 should be there (e.g. not recorded yet)


def test_openai_models_are_counted_with_their_own_encoding() -> None:
    assert counter_for("gpt-4o-mini").name == "o200k_base"
    assert counter_for("gpt-4").name == "cl100k_base"
    assert counter_for("llama3.1:8b").name == ESTIMATE
    assert counter_for("gpt-4o-mini").count("Hello world") == 2


# --- Through a real worker and API ------------------------------------------------------------


def notes_request(body: dict[str, Any]) -> bool:
    """A request of `note_memory`: the model reads a turn for the user's memory."""
    return str(body["messages"][0]["content"]).startswith(NOTES_PROMPT.template[:30])


def noted(body: dict[str, Any]) -> Plan | None:
    """The stand-in model's notes: a name and a city from "I'm Sofia, from Bristol", else nothing."""
    if not notes_request(body):
        return None
    said = body["messages"][-1]["content"]
    if "Sofia" not in said:
        return Plan(text="nothing")
    return Plan(
        tool_calls=[
            ("remember", {"kind": "name", "value": "Sofia"}),
            ("remember", {"kind": "city", "value": "Bristol"}),
        ]
    )


def answers(fake: FakeLlm) -> list[dict[str, Any]]:
    """The requests that answered turns, oldest first (not the memory notes made after some of them)."""
    return [body for body in fake.requests if not notes_request(body)]


@pytest.fixture
async def recording_llm() -> AsyncIterator[tuple[FakeLlm, str]]:
    fake = FakeLlm(plans=[Plan(text="Express shipping costs 12.90 euros [1].")], route=noted)
    async with served_llm(fake) as url:
        yield fake, url


@pytest.fixture
async def llm_chat(
    client: Client, settings: Settings, tmp_path: Path, recording_llm: tuple[FakeLlm, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """The demo bot answering with the stand-in LLM, redacting only what goes to it (storage keeps the
    words as said, so the LLM's redaction is what this checks)."""
    _, url = recording_llm
    privacy = {"redact": "llm", "patterns": {}}
    chat_settings = settings.model_copy(
        update={
            "generator": "openai",
            "llm_base_url": url,
            "llm_model": "gpt-4o-mini",
            "bot_path": bot_with(settings, tmp_path, privacy=privacy),
        }
    )
    async with (
        worker_for(client, chat_settings),
        api_client(create_app(chat_settings, temporal=client)) as http,
    ):
        yield http


async def turn(http: httpx.AsyncClient, conversation_id: str, text: str) -> dict[str, Any]:
    response = await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": text})
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


async def test_the_model_sees_the_earlier_turns_in_order_redacted(
    llm_chat: httpx.AsyncClient, recording_llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = recording_llm
    conversation_id = f"ctx-{uuid.uuid4().hex[:6]}"
    await turn(llm_chat, conversation_id, "hello, I am ana@example.com")
    first = await turn(llm_chat, conversation_id, "How much does express shipping cost?")
    second = await turn(llm_chat, conversation_id, "How long does express shipping take?")

    last = fake.requests[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user", "user"]
    assert last[1]["content"] == "hello, I am [EMAIL]"  # stored as said, redacted on the way out
    assert last[3]["content"] == "How much does express shipping cost?"
    assert last[4]["content"] == first["reply"]["text"]
    assert (
        last[5]["content"].count("<document number=") >= 1
    )  # the passages, as data, just before the question
    assert last[6]["content"] == "How long does express shipping take?"
    assert all(
        "ana@example.com" not in m["content"] for request in fake.requests for m in request["messages"]
    )

    context = second["lineage"]["context"]
    assert context["turns"] == [0, 1] and context["dropped"] == [] and context["missing"] == []
    assert context["messages_sha256"] == messages_digest(last)
    assert (context["tokenizer"], context["budget"]) == ("o200k_base", 3000)
    assert context["prompt_tokens"] == 100 and context["completion_tokens"] > 0  # as the endpoint said
    assert second["reply"]["context"] is None  # in the lineage only
    stored = (
        await llm_chat.get(f"/v1/conversations/{conversation_id}/turns/{second['turn_id']}/lineage")
    ).json()
    assert stored["lineage"]["context"] == context


async def test_a_returning_users_memory_is_in_the_models_context_and_named_in_lineage(
    llm_chat: httpx.AsyncClient, recording_llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = recording_llm
    user, run = f"ctx-user-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
    consent = await llm_chat.put(f"/v1/users/{user}/memory/consent", json={"consented": True})
    assert consent.status_code == 200, consent.text
    for conversation_id in (f"first-{run}", f"second-{run}"):
        created = await llm_chat.post("/v1/conversations", json={"id": conversation_id, "user": user})
        assert created.status_code == 201, created.text
    await turn(llm_chat, f"first-{run}", "hello, my name is Anna and please deliver to Leeds")

    async def kept() -> list[str]:
        items = (await llm_chat.get(f"/v1/users/{user}/memory")).json()["items"]
        return sorted(item["kind"] for item in items) if len(items) == 2 else []

    assert await eventually(kept, "the name and the city kept") == ["city", "name"]
    answered = await turn(llm_chat, f"second-{run}", "How much does express shipping cost?")
    messages = answers(fake)[-1]["messages"]
    (remembered,) = [m for m in messages if m["content"].startswith(MEMORY_HEADING)]
    assert "name: Anna" in remembered["content"] and "city: Leeds" in remembered["content"]
    lineage = answered["lineage"]
    assert sorted(lineage["context"]["remembered"]) == ["city: Leeds", "name: Anna"]
    assert lineage["context"]["messages_sha256"] == messages_digest(messages)
    assert sorted(item["kind"] for item in lineage["memory"]) == ["city", "name"]
    # Another user's conversation shows the model nothing of hers.
    await llm_chat.post("/v1/conversations", json={"id": f"other-{run}", "user": f"{user}-other"})
    await turn(llm_chat, f"other-{run}", "How much does express shipping cost?")
    assert not any(m["content"].startswith(MEMORY_HEADING) for m in answers(fake)[-1]["messages"])


async def test_the_model_notes_what_a_consenting_user_says_of_themself_after_its_answer(
    llm_chat: httpx.AsyncClient, recording_llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = recording_llm
    run = uuid.uuid4().hex[:6]
    sofia, other = f"sofia-{run}", f"other-{run}"
    said = "I'm Sofia, from Bristol, sofia@example.com. How much does express shipping cost?"
    # Not consenting: the model answers, and is asked nothing more.
    await llm_chat.post("/v1/conversations", json={"id": f"o-{run}", "user": other})
    await turn(llm_chat, f"o-{run}", said)
    await llm_chat.put(f"/v1/users/{sofia}/memory/consent", json={"consented": True})
    await llm_chat.post("/v1/conversations", json={"id": f"s-{run}", "user": sofia})
    answered = await turn(llm_chat, f"s-{run}", said)
    assert answered["lineage"]["context"]["memory_notes"] is True

    async def kept() -> dict[str, dict[str, Any]] | None:
        items = (await llm_chat.get(f"/v1/users/{sofia}/memory")).json()["items"]
        return {item["kind"]: item for item in items} if len(items) == 2 else None

    items = await eventually(kept, "the model's notes kept", within=30)
    assert (items["name"]["value"], items["city"]["value"]) == (
        "Sofia",
        "Bristol",
    )  # rules would find neither
    assert (items["city"]["source"], items["city"]["conversation_id"]) == ("model", f"s-{run}")
    assert items["city"]["turn_id"] == answered["turn_id"]
    notes = [body for body in fake.requests if notes_request(body)]
    assert len(notes) == 1  # for Sofia's turn only: the other user does not consent
    assert [tool["function"]["name"] for tool in notes[0]["tools"]] == ["remember", "forget"]
    assert "[EMAIL]" in notes[0]["messages"][-1]["content"] and "sofia@" not in str(notes[0])
    assert (await llm_chat.get(f"/v1/users/{other}/memory")).json()["items"] == []


def test_the_users_memory_goes_after_the_summary_within_the_budget() -> None:
    summary = RollingSummary(text="They asked about returns.", through=1, version=1)
    kept = assemble(
        system="S",
        current="and shipping?",
        earlier=said(("a", "b"), ("c", "d")),
        summary=summary,
        budget=1000,
        counter=ESTIMATED,
        remembered=["name: Anna"],
    )
    assert kept.messages[2] == {"role": "system", "content": MEMORY_HEADING + "name: Anna"}
    assert kept.lineage.remembered == ["name: Anna"]
    tight = assemble(
        system="S",
        current="and shipping?",
        earlier=[],
        summary=None,
        budget=20,
        counter=ESTIMATED,
        remembered=["name: " + "Anna " * 50],
    )
    assert (
        tight.lineage.remembered == [] and "the user's memory did not fit the budget" in tight.lineage.notes
    )


def is_summary_request(body: dict[str, Any]) -> bool:
    return "running summary" in body["messages"][0]["content"]


@pytest.fixture
async def small_budget_chat(
    client: Client, settings: Settings, tmp_path: Path, recording_llm: tuple[FakeLlm, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """As `llm_chat`, with a context budget of a few turns: older ones must be summarized."""
    _, url = recording_llm
    chat_settings = settings.model_copy(
        update={
            "generator": "openai",
            "llm_base_url": url,
            "llm_model": "gpt-4o-mini",
            "bot_path": bot_with(settings, tmp_path, llm={"context_tokens": 60}),
            "turns_per_run": 3,  # the summary must survive continue-as-new
        }
    )
    async with (
        worker_for(client, chat_settings),
        api_client(create_app(chat_settings, temporal=client)) as http,
    ):
        yield http


QUESTIONS = [
    "How much does express shipping cost?",
    "How long does standard shipping take?",
    "Can I return an item after 30 days?",
    "Which countries do you ship to?",
    "How much does express shipping cost again?",
]


async def wait_for_summary(http: httpx.AsyncClient, conversation_id: str) -> dict[str, Any]:
    for _ in range(100):
        state = (await http.get(f"/v1/conversations/{conversation_id}")).json()
        if state["rolling_summary"] is not None:
            summary: dict[str, Any] = state["rolling_summary"]
            return summary
        await asyncio.sleep(0.1)
    raise AssertionError("no summary")


async def test_turns_past_the_budget_are_folded_into_a_summary_the_next_calls_see(
    small_budget_chat: httpx.AsyncClient, recording_llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = recording_llm
    fake.route = lambda body: (
        Plan(text="The customer asked about shipping prices.") if is_summary_request(body) else None
    )
    conversation_id = f"sum-{uuid.uuid4().hex[:6]}"
    replies = [await turn(small_budget_chat, conversation_id, q) for q in QUESTIONS[:3]]
    dropped = replies[-1]["lineage"]["context"]["dropped"]
    assert dropped, replies[-1]["lineage"]["context"]  # the budget no longer holds every turn

    summary = await wait_for_summary(small_budget_chat, conversation_id)
    assert summary["text"] == "The customer asked about shipping prices."
    sent = replies[-1]["lineage"]["context"]["turns"]
    through = max(max(dropped) + 1, sent[len(sent) // 2] if sent else 0)
    assert (summary["version"], summary["through"], summary["generator"]) == (
        1,
        through,
        "openai:gpt-4o-mini",
    )
    asked = next(r for r in fake.requests if is_summary_request(r))["messages"][0]["content"]
    assert f"Customer: {QUESTIONS[0]}" in asked  # the dropped turn, folded

    after = await turn(small_budget_chat, conversation_id, QUESTIONS[3])
    context = after["lineage"]["context"]
    assert (context["summary_version"], context["summary_through"]) == (1, summary["through"])
    # The answer's request: a fold of the older turns may be asked for after it, once the reply is out.
    sent = next(r for r in reversed(fake.requests) if not is_summary_request(r))["messages"]
    assert sent[1] == {"role": "system", "content": SUMMARY_HEADING + summary["text"]}
    assert QUESTIONS[0] not in str(sent)  # in the summary, not verbatim
    state = (await small_budget_chat.get(f"/v1/conversations/{conversation_id}")).json()
    assert state["run"] > 1 and state["rolling_summary"]["version"] >= 1  # carried into the next run


async def test_a_failed_summary_leaves_the_verbatim_window_and_says_so(
    small_budget_chat: httpx.AsyncClient, recording_llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = recording_llm
    fake.route = lambda body: Plan(status=500) if is_summary_request(body) else None
    conversation_id = f"nosum-{uuid.uuid4().hex[:6]}"
    for question in QUESTIONS[:3]:
        await turn(small_budget_chat, conversation_id, question)

    async def summary_failed() -> bool:
        state = (await small_budget_chat.get(f"/v1/conversations/{conversation_id}")).json()
        return bool(state["summary_failed"])

    await eventually(summary_failed, "the workflow to give up on the summary", within=30)
    assert sum(is_summary_request(r) for r in fake.requests) >= 3  # three attempts, then it gave up
    after = await turn(small_budget_chat, conversation_id, QUESTIONS[3])
    context = after["lineage"]["context"]
    assert not after["degraded"] and context["summary_version"] is None and context["dropped"]
    assert "the last summary failed: older turns are left out" in context["notes"]
    state = (await small_budget_chat.get(f"/v1/conversations/{conversation_id}")).json()
    assert state["rolling_summary"] is None and state["status"] == "active"


async def test_a_follow_up_is_answered_from_the_right_passages_without_a_model(
    http: httpx.AsyncClient,
) -> None:
    """The built-in pipeline: "what about Austria?" is out of scope for the NLU alone; after an answer about
    express shipping it continues that topic, searched with the standalone question. ("and to Austria?",
    asked here before, sits on the NLU's line: a fresh install's packages put it in shipping_info at 0.38.)"""
    conversation_id = f"follow-{uuid.uuid4().hex[:6]}"
    await turn(http, conversation_id, "How much does express shipping cost?")
    follow = await turn(http, conversation_id, "what about Austria?")
    assert follow["nlu"]["intent"]["name"] == "out_of_scope" and not follow["degraded"]
    assert "Austria" in follow["reply"]["text"] and follow["reply"]["sources"][0]["document_id"] == "shipping"
    assert follow["lineage"]["retrieval_query"] == "what about Austria? (much express shipping cost)"
    state = (await http.get(f"/v1/conversations/{conversation_id}")).json()
    assert (state["last_intent"], state["last_action"]) == ("shipping_info", "answer")


async def test_with_an_llm_a_follow_up_is_rewritten_by_the_model_and_answered_in_context(
    llm_chat: httpx.AsyncClient, recording_llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = recording_llm
    standalone = "How much does express shipping to Austria cost?"
    fake.route = lambda body: (
        Plan(text=standalone) if "standalone question" in body["messages"][0]["content"] else None
    )
    conversation_id = f"rewrite-{uuid.uuid4().hex[:6]}"
    first = await turn(llm_chat, conversation_id, "How much does express shipping cost?")
    fake.plans = [Plan(text="Yes, express shipping to Austria costs 12.90 euros too [1].")]
    follow = await turn(llm_chat, conversation_id, "and to Austria?")

    rewrite, answer = fake.requests[-2:]
    asked = rewrite["messages"][0]["content"]
    assert "Previous question: How much does express shipping cost?" in asked
    assert (
        f"Previous answer: {first['reply']['text']}" in asked and "Latest message: and to Austria?" in asked
    )
    said = [m["content"] for m in answer["messages"][1:] if "<document" not in m["content"]]
    assert said == ["How much does express shipping cost?", first["reply"]["text"], "and to Austria?"]
    assert follow["reply"]["text"] == "Yes, express shipping to Austria costs 12.90 euros too [1]."
    assert follow["lineage"]["context"]["retrieval_query"] == standalone
    assert follow["reply"]["sources"][0]["document_id"] == "shipping"
    assert "rewrite" in follow["timings_ms"]


async def test_a_variant_rollout_answers_with_the_bots_variant_settings_recorded_in_lineage(
    client: Client, settings: Settings, tmp_path: Path, recording_llm: tuple[FakeLlm, str]
) -> None:
    """`llm.variant` (another model, prompt and budget) for the conversations the `llm_variant` flag puts
    on it: here all of them, from the bot's flags."""
    fake, url = recording_llm
    variant = {
        "model": "gpt-4.1-mini",
        "prompt": "grounded_answer@v1",
        "context_tokens": 500,
        "temperature": 0.7,
    }
    bot = bot_with(settings, tmp_path, llm={"variant": variant}, flags={"llm_variant": True})
    rolled = settings.model_copy(
        update={"generator": "openai", "llm_base_url": url, "llm_model": "gpt-4o-mini", "bot_path": bot}
    )
    async with worker_for(client, rolled), api_client(create_app(rolled, temporal=client)) as http:
        reply = await turn(http, f"variant-{uuid.uuid4().hex[:6]}", "How much does express shipping cost?")
    lineage = reply["lineage"]
    assert (lineage["generator"], lineage["prompt_id"]) == ("openai:gpt-4.1-mini", "grounded_answer@v1")
    assert lineage["flags"]["llm_variant"] is True and lineage["context"]["budget"] == 500
    sent = fake.requests[-1]
    assert (sent["model"], sent["temperature"]) == ("gpt-4.1-mini", 0.7)


def test_the_extractive_summary_keeps_first_sentences_within_its_size() -> None:
    from dialogue.brain.llm.summary import MAX_SUMMARY_CHARS, extractive

    first = extractive(
        None, said(("How much is express? I need it fast.", "It costs 12.90 euros. It arrives tomorrow.")), 1
    )
    assert first.text == "Customer: How much is express? Assistant: It costs 12.90 euros."
    assert (first.version, first.through, first.generator) == (1, 1, "extractive")
    longer = first
    for n in range(1, 60):
        longer = extractive(longer, said((f"Question {n} about returns.", f"Answer {n}."), start=n), n + 1)
    assert len(longer.text) <= MAX_SUMMARY_CHARS and longer.version == 60
    assert "Answer 59." in longer.text and "Question 1 about" not in longer.text  # the oldest went first

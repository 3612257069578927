"""`dialogue.apps.client` against the real stack over real HTTP: typed answers, the turn sent again on 503 and
504 without a second turn, a stream resumed after its connection drops, the blocking client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import REGISTRY
from temporalio.client import Client
from temporalio.worker import Worker

from api import create_app
from dialogue.apps.client import AsyncDialogueClient, DialogueClient, DialogueError
from dialogue.apps.testing.stack import served
from dialogue.model.contracts import TurnReply
from dialogue.platform.settings import Settings
from tests.conftest import TEST_API_KEY, served_llm, worker_for
from tests.fake_llm import FakeLlm, Plan
from tests.waiting import eventually

QUESTION = "How much does express shipping cost?"  # answered by the model
ANSWER = "Express shipping costs 12.90 euros and arrives next day [1]."


def new_id() -> str:
    return f"cl-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def client_of(settings: Settings, temporal: Client) -> AsyncIterator[AsyncDialogueClient]:
    async with (
        served(create_app(settings, temporal=temporal)) as url,
        AsyncDialogueClient(url, TEST_API_KEY, retry_for=30) as dialogue,
    ):
        yield dialogue


@asynccontextmanager
async def slow_stack(
    client: Client, settings: Settings, plan: Plan, **changes: Any
) -> AsyncIterator[tuple[AsyncDialogueClient, str]]:
    async with served_llm(FakeLlm(plans=[plan])) as llm:
        changed = settings.model_copy(
            update={"generator": "openai", "llm_base_url": llm, "llm_model": "slow", **changes}
        )
        async with (
            worker_for(client, changed),
            served(create_app(changed, temporal=client)) as url,
            AsyncDialogueClient(url, TEST_API_KEY, retry_for=30) as dialogue,
        ):
            yield dialogue, url


async def test_a_conversations_life_in_typed_calls(
    client: Client, settings: Settings, worker: Worker
) -> None:
    async with client_of(settings, client) as dialogue:
        conversation_id = new_id()
        created = await dialogue.create_conversation(conversation_id, slots={"order_id": "NW-123456"})
        assert created.conversation_id == conversation_id
        reply = await dialogue.send_turn(conversation_id, "hello", idempotency_key="k1")
        assert isinstance(reply, TurnReply) and reply.reply.text and reply.turn_id == "k1"
        again = await dialogue.send_turn(conversation_id, "hello", idempotency_key="k1")
        assert again.turn_index == reply.turn_index  # the same turn, answered once
        messages = await dialogue.messages(conversation_id)
        assert [(m.role, m.turn_index) for m in messages.items] == [("user", 0), ("bot", 0)]
        lineage = await dialogue.lineage(conversation_id, "k1")
        assert lineage.turn_id == "k1" and lineage.lineage
        assert (await dialogue.rate(conversation_id, "k1", "up")).rating == "up"
        assert (await dialogue.conversation(conversation_id)).turn_count == 1
        held = await dialogue.hand_off(conversation_id, agent="ada")
        assert held.held_by == "agent"
        assert (await dialogue.send_agent_message(conversation_id, "Ada here.")).turn_index >= 1
        assert (await dialogue.hand_back(conversation_id)).held_by == "bot"
        assert (await dialogue.end_conversation(conversation_id)).status == "ended"
        with pytest.raises(DialogueError) as ended:
            await dialogue.send_turn(conversation_id, "still there?")
        assert (ended.value.status, ended.value.code) == (409, "conversation_ended")
        await dialogue.erase_conversation(conversation_id)

        stored = await dialogue.add_document("client-doc", "# Gift wrap\n\nGift wrap costs 3 euros.")
        assert stored.changed and (await dialogue.document("client-doc")).title == "Gift wrap"
        await dialogue.delete_document("client-doc")
        with pytest.raises(DialogueError) as gone:
            await dialogue.document("client-doc")
        assert gone.value.code == "document_not_found"

        key = await dialogue.create_key("client", name="from the client")
        assert key.id in [k.id for k in await dialogue.keys()]
        async with AsyncDialogueClient(str(dialogue._http.base_url), key.key) as as_client:
            assert (await as_client.me()).scope == "client"
        await dialogue.revoke_key(key.id)

        # The integrator's server mints its user a token; the user's client is that user, a client. A user
        # of this test alone: Temporal is shared by the tests, and erasing a user finds all of theirs.
        user = f"client-user-{new_id()}"
        minted = await dialogue.create_end_user_token(user, ttl_seconds=300)
        async with AsyncDialogueClient(str(dialogue._http.base_url), minted.token) as as_user:
            assert (await as_user.me()).user == user
            mine = (await as_user.send_turn(new_id(), "hello")).conversation_id

            async def listed() -> list[str]:
                return [c.conversation_id for c in (await as_user.user_conversations(user)).items]

            assert await eventually(listed, "the user's conversation listed") == [mine]
            with pytest.raises(DialogueError) as theirs:
                await as_user.user_conversations("NWC-100002")
            assert theirs.value.code == "forbidden"
        page = await dialogue.user_conversations(user, status="active")
        assert [c.conversation_id for c in page.items] == [mine]
        exported = await dialogue.export_user(user)
        assert [c.conversation_id for c in exported.conversations] == [mine]
        assert exported.conversations[0].messages[0].text == "hello"
        assert (await dialogue.set_memory_consent(user, True)).consented is True
        assert (await dialogue.remember(user, "city", "Leeds")).value == "Leeds"
        assert [i.kind for i in (await dialogue.user_memory(user)).items] == ["city"]
        await dialogue.forget(user, "city")
        assert (await dialogue.user_memory(user)).items == []
        erased = await dialogue.erase_user(user)
        assert erased.conversations == [mine]
        assert (await dialogue.export_user(user)).conversations == []


async def test_a_shed_turn_is_sent_again_after_retry_after(client: Client, settings: Settings) -> None:
    plan = Plan(text=ANSWER, delay=1.5)
    async with slow_stack(client, settings, plan, max_turns_in_flight=1) as (dialogue, _):
        shed_before = REGISTRY.get_sample_value("dialogue_turns_shed_total") or 0
        first, second = await asyncio.gather(
            dialogue.send_turn(new_id(), QUESTION), dialogue.send_turn(new_id(), QUESTION)
        )
    assert ANSWER in first.reply.text and ANSWER in second.reply.text
    assert (
        REGISTRY.get_sample_value("dialogue_turns_shed_total") or 0
    ) > shed_before  # one was shed, then sent again


async def test_a_reply_late_past_the_apis_wait_is_collected_with_the_same_key(
    client: Client, settings: Settings
) -> None:
    plan = Plan(text=ANSWER, delay=2.0)
    async with slow_stack(client, settings, plan, turn_timeout_seconds=0.5) as (dialogue, _):
        conversation_id = new_id()
        reply = await dialogue.send_turn(conversation_id, QUESTION)  # answered 504 three times or so
        messages = await dialogue.messages(conversation_id)
    assert ANSWER in reply.reply.text
    assert [(m.role, m.turn_index) for m in messages.items] == [("user", 0), ("bot", 0)]  # one turn


class DroppingProxy:
    """A TCP proxy in front of the API that cuts its first connection once `after` bytes of the answer
    went through: a stream's connection lost mid-turn, as a flaky network loses it."""

    def __init__(self, upstream_port: int, after: int) -> None:
        self.upstream_port, self.after, self.dropped = upstream_port, after, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        cut = self.dropped == 0
        if cut:
            self.dropped += 1

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            while data := await source.read(256):
                sink.write(data)
                await sink.drain()
                sent += len(data)
                if limit is not None and sent >= limit:
                    break
            sink.close()

        await asyncio.gather(
            pipe(reader, up_writer, None),
            pipe(up_reader, writer, self.after if cut else None),
            return_exceptions=True,
        )
        for stream in (writer, up_writer):
            stream.close()


async def test_a_stream_cut_mid_turn_resumes_where_it_stopped(client: Client, settings: Settings) -> None:
    plan = Plan(text=ANSWER, token_delay=0.1)
    async with slow_stack(client, settings, plan) as (_, url):
        proxy = DroppingProxy(int(url.rsplit(":", 1)[1]), after=900)
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, AsyncDialogueClient(f"http://127.0.0.1:{port}", TEST_API_KEY) as dialogue:
            conversation_id = new_id()
            events = [event async for event in dialogue.stream_turn(conversation_id, QUESTION)]
            messages = await dialogue.messages(conversation_id)
    assert proxy.dropped == 1
    ids = [int(e.id) for e in events if e.id and e.event != "final"]  # the final's id repeats the last one's
    assert ids == sorted(set(ids)), "an event was seen twice or out of order"
    assert events[-1].event == "final" and ANSWER in events[-1].reply().reply.text
    tokens = "".join(e.data["text"] for e in events if e.event == "token")
    assert tokens.strip() == ANSWER  # every token once, across the two connections
    assert [(m.role, m.turn_index) for m in messages.items] == [("user", 0), ("bot", 0)]


async def test_the_blocking_client(client: Client, settings: Settings, worker: Worker) -> None:
    async with served(create_app(settings, temporal=client)) as url:

        def talk() -> tuple[str, list[str]]:
            with DialogueClient(url, TEST_API_KEY) as dialogue:
                reply = dialogue.send_turn("blocking-1", "hello")
                events = [event.event for event in dialogue.stream_turn("blocking-1", "thanks")]
                return reply.reply.text, events

        text, events = await asyncio.to_thread(talk)
    assert text and events[-1] == "final"

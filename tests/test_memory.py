"""End users' memory across conversations, against the real stack (Temporal dev server, a worker, the API
over real HTTP, the SQLite store): consent first, what a user says of themself kept with its source, used
by the next conversation's greeting and named in its lineage, seen, corrected and forgotten by the user,
and never another user's or another tenant's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from dialogue.brain.memory import MemoryRequest, consent_in, facts_in, request_in
from dialogue.model.contracts import (
    Entity,
    IntentPrediction,
    NluResult,
    RecordConversationRequest,
    RecordTurnRequest,
)
from dialogue.platform import memory, store
from dialogue.platform.db import get_engine, init_db
from dialogue.platform.settings import Settings
from dialogue.security.identity import create_key
from tests.security.test_end_users import bearer, say, token_for
from tests.waiting import eventually

ANNA, BEN = "NWC-100001", "NWC-100002"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("Hi, my name is anna and I live in Leeds", {"name": "Anna", "city": "Leeds"}),
        ("My name is Anna Smith, please deliver to New York", {"name": "Anna Smith", "city": "New York"}),
        ("could you answer in german please", {"language": "German"}),
        ("call me back later", {}),
        ("I live in my car", {}),
        ("ship it to the office", {}),
        ("I'm in Leeds", {}),  # unsure: nothing
        ("where is my order NW-482913?", {"order": "NW-482913"}),
    ],
)
def test_the_rules_read_what_a_user_says_of_themself_and_nothing_when_unsure(
    text: str, facts: dict[str, str]
) -> None:
    entities = [Entity(entity="order_id", value="NW-482913", start=0, end=9)] if "NW-" in text else []
    assert {f.kind: f.value for f in facts_in(text, entities)} == facts


@pytest.mark.unit
def test_the_rules_read_a_request_to_see_or_forget() -> None:
    assert request_in("What do you know about me?") == MemoryRequest("show")
    assert request_in("please forget my address") == MemoryRequest("forget", ("city",))
    assert request_in("forget my name and my order") == MemoryRequest("forget", ("name", "order"))
    assert request_in("forget everything") == MemoryRequest("forget")
    assert request_in("I forgot my password") is None
    assert request_in("where is my order?") is None


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("yes", True),
        ("Yes please!", True),
        ("sure, go ahead", True),
        ("no", False),
        ("no thanks", False),
        ("don't", False),
        ("where is my order?", None),
        ("no idea, how much is shipping to Austria these days?", None),  # about something else
        ("thanks", None),
    ],
)
def test_the_rules_read_a_yes_or_no_to_the_offer_to_remember(text: str, answer: bool | None) -> None:
    assert consent_in(text) is answer


def _turn(key: str, user: str, text: str) -> RecordTurnRequest:
    return RecordTurnRequest(
        user=user,
        conversation_id=key,
        turn_id=f"t-{uuid.uuid4().hex[:6]}",
        turn_index=0,
        user_text=text,
        reply=None,
        nlu=NluResult(intent=IntentPrediction(name="greet", confidence=1.0)),
        at=datetime.now(UTC),
    )


def test_the_store_keeps_nothing_without_consent_and_each_users_own(tmp_path: Path) -> None:
    engine: Engine = get_engine(f"sqlite:///{tmp_path}/memory.db")
    init_db(engine)
    now = datetime.now(UTC)
    for key, user in (("t1/a", "ann"), ("t1/b", "bob"), ("t2/a", "ann")):
        store.record_conversation(
            engine, RecordConversationRequest(conversation_id=key, status="active", at=now, user=user)
        )
    said = {"name": "Ann"}
    store.record_turn(engine, _turn("t1/a", "ann", "my name is Ann"), remembered=said)
    assert memory.items(engine, tenant="t1", user="ann") == []  # not asked: nothing kept
    memory.set_consent(engine, tenant="t1", user="ann", consented=True, by="test", at=now)
    store.record_turn(engine, _turn("t1/a", "ann", "my name is Ann"), remembered=said)
    store.record_turn(
        engine, _turn("t1/b", "bob", "my name is Bob"), remembered={"name": "Bob"}
    )  # no consent
    store.record_turn(engine, _turn("t2/a", "ann", "my name is Ann"), remembered=said)  # t2's ann: no consent
    (item,) = memory.items(engine, tenant="t1", user="ann")
    assert (item.kind, item.value, item.source, item.conversation_id) == ("name", "Ann", "user", "t1/a")
    assert (
        memory.items(engine, tenant="t1", user="bob") == memory.items(engine, tenant="t2", user="ann") == []
    )
    # Withdrawing consent forgets everything at once, and nothing is kept after.
    _, forgotten = memory.set_consent(engine, tenant="t1", user="ann", consented=False, by="test", at=now)
    store.record_turn(engine, _turn("t1/a", "ann", "my name is Ann"), remembered=said)
    assert forgotten == 1 and memory.items(engine, tenant="t1", user="ann") == []
    # Retention forgets an item once its own expiry has passed, and only then.
    memory.set_consent(engine, tenant="t1", user="ann", consented=True, by="test", at=now)
    for kind, days in (("name", -1), ("city", 30)):
        memory.remember(
            engine,
            tenant="t1",
            user="ann",
            kind=kind,
            value="x",
            source="api",
            at=now,
            expires_at=now + timedelta(days=days),
        )
    assert memory.expire(engine, now=now) == 1
    assert [item.kind for item in memory.items(engine, tenant="t1", user="ann")] == ["city"]


async def _greeting(http: httpx.AsyncClient, token: str, conversation: str) -> dict[str, Any]:
    answered = await say(http, token, conversation, "hello", **{"Idempotency-Key": "hi"})
    assert answered.status_code == 200, answered.text
    lineage = await http.get(f"/v1/conversations/{conversation}/turns/hi/lineage", headers=bearer(token))
    assert lineage.status_code == 200, lineage.text
    return {"text": answered.json()["reply"]["text"], "memory": lineage.json()["lineage"]["memory"]}


async def test_a_returning_user_is_greeted_from_their_memory_and_controls_it(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    anna, ben = await token_for(http, ANNA), await token_for(http, BEN)
    run = uuid.uuid4().hex[:6]
    memory_of_anna = f"/v1/users/{ANNA}/memory"

    # Not asked yet: what she says is not kept.
    assert (await say(http, anna, f"a0-{run}", "Hi, my name is Anna and I live in Leeds")).status_code == 200
    before = (await http.get(memory_of_anna, headers=bearer(anna))).json()
    assert before["consent"]["consented"] is None and before["items"] == []

    consented = await http.put(f"{memory_of_anna}/consent", json={"consented": True}, headers=bearer(anna))
    assert consented.status_code == 200 and consented.json()["consented"] is True
    first = f"a1-{run}"
    stated = await say(
        http, anna, first, "Hi, my name is Anna and please deliver to Leeds", **{"Idempotency-Key": "said"}
    )
    assert stated.status_code == 200, stated.text

    async def kept() -> dict[str, dict[str, Any]]:
        items = (await http.get(memory_of_anna, headers=bearer(anna))).json()["items"]
        return {item["kind"]: item for item in items}

    async def both_kept() -> dict[str, dict[str, Any]] | None:
        items = await kept()
        return items if len(items) == 2 else None

    items = await eventually(both_kept, "Anna's name and city kept", within=30)
    assert items["name"]["value"] == "Anna" and items["city"]["value"] == "Leeds"
    assert (items["name"]["source"], items["name"]["conversation_id"], items["name"]["turn_id"]) == (
        "user",
        first,
        "said",
    )

    # Her next conversation greets her by name and offers the city; the lineage names both items.
    greeted = await _greeting(http, anna, f"a2-{run}")
    assert "Anna" in str(greeted["text"]) and "Leeds" in str(greeted["text"])
    assert sorted(m["kind"] for m in greeted["memory"]) == ["city", "name"]
    # Ben is greeted as anyone is; he cannot read Anna's memory; another tenant's key finds no Anna there.
    assert "Anna" not in str((await _greeting(http, ben, f"b1-{run}"))["text"])
    assert (await http.get(memory_of_anna, headers=bearer(ben))).status_code == 403
    other = create_key(get_engine(settings.resolved_database_url), tenant="globex", scope="client")[1]
    assert (await http.get(memory_of_anna, headers=bearer(other))).json()["items"] == []

    # "What do you know about me?" reads it out; "forget my address" forgets the city everywhere.
    third = f"a3-{run}"
    shown = await say(http, anna, third, "What do you know about me?")
    assert "Anna" in shown.json()["reply"]["text"] and "Leeds" in shown.json()["reply"]["text"]
    forgot = await say(http, anna, third, "please forget my address")
    assert forgot.status_code == 200 and "forgotten" in forgot.json()["reply"]["text"]
    assert sorted((await kept()).keys()) == ["name"]
    again = await _greeting(http, anna, f"a4-{run}")
    assert "Anna" in str(again["text"]) and "Leeds" not in str(again["text"])

    # Over the API: read, correct, delete one item; the server's key may too.
    corrected = await http.put(f"{memory_of_anna}/items/name", json={"value": "Ann"}, headers=bearer(anna))
    assert corrected.status_code == 200 and corrected.json()["source"] == "api"
    assert (await http.get(f"{memory_of_anna}/items/name")).json()["value"] == "Ann"
    assert (await http.delete(f"{memory_of_anna}/items/name", headers=bearer(anna))).status_code == 204
    missing = await http.delete(f"{memory_of_anna}/items/name")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "memory_item_not_found"

    # Withdrawn: everything goes, and nothing more is kept or may be set.
    await http.put(f"{memory_of_anna}/items/city", json={"value": "York"})
    withdrawn = await http.put(f"{memory_of_anna}/consent", json={"consented": False}, headers=bearer(anna))
    assert withdrawn.json()["forgotten"] == 1 and (await kept()) == {}
    refused = await http.put(f"{memory_of_anna}/items/name", json={"value": "Ann"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "memory_not_consented"
    assert (await say(http, anna, f"a5-{run}", "my name is Anna")).status_code == 200
    assert (await kept()) == {}


async def test_a_user_asked_in_the_conversation_consents_by_saying_yes_and_declines_by_saying_no(
    http: httpx.AsyncClient,
) -> None:
    anna, ben = await token_for(http, ANNA), await token_for(http, BEN)
    run = uuid.uuid4().hex[:6]
    first = f"y1-{run}"

    # Never asked: the reply asks, and nothing is kept yet.
    stated = await say(
        http, anna, first, "Hi, my name is Anna, please deliver to Leeds", **{"Idempotency-Key": "said"}
    )
    assert stated.status_code == 200, stated.text
    assert "Would you like me to remember your name and your delivery city" in stated.json()["reply"]["text"]
    held = (await http.get(f"/v1/users/{ANNA}/memory", headers=bearer(anna))).json()
    assert held["consent"]["consented"] is None and held["items"] == []

    # Her yes is her consent: what she said is kept, with the turn that said it as its source.
    yes = await say(http, anna, first, "yes please")
    assert yes.status_code == 200, yes.text
    assert yes.json()["reply"]["text"].startswith("Thank you: I'll remember your name and your delivery city")
    held = (await http.get(f"/v1/users/{ANNA}/memory", headers=bearer(anna))).json()
    assert held["consent"]["consented"] is True and held["consent"]["by"] == f"said in {first}"
    items = {item["kind"]: item for item in held["items"]}
    assert (items["name"]["value"], items["city"]["value"]) == ("Anna", "Leeds")
    assert (items["city"]["source"], items["city"]["turn_id"]) == ("user", "said")
    greeted = await _greeting(http, anna, f"y2-{run}")
    assert "Anna" in str(greeted["text"]) and "Leeds" in str(greeted["text"])
    # Asked once: her answer stands, and the bot does not ask again.
    again = await say(http, anna, f"y3-{run}", "my name is Anna")
    assert "Would you like me to remember" not in again.json()["reply"]["text"]

    # Ben says no: nothing kept, never asked again; a message about something else lets the offer lapse.
    said = await say(http, ben, f"n1-{run}", "I'm Ben and I live in York")
    assert "Would you like me to remember" in said.json()["reply"]["text"]
    assert "won't remember" in (await say(http, ben, f"n1-{run}", "no thanks")).json()["reply"]["text"]
    declined = (await http.get(f"/v1/users/{BEN}/memory", headers=bearer(ben))).json()
    assert declined["consent"]["consented"] is False and declined["items"] == []
    later = await say(http, ben, f"n2-{run}", "my name is Ben and I live in York")
    assert "Would you like me to remember" not in later.json()["reply"]["text"]
    assert (await http.get(f"/v1/users/{BEN}/memory", headers=bearer(ben))).json()["items"] == []


async def test_a_flow_takes_the_order_a_returning_user_asked_about_from_memory_and_says_so(
    http: httpx.AsyncClient,
) -> None:
    anna = await token_for(http, ANNA)
    run = uuid.uuid4().hex[:6]
    await http.put(f"/v1/users/{ANNA}/memory/consent", json={"consented": True}, headers=bearer(anna))
    assert (await say(http, anna, f"o1-{run}", "where is my order NW-482913?")).status_code == 200

    async def order_kept() -> str | None:
        held = await http.get(f"/v1/users/{ANNA}/memory/items/order", headers=bearer(anna))
        return held.json()["value"] if held.status_code == 200 else None

    assert await eventually(order_kept, "the order kept", within=30) == "NW-482913"
    answered = await say(http, anna, f"o2-{run}", "where is my order?", **{"Idempotency-Key": "asked"})
    reply = answered.json()["reply"]
    assert reply["text"].startswith("Using NW-482913 from our last conversation.") and "DHL" in reply["text"]
    assert [m["kind"] for m in answered.json()["lineage"]["memory"]] == ["order"]
    # Without consent the flow asks, as for anyone.
    await http.put(f"/v1/users/{ANNA}/memory/consent", json={"consented": False}, headers=bearer(anna))
    asked = await say(http, anna, f"o3-{run}", "where is my order?")
    assert "order number" in asked.json()["reply"]["text"]


async def test_the_export_holds_the_users_memory_and_erasure_removes_it(http: httpx.AsyncClient) -> None:
    anna = await token_for(http, ANNA)
    run = uuid.uuid4().hex[:6]
    consented = await http.put(
        f"/v1/users/{ANNA}/memory/consent", json={"consented": True}, headers=bearer(anna)
    )
    assert consented.status_code == 200, consented.text
    said = await say(http, anna, f"m-{run}", "call me Anna, and ship to York please")
    assert said.status_code == 200, said.text

    async def exported() -> dict[str, Any]:
        memory_held: dict[str, Any] = (
            await http.get(f"/v1/users/{ANNA}/export", headers=bearer(anna))
        ).json()["memory"]
        return memory_held

    async def both_kept() -> dict[str, Any] | None:
        held = await exported()
        return held if len(held["items"]) == 2 else None

    held = await eventually(both_kept, "her memory exported", within=30)
    assert held["consent"]["consented"] is True
    assert sorted(i["value"] for i in held["items"]) == ["Anna", "York"]
    erased = await http.delete(f"/v1/users/{ANNA}")
    assert erased.status_code == 200 and erased.json()["rows"]["memory_items"] == 2
    after = await exported()
    assert after["items"] == [] and after["consent"]["consented"] is None

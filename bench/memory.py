"""The cost of end users' memory on a turn, and its size per user.

Side by side, round by round in one run, on a real SQLite store with the demo bot's templates:

- `greeting`: the greeting's reply of a returning user (the lookup of their memory and the template
  that names it: "Welcome back, Anna! Still delivering to Leeds?") beside the same greeting in a
  conversation without an end user (no lookup: the bot's plain template);
- `write`: a turn's transcript write that keeps what the user said of themself (a consent read and the
  items' upserts, in the same transaction) beside the same write for a conversation without an end user;
- `context`: what an LLM answer reads before it calls the model (the transcript, and the user's memory),
  for a returning user beside a conversation without an end user.

The code is the worker's (`ReplyComposer`, `activities.record.write_turn`), called in this process: what
memory adds is measured without Temporal's noise around it. Then the memory one user has after 100
conversations (each stating a name, a city, a language or an order, at random): its rows and bytes.

    .venv/bin/python -m bench.memory [--rounds 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from activities.context import read_conversation
from activities.generate import ReplyComposer
from activities.record import write_turn
from bench.streaming import RESULTS, header, percentiles
from dialogue.brain.generation.grounded import GroundedGenerator, Relevance
from dialogue.model.contracts import (
    ContextRequest,
    Entity,
    GenerateRequest,
    IntentPrediction,
    NluResult,
    RecordConversationRequest,
    RecordTurnRequest,
    Reply,
)
from dialogue.platform import memory, store
from dialogue.platform.bot import load_bot
from dialogue.platform.db import MemoryItem, get_engine, init_db

DEMO = Path(__file__).parent.parent / "examples" / "demo"
TENANT, USER = "default", "NWC-100001"
SAID = [
    "my name is Anna",
    "please deliver to Leeds",
    "could you answer in German",
    "where is my order NW-482913?",
    "call me Annabel",
    "ship to New York",
    "how much does express shipping cost?",
]


def greeting(turn: int, user: str | None) -> GenerateRequest:
    return GenerateRequest(
        text="hello",
        turn_index=turn,
        nlu=NluResult(intent=IntentPrediction(name="greet", confidence=0.99), action="respond"),
        context=ContextRequest(conversation_id=f"{TENANT}/bench-{turn}", turn_index=turn, user=user),
    )


def said(key: str, turn: int, text: str, user: str | None) -> RecordTurnRequest:
    order = text.find("NW-")  # the demo's order entity, as its NLU finds it
    entities = [Entity(entity="order_id", value=text[order : order + 9], start=order, end=order + 9)]
    return RecordTurnRequest(
        conversation_id=key,
        turn_id=f"t{turn}",
        turn_index=turn,
        user_text=text,
        reply=Reply(text="noted"),
        nlu=NluResult(
            intent=IntentPrediction(name="greet", confidence=0.99), entities=entities if order >= 0 else []
        ),
        at=datetime.now(UTC),
        user=user,
    )


async def run(rounds: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    engine = get_engine(f"sqlite:///{folder}/store.db")
    init_db(engine)
    now = datetime.now(UTC)
    memory.set_consent(engine, tenant=TENANT, user=USER, consented=True, by="bench", at=now)
    for kind, value in {"name": "Anna", "city": "Leeds", "language": "German", "order": "NW-482913"}.items():
        memory.remember(engine, tenant=TENANT, user=USER, kind=kind, value=value, source="api", at=now)
    bot = load_bot(DEMO / "bot.yaml")
    composer = ReplyComposer(
        bot,
        GroundedGenerator(Relevance()),
        recall=lambda tenant, user: memory.items(engine, tenant=tenant, user=user),
    )
    key_with, key_without = f"{TENANT}/with", f"{TENANT}/without"
    for key, user in ((key_with, USER), (key_without, None)):
        store.record_conversation(
            engine, RecordConversationRequest(conversation_id=key, status="active", at=now, user=user)
        )
    timings: dict[str, list[float]] = {
        "greeting_with_memory": [],
        "greeting_without": [],
        "write_with_memory": [],
        "write_without": [],
        "context_with_memory": [],
        "context_without": [],
    }
    checked = await composer.compose(greeting(0, USER))
    assert "Anna" in checked.text and checked.memory, checked
    for turn in range(rounds):
        # Alternate which side goes first: neither always gets the warmer cache.
        sides = [(USER, "greeting_with_memory"), (None, "greeting_without")]
        for user, name in sides if turn % 2 else reversed(sides):
            started = time.perf_counter()
            await composer.compose(greeting(turn, user))
            timings[name].append((time.perf_counter() - started) * 1000)
        text = SAID[turn % len(SAID)]
        writes = [(key_with, USER, "write_with_memory"), (key_without, None, "write_without")]
        for key, user, name in writes if turn % 2 else reversed(writes):
            started = time.perf_counter()
            await asyncio.to_thread(write_turn, engine, said(key, turn, text, user), 90.0)
            timings[name].append((time.perf_counter() - started) * 1000)
        reads = [(key_with, USER, "context_with_memory"), (key_without, None, "context_without")]
        for key, user, name in reads if turn % 2 else reversed(reads):
            context = ContextRequest(conversation_id=key, turn_index=turn, user=user)
            started = time.perf_counter()
            await asyncio.to_thread(read_conversation, engine, context)
            timings[name].append((time.perf_counter() - started) * 1000)
    measured = {name: percentiles(values) for name, values in timings.items()}
    added = {
        "greeting": round(measured["greeting_with_memory"]["p50"] - measured["greeting_without"]["p50"], 2),
        "write": round(measured["write_with_memory"]["p50"] - measured["write_without"]["p50"], 2),
        "context": round(measured["context_with_memory"]["p50"] - measured["context_without"]["p50"], 2),
    }
    return {"rounds": rounds, "ms": measured, "added_p50_ms": added, "size": size_after(100)}


def size_after(conversations: int) -> dict[str, Any]:
    """One consented user's memory after `conversations` conversations of 3 turns, each turn saying
    something of themself at random: one item per kind, whatever the number of conversations."""
    folder = Path(tempfile.mkdtemp(prefix="bench-memory-size-"))
    engine = get_engine(f"sqlite:///{folder}/store.db")
    init_db(engine)
    now = datetime.now(UTC)
    memory.set_consent(engine, tenant=TENANT, user=USER, consented=True, by="bench", at=now)
    pick = random.Random(7)
    for number in range(conversations):
        key = f"{TENANT}/c{number}-{uuid.uuid4().hex[:6]}"
        store.record_conversation(
            engine, RecordConversationRequest(conversation_id=key, status="active", at=now, user=USER)
        )
        for turn in range(3):
            write_turn(engine, said(key, turn, pick.choice(SAID), USER), 90.0)
    with Session(engine) as session:
        rows = session.exec(select(func.count()).select_from(MemoryItem)).one()
        items = session.exec(select(MemoryItem)).all()
    as_json = json.dumps([item.model_dump(mode="json") for item in items])
    return {"conversations": conversations, "items": rows, "json_bytes": len(as_json.encode())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=RESULTS / "memory.json")
    args = parser.parse_args()
    result = header("memory", **asyncio.run(run(args.rounds)))
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

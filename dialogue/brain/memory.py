"""What the built-in bot remembers of an end user, read from their words by rules: the facts and
preferences a support desk keeps (their name, delivery city, preferred language, the order last
discussed), the two requests a user makes of that memory ("what do you know about me?", "forget my
address"), and their spoken consent: the bot's offer to remember them and their yes or no.

Rules, not a model: they read the text as stored (redacted: an e-mail address or a phone number is never
remembered), run in microseconds on every turn, and say nothing when unsure: a name only after "my name
is" or "call me", a city only capitalised after "I live in" or "deliver to". A bot with a model may
write items too; these are the floor every bot has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.engine import Engine

from dialogue.model.contracts import Entity, MemoryOffer, MemoryUse, RecordTurnRequest, Reply
from dialogue.platform import memory
from dialogue.platform.db import MemoryItem

KINDS: Mapping[str, str] = {
    "name": "your name",
    "city": "your delivery city",
    "language": "the language you prefer",
    "order": "the order you last asked about",
}
"""What the rules remember, and how a reply names each to the user."""

ORDER_ENTITIES = frozenset({"order_id"})
"""Entities whose value is the order a user talks about (the demo's `order_id`)."""

_CAPITALISED = r"[A-Z][a-zA-Z'\-]+"
_NAME = re.compile(
    r"\b(?i:my name is|my name's|call me|i am called|i'm called)\s+(?P<first>[A-Za-z][a-zA-Z'\-]+)"
    rf"(?:\s+(?P<last>{_CAPITALISED}))?"
)
_CITY = re.compile(
    r"\b(?i:i live in|i'm based in|i am based in|deliver(?:ed|y)? to|ship(?:ped)? to|send it to)\s+"
    rf"(?P<value>{_CAPITALISED}(?:[\s\-]{_CAPITALISED})?)"
)
_LANGUAGES = ("english", "german", "french", "spanish", "italian", "dutch", "polish", "portuguese")
_LANGUAGE = re.compile(
    rf"\b(?:i prefer|i speak|answer (?:me )?in|reply (?:me )?in|write (?:to me )?in)\s+(?P<value>{'|'.join(_LANGUAGES)})\b",
    re.IGNORECASE,
)
_NOT_NAMES = frozenset(
    {
        "not",
        "a",
        "the",
        "so",
        "very",
        "just",
        "back",
        "here",
        "sorry",
        "still",
        "later",
        "when",
        "if",
        "at",
        "on",
        "now",
        "tomorrow",
        "please",
        "and",
        "by",
        "anything",
        "whatever",
    }
)
_NOT_PLACES = frozenset(
    {"My", "The", "A", "An", "Your", "Our", "This", "That", "Another", "Work", "Me", "Us"}
)

_SHOW = re.compile(
    r"\b(?:what do you (?:know|remember) about me|what have you (?:kept|stored|saved|remembered)|"
    r"what do you have on me|show (?:me )?(?:my|your) memory)\b",
    re.IGNORECASE,
)
_FORGET = re.compile(
    r"\b(?:forget|delete|remove|erase)\s+(?:about\s+)?(?P<what>everything|all(?: of it)?|me|my\s+[a-z ]+|"
    r"what you know(?: about me)?)",
    re.IGNORECASE,
)
_FORGET_WORDS: Mapping[str, str] = {
    "name": "name",
    "city": "city",
    "address": "city",
    "delivery": "city",
    "town": "city",
    "location": "city",
    "language": "language",
    "order": "order",
}
_YES = re.compile(
    r"^\s*(?:yes|yeah|yep|yup|sure|ok|okay|of course|please do|go ahead|fine|do it)\b", re.IGNORECASE
)
_NO = re.compile(r"^\s*(?:no|nope|nah|don't|do not|rather not|no thanks|never)\b", re.IGNORECASE)
_ANSWER_WORDS = 6
"""A yes or no to the offer is short: a longer message ("no idea, how much is shipping?") is about
something else, and the offer lapses."""


@dataclass(frozen=True)
class Fact:
    kind: str
    value: str


@dataclass(frozen=True)
class MemoryRequest:
    """A user's request of their memory: to see it, or to forget some kinds of it (all when `kinds` is
    empty for `forget`)."""

    action: Literal["show", "forget"]
    kinds: tuple[str, ...] = ()


def facts_in(text: str, entities: Iterable[Entity] = ()) -> list[Fact]:
    """The facts a user's message states of themself, at most one per kind (the last said)."""
    found: dict[str, str] = {}
    for match in _NAME.finditer(text):
        first, last = match["first"], match["last"]
        if first.lower() not in _NOT_NAMES:
            name = first[:1].upper() + first[1:]
            found["name"] = f"{name} {last}" if last and last.lower() not in _NOT_NAMES else name
    for match in _CITY.finditer(text):
        if match["value"].split()[0] not in _NOT_PLACES:
            found["city"] = match["value"]
    for match in _LANGUAGE.finditer(text):
        found["language"] = match["value"].capitalize()
    for entity in entities:
        if entity.entity in ORDER_ENTITIES:
            found["order"] = entity.value
    return [Fact(kind, value) for kind, value in found.items()]


def stated_in(turn: RecordTurnRequest) -> dict[str, str]:
    """What a turn's user said of themself, by kind, to remember with the turn (nothing for an agent's
    turn going on after approvals: no one said anything)."""
    if turn.resumes is not None:
        return {}
    return {fact.kind: fact.value for fact in facts_in(turn.user_text, turn.nlu.entities)}


def request_in(text: str) -> MemoryRequest | None:
    """Whether the message asks to see or to forget what is remembered of the user."""
    if _SHOW.search(text):
        return MemoryRequest("show")
    match = _FORGET.search(text)
    if match is None:
        return None
    what = match["what"].lower()
    if not what.startswith("my "):
        return MemoryRequest("forget")  # everything, me, all of it
    kinds = tuple(dict.fromkeys(_FORGET_WORDS[w] for w in re.findall(r"[a-z]+", what) if w in _FORGET_WORDS))
    return MemoryRequest("forget", kinds) if kinds else None


def consent_in(text: str) -> bool | None:
    """The user's answer to the bot's offer to remember them: True for yes, False for no, None when the
    message answers something else."""
    if len(text.split()) > _ANSWER_WORDS:
        return None
    if _NO.search(text):  # first: "no thanks" must not read as a yes to "thanks"
        return False
    return True if _YES.search(text) else None


def offer(facts: Mapping[str, str]) -> str:
    """The question a reply ends with when the user said something worth remembering (`memory.ask`)."""
    named = " and ".join(KINDS.get(kind, kind.replace("_", " ")) for kind in facts)
    return f"Would you like me to remember {named} for your next conversations? You can say yes or no."


def consent_answered(
    engine: Engine,
    *,
    conversation_id: str,
    user: str,
    offered: MemoryOffer,
    consented: bool,
    at: datetime,
    expires_at: datetime | None,
) -> Reply:
    """Record the user's yes or no to the offer (their consent, as ticking the box on the chat page
    would) and, on yes, keep what they said when it was made."""
    tenant = memory.tenant_of(conversation_id)
    said_in = conversation_id.partition("/")[2]  # the conversation as the tenant names it
    memory.set_consent(engine, tenant=tenant, user=user, consented=consented, by=f"said in {said_in}", at=at)
    if not consented:
        return Reply(text="All right: I won't remember anything about you.", generator="memory")
    kept = [
        memory.remember(
            engine,
            tenant=tenant,
            user=user,
            kind=kind,
            value=value,
            source="user",
            at=at,
            conversation_id=conversation_id,
            turn_id=offered.turn_id,
            expires_at=expires_at,
        )
        for kind, value in offered.facts.items()
    ]
    items = [item for item in kept if item is not None]
    named = " and ".join(KINDS.get(item.kind, item.kind) for item in items) or "what you tell me"
    return Reply(
        text=f'Thank you: I\'ll remember {named}. Ask "what do you know about me?" or say "forget …" any time.',
        generator="memory",
        memory=[memory_use(item) for item in items],
    )


def answered(engine: Engine, tenant: str, user: str, asked: MemoryRequest) -> Reply:
    """The reply to an end user's request of their memory, once done: what is remembered of them, or that
    it is forgotten (from their memory everywhere, not only from this conversation)."""
    if asked.action == "show":
        items = memory.items(engine, tenant=tenant, user=user)
        return Reply(
            text=described([(item.kind, item.value) for item in items]),
            generator="memory",
            memory=[memory_use(item) for item in items],
        )
    memory.forget(engine, tenant=tenant, user=user, kinds=asked.kinds)
    return Reply(text=forgotten(asked.kinds), generator="memory")


def memory_use(item: MemoryItem) -> MemoryUse:
    """An item as the lineage of the reply that used it names it."""
    return MemoryUse(
        id=item.id,
        kind=item.kind,
        source=item.source,
        conversation_id=item.conversation_id,
        turn_id=item.turn_id,
    )


def described(items: Sequence[tuple[str, str]]) -> str:
    """What is remembered, as the bot says it: `items` as (kind, value)."""
    if not items:
        return "I don't remember anything about you."
    said = "; ".join(f"{KINDS.get(kind, kind.replace('_', ' '))}: {value}" for kind, value in items)
    return f'Here is what I remember about you: {said}. Say "forget my …" and I will.'


def forgotten(kinds: Sequence[str]) -> str:
    """The reply once these kinds are forgotten (all of them when empty)."""
    if not kinds:
        return "Done: I've forgotten everything I remembered about you."
    return "Done: I've forgotten " + " and ".join(KINDS.get(kind, kind) for kind in kinds) + "."

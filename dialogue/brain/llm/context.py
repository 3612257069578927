"""The conversation an LLM call sees, within a token budget.

    system prompt (instructions; bounded by itself, outside the budget)
    a summary of the older turns, when there is one
    the most recent turns, verbatim, whole turns only, as many as fit
    the retrieved passages, as data in a message of their own (bounded by themselves, outside the budget)
    the current message (cut to the budget, with a marker, if it alone is too long)

(Prompts written before passages had a message of their own, `grounded_answer@v1` and `@v2`, hold the
passages in the system prompt; answers recorded with them are rebuilt as they were sent.)

The budget (`llm.context_tokens` of the bot) covers the summary, the turns and the current
message. Newer turns go in first; the first turn that does not fit ends the window, so what the
model sees is contiguous. Turns left out that the summary does not cover yet are `dropped`:
the workflow folds them into the summary next. Every message is redacted by the bot's privacy
policy before it leaves, whatever was stored. The same inputs give the same messages, so what
the model saw can be built again from a conversation's history (`messages_sha256` in lineage).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Literal, get_args

import orjson

from dialogue.brain.llm.tokenizer import MESSAGE_OVERHEAD, TokenCounter
from dialogue.model.contracts import ContextLineage, MemoryUse, RollingSummary

TRUNCATED = " … [message cut: too long]"
SUMMARY_HEADING = "Summary of the earlier conversation: "
MEMORY_HEADING = (
    "What the user let us remember about them from earlier conversations (use it where it helps, and do not "
    "ask for it again): "
)
AGENT_PREFIX = "[A person from our support team wrote:] "
NOTE_PREFIX = "[Note: "

Role = Literal["user", "bot", "agent", "system"]
ROLES: frozenset[str] = frozenset(get_args(Role))
ChatMessage = dict[str, str]


@dataclass(frozen=True)
class Said:
    """One entry of the transcript, as the store (or a history) has it."""

    index: int
    """The turn's place in the conversation: a user's words and the bot's reply share one."""
    role: Role
    text: str


@dataclass(frozen=True)
class Conversation:
    """What the transcript holds before the current turn, for a generator that sends it to a model."""

    earlier: Sequence[Said] = ()
    summary: RollingSummary | None = None
    expected: range | None = None
    """The places that should be in `earlier` (those the summary does not cover)."""
    unread_before: int | None = None
    """Places before this one were not read (too old for any budget): dropped, for the summary to fold."""
    notes: tuple[str, ...] = ()
    remembered: tuple[str, ...] = ()
    """What is remembered of the end user, one `kind: value` line per item (with their consent)."""
    memory: tuple[MemoryUse, ...] = ()
    """Those items, as the lineage of an answer that saw them names them."""
    consented: bool = False
    """The end user agreed to be remembered (what the model may note of the turn, after the reply)."""


@dataclass(frozen=True)
class Context:
    messages: list[ChatMessage]
    lineage: ContextLineage


def assemble(
    *,
    system: str,
    current: str,
    earlier: Sequence[Said],
    summary: RollingSummary | None,
    budget: int,
    counter: TokenCounter,
    redact: Callable[[str], str] = str,
    expected: range | None = None,
    unread_before: int | None = None,
    notes: Sequence[str] = (),
    documents: Sequence[ChatMessage] = (),
    remembered: Sequence[str] = (),
) -> Context:
    """The messages of one LLM call. `earlier`: transcript entries before the current turn (any order),
    those the summary covers left out; `expected`: the places that should be there (the ones missing,
    e.g. not recorded yet while the store was down, are named in lineage); `documents`: the passages'
    message, just before the current one; `remembered`: the end user's memory, after the summary, in the
    budget (left out whole, and noted, when it does not fit)."""
    notes = list(notes)
    message = redact(current)
    room = budget - MESSAGE_OVERHEAD
    truncated = counter.count(message) > room
    if truncated:
        message = counter.truncate(message, max(room - counter.count(TRUNCATED), 0)) + TRUNCATED
        notes.append("the current message was cut to the budget")
    left = budget - counter.messages([{"content": message}])

    summary_message: ChatMessage | None = None
    if summary is not None and summary.text:
        candidate = {"role": "system", "content": SUMMARY_HEADING + redact(summary.text)}
        cost = counter.messages([candidate])
        if cost <= left:
            summary_message, left = candidate, left - cost
        else:
            notes.append("the summary did not fit the budget")

    memory_message: ChatMessage | None = None
    if remembered:
        candidate = {"role": "system", "content": MEMORY_HEADING + redact("; ".join(remembered))}
        cost = counter.messages([candidate])
        if cost <= left:
            memory_message, left = candidate, left - cost
        else:
            notes.append("the user's memory did not fit the budget")

    since = summary.through if summary is not None else 0
    turns = sorted((s for s in earlier if s.index >= since), key=lambda s: (s.index, _order(s.role)))
    by_turn = [
        (index, [_chat(s, redact) for s in group]) for index, group in groupby(turns, key=lambda s: s.index)
    ]
    included: list[tuple[int, list[ChatMessage]]] = []
    for index, messages in reversed(by_turn):
        cost = counter.messages(messages)
        if cost > left:
            break
        included.insert(0, (index, messages))
        left -= cost
    oldest = included[0][0] if included else None
    dropped = [index for index, _ in by_turn if oldest is None or index < oldest]
    if unread_before is not None:
        dropped = sorted({*range(since, unread_before), *dropped})
    if dropped:
        notes.append(f"{len(dropped)} older turns did not fit the budget")
    present = {s.index for s in earlier}
    missing = [i for i in expected if i >= since and i not in present] if expected is not None else []
    if missing:
        notes.append(f"{len(missing)} turns were not in the transcript (not recorded yet)")

    messages = [
        {"role": "system", "content": system},
        *([summary_message] if summary_message else []),
        *([memory_message] if memory_message else []),
        *(m for _, group in included for m in group),
        *documents,
        {"role": "user", "content": message},
    ]
    lineage = ContextLineage(
        turns=[index for index, _ in included],
        dropped=dropped,
        missing=missing,
        summary_version=summary.version if summary_message and summary else None,
        summary_through=summary.through if summary_message and summary else None,
        context_tokens=budget - left,
        budget=budget,
        tokenizer=counter.name,
        truncated=truncated,
        messages_sha256=messages_digest(messages),
        notes=notes,
        remembered=list(remembered) if memory_message else [],
    )
    return Context(messages=messages, lineage=lineage)


def messages_digest(messages: Sequence[ChatMessage]) -> str:
    """What identifies the exact request content: compare it with one rebuilt from a history."""
    return hashlib.sha256(orjson.dumps(list(messages))).hexdigest()


def _order(role: Role) -> int:
    return {"user": 0, "bot": 1, "agent": 2, "system": 3}[role]


def _chat(said: Said, redact: Callable[[str], str]) -> ChatMessage:
    text = redact(said.text)
    if said.role == "user":
        return {"role": "user", "content": text}
    if said.role == "agent":
        return {"role": "assistant", "content": AGENT_PREFIX + text}
    if (
        said.role == "system"
    ):  # a handoff or handback notice; endpoints differ on mid-conversation system roles
        return {"role": "assistant", "content": f"{NOTE_PREFIX}{text}]"}
    return {"role": "assistant", "content": text}

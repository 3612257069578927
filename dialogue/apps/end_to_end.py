"""End-to-end answer quality: each question asked through the API in a new conversation, as a user asks it,
and what the bot did with it. Retrieval recall says whether the search finds an article; this says whether
the user gets an answer from it (`dialogue kb evaluate --end-to-end`).

Each answerable question ends in one of:
- `right`: answered from the knowledge base, citing a document that answers it (also when a flow's
  question follows the answer, `Flow.answer_first`);
- `other_document`: answered, but from documents that do not;
- `no_answer`: the bot looked and said it found nothing;
- `declined`, `clarified`, `flow`, `handoff`, `scripted`, `agent`: the policy did something else (the
  fallback, a clarifying question, a flow's question, a person, an intent's template, the agent);
- `degraded`: a step failed and the user got the fallback.
An out-of-domain question (no documents) should be `declined` (the fallback) or `no_answer`.

Answers are marked against the rubric (`dialogue.brain.generation.rubric`): the expected fact, no dangling
reference, length.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from dialogue.apps.client import AsyncDialogueClient
from dialogue.brain.generation.rubric import MAX_WORDS, mark
from dialogue.brain.knowledge.chunking import sentences
from dialogue.brain.knowledge.evaluate import Question
from dialogue.brain.knowledge.parsing import content_type_of, parse
from dialogue.model.contracts import TurnReply

Outcome = Literal[
    "right",
    "other_document",
    "no_answer",
    "declined",
    "clarified",
    "flow",
    "handoff",
    "scripted",
    "agent",
    "degraded",
]
_BY_ACTION: dict[str, Outcome] = {
    "fallback": "declined",
    "clarify": "clarified",
    "flow_prompt": "flow",
    "flow_complete": "flow",
    "flow_cancel": "flow",
    "handoff": "handoff",
    "respond": "scripted",
    "end": "scripted",
    "agent": "agent",
}


class Asked(BaseModel):
    """One question as the bot met it."""

    question: str
    document_ids: list[str]
    outcome: Outcome
    reply: str
    sources: list[str]
    action: str | None
    fact: bool | None = None
    dangling: str | None = None
    words: int = 0


class Rubric(BaseModel):
    """The answers (`right` or `other_document`) against the rubric."""

    answers: int
    fact_present: float | None
    """Of the answers to questions that give their facts, the share with one of them."""
    standalone: float
    """The share without a dangling reference."""
    short: float
    """The share of at most `MAX_WORDS` words."""
    words_mean: float


class EndToEndReport(BaseModel):
    answerable: int
    """Questions some document answers."""
    answered_right: float
    """Of those, the share answered from a document that answers them."""
    out_of_domain: int
    declined: float
    """Of the out-of-domain questions, the share the bot declined (the fallback, or it found nothing)."""
    outcomes: dict[str, int]
    """Answerable questions by outcome."""
    out_of_domain_outcomes: dict[str, int]
    rubric: Rubric
    asked: list[Asked]


def outcome_of(reply: TurnReply, action: str | None, documents: Sequence[str]) -> Outcome:
    """What the user got: an answer citing documents (also when a flow's question follows it), else what
    the policy did."""
    if reply.degraded:
        return "degraded"
    cited = {source.document_id for source in reply.reply.sources}
    if cited:
        return "right" if cited & set(documents) else "other_document"
    if action is not None and action in _BY_ACTION:
        return _BY_ACTION[action]
    return "no_answer"


def following_sentences(folder: Path) -> Callable[[str, str], bool]:
    """Whether one sentence follows another in an article of `folder` (what resolves a reference), or is no
    article's at all: the bot's own words (a flow's question after an answer) are written to go together."""
    pairs: set[tuple[str, str]] = set()
    known: set[str] = set()
    for path in sorted(folder.rglob("*")):
        kind = content_type_of(path)
        if kind is None or not path.is_file():
            continue
        parsed = parse(path.read_text(encoding="utf-8"), kind, fallback_title=path.stem)
        for section in parsed.sections:
            said = [s for paragraph in section.paragraphs for s in sentences(paragraph)]
            pairs.update(itertools.pairwise(said))
            known.update(said)
    return lambda before, after: after not in known or (before, after) in pairs


async def ask(
    client: AsyncDialogueClient,
    question: Question,
    follows: Callable[[str, str], bool],
    *,
    prefix: str,
) -> Asked:
    """Ask `question` (each of its turns) in a new conversation; what the bot did with the last one."""
    conversation = f"{prefix}-{uuid.uuid4().hex[:12]}"
    reply: TurnReply | None = None
    for text in question.turns or [question.question]:
        reply = await client.send_turn(conversation, text)
    assert reply is not None
    state = await client.conversation(conversation)
    await client.end_conversation(conversation)
    outcome = outcome_of(reply, state.last_action, question.document_ids)
    asked = Asked(
        question=question.question or " / ".join(question.turns),
        document_ids=question.document_ids,
        outcome=outcome,
        reply=reply.reply.text,
        sources=[source.document_id for source in reply.reply.sources],
        action=state.last_action,
    )
    if outcome in ("right", "other_document"):
        marks = mark(sentences(reply.reply.text), question.facts, follows)
        asked = asked.model_copy(
            update={"fact": marks.fact, "dangling": marks.dangling, "words": marks.words}
        )
    return asked


async def evaluate_end_to_end(
    client: AsyncDialogueClient,
    questions: list[Question],
    follows: Callable[[str, str], bool],
    *,
    concurrency: int = 4,
    on_asked: Callable[[], None] | None = None,
) -> EndToEndReport:
    """Ask every question (`concurrency` at a time) and report what the bot did."""
    prefix = f"e2e-{uuid.uuid4().hex[:6]}"
    gate = asyncio.Semaphore(concurrency)

    async def one(question: Question) -> Asked:
        async with gate:
            asked = await ask(client, question, follows, prefix=prefix)
        if on_asked is not None:
            on_asked()
        return asked

    asked = list(await asyncio.gather(*(one(q) for q in questions)))
    return report(asked)


def report(asked: list[Asked]) -> EndToEndReport:
    answerable = [a for a in asked if a.document_ids]
    unanswerable = [a for a in asked if not a.document_ids]
    answers = [a for a in answerable if a.outcome in ("right", "other_document")]
    with_facts = [a for a in answers if a.fact is not None]
    declined = [a for a in unanswerable if a.outcome in ("declined", "no_answer")]
    return EndToEndReport(
        answerable=len(answerable),
        answered_right=_share(sum(a.outcome == "right" for a in answerable), len(answerable)),
        out_of_domain=len(unanswerable),
        declined=_share(len(declined), len(unanswerable)),
        outcomes=dict(Counter(a.outcome for a in answerable).most_common()),
        out_of_domain_outcomes=dict(Counter(a.outcome for a in unanswerable).most_common()),
        rubric=Rubric(
            answers=len(answers),
            fact_present=_share(sum(bool(a.fact) for a in with_facts), len(with_facts))
            if with_facts
            else None,
            standalone=_share(sum(a.dangling is None for a in answers), len(answers)),
            short=_share(sum(a.words <= MAX_WORDS for a in answers), len(answers)),
            words_mean=round(sum(a.words for a in answers) / len(answers), 1) if answers else 0.0,
        ),
        asked=asked,
    )


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0

"""The rolling summary: older turns folded into a few sentences once they no longer fit the context budget.

Two ways to fold, the bot's `llm.summarizer`: `llm` asks the model (prompt `summarize@vN`), `extractive`
keeps the first sentence of each message, newest last, within MAX_SUMMARY_CHARS. Both are bounded, and
both start from the previous summary, so a conversation of any length has a summary of the same size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dialogue.brain.knowledge.chunking import sentences
from dialogue.brain.llm.context import Said
from dialogue.model.contracts import RollingSummary

if TYPE_CHECKING:
    from dialogue.brain.generation.model_client import ModelClient

MAX_SUMMARY_CHARS = 1200
SUMMARY_WORDS = 150
EXTRACT_CHARS = 160
"""Of each message, the extractive summary keeps its first sentence, cut to this."""
SPEAKERS = {"user": "Customer", "bot": "Assistant", "agent": "Support person", "system": "Note"}


def transcript_text(messages: Sequence[Said], redact: Callable[[str], str] = str) -> str:
    """Messages as lines `Speaker: text`, oldest first, for the summarizing prompt."""
    ordered = sorted(messages, key=lambda s: (s.index, list(SPEAKERS).index(s.role)))
    return "\n".join(f"{SPEAKERS[s.role]}: {redact(s.text)}" for s in ordered)


def extractive(previous: RollingSummary | None, messages: Sequence[Said], through: int) -> RollingSummary:
    """The previous summary and the first sentence of each new message; the oldest sentences go first
    when it grows past MAX_SUMMARY_CHARS."""
    ordered = sorted(messages, key=lambda s: (s.index, list(SPEAKERS).index(s.role)))
    parts = [previous.text] if previous is not None and previous.text else []
    for said in ordered:
        first = next(iter(sentences(said.text)), said.text).strip()
        if first:
            parts.append(f"{SPEAKERS[said.role]}: {_cut(first, EXTRACT_CHARS)}")
    text = " ".join(parts)
    while len(text) > MAX_SUMMARY_CHARS and len(parts) > 1:
        parts.pop(0)
        text = " ".join(parts)
    return RollingSummary(
        text=_cut(text, MAX_SUMMARY_CHARS),
        version=(previous.version + 1) if previous is not None else 1,
        through=through,
        generator="extractive",
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


async def fold_with_model(
    model: ModelClient,
    *,
    previous: RollingSummary | None,
    messages: Sequence[Said],
    through: int,
    bot_description: str,
    redact: Callable[[str], str],
) -> RollingSummary:
    """The summary the model writes from the previous one and the new messages (retries: Temporal's)."""
    prompt = model.summary_prompt
    request = prompt.render(
        bot_description=bot_description or "an online shop.",
        words=str(SUMMARY_WORDS),
        summary=redact(previous.text) if previous is not None else "(none yet)",
        messages=transcript_text(messages, redact),
    )
    completion = await model.chat(
        [{"role": "user", "content": request}], max_tokens=SUMMARY_WORDS * 2, temperature=0.0
    )
    return RollingSummary(
        text=_cut(completion.text.strip(), MAX_SUMMARY_CHARS),
        version=(previous.version + 1) if previous is not None else 1,
        through=through,
        generator=model.name,
        prompt_id=prompt.id,
    )

"""The optional LLM judge of an evaluation on recorded conversations: any OpenAI-compatible endpoint, a versioned rubric
(`judge@v1`): is the candidate's answer supported by the passages it cited, and is it better, worse or the
same as the recorded one."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from dialogue.apps.evaluation.compare import TurnComparison
from dialogue.brain.agent.declarations import inert
from dialogue.brain.generation.openai_chat import ChatClient
from dialogue.brain.generation.prompts import prompt_by_ref
from dialogue.platform.db import KnowledgeChunk

RUBRIC = "judge@v1"
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "supported": {"type": "boolean"},
        "verdict": {"enum": ["better", "worse", "same"]},
        "reason": {"type": "string"},
    },
    "required": ["supported", "verdict", "reason"],
    "additionalProperties": False,
}


class Judge:
    def __init__(self, client: ChatClient, candidate_store: Engine) -> None:
        self._client = client
        self._store = candidate_store
        self._prompt = prompt_by_ref(RUBRIC)

    async def judge(self, turn: TurnComparison, chunk_ids: list[str]) -> dict[str, Any]:
        prompt = self._prompt.render(
            message=turn.user_text,
            recorded=turn.recorded.reply,
            candidate=turn.candidate.reply,
            passages=self._passages(chunk_ids) or "(none)",
        )
        try:
            completion = await self._client.complete(
                [{"role": "user", "content": prompt}], max_tokens=200, temperature=0.0, schema=VERDICT_SCHEMA
            )
            verdict: dict[str, Any] = orjson.loads(completion.text)
        except Exception as err:
            return {
                "error": f"{err.__class__.__name__}: {err}"[:300],
                "rubric": f"{RUBRIC}#{self._prompt.hash}",
            }
        return verdict | {"rubric": f"{RUBRIC}#{self._prompt.hash}", "model": self._client.model}

    def _passages(self, chunk_ids: list[str]) -> str:
        if not chunk_ids:
            return ""
        with Session(self._store) as session:
            chunks = session.exec(select(KnowledgeChunk).where(col(KnowledgeChunk.id).in_(chunk_ids))).all()
        return documents(chunks)


def documents(chunks: Sequence[KnowledgeChunk]) -> str:
    """The passages between `<document>` tags, as the agent's are (`passages_message`): a passage cannot
    close its tag and speak to the judge as its instructions."""
    return "\n".join(
        f'<document id="{escape(c.document_id)}">{inert(c.text, "document")}</document>' for c in chunks
    )

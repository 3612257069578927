"""`note_memory`: after a turn a model answered, the model reads the user's message for facts to keep in
their memory (dialogue/brain/llm/notes.py), off the reply's path. Only while the user consents (asked
again here: they may have withdrawn since the reply); what is kept is redacted as a turn's text."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from temporalio import activity

from dialogue.brain.generation import Generators
from dialogue.brain.llm.notes import Note, notes_by_model
from dialogue.model.contracts import MemoryNoted, NoteMemoryRequest
from dialogue.platform import memory
from dialogue.platform.bot import BotDefinition
from dialogue.security.privacy.privacy_policy import PrivacyPolicy


class MemoryNotesActivity:
    def __init__(self, bot: BotDefinition, engine: Engine, generators: Generators) -> None:
        self._bot = bot
        self._engine = engine
        self._generators = generators
        self._privacy = PrivacyPolicy(bot.privacy)

    @activity.defn(name="note_memory")
    async def note_memory(self, request: NoteMemoryRequest) -> MemoryNoted:
        model = self._generators.model(request.variant)
        if model is None or not self._bot.memory.model_notes:
            return MemoryNoted(skipped="the bot keeps no notes by model")
        tenant = memory.tenant_of(request.conversation_id)
        if not await asyncio.to_thread(memory.consent_of, self._engine, tenant=tenant, user=request.user):
            return MemoryNoted(skipped="the user does not consent")
        items = await asyncio.to_thread(memory.items, self._engine, tenant=tenant, user=request.user)
        notes = await notes_by_model(
            model,
            said=request.user_text,
            remembered=[f"{item.kind}: {item.value}" for item in items],
            bot_description=self._bot.description,
            redact=self._privacy.for_llm if request.redact else str,
        )
        return await asyncio.to_thread(self._keep, request, tenant, notes)

    def _keep(self, request: NoteMemoryRequest, tenant: str, notes: list[Note]) -> MemoryNoted:
        now = datetime.now(UTC)
        days = self._bot.privacy.retention_days
        noted = MemoryNoted()
        for note in notes:
            if note.action == "forget":
                memory.forget(self._engine, tenant=tenant, user=request.user, kinds=[note.kind])
                noted.forgotten.append(note.kind)
                continue
            kept = memory.remember(
                self._engine,
                tenant=tenant,
                user=request.user,
                kind=note.kind,
                value=self._privacy.for_storage(note.value, enabled=request.redact),
                source="model",
                at=now,
                conversation_id=request.conversation_id,
                turn_id=request.turn_id,
                expires_at=now + timedelta(days=days) if days is not None else None,
            )
            if kept is not None:
                noted.kept.append(note.kind)
        return noted

"""`/v1/users/{user}`: what the deployment holds of one end user of the caller's tenant. Their conversations
are found by the end user recorded with each (`conversation_owner`: from the verified token of the user who
started it, or the `user` a server's key named); another tenant's user of the same name is another user.
A server's key asks about any of its users; an end user's token about its own user only."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import ClientPrincipal, EngineDep, SettingsDep, TemporalClientDep
from api.errors import ApiError, responses, temporal_errors
from api.routes.conversations import FiltersDep, conversations_page
from api.routes.lineage import satisfaction_public, tool_result_public
from api.routes.memory import user_memory
from api.routes.user_access import UserPath, refuse_another_user
from dialogue.model.api_models import (
    ConversationsPage,
    ExportedConversation,
    ExportedMessage,
    FeedbackPublic,
    UserErased,
    UserExport,
)
from dialogue.platform import store
from dialogue.platform.temporal import conversation_key
from dialogue.security import erasure

router = APIRouter(prefix="/users", tags=["conversations"])


@router.get("/{user}/conversations", responses=responses("forbidden"))
async def read_user_conversations(
    user: UserPath, engine: EngineDep, principal: ClientPrincipal, filters: FiltersDep
) -> ConversationsPage:
    """One end user's conversations in the caller's tenant, most recently updated first. A server's key
    asks for any of its users; an end user's token for their own only."""
    refuse_another_user(principal, user)
    return await conversations_page(engine, principal, user, filters)


@router.get("/{user}/export", responses=responses("forbidden"))
async def export_user(user: UserPath, engine: EngineDep, principal: ClientPrincipal) -> UserExport:
    """Everything held of one end user, as one JSON document: each of their conversations with its
    transcript (each answer's lineage included), their ratings and score, and the tool results kept for
    it, and what is remembered of them across conversations with their consent. An end user's right of
    access, and their data to take elsewhere."""
    refuse_another_user(principal, user)
    held = await run_in_threadpool(store.held_for_user, engine, tenant=principal.tenant, user=user)
    prefix = len(conversation_key(principal.tenant, ""))
    return UserExport(
        tenant=principal.tenant,
        user=user,
        exported_at=datetime.now(UTC),
        conversations=[_exported(entry, entry.conversation.id[prefix:]) for entry in held],
        memory=await run_in_threadpool(user_memory, engine, principal.tenant, user),
    )


@router.delete("/{user}", responses=responses("forbidden", "temporal_unavailable"))
async def erase_user(
    user: UserPath,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalClientDep,
    principal: ClientPrincipal,
) -> UserErased:
    """Erase everything held of one end user: each of their conversations (workflow histories, transcript,
    lineage, events, ratings, score, kept tool results), their memory and consent, and the records of whose
    the conversations were. Admin, or its
    client (and that user's own token) when clients may erase. Sending it again is safe, and finishes an
    erasure a failure stopped halfway. An audit entry (who, when, which user, how many; no content) remains."""
    if not (principal.allows("admin") or settings.clients_may_erase):
        raise ApiError("forbidden", "erasing a user needs the admin scope")
    refuse_another_user(principal, user)
    async with temporal_errors(user):
        erased = await erasure.erase_user(
            temporal, engine, tenant=principal.tenant, user=user, actor=principal.subject
        )
    prefix = len(conversation_key(principal.tenant, ""))
    return UserErased(
        tenant=principal.tenant,
        user=user,
        erased_at=datetime.now(UTC),
        conversations=[key[prefix:] for key in erased.conversations],
        rows=erased.rows,
    )


def _exported(held: store.HeldConversation, conversation_id: str) -> ExportedConversation:
    rated = {f.turn_id: f.rating for f in held.feedback}
    score = held.satisfaction
    return ExportedConversation.model_validate(
        held.conversation.model_dump(exclude={"id"})
        | {
            "conversation_id": conversation_id,
            "messages": [
                ExportedMessage.model_validate(message, from_attributes=True).model_copy(
                    update={"rating": rated.get(message.turn_id) if message.role == "bot" else None}
                )
                for message in held.messages
            ],
            "feedback": [FeedbackPublic.model_validate(f, from_attributes=True) for f in held.feedback],
            "satisfaction": satisfaction_public(conversation_id, score) if score is not None else None,
            "tool_results": [tool_result_public(conversation_id, result) for result in held.tool_results],
        }
    )

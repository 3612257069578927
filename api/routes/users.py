"""`/v1/users/{user}`: what the deployment holds of one end user of the caller's tenant. Their conversations
are found by the end user recorded with each (`conversation_owner`: from the verified token of the user who
started it, or the `user` a server's key named); another tenant's user of the same name is another user."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import ClientPrincipal, EngineDep
from api.errors import ApiError, responses
from api.routes.conversations import (
    ConversationStatusFilter,
    DegradedFilter,
    IdFilter,
    IntentFilter,
    PageLimit,
    PageOffset,
    conversations_page,
)
from dialogue.model.api_models import ConversationsPage
from dialogue.model.contracts import USER_PATTERN

router = APIRouter(prefix="/users", tags=["conversations"])

UserPath = Annotated[
    str, Path(pattern=USER_PATTERN, description="The end user, as the integrator knows them.")
]


@router.get("/{user}/conversations", responses=responses("forbidden"))
async def read_user_conversations(
    user: UserPath,
    engine: EngineDep,
    principal: ClientPrincipal,
    status: ConversationStatusFilter = None,
    intent: IntentFilter = None,
    degraded: DegradedFilter = None,
    q: IdFilter = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> ConversationsPage:
    """One end user's conversations in the caller's tenant, most recently updated first. A server's key
    asks for any of its users; an end user's token for their own only."""
    if principal.user is not None and principal.user != user:
        raise ApiError("forbidden", "an end user's token reads its own user's conversations only")
    return await conversations_page(engine, principal, user, status, intent, degraded, q, limit, offset)

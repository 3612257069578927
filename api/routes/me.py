"""`/v1/me`: who the caller's key or token is. The pages ask it for the tenant (the Temporal Web UI
link) and the scope (an operator without the agent scope cannot take a conversation over)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ClientPrincipal
from dialogue.model.api_models import Caller

router = APIRouter(tags=["keys"])


@router.get("/me")
async def read_caller(principal: ClientPrincipal) -> Caller:
    """The caller's tenant, scope and subject (the name its actions are audited under), and its end user."""
    return Caller(
        tenant=principal.tenant, scope=principal.scope, subject=principal.subject, user=principal.user
    )

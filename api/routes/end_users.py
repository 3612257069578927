"""`/v1/end-user-tokens`: the integrator's server mints a short-lived token for one of its users.

A server-side key speaks for its whole tenant and must never reach a browser. The server signs its user in
its own way, asks here for a token for that user (an hour at most), and hands it to the user's browser, app
or widget: with it, the user talks to the bot and reads only their own conversations, and the bot's tools
act for that user alone (`dialogue.security.tokens`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from api.deps import ClientPrincipal
from api.errors import ApiError, responses
from dialogue.model.api_models import EndUserToken, EndUserTokenCreate
from dialogue.security.tokens import EndUserTokens

router = APIRouter(tags=["keys"])


@router.post(
    "/end-user-tokens",
    status_code=status.HTTP_201_CREATED,
    responses=responses("forbidden", "not_configured"),
)
async def create_end_user_token(
    body: EndUserTokenCreate, request: Request, principal: ClientPrincipal
) -> EndUserToken:
    """A token for one end user of the caller's tenant: the client scope, their own conversations only.
    Not audited one by one (a server may mint one per page view): the token names the key that asked."""
    if principal.user is not None:
        raise ApiError("forbidden", "an end user's token cannot mint tokens: ask with the server's key")
    tokens: EndUserTokens | None = request.app.state.end_user_tokens
    if tokens is None:
        raise ApiError("not_configured", "end-user tokens need DIALOGUE_END_USER_TOKEN_SECRET")
    token, expires = tokens.mint(
        principal.tenant, body.user, ttl_seconds=body.ttl_seconds, by=principal.subject
    )
    return EndUserToken(token=token, tenant=principal.tenant, user=body.user, expires_at=expires)

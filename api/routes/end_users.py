"""`/v1/end-user-tokens`: the integrator's server mints a short-lived token for one of its users.

A server-side key speaks for its whole tenant and must never reach a browser. The server signs its user in
its own way, asks here for a token for that user (an hour at most), and hands it to the user's browser, app
or widget: with it, the user talks to the bot and reads only their own conversations, and the bot's tools
act for that user alone (`dialogue.security.tokens`)."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request, status

from api.deps import ClientPrincipal, SettingsDep
from api.errors import ApiError, responses
from dialogue.model.api_models import EndUserToken, EndUserTokenCreate, WidgetSessionCreate
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
    return _minted(request, principal.tenant, body.user, body.ttl_seconds, by=principal.subject)


VISITOR = "visitor-"
"""The user id of an anonymous widget visitor: this, then the id their browser keeps."""


@router.post(
    "/widget-sessions",
    status_code=status.HTTP_201_CREATED,
    responses=responses("origin_not_allowed", "not_configured"),
)
async def create_widget_session(
    body: WidgetSessionCreate, request: Request, settings: SettingsDep
) -> EndUserToken:
    """A token for an anonymous visitor of a site that embeds the chat widget and has no server to mint one:
    asked by the widget itself, with no key, from a page of an origin the deployment lets do so for a
    tenant (`DIALOGUE_WIDGET_ORIGINS`). The browser keeps the visitor's id and sends it again to go on as
    the same visitor (their conversations stay theirs); without one, a new visitor.

    The `Origin` header is what a browser says, so this opens the bot to anyone, as the site's public page
    does: the token reaches only the visitor's own conversations, as any end user's does."""
    origin = request.headers.get("origin")
    tenant = settings.widget_origins.get(origin) if origin else None
    if tenant is None:
        raise ApiError(
            "origin_not_allowed",
            "this page's origin may not start chat sessions here (DIALOGUE_WIDGET_ORIGINS)",
        )
    user = VISITOR + (body.visitor or secrets.token_urlsafe(18))
    return _minted(request, tenant, user, settings.widget_session_seconds, by=f"widget {origin}")


def _minted(request: Request, tenant: str, user: str, ttl_seconds: int, *, by: str) -> EndUserToken:
    """A token for `user` of `tenant`, when the deployment can sign them."""
    tokens: EndUserTokens | None = request.app.state.end_user_tokens
    if tokens is None:
        raise ApiError("not_configured", "end-user tokens need DIALOGUE_END_USER_TOKEN_SECRET")
    token, expires = tokens.mint(tenant, user, ttl_seconds=ttl_seconds, by=by)
    return EndUserToken(token=token, tenant=tenant, user=user, expires_at=expires)

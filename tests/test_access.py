"""The access matrix: every endpoint and every caller (no credentials, an expired or revoked key, each
scope of the owning tenant, an admin of another tenant, the deployment's operator, an end user of the tenant
whose the conversation is not), asserting the status code, and a check that no route of the app is left out
of it; plus bearer JWTs (HS256, RS256 from a JWKS file) and the per-key rate limit."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.worker import Worker

from api import create_app
from api.routes import pages
from dialogue.platform.db import ToolResult, get_engine
from dialogue.platform.settings import Settings
from dialogue.platform.store import keep_tool_result
from dialogue.platform.temporal import conversation_key
from dialogue.security.identity import create_key, revoke_key
from dialogue.security.tokens import TokenVerifier
from tests.conftest import TEST_API_KEY, api_client, serve

OPEN = "open"
BY_ORIGIN = "origin"
"""Not a key's scope: only a page of an origin the deployment lists (`DIALOGUE_WIDGET_ORIGINS`) may ask."""
BY_SIGNATURE = "signature"
"""Not a key's scope: a messaging platform's webhook, opened by the platform's signature alone (a key
neither opens nor closes it: tests/test_channels.py checks the signatures). None is configured here."""
"""No key needed: health, metrics and the pages (which ask for a key themselves)."""
KEPT_CALL = "call-kept"
"""A tool call whose whole result the store keeps, in the shared conversation."""


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    """`{c}` is the conversation, `{t}` a turn of it."""
    scope: str
    body: dict[str, object] | None = None
    owned: bool = True
    """Names a conversation: another tenant gets 404, as if it did not exist."""
    destructive: bool = False
    """Changes the conversation for good: every caller gets a fresh one."""
    stream: bool = False
    absent: str | None = None
    """The error code of an allowed caller asking for a thing that is not there (the matrix asks for one):
    a 404 with this code counts as allowed, any other 404 as refused."""


MEMORY_ITEM = "/v1/users/other-user/memory/items/name"
"""One item of an end user's memory (the built-in bot's `name`)."""
ENDPOINTS = [
    Endpoint("POST", "/v1/conversations", "client", {"id": "{new}"}, owned=False),
    Endpoint("GET", "/v1/conversations", "client", owned=False),
    # Sending to an id creates the conversation in the caller's own tenant (a new one for another tenant).
    Endpoint(
        "POST", "/v1/conversations/{c}/turns", "client", {"text": "hello"}, owned=False, destructive=True
    ),
    Endpoint("GET", "/v1/conversations/{c}", "client"),
    Endpoint("GET", "/v1/conversations/{c}/messages", "client"),
    Endpoint("GET", "/v1/conversations/{c}/turns/{t}", "client"),
    Endpoint("GET", "/v1/conversations/{c}/turns/{t}/events", "client", stream=True),
    Endpoint("GET", "/v1/conversations/{c}/events", "client", stream=True),
    Endpoint("GET", "/v1/conversations/{c}/turns/{t}/lineage", "client"),
    Endpoint("POST", "/v1/conversations/{c}/turns/{t}/feedback", "client", {"rating": "up"}),
    Endpoint("POST", "/v1/conversations/{c}/satisfaction", "client", {"score": 4}),
    # No call waits: the owner's callers reach the workflow, which says so; another tenant finds no conversation.
    Endpoint(
        "POST",
        "/v1/conversations/{c}/approvals/call-none",
        "client",
        {"approve": True},
        absent="approval_not_found",
    ),
    Endpoint("GET", f"/v1/conversations/{{c}}/tool-results/{KEPT_CALL}", "client"),
    Endpoint("POST", "/v1/conversations/{c}/end", "client", destructive=True),
    Endpoint("POST", "/v1/conversations/{c}/handoff", "agent", {}, destructive=True),
    Endpoint("POST", "/v1/conversations/{c}/agent-messages", "agent", {"text": "hi"}),
    Endpoint("POST", "/v1/conversations/{c}/reminders", "client", {"text": "hi", "in_seconds": 3600}),
    Endpoint("DELETE", "/v1/conversations/{c}/reminders/acl-reminder", "client", absent="reminder_not_found"),
    # An event of the caller's own tenant: it tells that tenant's conversations only.
    Endpoint("POST", "/v1/events", "client", {"name": "acl-event"}, owned=False),
    Endpoint("POST", "/v1/conversations/{c}/handback", "agent", {}),
    Endpoint("DELETE", "/v1/conversations/{c}", "admin", destructive=True),
    Endpoint("POST", "/v1/nlu/parse", "client", {"text": "hello"}, owned=False),
    # The knowledge base is the deployment's: tenants' admins read it, only an operator writes it.
    Endpoint("GET", "/v1/knowledge/documents", "admin", owned=False),
    Endpoint("GET", "/v1/knowledge/documents/shipping", "admin", owned=False),
    Endpoint("POST", "/v1/knowledge/documents", "operator", {"id": "acl", "text": "# A\nb"}, owned=False),
    Endpoint(
        "DELETE", "/v1/knowledge/documents/acl-none", "operator", owned=False, absent="document_not_found"
    ),
    # Bots are the deployment's: tenants' admins read their versions and numbers, only an operator releases.
    Endpoint("GET", "/v1/bots", "admin", owned=False),
    Endpoint("GET", "/v1/bots/acl-bot", "admin", owned=False, absent="bot_not_found"),
    Endpoint("GET", "/v1/bots/acl-bot/versions/000000000000", "admin", owned=False, absent="bot_not_found"),
    Endpoint("GET", "/v1/bots/acl-bot/diff?from=0000&to=0001", "admin", owned=False, absent="bot_not_found"),
    Endpoint("GET", "/v1/bots/acl-bot/numbers", "admin", owned=False, absent="bot_not_found"),
    Endpoint(
        "POST",
        "/v1/bots/acl-bot/release",
        "operator",
        {"version": "000000000000"},
        owned=False,
        absent="bot_not_found",
    ),
    Endpoint("POST", "/v1/bots/acl-bot/rollback", "operator", {}, owned=False, absent="bot_not_found"),
    Endpoint("GET", "/v1/keys", "admin", owned=False),
    Endpoint("POST", "/v1/keys", "admin", {"scope": "client"}, owned=False),
    Endpoint("DELETE", "/v1/keys/000000000000", "admin", owned=False, absent="key_not_found"),
    Endpoint("GET", "/v1/me", "client", owned=False),
    # One key list seals every tenant's payloads: the codec is the operator's.
    Endpoint("POST", "/codec/encode", "operator", {"payloads": []}, owned=False),
    Endpoint("POST", "/codec/decode", "operator", {"payloads": []}, owned=False),
    Endpoint("POST", "/v1/end-user-tokens", "client", {"user": "someone"}, owned=False),
    # Opened by the page's origin (none here), never by a key.
    Endpoint("POST", "/v1/widget-sessions", BY_ORIGIN, {}, owned=False),
    Endpoint("POST", "/v1/channels/acl-channel", BY_SIGNATURE, {}, owned=False, absent="channel_not_found"),
    Endpoint("GET", "/v1/channels/acl-channel", BY_SIGNATURE, owned=False, absent="channel_not_found"),
    Endpoint("GET", "/v1/deliveries", "admin", owned=False),
    Endpoint(
        "POST", "/v1/deliveries/acl-delivery/resend", "admin", {}, owned=False, absent="delivery_not_found"
    ),
    Endpoint("GET", "/v1/users/other-user/conversations", "client", owned=False),
    Endpoint("GET", "/v1/users/other-user/export", "client", owned=False),
    Endpoint("DELETE", "/v1/users/other-user", "admin", owned=False),
    Endpoint("GET", "/v1/users/other-user/memory", "client", owned=False),
    Endpoint("PUT", "/v1/users/other-user/memory/consent", "client", {"consented": True}, owned=False),
    Endpoint("GET", MEMORY_ITEM, "client", owned=False, absent="memory_item_not_found"),
    Endpoint("PUT", MEMORY_ITEM, "client", {"value": "Ann"}, owned=False),
    Endpoint("DELETE", MEMORY_ITEM, "client", owned=False, absent="memory_item_not_found"),
    Endpoint("GET", "/healthz", OPEN, owned=False),
    Endpoint("GET", "/readyz", OPEN, owned=False),
    Endpoint("GET", "/metrics", OPEN, owned=False),
    *(
        Endpoint("GET", route.path, OPEN, owned=False)
        for route in pages.router.routes
        if isinstance(route, APIRoute)
    ),
]
RANK = {"client": 1, "agent": 2, "admin": 3, "operator": 4}
CALLERS = ["none", "expired", "revoked", "client", "agent", "admin", "other-admin", "operator", "end-user"]
SERVER_ONLY = {
    "/v1/end-user-tokens",
    "/v1/conversations/{c}/reminders",
    "/v1/conversations/{c}/reminders/acl-reminder",
    "/v1/events",
}
"""What a server-side key does and an end user's token never does."""
ANOTHER_USERS = {
    "/v1/users/other-user/conversations",
    "/v1/users/other-user/export",
    "/v1/users/other-user",
    "/v1/users/other-user/memory",
    "/v1/users/other-user/memory/consent",
    MEMORY_ITEM,
}
"""What an end user's token may ask of its own user only: the matrix's end user is someone else."""
FRAMEWORK = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static"}
"""FastAPI's own pages and the pages' static files: open, and nothing in them is the deployment's."""


@pytest.fixture
async def keys(settings: Settings) -> dict[str, str]:
    engine = get_engine(settings.resolved_database_url)
    made = {
        scope: create_key(engine, tenant="acme", scope=scope)[1] for scope in ("client", "agent", "admin")
    }
    made["other-admin"] = create_key(engine, tenant="globex", scope="admin")[1]
    made["operator"] = TEST_API_KEY  # the bootstrap key: the operator, of the default tenant
    made["expired"] = create_key(
        engine, tenant="acme", scope="admin", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )[1]
    revoked, made["revoked"] = create_key(engine, tenant="acme", scope="admin")
    revoke_key(engine, revoked.id)
    return made


@pytest.fixture
async def http(client: Client, settings: Settings, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(create_app(settings, temporal=client), api_key="") as http_client:
        http_client.headers.pop("Authorization")
        yield http_client


async def a_conversation(http: httpx.AsyncClient, key: str) -> tuple[str, str]:
    """A conversation of acme with one answered turn: its id and the turn's id."""
    conversation, turn = f"acl-{uuid.uuid4().hex[:8]}", f"turn-{uuid.uuid4().hex[:6]}"
    answered = await http.post(
        f"/v1/conversations/{conversation}/turns",
        json={"text": "how much does express shipping cost?"},
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": turn},
    )
    assert answered.status_code == 200, answered.text
    return conversation, turn


async def call(
    http: httpx.AsyncClient, endpoint: Endpoint, conversation: str, turn: str, key: str | None
) -> str:
    path = endpoint.path.format(c=conversation, t=turn)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = (
        json.loads(json.dumps(endpoint.body).replace("{new}", f"new-{uuid.uuid4().hex[:8]}"))
        if endpoint.body is not None
        else None
    )
    if endpoint.stream:
        async with http.stream(endpoint.method, path, headers=headers) as response:
            # An open event stream: its status is all we need.
            return outcome(endpoint, httpx.Response(response.status_code, content=b"{}"))
    response = await http.request(endpoint.method, path, json=body, headers=headers)
    return outcome(endpoint, response)


def expected(endpoint: Endpoint, caller: str) -> str:
    if endpoint.scope in (OPEN, BY_SIGNATURE):
        return "ok"
    if endpoint.scope == BY_ORIGIN:
        return "403"
    if caller in ("none", "expired", "revoked"):
        return "401"
    if caller == "end-user":  # a client, and the conversations (the server's) are not theirs
        if RANK["client"] < RANK[endpoint.scope] or endpoint.path in SERVER_ONLY | ANOTHER_USERS:
            return "403"
        return "404" if "{c}" in endpoint.path else "ok"
    rank = RANK["admin" if caller == "other-admin" else caller]
    if rank < RANK[endpoint.scope]:
        return "403"
    # Another tenant's admin, and the operator (of the default tenant), do not see acme's conversations.
    return "404" if endpoint.owned and caller in ("other-admin", "operator") else "ok"


def outcome(endpoint: Endpoint, response: httpx.Response) -> str:
    # Allowed means not refused for who is asking: a 2xx, or the domain's own answer (409 and 422, or the
    # 404 of a thing that is not there, asked for on purpose).
    if response.status_code == 404 and endpoint.absent is not None:
        return "ok" if response.json()["error"]["code"] == endpoint.absent else "404"
    status = response.status_code
    return str(status) if status in (401, 403, 404) or status >= 500 else "ok"


def test_the_matrix_covers_every_route_of_the_app(settings: Settings) -> None:
    """A route added without its line above fails here: its access would be checked by no one."""
    app = create_app(settings)
    served = {
        (method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations
    }
    served |= {  # the routes kept out of the contract: the pages
        (method, route.path)
        for route in pages.router.routes
        if isinstance(route, APIRoute)
        for method in (route.methods or set()) - {"HEAD"}
    }
    in_matrix = {
        (e.method, e.path.replace("{c}", "{conversation_id}").replace("{t}", "{turn_id}")) for e in ENDPOINTS
    }
    generic = {
        (
            method,
            path.split("?")[0]
            .replace("call-none", "{call_id}")
            .replace("/acl-bot", "/{bot}")
            .replace("/versions/000000000000", "/versions/{version}")
            .replace(KEPT_CALL, "{call_id}")
            .replace("/shipping", "/{document_id}")
            .replace("/acl-none", "/{document_id}")
            .replace("/000000000000", "/{key_id}")
            .replace("/users/other-user", "/users/{user}")
            .replace("/acl-channel", "/{name}")
            .replace("/acl-reminder", "/{reminder_id}")
            .replace("/acl-delivery", "/{delivery_id}")
            .replace("/memory/items/name", "/memory/items/{kind}"),
        )
        for method, path in in_matrix
    }
    assert served - generic == set()
    every = {getattr(route, "path", None) for route in app.routes} - {None}
    assert every <= FRAMEWORK | {path for _, path in served}, every - FRAMEWORK


async def test_every_endpoint_for_every_caller(
    http: httpx.AsyncClient, keys: dict[str, str], settings: Settings
) -> None:
    shared = await a_conversation(http, keys["admin"])
    keep_tool_result(  # what the agent keeps of a long tool result, for its conversation only
        get_engine(settings.resolved_database_url),
        ToolResult(
            conversation_id=conversation_key("acme", shared[0]),
            call_id=KEPT_CALL,
            name="order_status",
            size=2,
            sha256="0" * 64,
            content="{}",
            created_at=datetime.now(UTC),
        ),
    )
    await http.post(  # agent messages need a conversation held by a person
        f"/v1/conversations/{shared[0]}/handoff",
        json={},
        headers={"Authorization": f"Bearer {keys['admin']}"},
    )
    minted = await http.post(
        "/v1/end-user-tokens",
        json={"user": "someone"},
        headers={"Authorization": f"Bearer {keys['client']}"},
    )
    keys = keys | {"end-user": minted.json()["token"]}
    wrong = []
    for endpoint in ENDPOINTS:
        for caller in CALLERS:
            conversation, turn = await a_conversation(http, keys["admin"]) if endpoint.destructive else shared
            got = await call(http, endpoint, conversation, turn, keys.get(caller))
            if got != expected(endpoint, caller):
                wrong.append(
                    f"{endpoint.method} {endpoint.path} as {caller}: {got}, expected {expected(endpoint, caller)}"
                )
    assert not wrong, "\n".join(wrong)


async def test_another_tenant_sees_none_of_the_conversations(
    http: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    conversation, _ = await a_conversation(http, keys["client"])
    mine = await http.get("/v1/conversations", headers={"Authorization": f"Bearer {keys['client']}"})
    theirs = await http.get("/v1/conversations", headers={"Authorization": f"Bearer {keys['other-admin']}"})
    assert conversation in [c["conversation_id"] for c in mine.json()["items"]]
    assert {c["tenant"] for c in mine.json()["items"]} == {"acme"}
    assert conversation not in [c["conversation_id"] for c in theirs.json()["items"]]
    found = await http.get(
        "/v1/conversations",
        params={"q": conversation},
        headers={"Authorization": f"Bearer {keys['other-admin']}"},
    )
    assert found.json()["total"] == 0  # nor by searching for its id
    # Each key learns its own tenant and scope, for the pages.
    me = await http.get("/v1/me", headers={"Authorization": f"Bearer {keys['client']}"})
    assert me.json() == {"tenant": "acme", "scope": "client", "subject": me.json()["subject"], "user": None}
    assert me.json()["subject"]
    # The same id in the other tenant is another conversation altogether.
    other = await http.post(
        f"/v1/conversations/{conversation}/turns",
        json={"text": "hello"},
        headers={"Authorization": f"Bearer {keys['other-admin']}"},
    )
    assert other.status_code == 200 and other.json()["turn_index"] == 0


@pytest.fixture
def rsa_jwks(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public | {"kid": "k1", "use": "sig", "alg": "RS256"}]}))
    return private, path


async def test_bearer_tokens_from_an_identity_provider(
    settings: Settings, client: Client, worker: Worker, rsa_jwks: tuple[rsa.RSAPrivateKey, Path]
) -> None:
    private, jwks = rsa_jwks
    published = FastAPI()  # the identity provider's JWKS endpoint, over real HTTP
    published.get("/.well-known/jwks.json")(lambda: json.loads(jwks.read_text()))
    server, task, provider = await serve(published)
    secret = "hs256-secret-for-tests-0123456789abcdef"
    now = int(time.time())
    claims = {"sub": "u1", "tenant": "acme", "scope": "openid client", "exp": now + 60, "aud": "dialogue"}
    verifiers: list[tuple[dict[str, object], str]] = [
        ({"jwt_hs256_secret": SecretStr(secret)}, jwt.encode(claims, secret, algorithm="HS256")),
        (
            {"jwt_jwks_file": jwks, "jwt_audience": "dialogue"},
            jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1"}),
        ),
        (
            {"jwt_jwks_url": f"{provider}/.well-known/jwks.json", "jwt_audience": "dialogue"},
            jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1"}),
        ),
    ]
    for verifier, token in verifiers:
        app = create_app(settings.model_copy(update=verifier), temporal=client)
        async with api_client(app, api_key=token) as http:
            assert (
                await http.post("/v1/conversations/jwt-1/turns", json={"text": "hello"})
            ).status_code == 200
            assert (await http.get("/v1/keys")).status_code == 403  # a client token
    # A token the same provider signed for another application is refused.
    other_app = jwt.encode(claims | {"aud": "billing"}, private, algorithm="RS256", headers={"kid": "k1"})
    app = create_app(
        settings.model_copy(update={"jwt_jwks_file": jwks, "jwt_audience": "dialogue"}), temporal=client
    )
    async with api_client(app, api_key=other_app) as http:
        assert (await http.get("/v1/conversations")).status_code == 401
    with pytest.raises(ValueError, match="AUDIENCE"):  # and a JWKS without an audience is refused at start-up
        TokenVerifier(settings.model_copy(update={"jwt_jwks_file": jwks}))
    server.should_exit = True
    await task
    expired = jwt.encode(claims | {"exp": now - 10}, secret, algorithm="HS256")
    forged = jwt.encode(claims, "another-secret-that-is-long-enough-000", algorithm="HS256")
    app = create_app(settings.model_copy(update={"jwt_hs256_secret": SecretStr(secret)}), temporal=client)
    for token in (expired, forged):
        async with api_client(app, api_key=token) as http:
            refused = await http.get("/v1/conversations")
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_credentials"


async def test_each_key_has_its_own_rate_limit(settings: Settings, client: Client) -> None:
    engine = get_engine(settings.resolved_database_url)
    busy, calm = (create_key(engine, tenant="acme", scope="client")[1] for _ in range(2))
    app = create_app(
        settings.model_copy(update={"rate_limit_per_second": 0.5, "rate_limit_burst": 3}), temporal=client
    )
    async with api_client(app, api_key=busy) as http:
        statuses = [(await http.get("/v1/conversations")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await http.get("/v1/conversations")
        assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        other = await http.get("/v1/conversations", headers={"Authorization": f"Bearer {calm}"})
        assert other.status_code == 200  # another key's bucket is full


async def test_cors_is_closed_by_default_and_open_to_configured_origins(
    settings: Settings, client: Client
) -> None:
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    async with api_client(create_app(settings, temporal=client)) as http:
        closed = await http.options("/v1/conversations", headers=preflight)
        assert "access-control-allow-origin" not in closed.headers
    opened = create_app(
        settings.model_copy(update={"cors_origins": ["https://shop.example"]}), temporal=client
    )
    async with api_client(opened) as http:
        allowed = await http.options("/v1/conversations", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"

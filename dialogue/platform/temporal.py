"""How every process (API, worker, CLI, tests) talks to Temporal: one client factory, one naming scheme."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.common import SearchAttributeKey
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime

from dialogue.platform.codec import encrypted_data_converter
from dialogue.platform.settings import Settings

# Registered on the dev server by `dialogue up`; operators filter conversations by them in the Web UI.
STATUS = SearchAttributeKey.for_keyword("DialogueStatus")
LAST_INTENT = SearchAttributeKey.for_keyword("DialogueLastIntent")
TURN_COUNT = SearchAttributeKey.for_int("DialogueTurnCount")
TENANT = SearchAttributeKey.for_keyword("DialogueTenant")
DEGRADED_COUNT = SearchAttributeKey.for_int("DialogueDegradedCount")
HANDOFF = SearchAttributeKey.for_bool("DialogueHandoff")
USER = SearchAttributeKey.for_keyword("DialogueUser")
"""The conversation's end user as `user_tag` names them, set at its start: erasing a user finds through it
the conversations the store never recorded (the store was down when they started)."""
AWAITS = SearchAttributeKey.for_keyword_list("DialogueAwaits")
"""The events the conversation's reminders wait for (`on_event`): `POST /v1/events` finds the conversations
an event concerns through it. Set only in conversations that have such a reminder."""
SEARCH_ATTRIBUTES: tuple[SearchAttributeKey, ...] = (
    STATUS,
    LAST_INTENT,
    TURN_COUNT,
    TENANT,
    DEGRADED_COUNT,
    HANDOFF,
    USER,
    AWAITS,
)

_TYPE_NAMES = {
    "KEYWORD": "Keyword",
    "INT": "Int",
    "TEXT": "Text",
    "BOOL": "Bool",
    "KEYWORD_LIST": "KeywordList",
}


def search_attribute_flags() -> list[str]:
    """The `temporal server start-dev` flags that register `SEARCH_ATTRIBUTES`."""
    flags = []
    for key in SEARCH_ATTRIBUTES:
        flags += ["--search-attribute", f"{key.name}={_TYPE_NAMES[key.indexed_value_type.name]}"]
    return flags


def user_tag(tenant: str, user: str) -> str:
    """An end user as Temporal's visibility knows them: a digest of tenant and user, so that the Web UI,
    its queries and the visibility store hold no user's id, yet their conversations are found by it."""
    return hashlib.sha256(f"{tenant}\0{user}".encode()).hexdigest()[:32]


def user_query(tenant: str, user: str) -> str:
    """The visibility query for every conversation of this end user."""
    return f"{USER.name} = '{user_tag(tenant, user)}'"


def conversation_key(tenant: str, conversation_id: str) -> str:
    """A conversation's name inside the system: tenant-qualified, so tenants' ids never meet.

    Clients see their own ids; the store, the event log and Temporal see keys.
    """
    return f"{tenant}/{conversation_id}"


WORKFLOW_ID_PREFIX = "conv-"


def workflow_id(key: str) -> str:
    """The workflow of the conversation with this key (`conversation_key`), e.g. `conv-acme/42`."""
    return f"{WORKFLOW_ID_PREFIX}{key}"


def key_of(workflow_id: str) -> str | None:
    """The conversation key a workflow id names; None for other workflows (retention)."""
    return (
        workflow_id.removeprefix(WORKFLOW_ID_PREFIX) if workflow_id.startswith(WORKFLOW_ID_PREFIX) else None
    )


def data_converter(settings: Settings) -> DataConverter:
    """Pydantic models as JSON, sealed with the payload keys (unless encryption is off)."""
    return encrypted_data_converter(settings.payload_codec_keys())


async def connect(
    settings: Settings,
    *,
    lazy: bool = False,
    interceptors: Sequence[Interceptor] = (),
    runtime: Runtime | None = None,
) -> Client:
    """A client for every process (API, worker, CLI): payloads are pydantic models as JSON,
    encrypted before they reach Temporal; the Web UI reads them through the API's codec server.

    `lazy` defers the connection to the first call, so the API can start, and answer
    503, while Temporal is down. `interceptors` (tracing) apply to workers built on the client too;
    `runtime` carries the worker's SDK metrics.
    """
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        tls=settings.temporal_tls_config(),
        lazy=lazy,
        interceptors=interceptors,
        runtime=runtime,
    )

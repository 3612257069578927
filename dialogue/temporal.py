"""How every process (API, worker, CLI, tests) talks to Temporal: one client factory, one naming scheme."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter

from dialogue.settings import Settings

# Registered on the dev server by `dialogue up`; operators filter conversations by them in the Web UI.
STATUS = SearchAttributeKey.for_keyword("DialogueStatus")
LAST_INTENT = SearchAttributeKey.for_keyword("DialogueLastIntent")
TURN_COUNT = SearchAttributeKey.for_int("DialogueTurnCount")
SEARCH_ATTRIBUTES: tuple[SearchAttributeKey, ...] = (STATUS, LAST_INTENT, TURN_COUNT)

_TYPE_NAMES = {"KEYWORD": "Keyword", "INT": "Int", "TEXT": "Text", "BOOL": "Bool"}


def search_attribute_flags() -> list[str]:
    """The `temporal server start-dev` flags that register `SEARCH_ATTRIBUTES`."""
    flags = []
    for key in SEARCH_ATTRIBUTES:
        flags += ["--search-attribute", f"{key.name}={_TYPE_NAMES[key.indexed_value_type.name]}"]
    return flags


def workflow_id(conversation_id: str) -> str:
    return f"conv-{conversation_id}"


async def connect(settings: Settings, *, lazy: bool = False) -> Client:
    """A client whose payloads are pydantic models as readable JSON (in history and the Web UI).

    `lazy` defers the connection to the first call, so the API can start, and answer
    503, while Temporal is down.
    """
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        lazy=lazy,
    )

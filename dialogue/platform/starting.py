"""How clients start a conversation workflow: the same from the API's create, its first turn, tools and tests."""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from dialogue.model.contracts import ChannelAddress, ConversationInput, DoubleTextPolicy
from dialogue.platform.bot_versions import BotRef
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import DEGRADED_COUNT, HANDOFF, STATUS, TENANT, USER, user_tag, workflow_id


def conversation_input(
    settings: Settings,
    conversation_id: str,
    *,
    tenant: str = "default",
    double_text: DoubleTextPolicy | None = None,
    slots: dict[str, Any] | None = None,
    trusted_slots: list[str] | None = None,
    user: str | None = None,
    bot: BotRef | None = None,
    channel: ChannelAddress | None = None,
) -> ConversationInput:
    """`bot`: the version the conversation is pinned to (`ReleaseCache.choose`); None: the worker's own.
    `channel`: the messaging platform it is held on (its replies are delivered there)."""
    return ConversationInput(
        channel=channel,
        bot=bot.bot if bot else None,
        bot_version=bot.version if bot else None,
        slots=slots or {},
        trusted_slots=trusted_slots or [],
        user=user,
        conversation_id=conversation_id,
        tenant=tenant,
        max_text_chars=settings.max_text_chars,
        idle_timeout_seconds=settings.idle_timeout_seconds,
        turn_deadline_seconds=settings.turn_deadline_seconds,
        double_text=double_text or settings.double_text,
        max_queued_turns=settings.max_queued_turns,
        turns_per_run=settings.turns_per_run,
    )


def start_options(settings: Settings, key: str, tenant: str, user: str | None = None) -> dict[str, Any]:
    """Options of `start_workflow` and `WithStartWorkflowOperation` (but the conflict policy) for the
    conversation with this key (`dialogue.platform.temporal.conversation_key`) of `tenant`, whose end user
    is `user` (None: the tenant's server speaks for it)."""
    return {
        "id": workflow_id(key),
        "task_queue": settings.task_queue,
        # An ended conversation stays ended: its id is never started again.
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "search_attributes": listed_at_start(tenant, user),
    }


def listed_at_start(tenant: str, user: str | None = None) -> TypedSearchAttributes:
    """A new conversation's search attributes, set with the workflow: written with its start, where an
    upsert by the workflow would cost a write of its own (`workflows.conversation.details.Listing`)."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(STATUS, "active"),
        SearchAttributePair(TENANT, tenant),
        SearchAttributePair(DEGRADED_COUNT, 0),
        SearchAttributePair(HANDOFF, False),
    ]
    if user is not None:
        pairs.append(SearchAttributePair(USER, user_tag(tenant, user)))
    return TypedSearchAttributes(pairs)

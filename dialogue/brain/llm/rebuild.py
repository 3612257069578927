"""What the model saw, built again from a conversation's history alone.

An LLM call reads the conversation's earlier turns from the store, not from workflow payloads, so its
input does not fill the history. It stays reproducible: the history holds every turn's words (the
`turn` updates' replies, the `record_message` steps' person messages and notices), each `generate`
step's request (passages, summary, the place of the turn), and its lineage (which places went in,
which the store did not have, the digest of the messages). `llm_requests` puts them together with the
generator's own request builder and says whether each rebuilt request matches the recorded digest.
`dialogue replay ID --llm-requests` prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from dialogue.brain.generation import Generators
from dialogue.brain.generation.prompts import prompt_by_ref
from dialogue.brain.llm.context import ChatMessage, Conversation, Said, messages_digest
from dialogue.model.contracts import GenerateRequest, RecordMessageRequest, Reply, TurnReply


@dataclass(frozen=True)
class RebuiltRequest:
    turn_index: int
    messages: list[ChatMessage]
    recorded_sha256: str
    """The digest the `generate` step recorded in its lineage."""

    @property
    def matches(self) -> bool:
        return messages_digest(self.messages) == self.recorded_sha256


async def llm_requests(
    histories: Sequence[WorkflowHistory], converter: DataConverter, generators: Generators
) -> list[RebuiltRequest]:
    """Every LLM answer's request in these runs of one conversation (oldest run first), rebuilt."""
    said: list[Said] = []
    calls: list[tuple[GenerateRequest, Reply]] = []
    for history in histories:
        update_names: dict[str, str] = {}
        scheduled: dict[int, GenerateRequest | RecordMessageRequest] = {}
        for event in history.events:
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
                accepted = event.workflow_execution_update_accepted_event_attributes.accepted_request
                update_names[accepted.meta.update_id] = accepted.input.name
            elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
                completed = event.workflow_execution_update_completed_event_attributes
                if update_names.get(completed.meta.update_id) == "turn" and completed.outcome.HasField(
                    "success"
                ):
                    [turn] = await converter.decode(completed.outcome.success.payloads, [TurnReply])
                    said.append(Said(turn.turn_index, "user", turn.user_text))
                    if (
                        turn.reply.generator != "none"
                    ):  # the bot answered (no person held it, no interruption)
                        said.append(Said(turn.turn_index, "bot", turn.reply.text))
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                task = event.activity_task_scheduled_event_attributes
                hint = {"generate": GenerateRequest, "record_message": RecordMessageRequest}.get(
                    task.activity_type.name
                )
                if hint is not None:
                    [scheduled[event.event_id]] = await converter.decode(task.input.payloads, [hint])
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                done = event.activity_task_completed_event_attributes
                step = scheduled.get(done.scheduled_event_id)
                if isinstance(step, RecordMessageRequest):
                    said.append(Said(step.turn_index, step.role, step.text))
                elif isinstance(step, GenerateRequest):
                    [result] = await converter.decode(done.result.payloads, [Reply])
                    calls.append((step, result))
    rebuilt = []
    for request, reply in calls:
        model = generators.choose(request.llm, request.variant).model_client
        lineage = reply.context
        if request.context is None or lineage is None or model is None:
            continue
        index = request.context.turn_index
        missing = set(lineage.missing)
        earlier = [s for s in said if s.index < index and s.index not in missing]
        prepared = model.prepare(
            request.text,
            request.passages,
            prompt=prompt_by_ref(reply.prompt_id) if reply.prompt_id else None,
            conversation=Conversation(
                earlier=earlier,
                summary=request.context.summary,
                expected=range(request.context.summary.through if request.context.summary else 0, index),
                notes=tuple(request.context.notes),
                remembered=tuple(lineage.remembered),
            ),
            redact=request.redact,
        )
        if prepared is not None:
            rebuilt.append(RebuiltRequest(index, prepared[1].messages, lineage.messages_sha256))
    return rebuilt

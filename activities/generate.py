"""`generate`: words the policy's decision — a response template, an answer from the knowledge base
(grounded or by an LLM), a clarifying question, a flow's question or result, a fallback — from
the bot definition."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable, Sequence
from functools import cache
from types import SimpleNamespace
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.context import read_conversation
from activities.progress import Progress
from dialogue.brain.generation import AnswerGenerator, Generators
from dialogue.brain.llm.context import Conversation
from dialogue.brain.memory import memory_use
from dialogue.brain.policy import decide
from dialogue.model.contracts import (
    OUT_OF_SCOPE,
    ComposedReply,
    Decision,
    DialogueState,
    GenerateRequest,
    NluResult,
    Reply,
)
from dialogue.platform import events
from dialogue.platform.bot import BotDefinition, Flow
from dialogue.platform.db import MemoryItem
from dialogue.platform.memory import tenant_of

Recall = Callable[[str, str], Sequence[MemoryItem]]
"""What is remembered of an end user, by tenant and user (`platform.memory.items`)."""

HANDOFF_TEXT = "I'll hand you over to a member of our team."
END_TEXT = "Goodbye!"


class ReplyComposer:
    def __init__(
        self, bot: BotDefinition, generators: Generators | AnswerGenerator, recall: Recall | None = None
    ) -> None:
        self._bot = bot
        self._generators = generators if isinstance(generators, Generators) else Generators.only(generators)
        self._recall = recall
        """Read only for a template that names `{memory.…}`: no other turn pays for the lookup."""

    def needs_knowledge(self, nlu: NluResult, decision: Decision) -> bool:
        """Whether the reply to this decision is made from retrieved passages: an answer or the agent's
        turn, not a template or a flow's words (which a turn can then make without searching)."""
        if decision.action == "agent" or decision.answer_first:
            return True
        probe = GenerateRequest(text="", turn_index=0, nlu=nlu, decision=decision)
        return self._scripted(probe, decision) is None

    def calls_a_model(self, request: GenerateRequest) -> bool:
        """Whether the reply is an answer from a generator that calls a model over the network."""
        decision = self._decision(request)
        answers = decision.answer_first or self._scripted(request, decision) is None
        return answers and self._generators.choose(request.llm, request.variant).remote

    async def compose(
        self,
        request: GenerateRequest,
        on_token: Callable[[str], None] | None = None,
        conversation: Conversation | None = None,
    ) -> Reply:
        decision = self._decision(request)
        reply = self._scripted(request, decision) or await self._answer(
            request, self._templates(request), on_token, conversation
        )
        if decision.answer_first:
            reply = await self._answered_first(request, reply, on_token, conversation)
        flow = self._bot.flow(decision.flow)
        if decision.resume_flow and flow is not None and decision.dialogue.requested_slot:
            reminder = _render(
                self._bot.resume_template,
                flow=flow.title,
                prompt=_prompt(flow, decision.dialogue.requested_slot),
            )
            reply = reply.model_copy(update={"text": f"{reply.text} {reminder}"})
        if decision.memory_offer is not None:  # the end user may answer yes or no (`memory.ask`)
            reply = reply.model_copy(update={"text": f"{reply.text} {decision.memory_offer.question}"})
        return reply

    async def _answered_first(
        self,
        request: GenerateRequest,
        question: Reply,
        on_token: Callable[[str], None] | None,
        conversation: Conversation | None,
    ) -> Reply:
        """A flow's `question`, after what the knowledge base answers to the message (when it does)."""
        answer = await self._answer(request, [], on_token, conversation)
        if not answer.sources:
            return question
        return answer.model_copy(update={"text": f"{answer.text} {question.text}"})

    def _decision(self, request: GenerateRequest) -> Decision:
        return request.decision or decide(self._bot, request.nlu, DialogueState())

    def _templates(self, request: GenerateRequest) -> list[str]:
        topic = request.decision.topic if request.decision is not None else None
        intent = self._bot.intent(topic or request.nlu.intent.name)
        if intent is None:
            return []
        answering = request.decision is not None and request.decision.action == "answer"
        # An answer the router sent to the knowledge base is worded as one, not with the templates of the
        # intent the NLU guessed (a complaint's apology has no `{answer}`).
        return intent.responses if intent.action == "answer" or not answering else []

    def _scripted(self, request: GenerateRequest, decision: Decision) -> Reply | None:
        """The reply the bot definition words by itself; None for an answer from the knowledge base."""
        bot, turn = self._bot, request.turn_index
        templates = self._templates(request)
        flow = bot.flow(decision.flow)
        match decision.action:
            case "fallback":
                return Reply(text=_pick(bot.fallback_responses, turn))
            case "clarify":
                return self._clarifying_question(request)
            case "respond" | "handoff" | "end" if templates:
                return self._templated(templates, request)
            case "handoff":
                return Reply(text=HANDOFF_TEXT)
            case "end":
                return Reply(text=END_TEXT)
            case "flow_prompt" if flow is not None:
                missing = decision.dialogue.requested_slot or ""
                spec = next((s for s in flow.slots if s.name == decision.invalid_slot), None)
                prefix = f"{spec.invalid} " if spec is not None and spec.invalid else ""
                return Reply(text=prefix + _prompt(flow, missing))
            case "flow_complete" if flow is not None:
                said = "".join(
                    _render(bot.remembered_template, value=str(decision.dialogue.slots.get(slot, "")))
                    for slot in decision.remembered
                )
                memory = list(decision.remembered.values())
                return Reply(text=said + self._flow_result(flow, request, decision), memory=memory)
            case "flow_cancel" if flow is not None:
                return Reply(text=flow.cancelled)
        return None

    async def _answer(
        self,
        request: GenerateRequest,
        templates: list[str],
        on_token: Callable[[str], None] | None,
        conversation: Conversation | None,
    ) -> Reply:
        generator = self._generators.choose(request.llm, request.variant)
        # A model sees the conversation and answers the message itself; a generator that sees only one
        # question answers the standalone one a follow-up was searched with.
        question = request.text if generator.remote else (request.query or request.text)
        answer = await generator.answer(
            question,
            request.passages,
            on_token=on_token,
            redact=request.redact,
            conversation=conversation,
        )
        prompt = generator.prompt
        lineage: dict[str, Any] = {
            "generator": generator.name,
            "prompt_id": prompt.id if prompt else None,
            "prompt_hash": prompt.hash if prompt else None,
            "context": answer.context if answer else None,
            "data": answer.data if answer else None,
        }
        if answer is None or not answer.found:
            return Reply(text=_pick(self._bot.no_answer_responses, request.turn_index), **lineage)
        template = _pick(templates, request.turn_index) if templates else self._bot.answer_template
        saw_memory = conversation is not None and answer.context is not None and answer.context.remembered
        if saw_memory and conversation is not None:
            lineage["memory"] = list(conversation.memory)
        if conversation is not None and conversation.consented and answer.context is not None:
            # The workflow has the model read this turn for facts to keep, after the reply (`note_memory`).
            notes = self._bot.memory.model_notes
            lineage["context"] = answer.context.model_copy(update={"memory_notes": notes})
        return Reply(text=_render(template, answer=answer.text), sources=answer.sources, **lineage)

    def _templated(self, templates: list[str], request: GenerateRequest) -> Reply:
        """A template reply. Templates that name items of the user's memory (`{memory.name}`) are used when
        every item they name is remembered, those naming the most first ("Welcome back, {memory.name}!");
        otherwise the others, as for a bot without memory."""
        plain = [t for t in templates if not _remembered(t)]
        context = request.context
        if self._recall is None or context is None or context.user is None or len(plain) == len(templates):
            return Reply(text=_render(_pick(plain or templates, request.turn_index)))
        remembered = self._recall(tenant_of(context.conversation_id), context.user)
        known = {item.kind: item for item in remembered}
        usable = [t for t in templates if _remembered(t) and _remembered(t) <= known.keys()]
        if not usable:  # a bot with memory templates keeps one without (`BotDefinition`)
            return Reply(text=_render(_pick(plain or templates, request.turn_index)))
        most = max(len(_remembered(t)) for t in usable)
        template = _pick([t for t in usable if len(_remembered(t)) == most], request.turn_index)
        used = [known[kind] for kind in sorted(_remembered(template))]
        memory = SimpleNamespace(**{item.kind: item.value for item in used})
        return Reply(text=_render(template, memory=memory), memory=[memory_use(item) for item in used])

    def _flow_result(self, flow: Flow, request: GenerateRequest, decision: Decision) -> str:
        result = request.tool_result
        values = {
            k: str(v) for k, v in {**decision.dialogue.slots, **(result.data if result else {})}.items()
        }
        if result is None:
            return _pick(self._bot.fallback_responses, request.turn_index)
        if result.ok:
            return _render(flow.done, **values)
        again = f" {_prompt(flow, result.retry_slot)}" if result.retry_slot else ""
        return _render(flow.failed, **values) + again

    def _clarifying_question(self, request: GenerateRequest) -> Reply:
        """Which of the two likeliest intents the user meant, each offered as a quick reply (its title, which
        the NLU reads as that intent)."""
        ranking = [p for p in request.nlu.ranking if p.name != OUT_OF_SCOPE]
        named = [self._bot.intent(p.name) for p in ranking[:2]]
        titles = [i.title or i.name.replace("_", " ") for i in named if i is not None]
        if len(titles) < 2:
            return Reply(text=_pick(self._bot.fallback_responses, request.turn_index))
        text = _render(self._bot.clarify_template, first=titles[0], second=titles[1])
        return Reply(text=text, quick_replies=titles)


def _prompt(flow: Flow, slot: str) -> str:
    return next((s.prompt for s in flow.slots if s.name == slot), "")


@cache
def _remembered(template: str) -> frozenset[str]:
    """The memory items a template names: `{memory.city}` names `city`."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError:  # a broken template: `_render` says so
        return frozenset()
    return frozenset(field.split(".", 1)[1] for field in fields if field.startswith("memory."))


def _render(template: str, **values: Any) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        # A broken template is bad configuration: retrying cannot fix it.
        raise ApplicationError(
            f"response template {template!r} is invalid: {err!r}", type="BadTemplate", non_retryable=True
        ) from err


def _pick(options: list[str], turn_index: int) -> str:
    # Rotate by turn index: varied, and the same on every replay.
    return options[turn_index % len(options)]


class GenerateActivity:
    def __init__(self, composer: ReplyComposer, engine: Engine) -> None:
        self._composer = composer
        self._engine = engine

    @activity.defn(name="generate")
    async def generate(self, request: GenerateRequest) -> Reply:
        """The reply text, its sources, and what produced it; streamed to the event log when asked."""
        conversation = None
        if request.context is not None and self._composer.calls_a_model(request):
            conversation = await asyncio.to_thread(read_conversation, self._engine, request.context)
        opening: list[tuple[events.EventKind, dict[str, Any]]] = [
            ("nlu", request.nlu.model_dump(mode="json")),
            (
                "sources",
                {
                    "passages": [
                        {"document_id": p.document_id, "title": p.title, "url": p.url, "score": p.score}
                        for p in request.passages
                    ]
                },
            ),
        ]
        async with Progress(self._engine, request.stream, opening) as progress:
            reply = await self._composer.compose(request, on_token=progress.token, conversation=conversation)
            progress.finish(reply)
        return reply

    @activity.defn(name="compose")
    async def compose(self, request: GenerateRequest) -> ComposedReply:
        """`generate` for a reply made here in milliseconds (a template, the grounded generator): run as a
        local activity, inside the turn's workflow task. A reply from a model elsewhere is left to
        `generate`, a regular activity: retried on any worker, heartbeating while the model answers."""
        if self._composer.calls_a_model(request):
            return ComposedReply()
        return ComposedReply(reply=await self.generate(request))

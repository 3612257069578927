"""The dialogue policy: from what the user said and where the conversation stands, what to do.

A pure function of the bot definition, the NLU result and the dialogue state, run inside
the `understand` activity, so its decision is recorded in history and a replay never
re-decides. The workflow applies the decision; `generate` words it.

- An active flow takes the turn when the turn fills one of its slots, confirms, or is unsure.
- Another confident intent in the middle of a flow is answered, and the flow's question is
  asked again: the user may change topic and come back.
- `deny` in the middle of a flow cancels it.
- Without a flow: a follow-up the NLU cannot place ("and to Austria?": out of scope, or unsure)
  right after a knowledge-base answer continues it, answered from the knowledge base on the same
  topic. Otherwise, where the router weighed the knowledge base's evidence (`NluResult.routing`),
  its likeliest route decides: `knowledge` answers from the knowledge base (a question about a
  topic no intent covers, or one that merely mentions an order or a problem), unless the message
  names a flow's intent and gives one of its slots ("where is NW-482913?"); `out_of_scope` gets
  the fallback; `intent` goes on as below. Without a router: out-of-scope gets the fallback.
  Then low confidence gets a clarifying question, otherwise the intent's action (`respond`,
  `answer`, `flow`, `handoff`, `end`).
- A flow that starts without its slots asks for the first; with `answer_first`, after what the
  knowledge base answers to the message.
- In the middle of a flow, a message the router sends to the knowledge base is answered there too,
  and the flow's question asked again, unless it fills a slot, names the flow's own intent or says no.
- A slot the integrator's server set (`DialogueState.trusted`) keeps its value: what the user types
  never overwrites it, a cancelled flow does not forget it, and it is not checked against the pattern.
"""

from __future__ import annotations

import re

from dialogue.model.contracts import OUT_OF_SCOPE, Decision, DialogueState, NluResult, ToolCall
from dialogue.platform.bot import BotDefinition, Flow

CANCEL_INTENTS = frozenset({"deny"})
STAY_INTENTS = frozenset({"affirm", OUT_OF_SCOPE})


def decide(
    bot: BotDefinition,
    nlu: NluResult,
    state: DialogueState,
    *,
    follow_up: bool = False,
    agent_mode: bool = False,
) -> Decision:
    """`follow_up`: the text leans on what was said before (`dialogue.brain.llm.followup.is_follow_up`).
    `agent_mode`: the bot's `mode: agent` is on for this conversation (the `agent` flag)."""
    # Every entity is remembered as a slot of its name (the latest value wins); flows take theirs from it.
    typed = {e.entity: e.value for e in nlu.entities if e.entity not in state.trusted}
    remembered = {**state.slots, **typed}
    state = state.model_copy(update={"slots": remembered})
    flow = bot.flow(state.active_flow)
    if flow is not None:
        return _continue_flow(bot, flow, nlu, state)
    if agent_mode and _for_the_agent(bot, nlu):
        return Decision(
            action="agent", dialogue=state.model_copy(update={"active_flow": None, "requested_slot": None})
        )
    return _without_flow(bot, nlu, state, follow_up=follow_up)


def _for_the_agent(bot: BotDefinition, nlu: NluResult) -> bool:
    """In agent mode: the agent's own intents, and whatever no scripted intent is sure of."""
    if nlu.intent.name in bot.agent.intents:
        return True
    sure = nlu.intent.name != OUT_OF_SCOPE and nlu.intent.confidence >= bot.agent.confidence
    return not sure or bot.intent(nlu.intent.name) is None


def _without_flow(
    bot: BotDefinition, nlu: NluResult, state: DialogueState, *, follow_up: bool = False
) -> Decision:
    kept = state.model_copy(update={"active_flow": None, "requested_slot": None})
    placed = nlu.intent.name != OUT_OF_SCOPE and not _unsure(bot, nlu)
    if follow_up and not placed and state.last_action == "answer" and state.last_topic:
        return Decision(action="answer", topic=state.last_topic, dialogue=kept)
    route = nlu.routing.best if nlu.routing is not None else None
    if route == "knowledge" and not _gives_its_flow_a_slot(bot, nlu):
        return Decision(action="answer", dialogue=kept)
    if route == "out_of_scope" or nlu.intent.name == OUT_OF_SCOPE:
        return Decision(action="fallback", dialogue=kept)
    if _unsure(bot, nlu):
        return Decision(action="clarify", dialogue=kept)
    intent = bot.intent(nlu.intent.name)
    if intent is None:
        return Decision(action="answer", dialogue=kept)
    if intent.action == "flow":
        flow = bot.flow(intent.flow)
        if flow is None:
            return Decision(action="answer", dialogue=kept)
        return _continue_flow(
            bot, flow, nlu, kept.model_copy(update={"active_flow": flow.name}), starting=True
        )
    return Decision(action=intent.action, dialogue=kept)


def _gives_its_flow_a_slot(bot: BotDefinition, nlu: NluResult) -> bool:
    """The message names an intent that starts a flow and gives a value for one of its slots ("where is
    NW-482913?"): a request for the flow, whatever the knowledge base says about such orders."""
    intent = bot.intent(nlu.intent.name)
    flow = bot.flow(intent.flow) if intent is not None and intent.action == "flow" else None
    if flow is None:
        return False
    wanted = {spec.entity or spec.name for spec in flow.slots}
    return any(entity.entity in wanted for entity in nlu.entities)


def _continue_flow(
    bot: BotDefinition, flow: Flow, nlu: NluResult, state: DialogueState, *, starting: bool = False
) -> Decision:
    slots = dict(state.slots)
    trusted = frozenset(state.trusted)
    filled, invalid = _fill(flow, nlu, slots, trusted)
    if not starting and not filled:
        intent = nlu.intent.name
        if intent in CANCEL_INTENTS:
            # Forget what the user gave for the abandoned flow: it must not fill the next one.
            after = DialogueState(slots=_without_flow_slots(flow, slots, trusted), trusted=state.trusted)
            return Decision(action="flow_cancel", flow=flow.name, dialogue=after)
        declared = bot.intent(intent)
        is_trigger = declared is not None and declared.flow == flow.name
        to_knowledge = nlu.routing is not None and nlu.routing.best == "knowledge"
        if (
            not invalid
            and not is_trigger
            and (to_knowledge or (intent not in STAY_INTENTS and not _unsure(bot, nlu)))
        ):
            side = _without_flow(
                bot, nlu, state.model_copy(update={"slots": _without_flow_slots(flow, slots, trusted)})
            )
            if side.action in ("respond", "answer", "clarify", "fallback"):
                # Another topic: answer it, keep the flow, ask its question again.
                missing = _missing(flow, slots)
                return side.model_copy(
                    update={
                        "flow": flow.name,
                        "resume_flow": missing is not None,
                        "dialogue": state.model_copy(update={"requested_slot": missing}),
                    }
                )
            # A handoff, an end or another flow replaces this one.
            return side
    missing = _missing(flow, slots)
    after = DialogueState(active_flow=flow.name, slots=slots, requested_slot=missing, trusted=state.trusted)
    if missing is not None:
        return Decision(
            action="flow_prompt",
            flow=flow.name,
            dialogue=after,
            invalid_slot=invalid,
            answer_first=starting and flow.answer_first,
        )
    arguments = {spec.name: slots[spec.name] for spec in flow.slots}
    return Decision(
        action="flow_complete",
        flow=flow.name,
        dialogue=after,
        tool=ToolCall(name=flow.tool, arguments=arguments),
    )


def _fill(
    flow: Flow, nlu: NluResult, slots: dict[str, object], trusted: frozenset[str] = frozenset()
) -> tuple[list[str], str | None]:
    """Fill the flow's slots from the turn's entities (or, for a flow's slot named like no entity,
    from what was remembered); the names filled this turn, and a slot whose value was refused. A
    trusted slot that has its value is left as it is."""
    filled: list[str] = []
    invalid: str | None = None
    for spec in flow.slots:
        if spec.name in trusted and spec.name in slots:
            continue
        entity = spec.entity or spec.name
        values = [e.value for e in nlu.entities if e.entity == entity]
        valid = [v for v in values if spec.pattern is None or re.fullmatch(spec.pattern, v, re.IGNORECASE)]
        if valid:
            slots[spec.name] = valid[0]
            filled.append(spec.name)
        elif values:
            invalid = spec.name
            slots.pop(spec.name, None)
        elif (
            spec.name in slots
            and spec.pattern
            and not re.fullmatch(spec.pattern, str(slots[spec.name]), re.IGNORECASE)
        ):
            slots.pop(spec.name, None)
    return filled, invalid


def _without_flow_slots(
    flow: Flow, slots: dict[str, object], trusted: frozenset[str] = frozenset()
) -> dict[str, object]:
    names = {spec.name for spec in flow.slots} | {spec.entity for spec in flow.slots if spec.entity}
    return {k: v for k, v in slots.items() if k not in names or k in trusted}


def _missing(flow: Flow, slots: dict[str, object]) -> str | None:
    return next((spec.name for spec in flow.slots if spec.name not in slots), None)


def _unsure(bot: BotDefinition, nlu: NluResult) -> bool:
    candidates = [p for p in nlu.ranking if p.name != OUT_OF_SCOPE]
    return nlu.intent.confidence < bot.clarify_below and len(candidates) >= 2

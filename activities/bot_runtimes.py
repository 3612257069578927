"""The bot versions a worker serves: its own bot folder's, built at start, and published versions loaded
from the store on a conversation's first use of them, the most recently used kept (`bot_versions_kept`).

Each activity of a turn that depends on the bot (understand, compose, generate, tools, the agent, …) is
registered once, as a dispatcher: it runs the activity of the version the conversation's header names
(`dialogue.platform.bot_header`). The knowledge base, the store and the transcript's activities are the
deployment's, shared by every version.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.agent import AgentActivity
from activities.flow_tools import ToolActivity
from activities.generate import GenerateActivity, ReplyComposer
from activities.memory_notes import MemoryNotesActivity
from activities.respond import RespondActivity
from activities.retrieve import RetrieveActivity
from activities.rewrite import RewriteActivity
from activities.summarize import SummarizeActivity
from activities.understand import UnderstandActivity
from dialogue.brain.generation import build_generators
from dialogue.brain.nlu.parser import build_parser
from dialogue.platform import memory
from dialogue.platform.bot import BotDefinition, load_bot
from dialogue.platform.bot_header import answering_bot
from dialogue.platform.bot_versions import MODEL_FOLDER, BotRef, get_version, unpack
from dialogue.platform.metrics import BOT_VERSION_LOADS
from dialogue.platform.settings import Settings

log = logging.getLogger("dialogue.worker.bots")

BOT_NOT_FOUND = "BotVersionNotFound"


@dataclass(frozen=True)
class BotActivities:
    """The activities of one bot version, models loaded."""

    ref: BotRef
    bot: BotDefinition
    understand: UnderstandActivity
    generate: GenerateActivity
    tool: ToolActivity
    summarize: SummarizeActivity
    rewrite: RewriteActivity
    agent: AgentActivity
    respond: RespondActivity
    memory_notes: MemoryNotesActivity


def bot_activities(
    settings: Settings, ref: BotRef, bot: BotDefinition, engine: Engine, retrieve: RetrieveActivity
) -> BotActivities:
    parser = build_parser(settings, bot)
    parser.parse("hello")  # load the models now, not during the first user's turn
    generators = build_generators(settings, bot)
    composer = ReplyComposer(
        bot, generators, recall=lambda tenant, user: memory.items(engine, tenant=tenant, user=user)
    )
    understand = UnderstandActivity(bot, parser, composer.needs_knowledge, retrieve.search)
    generate = GenerateActivity(composer, engine)
    return BotActivities(
        ref=ref,
        bot=bot,
        understand=understand,
        generate=generate,
        tool=ToolActivity(bot, settings.data_dir),
        summarize=SummarizeActivity(bot, engine, generators),
        rewrite=RewriteActivity(bot, generators),
        agent=AgentActivity(bot, engine, generators, settings.data_dir),
        respond=RespondActivity(
            understand, retrieve, generate, engine, bot.privacy.retention_days, ask_consent=bot.memory.ask
        ),
        memory_notes=MemoryNotesActivity(bot, engine, generators),
    )


class BotRuntimes:
    """The worker's bot versions: `own` (its bot folder) and those loaded from the store."""

    def __init__(
        self, settings: Settings, engine: Engine, retrieve: RetrieveActivity, own: BotActivities
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._retrieve = retrieve
        self.own = own
        self._kept: OrderedDict[str, BotActivities] = OrderedDict()
        self._loading = threading.Lock()

    def cached(self, ref: str | None) -> BotActivities | None:
        """The version's activities when they are at hand (the worker's own, or loaded); None: load them."""
        if ref is None or ref == str(self.own.ref):
            return self.own
        found = self._kept.get(ref)
        if found is not None:
            self._kept.move_to_end(ref)
        return found

    def load(self, ref: str) -> BotActivities:
        """The version's activities, unpacked from the store and built on first use (one load at a time)."""
        with self._loading:
            found = self.cached(ref)
            if found is not None:
                return found
            wanted = BotRef.parse(ref)
            row = get_version(self._engine, wanted.bot, wanted.version, archive=True)
            if row is None:
                if wanted.bot == self.own.ref.bot:
                    # The API read another copy of the deployment's bot folder than this worker's (a rolling
                    # deploy of files): the worker answers with its own rather than fail the turn.
                    log.warning("bot version %s is not published: answering with %s", ref, self.own.ref)
                    return self.own
                raise ApplicationError(
                    f"no bot version {ref} in the store", type=BOT_NOT_FOUND, non_retryable=True
                )
            folder = self._settings.data_dir / "bots" / row.bot / row.version
            bot_file = unpack(row.archive, folder)
            settings = self._settings.model_copy(update={"nlu_model_dir": folder / MODEL_FOLDER})
            loaded = bot_activities(
                settings, BotRef(row.bot, row.version), load_bot(bot_file), self._engine, self._retrieve
            )
            self._kept[ref] = loaded
            while len(self._kept) > self._settings.bot_versions_kept:
                dropped, _ = self._kept.popitem(last=False)
                log.info(
                    "bot version %s dropped from this worker (it serves %d at most)",
                    dropped,
                    self._settings.bot_versions_kept,
                )
            BOT_VERSION_LOADS.labels(bot=row.bot, version=row.version).inc()
            log.info("bot version %s loaded", ref, extra={"bot": row.bot, "version": row.version})
            return loaded

    def current(self) -> BotActivities:
        """The activities of the version the running activity serves (its header)."""
        ref = answering_bot()
        found = self.cached(ref)
        if found is not None or ref is None:
            return found or self.own
        return self.load(ref)

    async def current_async(self) -> BotActivities:
        ref = answering_bot()
        found = self.cached(ref)
        if found is not None or ref is None:
            return found or self.own
        # Loading reads the store and the models: off the event loop, where other activities run.
        return await asyncio.to_thread(self.load, ref)


def dispatched(
    runtimes: BotRuntimes, pick: Callable[[BotActivities], Callable[..., Any]]
) -> Callable[..., Any]:
    """An activity registered once for every version: it runs `pick` of the version the conversation serves.
    Its name and argument types are those of the worker's own bot's activity."""
    own = pick(runtimes.own)
    name = activity_name(own)
    if inspect.iscoroutinefunction(own):

        async def run_async(*args: Any) -> Any:
            return await pick(await runtimes.current_async())(*args)

        function: Callable[..., Any] = run_async
    else:

        def run_sync(*args: Any) -> Any:
            return pick(runtimes.current())(*args)

        function = run_sync
    # The signature and annotations of `own` (not its __dict__, which holds its activity definition).
    functools.update_wrapper(function, own, updated=())
    return activity.defn(name=name)(function)


def activity_name(method: Callable[..., Any]) -> str:
    definition = getattr(method, "__temporal_activity_definition", None)
    name = getattr(definition, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"{method} is not an activity")
    return name

"""Which version of a bot a conversation gets: the bot's stable version, or its canary for a share of new
conversations, chosen by a hash of the conversation's key (the same hash as feature flags use, so every
API replica agrees and a conversation keeps its side). `release` and `rollback` change it, each in one
transaction with its audit entry (who, when, from what to what).

A conversation is pinned to the version it started with: the API names it in the workflow's input, and
the workflow keeps it across continue-as-new. Only a release made with `move_running` moves running
conversations, at their next turn (an urgent fix).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from dialogue.platform.bot_versions import BotRef, BotVersionError, NotFound, require_version
from dialogue.platform.db import AuditEntry, BotRelease
from dialogue.platform.flags import BUCKETS, bucket

log = logging.getLogger("dialogue.platform.releases")

RELEASE_TENANT = "default"
"""Bots are the deployment's, not a tenant's: their audit entries are the operators' (tenant `default`)."""
MAX_PREVIOUS = 20
"""Stable versions remembered for `rollback`."""


def choose(release: BotRelease, key: str) -> str:
    """The version a conversation with this key (`tenant/id`) gets from this release."""
    if release.canary is None or release.canary_percent <= 0:
        return release.stable
    if release.canary_percent >= 100:
        return release.canary
    return (
        release.canary
        if bucket(f"bot:{release.bot}", key) < round(release.canary_percent * BUCKETS / 100)
        else release.stable
    )


def get_release(engine: Engine, bot: str) -> BotRelease | None:
    with Session(engine, expire_on_commit=False) as session:
        return session.get(BotRelease, bot)


def list_releases(engine: Engine) -> list[BotRelease]:
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(select(BotRelease).order_by(col(BotRelease.bot))).all())


def release(
    engine: Engine,
    bot: str,
    version: str,
    *,
    percent: float = 100.0,
    actor: str,
    move_running: bool = False,
    reason: str | None = None,
) -> BotRelease:
    """Make `version` the bot's stable version (`percent` 100) or its canary for `percent` of new
    conversations; with `move_running`, running conversations move too, at their next turn."""
    if not 0 < percent <= 100:
        raise BotVersionError("percent must be above 0 and at most 100")
    full = require_version(engine, bot, version).version
    with Session(engine, expire_on_commit=False) as session:
        # Locked (PostgreSQL; SQLite has one writer) against a concurrent release, rollback or guard.
        row = session.get(BotRelease, bot, with_for_update=True)
        before = _describe(row)
        now = datetime.now(UTC)
        if row is None:
            if percent < 100:
                raise BotVersionError(f"bot {bot} has no stable version yet: release one at 100% first")
            row = BotRelease(bot=bot, stable=full, previous=[], updated_at=now, updated_by=actor)
        elif percent >= 100:
            if row.stable != full:
                row.previous = [*row.previous, row.stable][-MAX_PREVIOUS:]
            row.stable, row.canary, row.canary_percent = full, None, 0.0
        else:
            if full == row.stable:
                raise BotVersionError(f"{bot}@{full} is the stable version already")
            row.canary, row.canary_percent = full, percent
        row.move_running, row.updated_at, row.updated_by = move_running, now, actor
        session.add(row)
        _audit(session, actor, "bot.release", bot, before, row, reason=reason)
        session.commit()
        return row


def rollback(
    engine: Engine, bot: str, *, actor: str, move_running: bool = False, reason: str | None = None
) -> BotRelease:
    """Drop the canary when there is one; else go back to the stable version before this one."""
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(BotRelease, bot, with_for_update=True)
        if row is None:
            raise NotFound(f"bot {bot} has no release to roll back")
        before = _describe(row)
        if row.canary is not None:
            row.canary, row.canary_percent = None, 0.0
        elif row.previous:
            row.stable, row.previous = row.previous[-1], row.previous[:-1]
        else:
            raise BotVersionError(f"bot {bot} has no canary and no earlier stable version to roll back to")
        row.move_running, row.updated_at, row.updated_by = move_running, datetime.now(UTC), actor
        session.add(row)
        _audit(session, actor, "bot.rollback", bot, before, row, reason=reason)
        session.commit()
        return row


def drop_canary(engine: Engine, bot: str, canary: str, *, actor: str, reason: str) -> BotRelease | None:
    """Drop the bot's canary if it is still `canary`; None, and nothing written, when it is not (another
    API replica's guard dropped it first, or an operator changed the release since). Unlike `rollback`,
    never touches the stable version."""
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(BotRelease, bot)
        if row is None or row.canary != canary:
            return None
        before = _describe(row)
        now = datetime.now(UTC)
        # Conditional in the database itself: of two replicas that read the same canary, one updates it.
        changed = session.exec(
            update(BotRelease)
            .where(col(BotRelease.bot) == bot, col(BotRelease.canary) == canary)
            .values(canary=None, canary_percent=0.0, move_running=False, updated_at=now, updated_by=actor)
        ).rowcount
        if changed != 1:
            session.rollback()
            return None
        session.expire(row)
        session.refresh(row)
        _audit(session, actor, "bot.rollback", bot, before, row, reason=reason)
        session.commit()
        return row


def history(engine: Engine, bot: str, limit: int = 50) -> list[AuditEntry]:
    """The bot's releases and rollbacks, newest first."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(AuditEntry)
                .where(
                    AuditEntry.tenant == RELEASE_TENANT,
                    AuditEntry.target == bot,
                    col(AuditEntry.action).startswith("bot."),
                )
                .order_by(col(AuditEntry.id).desc())
                .limit(limit)
            ).all()
        )


def _describe(row: BotRelease | None) -> dict[str, Any]:
    if row is None:
        return {"stable": None, "canary": None, "canary_percent": 0.0}
    return {"stable": row.stable, "canary": row.canary, "canary_percent": row.canary_percent}


def _audit(
    session: Session,
    actor: str,
    action: str,
    bot: str,
    before: dict[str, Any],
    after: BotRelease,
    *,
    reason: str | None,
) -> None:
    # In the release's own transaction: a release is never made without its entry, nor the entry without it.
    session.add(
        AuditEntry(
            at=after.updated_at,
            tenant=RELEASE_TENANT,
            actor=actor[:200],
            action=action,
            target=bot,
            detail={
                "from": before,
                "to": _describe(after),
                "move_running": after.move_running,
                **({"reason": reason} if reason else {}),
            },
        )
    )


Source = Literal["release", "files"]


@dataclass(frozen=True)
class Choice:
    """The version a conversation gets, and whether running conversations move to it."""

    ref: BotRef
    source: Source
    """`release`: a published version; `files`: the deployment's own bot folder (no release)."""
    move_running: bool = False


class ReleaseCache:
    """The releases as the API knows them: read from the store by `refresh` (the API does so every
    `DIALOGUE_RELEASE_CACHE_SECONDS`, off its event loop: a release or a rollback reaches new conversations
    within that), the last ones read kept while the store is down."""

    def __init__(self, engine: Engine, files: BotRef) -> None:
        self._engine = engine
        self._files = files
        self.releases: dict[str, BotRelease] = {}
        self.definitions: dict[tuple[str, str], str] = {}
        """The bot.yaml of each released version (stable and canary), by bot and version."""
        # One refresh at a time: the periodic one, begun before a release, would otherwise finish after the
        # release's own refresh and put back what it read before, for a period (a canary test saw it).
        self._refreshing = threading.Lock()

    @property
    def default_bot(self) -> str:
        return self._files.bot

    def refresh(self) -> None:
        with self._refreshing:
            self._refresh()

    def _refresh(self) -> None:
        try:
            releases = {row.bot: row for row in list_releases(self._engine)}
            for row in releases.values():
                for version in filter(None, (row.stable, row.canary)):
                    if (row.bot, version) not in self.definitions:  # a version never changes
                        self.definitions[(row.bot, version)] = require_version(
                            self._engine, row.bot, version
                        ).definition
            self.releases = releases
        except SQLAlchemyError as err:  # the store is down: new conversations get the last known
            log.warning("bot releases unreadable (%s): keeping the last read", err.__class__.__name__)

    def choose(self, bot: str | None, key: str) -> Choice | None:
        """The version of `bot` (the deployment's bot when None) for the conversation with this key; None
        for a bot with no release that is not the deployment's own."""
        name = bot or self._files.bot
        row = self.releases.get(name)
        if row is not None:
            return Choice(BotRef(name, choose(row, key)), "release", row.move_running)
        if name == self._files.bot:
            return Choice(self._files, "files")
        return None

    def running_moves(self, key: str) -> dict[str, str]:
        """For a turn: the version each bot released with `move_running` has for this conversation now (a
        running conversation of one of them moves to it)."""
        return {name: choose(row, key) for name, row in self.releases.items() if row.move_running}

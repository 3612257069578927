"""`/v1/bots`: the published versions of the deployment's bots and their releases. Admins read them; an
operator (the deployment's, not a tenant's: bots serve every tenant) releases and rolls back, each change
audited. Versions are published with `dialogue bot publish`, which trains and tests them first. Each
version's numbers (`/numbers`) show how it does, the canary beside the stable."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from api.deps import AdminPrincipal, EngineDep, OperatorPrincipal, ReleasesDep
from api.errors import ApiError, responses
from dialogue.model.api_models import (
    BotName,
    BotNumbers,
    BotPublic,
    BotReleaseEntry,
    BotReleasePublic,
    BotVersionPublic,
    ReleaseCreate,
    RollbackCreate,
    VersionNumbersPublic,
)
from dialogue.platform import bot_versions, releases
from dialogue.platform.bot_versions import BotVersionError, NotFound
from dialogue.platform.version_numbers import VersionNumbers, version_numbers
from dialogue.security.identity import Principal

router = APIRouter(prefix="/bots", tags=["bots"])

BotPath = Annotated[BotName, Path()]
VersionPath = Annotated[str, Path(pattern=r"^[0-9a-f]{4,64}$")]


@router.get("", responses=responses("forbidden"))
async def list_bots(engine: EngineDep, principal: AdminPrincipal) -> list[BotPublic]:
    """Every bot with a published version or a release: its release and its versions, newest first."""
    return [_seen_by(principal, bot) for bot in await run_in_threadpool(_bots, engine, None)]


@router.get("/{bot}", responses=responses("forbidden", "bot_not_found"))
async def show_bot(bot: BotPath, engine: EngineDep, principal: AdminPrincipal) -> BotPublic:
    """A bot's release, versions, and its releases and rollbacks (who, when, from what to what)."""
    found = await run_in_threadpool(_bots, engine, bot)
    if not found:
        raise ApiError("bot_not_found", f"no bot {bot!r}")
    history = await run_in_threadpool(releases.history, engine, bot)
    return _seen_by(principal, found[0]).model_copy(
        update={
            "history": [
                BotReleaseEntry(at=e.at, actor=e.actor, action=e.action, detail=e.detail) for e in history
            ]
        }
    )


@router.get("/{bot}/versions/{version}", responses=responses("forbidden", "bot_not_found"))
async def show_version(
    bot: BotPath, version: VersionPath, engine: EngineDep, principal: AdminPrincipal
) -> BotVersionPublic:
    """One version: its files' digests, its NLU model, its tests' outcome, its knowledge revision and its
    model card."""
    row = await run_in_threadpool(bot_versions.get_version, engine, bot, version)
    if row is None:
        raise ApiError("bot_not_found", f"no version {version} of bot {bot!r}")
    return _version_seen_by(principal, BotVersionPublic.model_validate(row, from_attributes=True))


@router.get("/{bot}/diff", responses=responses("forbidden", "bot_not_found"))
async def diff(
    bot: BotPath,
    engine: EngineDep,
    principal: AdminPrincipal,
    old: Annotated[str, Query(alias="from", pattern=r"^[0-9a-f]{4,64}$")],
    new: Annotated[str, Query(alias="to", pattern=r"^[0-9a-f]{4,64}$")],
) -> dict[str, object]:
    """What changed between two versions: files added, removed, changed (with a unified diff of each)."""

    def compare() -> dict[str, object]:
        return bot_versions.diff_versions(
            bot_versions.require_version(engine, bot, old, archive=True),
            bot_versions.require_version(engine, bot, new, archive=True),
        )

    try:
        return await run_in_threadpool(compare)
    except BotVersionError as err:
        raise ApiError("bot_not_found", str(err)) from None


@router.get("/{bot}/numbers", responses=responses("forbidden", "bot_not_found"))
async def numbers(
    bot: BotPath,
    engine: EngineDep,
    principal: AdminPrincipal,
    since: Annotated[
        datetime | None,
        Query(description="Count turns from this moment; by default the canary's own period, if any."),
    ] = None,
) -> BotNumbers:
    """The numbers of each version of the bot, read from the store: turns, degraded, fallback, out-of-scope,
    handoff and rated-down rates, the users' satisfaction, latency p50 and p99; the stable beside the
    canary."""

    def count() -> BotNumbers | None:
        row = releases.get_release(engine, bot)
        start = since if since is not None else (row.updated_at if row and row.canary else None)
        found = version_numbers(engine, bot, since=start)
        if row is None and not found:
            return None

        def side(version: str | None) -> VersionNumbersPublic | None:
            if version is None:
                return None
            return VersionNumbersPublic(**found.get(version, VersionNumbers(bot, version)).public())

        return BotNumbers(
            bot=bot,
            since=start,
            release=BotReleasePublic.model_validate(row, from_attributes=True) if row else None,
            stable=side(row.stable if row else None),
            canary=side(row.canary if row else None),
            versions=[VersionNumbersPublic(**n.public()) for n in found.values()],
        )

    shown = await run_in_threadpool(count)
    if shown is None:
        raise ApiError("bot_not_found", f"no release and no recorded turns of bot {bot!r}")
    return shown


@router.post("/{bot}/release", responses=responses("forbidden", "bot_not_found", "invalid_release"))
async def release(
    bot: BotPath, body: ReleaseCreate, engine: EngineDep, principal: OperatorPrincipal, cache: ReleasesDep
) -> BotReleasePublic:
    """Make a version the bot's stable one (`percent` 100) or its canary for `percent` of new conversations.
    New conversations get it within `DIALOGUE_RELEASE_CACHE_SECONDS`; running ones keep theirs unless
    `move_running`."""
    try:
        row = await run_in_threadpool(
            lambda: releases.release(
                engine,
                bot,
                body.version,
                percent=body.percent,
                actor=principal.subject,
                move_running=body.move_running,
                reason=body.reason,
            )
        )
    except NotFound as err:
        raise ApiError("bot_not_found", str(err)) from None
    except BotVersionError as err:
        raise ApiError("invalid_release", str(err)) from None
    await run_in_threadpool(cache.refresh)  # this API replica at once; the others within their period
    return BotReleasePublic.model_validate(row, from_attributes=True)


@router.post("/{bot}/rollback", responses=responses("forbidden", "bot_not_found", "invalid_release"))
async def rollback(
    bot: BotPath, body: RollbackCreate, engine: EngineDep, principal: OperatorPrincipal, cache: ReleasesDep
) -> BotReleasePublic:
    """Drop the canary if there is one, else go back to the stable version before this one."""
    try:
        row = await run_in_threadpool(
            lambda: releases.rollback(
                engine, bot, actor=principal.subject, move_running=body.move_running, reason=body.reason
            )
        )
    except NotFound as err:
        raise ApiError("bot_not_found", str(err)) from None
    except BotVersionError as err:
        raise ApiError("invalid_release", str(err)) from None
    await run_in_threadpool(cache.refresh)
    return BotReleasePublic.model_validate(row, from_attributes=True)


def _bots(engine: Engine, only: str | None) -> list[BotPublic]:
    versions = bot_versions.list_versions(engine, only)
    rows = {row.bot: row for row in releases.list_releases(engine) if only in (None, row.bot)}
    names = sorted({v.bot for v in versions} | set(rows))
    return [
        BotPublic(
            bot=name,
            release=BotReleasePublic.model_validate(rows[name], from_attributes=True)
            if name in rows
            else None,
            versions=[
                BotVersionPublic.model_validate(v, from_attributes=True) for v in versions if v.bot == name
            ],
        )
        for name in names
    ]


def _seen_by(principal: Principal, bot: BotPublic) -> BotPublic:
    return bot.model_copy(update={"versions": [_version_seen_by(principal, v) for v in bot.versions]})


def _version_seen_by(principal: Principal, version: BotVersionPublic) -> BotVersionPublic:
    """A version as a tenant's admin may see it: bots serve every tenant, but the conversations a model
    learned from are each a tenant's, and where the folder was published from is the operator's."""
    if principal.allows("operator"):
        return version
    manifest = {key: value for key, value in version.manifest.items() if key != "source"}
    card = manifest.get("model_card")
    if isinstance(card, dict):
        own = f"{principal.tenant}/"
        card = card | {
            "reviewed_conversations": [
                key for key in card.get("reviewed_conversations", []) if str(key).startswith(own)
            ],
            "reviewed_examples": [
                example
                | {
                    "origin": example["origin"]
                    | {"also": [key for key in example["origin"].get("also", []) if str(key).startswith(own)]}
                }
                for example in card.get("reviewed_examples", [])
                if str((example.get("origin") or {}).get("conversation_id", "")).startswith(own)
            ],
        }
        manifest["model_card"] = card
    return version.model_copy(update={"manifest": manifest})

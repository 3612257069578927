"""`dialogue bot …`: publish a bot folder as a version, list, show and compare versions, release one (as
the stable version or a canary) and roll back. The commands work on the store in settings, as the API's
`/v1/bots` does; a release reaches new conversations within `DIALOGUE_RELEASE_CACHE_SECONDS`."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dialogue.platform.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

bot_app = typer.Typer(
    help="Bots as versions: publish, list, show, diff, release (stable or canary), rollback.",
    no_args_is_help=True,
)

BotArgument = Annotated[str, typer.Argument(help="The bot's name (`name:` in its bot.yaml).")]
VersionArgument = Annotated[str, typer.Argument(help="A version: its digest, or a prefix naming one.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
MoveOption = Annotated[
    bool,
    typer.Option(
        "--move-running",
        help="Move running conversations too, at their next turn (an urgent fix); otherwise each keeps "
        "the version it started with.",
    ),
]
ReasonOption = Annotated[str | None, typer.Option(help="Why: kept in the audit entry.")]


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _engine() -> Engine:
    from dialogue.platform.db import get_engine, init_db

    engine = get_engine(get_settings().resolved_database_url)
    init_db(engine)
    return engine


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@bot_app.command("publish")
def publish(
    folder: Annotated[
        Path, typer.Argument(help="The bot's folder (with its bot.yaml), or its bot file.", exists=True)
    ],
    tests: Annotated[
        bool,
        typer.Option(
            "--tests/--no-tests", help="Run the bot's conversation tests (its tests/ folder) first."
        ),
    ] = True,
    replay: Annotated[
        bool,
        typer.Option(
            "--replay/--no-replay",
            help="Replay recent recorded conversations against it when the bot has a stable version.",
        ),
    ] = True,
) -> None:
    """Validate the bot, train its NLU (its model card: data, held-out evaluation), run its conversation
    tests, replay recorded conversations against it, check its gates (`nlu.gates`), and store it as an
    immutable version named by its files' digest. A failing gate stores nothing (exit 1); the same files
    again store nothing new."""
    from dialogue.apps.publishing import PublishRefused
    from dialogue.apps.publishing import publish as publish_bot
    from dialogue.platform.bot_versions import BotVersionError

    bot_path = folder / "bot.yaml" if folder.is_dir() else folder
    try:
        published = publish_bot(get_settings(), bot_path, actor=_actor(), run_tests=tests, replay=replay)
    except PublishRefused as err:
        raise _fail(f"not published: {err}", 1) from None
    except (BotVersionError, ValueError, OSError) as err:  # an invalid definition or a missing file
        raise _fail(f"{bot_path}: {err}") from None
    details = published.details
    what = "published" if published.stored else "already published"
    tested = details.get("tests", {})
    held_out = (details.get("model_card") or {}).get("held_out") or {}
    typer.echo(
        f"{what} {published.ref}: NLU model {details.get('nlu_model') or 'none (keywords)'}"
        + (f" (held-out accuracy {held_out['accuracy']:.3f})" if "accuracy" in held_out else "")
        + ", "
        f"tests {tested.get('passed', 0)} passed / {tested.get('failed', 0)} failed"
        + (f" ({tested['skipped']})" if isinstance(tested.get("skipped"), str) else "")
        + f", knowledge revision {details.get('knowledge_revision')}"
    )
    _warn_of_what_the_api_reads_elsewhere(bot_path)


def _warn_of_what_the_api_reads_elsewhere(bot_path: Path) -> None:
    """For a bot other than the deployment's, the API redacts and flags a conversation's requests after
    its creation with the deployment's bot (docs/releases.md): say so when this one's privacy or flags
    differ from it."""
    from dialogue.platform.bot import load_bot

    version, deployment = load_bot(bot_path), load_bot(get_settings().bot_path)
    if version.name == deployment.name:
        return
    differ = [
        section
        for section in ("privacy", "flags")
        if getattr(version, section) != getattr(deployment, section)
    ]
    if differ:
        typer.echo(
            f"warning: its {' and '.join(differ)} differ from those of the deployment's bot "
            f"{deployment.name}, which the API applies to its conversations' requests after their creation",
            err=True,
        )


@bot_app.command("list")
def list_bots(
    bot: Annotated[str | None, typer.Argument(help="Only this bot.")] = None, as_json: JsonOption = False
) -> None:
    """Every bot's versions, newest first, and which are released (stable, canary and its share)."""
    from dialogue.platform.bot_versions import list_versions
    from dialogue.platform.releases import list_releases

    engine = _engine()
    versions = list_versions(engine, bot)
    released = {row.bot: row for row in list_releases(engine)}
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "bot": v.bot,
                        "version": v.version,
                        "created_at": v.created_at.isoformat(),
                        "created_by": v.created_by,
                        "role": _role(released.get(v.bot), v.version),
                    }
                    for v in versions
                ],
                indent=2,
            )
        )
        return
    if not versions:
        typer.echo("no published versions")
        return
    for v in versions:
        role = _role(released.get(v.bot), v.version)
        typer.echo(
            f"{v.bot}@{v.version}  {v.created_at:%Y-%m-%d %H:%M:%S}  {v.created_by:<20} "
            f"model {v.manifest.get('nlu_model') or '-'}  {role}"
        )


def _role(release: Any, version: str) -> str:
    if release is None:
        return ""
    if release.stable == version:
        return "stable"
    if release.canary == version:
        return f"canary {release.canary_percent:g}%"
    return ""


@bot_app.command("show")
def show(bot: BotArgument, version: VersionArgument) -> None:
    """A version's manifest: its files and their digests, its NLU model, its tests, its knowledge revision."""
    from dialogue.platform.bot_versions import get_version

    row = get_version(_engine(), bot, version)
    if row is None:
        raise _fail(f"no version {version} of bot {bot}")
    typer.echo(
        json.dumps(
            {
                "bot": row.bot,
                "version": row.version,
                "created_at": row.created_at.isoformat(),
                "created_by": row.created_by,
                "manifest": row.manifest,
            },
            indent=2,
        )
    )


@bot_app.command("diff")
def diff(bot: BotArgument, old: VersionArgument, new: VersionArgument) -> None:
    """What changed from one version to another: files added, removed and changed, each change as a diff."""
    from dialogue.platform.bot_versions import BotVersionError, diff_versions, require_version

    engine = _engine()
    try:
        changes = diff_versions(
            require_version(engine, bot, old, archive=True), require_version(engine, bot, new, archive=True)
        )
    except BotVersionError as err:
        raise _fail(str(err)) from None
    typer.echo(f"{changes['from']} -> {changes['to']}")
    for name in changes["added"]:
        typer.echo(f"added    {name}")
    for name in changes["removed"]:
        typer.echo(f"removed  {name}")
    for name in changes["changed"]:
        typer.echo(f"changed  {name}")
    model = changes["nlu_model"]
    if model["from"] != model["to"]:
        typer.echo(f"NLU model {model['from']} -> {model['to']}")
    for text in changes["diffs"].values():
        typer.echo(text, nl=False)


@bot_app.command("release")
def release(
    bot: BotArgument,
    version: VersionArgument,
    percent: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=100,
            help="100: the stable version; less: the canary for this share of new conversations.",
        ),
    ] = 100,
    move_running: MoveOption = False,
    reason: ReasonOption = None,
) -> None:
    """Make a version the bot's stable one, or its canary at `--percent`; audited."""
    from dialogue.platform import releases
    from dialogue.platform.bot_versions import BotVersionError

    try:
        row = releases.release(
            _engine(), bot, version, percent=percent, actor=_actor(), move_running=move_running, reason=reason
        )
    except BotVersionError as err:
        raise _fail(str(err)) from None
    typer.echo(_describe(row))


@bot_app.command("rollback")
def rollback(bot: BotArgument, move_running: MoveOption = False, reason: ReasonOption = None) -> None:
    """Drop the bot's canary; without one, go back to the stable version before this one. Audited."""
    from dialogue.platform import releases
    from dialogue.platform.bot_versions import BotVersionError

    try:
        row = releases.rollback(_engine(), bot, actor=_actor(), move_running=move_running, reason=reason)
    except BotVersionError as err:
        raise _fail(str(err)) from None
    typer.echo(_describe(row))


@bot_app.command("history")
def history(bot: BotArgument) -> None:
    """The bot's releases and rollbacks, newest first: when, who, from what to what."""
    from dialogue.platform import releases

    for entry in releases.history(_engine(), bot):
        before, after = entry.detail.get("from", {}), entry.detail.get("to", {})
        typer.echo(
            f"{entry.at:%Y-%m-%d %H:%M:%S}  {entry.actor:<24} {entry.action:<13} "
            f"{_pair(before)} -> {_pair(after)}"
            + (f"  ({entry.detail['reason']})" if "reason" in entry.detail else "")
        )


def _pair(state: dict[str, Any]) -> str:
    canary = f" + canary {state['canary']} {state['canary_percent']:g}%" if state.get("canary") else ""
    return f"stable {state.get('stable')}{canary}"


def _describe(row: Any) -> str:
    canary = f", canary {row.canary} for {row.canary_percent:g}% of new conversations" if row.canary else ""
    moving = "; running conversations move at their next turn" if row.move_running else ""
    return f"{row.bot}: stable {row.stable}{canary}{moving}"

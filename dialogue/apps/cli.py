"""The `dialogue` command: `up` (the whole embedded stack), `api`, `worker`, `replay`, `recover`, `nlu …`,
`kb …`, `bot …` (dialogue.apps.bot_cli)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from dialogue.apps.bot_cli import bot_app
from dialogue.platform.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Engine

    from dialogue.apps.end_to_end import EndToEndReport
    from dialogue.apps.evaluation.source import RecordedConversation
    from dialogue.brain.nlu.parser import NluParser
    from dialogue.platform.codec import PayloadKeys

app = typer.Typer(
    help="Dialogue Engine: chatbot conversations as durable Temporal workflows.", no_args_is_help=True
)
nlu_app = typer.Typer(
    help="Train, evaluate and try the intent classifier; export turns to review; read a model's card.",
    no_args_is_help=True,
)
app.add_typer(nlu_app, name="nlu")
app.add_typer(bot_app, name="bot")


@app.command()
def up(
    development: Annotated[
        bool,
        typer.Option(
            "--development",
            help="A local development stack (DIALOGUE_ENVIRONMENT=development): keys generated into the data "
            "folder, the key offered to pages and the codec open to this machine. `make run` sets it.",
        ),
    ] = False,
) -> None:
    """Start the Temporal dev server (with its Web UI), the worker and the API, with the demo bot."""
    from dialogue.apps.supervisor import run_stack

    settings = get_settings()
    if development:
        settings = settings.model_copy(update={"environment": "development"})
    raise typer.Exit(run_stack(settings))


@app.command()
def api() -> None:
    """Serve the HTTP API with uvicorn (HTTPS when a certificate is set)."""
    import ssl

    import uvicorn

    from api import create_app
    from dialogue.platform.logs import configure_logging

    settings = get_settings()
    configure_logging(settings, "api")
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # the handlers configure_logging set: JSON lines with the request's ids
        access_log=False,  # the API logs each request itself, with its route, tenant and trace id
        # Open requests and event streams get this long to finish once the API is told to stop; then they
        # are closed (a stream's client resumes elsewhere with Last-Event-ID).
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_seconds),
        ssl_certfile=settings.api_ssl_certfile,
        ssl_keyfile=settings.api_ssl_keyfile,
        ssl_ca_certs=settings.api_ssl_ca_file,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.api_ssl_ca_file else ssl.CERT_NONE,
    )


@app.command()
def openapi(
    output: Annotated[Path, typer.Option(help="Where to write it.")] = Path("openapi.json"),
) -> None:
    """Write the v1 contract (the API's OpenAPI document for the default settings) to a file."""
    from api.openapi import default_document, render

    output.write_text(render(default_document()))
    typer.echo(f"wrote {output}")


@app.command("test")
def test_bot(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Test files or folders; default: the bot's tests/ folder.")
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Write the results as JUnit XML here.")] = None,
    against: Annotated[
        str | None, typer.Option(help="A running API's base URL; default: the bot's own stack, in-process.")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="With --against: an API key of it.", envvar="DIALOGUE_TEST_KEY")
    ] = None,
) -> None:
    """Run the bot's conversation tests: each a conversation whose answers are checked step by step."""
    from rich.console import Console

    from dialogue.apps.testing.runner import junit_xml
    from dialogue.apps.testing.spec import SpecError
    from dialogue.apps.testing.suite import prepare, print_results, run_tests
    from dialogue.platform.bot import load_bot

    settings = get_settings()
    bot = load_bot(settings.bot_path)
    console = Console()
    try:
        tests = prepare(bot, paths or [settings.bot_path.parent / "tests"])
    except SpecError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    if against is not None and not key:
        console.print("[bold red]error:[/] --against needs --key (or DIALOGUE_TEST_KEY)")
        raise typer.Exit(2)
    results = asyncio.run(run_tests(tests, settings, console, against=against, key=key))
    print_results(results, console)
    if junit is not None:
        junit.write_bytes(junit_xml(results))
    raise typer.Exit(1 if any(result.outcome == "failed" for result in results) else 0)


eval_app = typer.Typer(
    help="Replay recorded conversations against a candidate bot and report what would change.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")

TenantOption = Annotated[str | None, typer.Option(help="Only this tenant's conversations.")]
SinceOption = Annotated[str | None, typer.Option(help="Updated since (ISO date or time).")]
UntilOption = Annotated[str | None, typer.Option(help="Started before (ISO date or time).")]
IntentOption = Annotated[str | None, typer.Option(help="With a turn of this intent.")]
RatedDownOption = Annotated[bool, typer.Option("--rated-down", help="With an answer rated down.")]
DegradedOption = Annotated[bool, typer.Option("--degraded", help="With a degraded answer.")]
LimitOption = Annotated[int, typer.Option(min=1, max=100_000, help="Conversations at most.")]


def _recorded(
    tenant: str | None,
    since: str | None,
    until: str | None,
    intent: str | None,
    rated_down: bool,
    degraded: bool,
    limit: int,
) -> list[RecordedConversation]:
    from datetime import datetime

    from dialogue.apps.evaluation.source import Filters, recorded_conversations
    from dialogue.platform.db import get_engine

    try:
        filters = Filters(
            tenant=tenant,
            since=datetime.fromisoformat(since) if since else None,
            until=datetime.fromisoformat(until) if until else None,
            intent=intent,
            rated_down=rated_down,
            degraded=degraded,
            limit=limit,
        )
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    return recorded_conversations(get_engine(get_settings().resolved_database_url), filters)


@eval_app.command("export")
def eval_export(
    out: Annotated[Path, typer.Option(help="The file to write (JSON Lines, a conversation per line).")],
    tenant: TenantOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    intent: IntentOption = None,
    rated_down: RatedDownOption = False,
    degraded: DegradedOption = False,
    limit: LimitOption = 200,
) -> None:
    """Write recorded conversations (redacted as stored) to a file, to evaluate elsewhere."""
    from dialogue.apps.evaluation.source import export

    conversations = _recorded(tenant, since, until, intent, rated_down, degraded, limit)
    export(conversations, out)
    typer.echo(
        f"{len(conversations)} conversations, {sum(len(c.turns) for c in conversations)} turns -> {out}"
    )


@eval_app.command("run")
def eval_run(
    bot: Annotated[Path, typer.Option(help="The candidate's bot definition.")],
    report: Annotated[Path, typer.Option(help="The folder for report.html and report.json.")],
    from_file: Annotated[
        Path | None, typer.Option("--from", help="Conversations from `dialogue eval export`, not the store.")
    ] = None,
    tenant: TenantOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    intent: IntentOption = None,
    rated_down: RatedDownOption = False,
    degraded: DegradedOption = False,
    limit: LimitOption = 200,
    fail_if: Annotated[
        list[str] | None, typer.Option(help="Fail (exit 1) if this holds, e.g. 'changed_intents>5%'.")
    ] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="An OpenAI-compatible endpoint to judge answers.")
    ] = None,
    judge_model: Annotated[str, typer.Option(help="The judge's model.")] = "gpt-4o-mini",
    judge_key: Annotated[
        str | None, typer.Option(envvar="DIALOGUE_JUDGE_API_KEY", help="The judge's key.")
    ] = None,
) -> None:
    """Re-send recorded conversations' user turns to a candidate bot (the current code with BOT) on a task
    queue of its own, compare every turn with what was answered, and report."""
    from rich.console import Console

    from dialogue.apps.evaluation.compare import gate, summary
    from dialogue.apps.evaluation.run import JudgeEndpoint, evaluate, print_summary
    from dialogue.apps.evaluation.source import read_export

    conditions = fail_if or []
    try:
        gate({"turns": 1} | summary([]), conditions)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if not bot.exists():
        typer.echo(f"error: {bot}: no such bot definition", err=True)
        raise typer.Exit(2)
    if from_file is not None:
        conversations = read_export(from_file)
    else:
        conversations = _recorded(tenant, since, until, intent, rated_down, degraded, limit)
    if not conversations:
        typer.echo("error: no recorded conversation matches", err=True)
        raise typer.Exit(2)
    console = Console()
    judge = JudgeEndpoint(judge_url, judge_model, judge_key) if judge_url else None
    result = asyncio.run(
        evaluate(
            get_settings(),
            bot,
            conversations,
            report=report,
            conditions=conditions,
            judge=judge,
            console=console,
        )
    )
    print_summary(result, report, console)
    raise typer.Exit(1 if result["gate"] else 0)


@app.command()
def worker() -> None:
    """Run a worker for the conversation workflows and their activities."""
    from worker import main

    main()


@app.command()
def replay(
    conversation_id: Annotated[
        str, typer.Argument(help="The conversation's id (its workflow is conv-TENANT/ID).")
    ],
    tenant: Annotated[str, typer.Option(help="The tenant the conversation belongs to.")] = "default",
    history_file: Annotated[
        Path | None,
        typer.Option("--file", "--history-file", help="A JSON history export instead of the server's copy."),
    ] = None,
    llm_requests: Annotated[
        bool,
        typer.Option(
            "--llm-requests",
            help="Also print, as JSON lines, each LLM answer's request rebuilt from the history, and whether "
            "it matches the digest its lineage recorded.",
        ),
    ] = False,
) -> None:
    """Replay a conversation's history (every run of it) against the current workflow code; no activity runs."""
    from dialogue.platform.temporal import connect, conversation_key, data_converter
    from workflows.replay import divergence, load_history, load_runs, replay

    key = conversation_key(tenant, conversation_id)
    converter = data_converter(get_settings())  # histories are encrypted: decode them as the worker does

    async def run() -> int:
        if history_file is not None:
            histories = [await load_history(key, history_file=history_file)]
        else:
            histories = await load_runs(key, await connect(get_settings()))
        for number, history in enumerate(histories, start=1):
            result = await replay(history, converter)
            name = f"{history.workflow_id} run {number}/{len(histories)} ({history.run_id})"
            events = len(history.events)
            if result.replay_failure is not None:
                typer.echo(
                    f"{name}: replay FAILED over {events} events, {await divergence(history, result.replay_failure, converter)}"
                )
                return 1
            typer.echo(f"{name}: replayed {events} events; the current code makes the same decisions")
        if llm_requests:
            from dialogue.brain.generation import build_generators
            from dialogue.brain.llm.rebuild import llm_requests as rebuild
            from dialogue.platform.bot import load_bot

            settings = get_settings()
            generators = build_generators(settings, load_bot(settings.bot_path))
            for request in await rebuild(histories, converter, generators):
                typer.echo(
                    json.dumps(
                        {
                            "turn_index": request.turn_index,
                            "matches": request.matches,
                            "messages": request.messages,
                        }
                    )
                )
        return 0

    raise typer.Exit(asyncio.run(run()))


@app.command()
def recover(
    conversation_id: Annotated[
        str | None, typer.Argument(help="The conversation's id (its workflow is conv-TENANT/ID).")
    ] = None,
    tenant: Annotated[str, typer.Option(help="The tenant the conversation belongs to.")] = "default",
    all_failed: Annotated[
        bool,
        typer.Option("--all-failed", help="Every conversation whose workflow is broken, in every tenant."),
    ] = False,
) -> None:
    """Bring back a conversation whose workflow failed, was terminated or timed out: reset it to its last
    completed workflow task, so it continues with its transcript and its turns' idempotency keys."""
    from temporalio.service import RPCError

    from dialogue.platform.recovery import broken_conversations
    from dialogue.platform.recovery import recover as recover_workflow
    from dialogue.platform.temporal import connect, conversation_key, workflow_id

    if (conversation_id is None) == (not all_failed):
        raise typer.BadParameter("give a conversation id or --all-failed (not both)")

    async def run() -> int:
        client = await connect(get_settings())
        if all_failed:
            targets = [broken.workflow_id for broken in await broken_conversations(client)]
            typer.echo(f"{len(targets)} broken conversations")
        else:
            assert conversation_id is not None
            targets = [workflow_id(conversation_key(tenant, conversation_id))]
        failures = 0
        for target in targets:
            try:
                done = await recover_workflow(client, target)
            except RPCError as err:
                typer.echo(f"{target}: could not recover: {err.message}", err=True)
                failures += 1
                continue
            run_note = f"; new run {done.run_id}" if done.run_id else ""
            typer.echo(f"{target}: {done.outcome}{run_note}")
        return 1 if failures else 0

    raise typer.Exit(asyncio.run(run()))


@nlu_app.command("train")
def nlu_train(
    data: Annotated[
        Path, typer.Option("--data", help="Training examples (JSONL).", exists=True, dir_okay=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the model to.")],
    validation: Annotated[
        Path | None,
        typer.Option(
            "--validation", help="Held-out examples to tune the out-of-scope threshold on.", exists=True
        ),
    ] = None,
    embeddings: Annotated[
        bool, typer.Option("--embeddings/--no-embeddings", help="Use sentence embeddings (when installed).")
    ] = True,
) -> None:
    """Train an intent classifier and write it as a versioned model folder."""
    from dialogue.brain.nlu.data import read_examples
    from dialogue.brain.nlu.embeddings import embeddings_available
    from dialogue.brain.nlu.model import save, train

    examples = read_examples(data)
    held = read_examples(validation) if validation else None
    model = train(examples, held, use_embeddings=embeddings and embeddings_available())
    meta = save(model, out)
    typer.echo(
        f"trained {len(meta.intents)} intents on {meta.n_examples} examples in {meta.training_seconds} s; "
        f"embeddings: {meta.embeddings or 'none'}; out-of-scope threshold {meta.threshold} "
        f"({meta.threshold_source}); version {meta.version}; written to {out}"
    )


@nlu_app.command("evaluate")
def nlu_evaluate(
    model: Annotated[Path, typer.Option("--model", help="A model folder from `dialogue nlu train`.")],
    data: Annotated[Path, typer.Option("--data", help="Test examples (JSONL).", exists=True, dir_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Accuracy, in-scope accuracy, out-of-scope recall and precision, macro-F1, latency."""
    from dialogue.brain.nlu.data import read_examples
    from dialogue.brain.nlu.evaluate import evaluate

    report = evaluate(_model_parser(model), read_examples(data))
    if as_json:
        typer.echo(report.model_dump_json())
        return
    for name, value in report.model_dump().items():
        typer.echo(f"{name:<18} {value}")


@nlu_app.command("parse")
def nlu_parse(
    text: Annotated[str, typer.Argument(help="The utterance.")],
    model: Annotated[Path, typer.Option("--model", help="A model folder from `dialogue nlu train`.")],
) -> None:
    """Parse one utterance and print the result as JSON."""
    typer.echo(_model_parser(model).parse(text).model_dump_json(indent=2))


@nlu_app.command("review")
def nlu_review(
    out: Annotated[Path, typer.Option("--out", help="The annotation file to write (JSON Lines).")],
    since: SinceOption = None,
    tenant: TenantOption = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Lines at most.")] = 1000,
    unsure_below: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help="A turn is unsure below this confidence (default: the bot's clarify_below, or 0.5).",
        ),
    ] = None,
    bot: Annotated[
        Path | None,
        typer.Option("--bot", help="The bot whose privacy policy redacts (default: the served one)."),
    ] = None,
) -> None:
    """Export the turns the NLU was unsure of, placed out of scope, rated down or handed off, redacted,
    for a person to label; labelled, the file is training data (`nlu.reviewed` in the bot)."""
    from collections import Counter
    from datetime import datetime

    from dialogue.apps.learning.review import export_review
    from dialogue.platform.bot import load_bot

    try:
        after = datetime.fromisoformat(since) if since else None
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--since") from err
    lines = export_review(
        _store(),
        load_bot(bot or get_settings().bot_path),
        out,
        tenant=tenant,
        since=after,
        limit=limit,
        unsure_below=unsure_below,
    )
    reasons = Counter(reason for line in lines for reason in line.reasons)
    counted = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in reasons.items()) or "none"
    typer.echo(f"{len(lines)} turns to review ({counted}) -> {out}")


@nlu_app.command("card")
def nlu_card(
    model: Annotated[Path, typer.Option("--model", help="A model folder trained for a bot.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as it is stored.")] = False,
) -> None:
    """Print a model's card: its data and where it came from, its evaluation."""
    from dialogue.brain.nlu.model_card import read_card

    try:
        card = read_card(model)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from err
    if as_json:
        typer.echo(card.model_dump_json(indent=2))
        return
    typer.echo(f"model       {card.nlu_model} of {card.bot}, trained {card.created_at:%Y-%m-%d %H:%M} UTC")
    typer.echo(f"data        {card.data_hash}: {card.n_examples} examples")
    for source, count in card.examples_per_source.items():
        typer.echo(f"  {count:>6}  {source}")
    typer.echo(
        f"reviewed    {len(card.reviewed_examples)} examples from {len(card.reviewed_conversations)} conversations"
    )
    for conversation in card.reviewed_conversations:
        typer.echo(f"  {conversation}")
    held = card.held_out
    typer.echo(
        f"held out    {held.data}: {held.n_examples} examples, accuracy {held.accuracy}, macro-F1 {held.macro_f1}, "
        f"out-of-scope recall {held.out_of_scope_recall}"
        if held
        else "held out    none"
    )
    tests = card.conversation_tests
    typer.echo(
        f"tests       {tests.passed} passed, {tests.failed} failed, {tests.skipped} skipped"
        if tests
        else "tests       not run"
    )
    replay = card.replay
    typer.echo(
        f"replay      against {replay.stable_version or 'no stable version'}: {replay.turns} turns, "
        f"{replay.changed_intents} changed intents, {replay.changed_turns} changed answers"
        if replay
        else "replay      not run"
    )


def _model_parser(folder: Path) -> NluParser:
    from dialogue.brain.nlu.model import ModelError, load
    from dialogue.brain.nlu.parser import ModelParser
    from dialogue.platform.bot import load_bot

    try:
        return ModelParser(load_bot(get_settings().bot_path), load(folder))
    except ModelError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from err


kb_app = typer.Typer(help="Manage and evaluate the knowledge base in the SQL store.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")


_NICE_HELP = (
    "CPU niceness of the bulk work: with every core busy, the workers answering turns (nice 5 under "
    "`dialogue up`) and the API come first; 0 to take an equal share."
)


@kb_app.command("ingest")
def kb_ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or folders of .md, .txt and .html documents.", exists=True)
    ],
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Documents per transaction.")] = 64,
    max_file_bytes: Annotated[int, typer.Option(min=1, help="A larger file is skipped.")] = 10 * 1024 * 1024,
    nice: Annotated[int, typer.Option(min=0, max=19, help=_NICE_HELP)] = 10,
) -> None:
    """Add or update documents: each file's name is its id; a changed file gets a new version. A file
    that cannot be read, is too large or not UTF-8, or whose id another file has, is reported and
    skipped; the exit status is then 1. Stopped with Ctrl-C, every document is wholly old or wholly new."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from dialogue.brain.knowledge import documents
    from dialogue.platform.db import get_engine, init_db

    os.nice(nice)
    engine = get_engine(get_settings().resolved_database_url)
    init_db(engine)
    files = documents.knowledge_files(paths, clashes_skipped=True)
    if not files:
        raise typer.BadParameter("no .md, .txt or .html files found", param_hint="PATHS")
    columns = (
        TextColumn("Ingesting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} docs/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("ingest", total=len(files), rate="-")

        def advance(done: int) -> None:
            progress.advance(task, done)
            elapsed = time.monotonic() - started
            completed = progress.tasks[0].completed
            progress.update(task, rate=f"{completed / elapsed:.0f}" if elapsed else "-")

        try:
            stored, skipped = documents.ingest_files(
                engine, files, batch_size=batch_size, max_bytes=max_file_bytes, on_batch=advance
            )
        except KeyboardInterrupt:
            done = int(progress.tasks[0].completed)
            typer.echo(
                f"interrupted: the first {done} files are stored; the batch under way was left out whole"
            )
            raise typer.Exit(130) from None
    elapsed = time.monotonic() - started
    changed = [r for r in stored if r.changed]
    for left_out in skipped:
        typer.echo(f"skipped {left_out.path}: {left_out.reason}", err=True)
    typer.echo(
        f"{len(stored)} documents, {len(changed)} new or changed, {sum(r.chunks for r in stored)} chunks "
        f"in {elapsed:.1f} s ({len(files) / elapsed:.0f} files/s)"
        + (f"; {len(skipped)} skipped" if skipped else "")
    )
    if skipped:
        raise typer.Exit(1)


@kb_app.command("reindex")
def kb_reindex(
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Documents per transaction.")] = 64,
    nice: Annotated[int, typer.Option(min=0, max=19, help=_NICE_HELP)] = 10,
) -> None:
    """Chunk and embed every stored document again from its stored text (after changing the chunker or
    the embedding model); versions stay, and the workers' indexes follow within seconds."""
    from rich.progress import Progress

    from dialogue.brain.knowledge import documents
    from dialogue.platform.db import get_engine, init_db

    os.nice(nice)
    engine = get_engine(get_settings().resolved_database_url)
    init_db(engine)
    total = documents.list_documents(engine, limit=1, offset=0)[1]
    started = time.monotonic()
    with Progress() as progress:
        task = progress.add_task("Reindexing", total=total)
        done, chunks = documents.reindex(
            engine, batch_size=batch_size, on_batch=lambda n: progress.advance(task, n)
        )
    typer.echo(f"{done} documents, {chunks} chunks in {time.monotonic() - started:.1f} s")


@kb_app.command("list")
def kb_list() -> None:
    """List the documents with their versions and chunk counts."""
    from dialogue.brain.knowledge import documents
    from dialogue.platform.db import get_engine, init_db

    engine = get_engine(get_settings().resolved_database_url)
    init_db(engine)
    rows, total = documents.list_documents(engine, limit=10_000, offset=0)
    for row in rows:
        typer.echo(f"{row.id:<32} v{row.version:<3} {row.chunk_count:>3} chunks  {row.title}")
    typer.echo(f"{total} documents")


@kb_app.command("delete")
def kb_delete(document_id: Annotated[str, typer.Argument(help="The document's id.")]) -> None:
    """Delete a document and its chunks."""
    from dialogue.brain.knowledge import documents
    from dialogue.platform.db import get_engine

    if not documents.delete(get_engine(get_settings().resolved_database_url), document_id):
        typer.echo(f"no document {document_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"deleted {document_id}")


@kb_app.command("evaluate")
def kb_evaluate(
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            help="Questions (JSONL: question or turns, and document_ids; empty for an out-of-domain "
            "question); repeat for several files.",
            exists=True,
        ),
    ],
    mode: Annotated[
        Literal["hybrid", "lexical", "semantic", "all"] | None,
        typer.Option(
            "--mode",
            help="hybrid, lexical, semantic, or all (each in turn); DIALOGUE_RETRIEVAL when unset.",
        ),
    ] = None,
    index_engine: Annotated[
        Literal["memory", "store"] | None,
        typer.Option("--index", help="memory or store; DIALOGUE_KNOWLEDGE_INDEX when unset."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    end_to_end: Annotated[
        bool,
        typer.Option(
            "--end-to-end",
            help="Ask each question through the API in a new conversation and report what the bot did "
            "(answered from a right document, declined, …): the bot's own stack in this process, or --against.",
        ),
    ] = False,
    against: Annotated[str | None, typer.Option(help="With --end-to-end: a running API's base URL.")] = None,
    key: Annotated[
        str | None, typer.Option(help="With --against: an API key of it.", envvar="DIALOGUE_TEST_KEY")
    ] = None,
    misses: Annotated[
        bool, typer.Option("--misses", help="With --end-to-end: list each question not answered right.")
    ] = False,
) -> None:
    """Recall@1, recall@5 and MRR of retrieval over the knowledge base in the store. For multi-turn
    exchanges (`turns`), of their last message, with the conversation's context and without it.
    With --end-to-end, the bot's answers instead."""
    from dialogue.brain.knowledge.evaluate import evaluate_retrieval, read_questions
    from dialogue.brain.knowledge.search import RetrievalMode, open_index
    from dialogue.platform.db import get_engine, init_db

    if end_to_end:
        _evaluate_end_to_end(data, against=against, key=key, as_json=as_json, misses=misses)
        return
    settings = get_settings()
    modes: list[RetrievalMode] = ["hybrid", "lexical", "semantic"]
    if mode != "all":
        modes = [mode or settings.retrieval]
    engine = get_engine(settings.resolved_database_url)
    init_db(engine)
    questions = [question for path in data for question in read_questions(path)]
    results: dict[str, dict[str, Any]] = {}
    for each in modes:
        index = open_index(
            engine,
            index_engine or settings.knowledge_index,
            folder=settings.resolved_knowledge_index_dir,
            reload_seconds=0,
            mode=each,
        )
        reports = {"with context": evaluate_retrieval(index, questions, context=True)}
        if any(q.turns for q in questions):
            reports["without context"] = evaluate_retrieval(index, questions, context=False)
        results[each] = {label: report.model_dump() for label, report in reports.items()}
    if as_json:
        shaped = {m: _evaluation_shape(r) for m, r in results.items()}
        typer.echo(json.dumps(shaped[modes[0]] if len(modes) == 1 else shaped))
        return
    for retrieval, labelled in results.items():
        if len(results) > 1:
            typer.echo(f"[{retrieval}]")
        for label, numbers in labelled.items():
            if len(labelled) > 1:
                typer.echo(label)
            for name, value in numbers.items():
                typer.echo(f"{name:<12} {value}")


def _evaluate_end_to_end(
    data: list[Path], *, against: str | None, key: str | None, as_json: bool, misses: bool
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dialogue.apps.client import AsyncDialogueClient
    from dialogue.apps.end_to_end import evaluate_end_to_end, following_sentences
    from dialogue.brain.knowledge.evaluate import read_questions
    from dialogue.platform.bot import load_bot

    if against is not None and not key:
        typer.echo("error: --against needs --key (or DIALOGUE_TEST_KEY)", err=True)
        raise typer.Exit(2)
    settings = get_settings()
    bot = load_bot(settings.bot_path)
    questions = [question for path in data for question in read_questions(path)]
    follows = (
        following_sentences(bot.resolve(bot.knowledge_dir)) if bot.knowledge_dir else (lambda a, b: False)
    )
    console = Console(stderr=True)

    async def run() -> EndToEndReport:
        with Progress(
            TextColumn("asking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("asking", total=len(questions))
            step = functools.partial(progress.advance, task)
            if against is not None:
                async with AsyncDialogueClient(
                    against, key or "", timeout=settings.turn_timeout_seconds + 10
                ) as api:
                    return await evaluate_end_to_end(api, questions, follows, on_asked=step)
            from dialogue.apps.testing.stack import in_process_stack

            for noisy in ("temporalio", "uvicorn.error", "dialogue"):
                logging.getLogger(noisy).setLevel(logging.ERROR)
            async with in_process_stack(settings.bot_path, settings) as stack:
                api = AsyncDialogueClient.wrapping(await stack.api())
                return await evaluate_end_to_end(api, questions, follows, on_asked=step)

    report = asyncio.run(run())
    if as_json:
        typer.echo(report.model_dump_json())
        return
    if misses:
        for asked in report.asked:
            if asked.outcome != ("right" if asked.document_ids else "declined"):
                cited = ", ".join(asked.sources) or "-"
                typer.echo(f"[{asked.outcome}] {asked.question}\n    -> {asked.reply[:200]} ({cited})")
    if report.answerable:
        typer.echo(f"answered from a right document  {report.answered_right:.1%} of {report.answerable}")
        typer.echo("  " + ", ".join(f"{name} {count}" for name, count in report.outcomes.items()))
    if report.out_of_domain:
        typer.echo(f"out-of-domain declined          {report.declined:.1%} of {report.out_of_domain}")
        typer.echo(
            "  " + ", ".join(f"{name} {count}" for name, count in report.out_of_domain_outcomes.items())
        )
    rubric = report.rubric
    if rubric.answers:
        fact = "-" if rubric.fact_present is None else f"{rubric.fact_present:.1%}"
        typer.echo(
            f"answers: expected fact {fact}, standalone {rubric.standalone:.1%}, "
            f"short {rubric.short:.1%}, {rubric.words_mean} words on average"
        )


def _evaluation_shape(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One report as it is, or the multi-turn pair keyed `with_context` and `without_context`."""
    if len(reports) == 1:
        return reports["with context"]
    return {label.replace(" ", "_"): report for label, report in reports.items()}


db_app = typer.Typer(help="Migrate the SQL store's schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the schema to the newest revision; adopts tables made before migrations existed."""
    from sqlalchemy.exc import OperationalError

    from dialogue.platform.db import get_engine
    from dialogue.platform.migrations import SchemaMismatch, head, upgrade

    url = get_settings().resolved_database_url
    try:
        migrated = upgrade(get_engine(url))
    except SchemaMismatch as err:
        typer.echo(f"dialogue db upgrade: {err}", err=True)
        raise typer.Exit(1) from err
    except OperationalError as err:
        typer.echo(f"dialogue db upgrade: cannot use the store {_safe_url(url)}: {err.orig}", err=True)
        raise typer.Exit(1) from err
    if migrated.before == migrated.after:
        newer = "" if migrated.after == head() else f", newer than this version's {head()}: left as it is"
        typer.echo(f"schema revision: {migrated.after} (up to date{newer})")
        return
    adopted = " (existing tables adopted)" if migrated.adopted else ""
    typer.echo(f"schema revision: {migrated.before or 'none'} -> {migrated.after}{adopted}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema's revision and whether it is the newest; changes nothing."""
    from sqlalchemy.exc import OperationalError

    from dialogue.platform.db import get_engine
    from dialogue.platform.migrations import current_revision, head, known

    url = get_settings().resolved_database_url
    try:
        current, newest = current_revision(get_engine(url)), head()
    except OperationalError as err:
        typer.echo(f"dialogue db current: cannot use the store {_safe_url(url)}: {err.orig}", err=True)
        raise typer.Exit(1) from err
    if current == newest:
        state = "up to date"
    elif current is not None and not known(current):
        state = f"newer than this version's {newest}"
    else:
        state = f"behind {newest}: run `dialogue db upgrade`"
    typer.echo(f"schema revision: {current or 'none'} ({state})")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


keys_app = typer.Typer(help="Create, list and revoke tenants' API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _store() -> Engine:
    from dialogue.platform.db import get_engine, init_db

    engine = get_engine(get_settings().resolved_database_url)
    init_db(engine)
    return engine


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant (lower-case letters, digits, dashes).")],
    scope: Annotated[
        str, typer.Option(help="client, agent, admin, or operator (of the default tenant only).")
    ] = "client",
    name: Annotated[str | None, typer.Option(help="What the key is for.")] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="Refused after this many days.")] = None,
) -> None:
    """Create a key and print it: it is shown this once and stored only as a hash."""
    from datetime import UTC, datetime, timedelta

    from dialogue.security.identity import SCOPES, audit, create_key

    if scope not in SCOPES:
        raise typer.BadParameter(f"one of {', '.join(SCOPES)}", param_hint="--scope")
    engine = _store()
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    try:
        row, key = create_key(engine, tenant=tenant, scope=scope, name=name, expires_at=expires)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    audit(engine, tenant=tenant, actor="cli", action="key_create", target=row.id)
    typer.echo(
        f"key id {row.id}  tenant {row.tenant}  scope {row.scope}  expires {row.expires_at or 'never'}"
    )
    typer.echo(key)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """List keys (ids, tenants, scopes, expiry, revocation; never the keys themselves)."""
    from dialogue.security.identity import list_keys

    for row in list_keys(_store(), tenant=tenant):
        state = (
            "revoked"
            if row.revoked_at
            else f"expires {row.expires_at:%Y-%m-%d}"
            if row.expires_at
            else "active"
        )
        typer.echo(f"{row.id}  {row.tenant:<20} {row.scope:<7} {state:<18} {row.name or ''}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (`dialogue keys list`).")]) -> None:
    """Revoke a key: it is refused from the next request on."""
    from dialogue.security.identity import audit, revoke_key

    engine = _store()
    row = revoke_key(engine, key_id)
    if row is None:
        typer.echo(f"no key {key_id}", err=True)
        raise typer.Exit(1)
    audit(engine, tenant=row.tenant, actor="cli", action="key_revoke", target=key_id)
    typer.echo(f"revoked {key_id}")


feedback_app = typer.Typer(
    help="Export users' ratings of answers, with what produced them.", no_args_is_help=True
)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
def feedback_export(
    out: Annotated[
        Path | None, typer.Option("--out", help="JSONL file to write; standard output when absent.")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's conversations.")] = None,
) -> None:
    """Write every rated turn as one JSON line: rating, comment, the user's words, the reply, its lineage."""
    import orjson

    from dialogue.platform import store

    lines = []
    for feedback, asked, answered in store.rated_turns(_store(), tenant=tenant):
        record = {
            "conversation": feedback.conversation_id,
            "turn_id": feedback.turn_id,
            "turn_index": answered.turn_index if answered else None,
            "rating": feedback.rating,
            "comment": feedback.comment,
            "rated_at": feedback.created_at.isoformat(),
            "user_text": asked.text if asked else None,
            "reply": answered.text if answered else None,
            "degraded": answered.degraded if answered else None,
            "lineage": answered.lineage if answered else None,
        }
        lines.append(orjson.dumps(record).decode())
    text = "".join(line + "\n" for line in lines)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"{len(lines)} rated turns written to {out}", err=True)


payload_keys_app = typer.Typer(
    help="The keys Temporal's payloads are sealed with (AES-256-GCM); see docs/runbook.md for rotation.",
    no_args_is_help=True,
)
app.add_typer(payload_keys_app, name="payload-keys")


def _payload_keys_file() -> Path:
    settings = get_settings()
    if settings.payload_keys is not None:
        typer.echo(
            "DIALOGUE_PAYLOAD_KEYS is set: edit that variable instead (`dialogue payload-keys generate` "
            "makes an entry for it)",
            err=True,
        )
        raise typer.Exit(2)
    return settings.payload_keys_file or settings.data_dir / "payload-keys"


def _payload_keys_or_exit(change: Callable[[], PayloadKeys]) -> PayloadKeys:
    """The keys after `change`; a missing file or an unknown or duplicate key id as a message, not a traceback."""
    try:
        return change()
    except FileNotFoundError as err:
        typer.echo(
            f"no key file at {err.filename}: `dialogue up --development` (or the API in development) creates one",
            err=True,
        )
    except (KeyError, ValueError) as err:
        typer.echo(err.args[0] if err.args else str(err), err=True)
    raise typer.Exit(1)


@payload_keys_app.command("list")
def payload_keys_list() -> None:
    """The key ids this process would use, the current one (that seals new payloads) first."""
    from dialogue.platform.codec import PayloadKeys

    settings = get_settings()
    if not settings.payload_encryption:
        typer.echo("payload encryption is off (DIALOGUE_PAYLOAD_ENCRYPTION=false)")
        return
    if settings.payload_keys is not None:
        keys = PayloadKeys.parse(settings.payload_keys.get_secret_value())
    else:  # read only: listing must not create a key file where none is
        keys = _payload_keys_or_exit(lambda: PayloadKeys.load(_payload_keys_file()))
    for key_id in keys:
        typer.echo(f"{key_id}{'  (current)' if key_id == keys.current_id else ''}")


@payload_keys_app.command("rotate")
def payload_keys_rotate(
    not_current: Annotated[
        bool,
        typer.Option(
            "--not-current",
            help="Add the key for decoding only; `promote` it once every process has restarted with it.",
        ),
    ] = False,
) -> None:
    """Add a new key to the key file, keeping every old one (old histories stay readable)."""
    from dialogue.platform.codec import rotate

    keys = _payload_keys_or_exit(lambda: rotate(_payload_keys_file(), current=not not_current))
    added = keys.current_id if not not_current else list(keys)[-1]
    typer.echo(f"added key {added}; current key: {keys.current_id}. Restart the API, workers and CLI users.")


@payload_keys_app.command("promote")
def payload_keys_promote(key_id: Annotated[str, typer.Argument(help="A key id in the file.")]) -> None:
    """Make a key already in the file the one new payloads are sealed with."""
    from dialogue.platform.codec import promote

    keys = _payload_keys_or_exit(lambda: promote(_payload_keys_file(), key_id))
    typer.echo(f"current key: {keys.current_id}. Restart the API and workers.")


@payload_keys_app.command("generate")
def payload_keys_generate() -> None:
    """Print a new `id:BASE64KEY` entry, for deployments that pass the keys in DIALOGUE_PAYLOAD_KEYS."""
    from dialogue.platform.codec import PayloadKeys

    typer.echo(PayloadKeys.generate().spec())


build_app = typer.Typer(
    help="Release workflow code with Worker Versioning: which build takes new conversations "
    "(docs/operations.md, Release new workflow code).",
    no_args_is_help=True,
)
app.add_typer(build_app, name="build")

DeploymentOption = Annotated[
    str | None,
    typer.Option(
        help="The worker deployment; DIALOGUE_WORKER_DEPLOYMENT, else `dialogue` (`dialogue up`'s)."
    ),
]
BuildArgument = Annotated[str, typer.Argument(help="A build id (`dialogue build list` shows them).")]


def _on_builds(deployment: str | None, operation: Callable[[Any, str], Any]) -> Any:
    """Run `operation(client, deployment)` against Temporal; an unknown build exits 2, a refusal 1."""
    from dialogue.platform.worker_builds import BuildError, UnknownBuild, connect_operator

    settings = get_settings()
    name = deployment or settings.worker_deployment or "dialogue"

    async def run() -> Any:
        return await operation(await connect_operator(settings), name)

    try:
        return asyncio.run(run())
    except UnknownBuild as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    except BuildError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from None


@build_app.command("id")
def build_id_command() -> None:
    """The build id of the workflow code here (a hash of it): what a worker polls as by default."""
    from dialogue.platform.worker_builds import build_id

    typer.echo(build_id(get_settings()))


@build_app.command("list")
def build_list(deployment: DeploymentOption = None) -> None:
    """The deployment's builds: which is current, which is ramping, and the workflows open on each."""
    from dialogue.platform.worker_builds import describe

    routing = _on_builds(deployment, lambda client, name: describe(client, name, count_open=True))
    ramp = f", ramping {routing.ramping} at {routing.ramp_percent:g}%" if routing.ramping else ""
    typer.echo(f"deployment {routing.deployment}: current {routing.current or 'unversioned workers'}{ramp}")
    for build in routing.builds:
        status = f"{build.status} {routing.ramp_percent:g}%" if build.status == "ramping" else build.status
        typer.echo(
            f"  {build.build_id:<16} {status:<14} {build.open_workflows:>6} open   "
            f"created {build.created:%Y-%m-%d %H:%M:%S}"
        )


@build_app.command("current")
def build_current(
    build: Annotated[
        str | None,
        typer.Argument(help="A build id; the workflow code here (`dialogue build id`) if omitted."),
    ] = None,
    initial: Annotated[
        bool,
        typer.Option(
            help="Only if no build is current yet: a first start (compose runs this), not a release."
        ),
    ] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the build's workers to poll.")] = 0,
    deployment: DeploymentOption = None,
) -> None:
    """Make BUILD current: every new conversation starts on it; open ones stay on their own build."""
    from dialogue.platform.worker_builds import build_id, make_current_when_polled

    target = build or build_id(get_settings())
    changed, previous = _on_builds(
        deployment,
        lambda client, name: make_current_when_polled(client, name, target, within=wait, initial=initial),
    )
    if changed:
        typer.echo(f"current build: {target} (was {previous or 'unversioned workers'})")
    else:
        typer.echo(f"current build: {previous} (left as it is: --initial)")


@build_app.command("ramp")
def build_ramp(
    build: BuildArgument,
    percent: Annotated[float, typer.Option(help="Share of new conversations, 0 to 100.")],
    deployment: DeploymentOption = None,
) -> None:
    """Start PERCENT of new conversations on BUILD, the rest on the current build."""
    from dialogue.platform.worker_builds import ramp

    _on_builds(deployment, lambda client, name: ramp(client, name, build, percent))
    typer.echo(f"ramping build {build}: {percent:g}% of new conversations")


@build_app.command("rollback")
def build_rollback(deployment: DeploymentOption = None) -> None:
    """Undo the last step: stop the ramp, or with none, make the previous current build current again."""
    from dialogue.platform.worker_builds import rollback

    done = _on_builds(deployment, rollback)
    if done.stopped_ramp:
        typer.echo(f"stopped ramping build {done.stopped_ramp}; current build: {done.current}")
    else:
        typer.echo(f"current build: {done.current} (was {done.previous})")


@build_app.command("move")
def build_move(
    from_build: BuildArgument,
    to: Annotated[str, typer.Option(help="The build to pin them to.")],
    deployment: DeploymentOption = None,
) -> None:
    """Pin the open workflows of FROM_BUILD to another build, to retire it before they end (the new
    build's code replays them: only as safe as the patches)."""
    from dialogue.platform.worker_builds import move_open_workflows

    moved = _on_builds(deployment, lambda client, name: move_open_workflows(client, name, from_build, to))
    typer.echo(f"{moved} open workflows moved from build {from_build} to {to}")

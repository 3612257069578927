"""The `dialogue` command: `up` (the whole embedded stack), `api`, `worker`, `replay`, `nlu …`, `kb …`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dialogue.settings import get_settings

if TYPE_CHECKING:
    from dialogue.nlu.parser import NluParser

app = typer.Typer(
    help="Dialogue Engine: chatbot conversations as durable Temporal workflows.", no_args_is_help=True
)
nlu_app = typer.Typer(help="Train, evaluate and try the intent classifier.", no_args_is_help=True)
app.add_typer(nlu_app, name="nlu")


@app.command()
def up() -> None:
    """Start the Temporal dev server (with its Web UI), the worker and the API, with the demo bot."""
    from dialogue.supervisor import run_stack

    raise typer.Exit(run_stack(get_settings()))


@app.command()
def api() -> None:
    """Serve the HTTP API with uvicorn."""
    import uvicorn

    from api import create_app

    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info")


@app.command()
def worker() -> None:
    """Run a worker for the conversation workflows and their activities."""
    from worker import main

    main()


@app.command()
def replay(
    conversation_id: Annotated[str, typer.Argument(help="The conversation's id (its workflow is conv-ID).")],
    history_file: Annotated[
        Path | None,
        typer.Option("--file", "--history-file", help="A JSON history export instead of the server's copy."),
    ] = None,
) -> None:
    """Replay a conversation's history (every run of it) against the current workflow code; no activity runs."""
    from dialogue.temporal import connect
    from workflows.replay import divergence, load_history, load_runs, replay

    async def run() -> int:
        if history_file is not None:
            histories = [await load_history(conversation_id, history_file=history_file)]
        else:
            histories = await load_runs(conversation_id, await connect(get_settings()))
        for number, history in enumerate(histories, start=1):
            result = await replay(history)
            name = f"{history.workflow_id} run {number}/{len(histories)} ({history.run_id})"
            events = len(history.events)
            if result.replay_failure is not None:
                typer.echo(f"{name}: replay FAILED over {events} events, {divergence(result.replay_failure)}")
                return 1
            typer.echo(f"{name}: replayed {events} events; the current code makes the same decisions")
        return 0

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
    from dialogue.nlu.data import read_examples
    from dialogue.nlu.embeddings import embeddings_available
    from dialogue.nlu.model import save, train

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
    from dialogue.nlu.data import read_examples
    from dialogue.nlu.evaluate import evaluate

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


def _model_parser(folder: Path) -> NluParser:
    from dialogue.bot import load_bot
    from dialogue.nlu.model import ModelError, load
    from dialogue.nlu.parser import ModelParser

    try:
        return ModelParser(load_bot(get_settings().bot_path), load(folder))
    except ModelError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from err


kb_app = typer.Typer(help="Manage and evaluate the knowledge base in the SQL store.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")


@kb_app.command("ingest")
def kb_ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or folders of .md, .txt and .html documents.", exists=True)
    ],
) -> None:
    """Add or update documents: each file's name is its id; a changed file gets a new version."""
    from rich.progress import track

    from dialogue.db import get_engine, init_db
    from dialogue.knowledge import store

    engine = get_engine(get_settings().resolved_database_url)
    init_db(engine)
    try:
        files = store.knowledge_files(paths)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="PATHS") from err
    if not files:
        raise typer.BadParameter("no .md, .txt or .html files found", param_hint="PATHS")
    results = [store.ingest_path(engine, path) for path in track(files, description="Ingesting")]
    changed = [r for r in results if r.changed]
    typer.echo(
        f"{len(results)} documents, {len(changed)} new or changed, {sum(r.chunks for r in results)} chunks"
    )


@kb_app.command("list")
def kb_list() -> None:
    """List the documents with their versions and chunk counts."""
    from dialogue.db import get_engine, init_db
    from dialogue.knowledge import store

    engine = get_engine(get_settings().resolved_database_url)
    init_db(engine)
    rows, total = store.list_documents(engine, limit=10_000, offset=0)
    for row in rows:
        typer.echo(f"{row.id:<32} v{row.version:<3} {row.chunk_count:>3} chunks  {row.title}")
    typer.echo(f"{total} documents")


@kb_app.command("delete")
def kb_delete(document_id: Annotated[str, typer.Argument(help="The document's id.")]) -> None:
    """Delete a document and its chunks."""
    from dialogue.db import get_engine
    from dialogue.knowledge import store

    if not store.delete(get_engine(get_settings().resolved_database_url), document_id):
        typer.echo(f"no document {document_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"deleted {document_id}")


@kb_app.command("evaluate")
def kb_evaluate(
    data: Annotated[
        Path, typer.Option("--data", help="Questions (JSONL: question, document_ids).", exists=True)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Recall@1, recall@5 and MRR of retrieval over the knowledge base in the store."""
    from dialogue.db import get_engine, init_db
    from dialogue.knowledge.evaluate import evaluate_retrieval, read_questions
    from dialogue.knowledge.search import HybridIndex

    engine = get_engine(get_settings().resolved_database_url)
    init_db(engine)
    report = evaluate_retrieval(HybridIndex(engine, mode=get_settings().retrieval), read_questions(data))
    if as_json:
        typer.echo(report.model_dump_json())
        return
    for name, value in report.model_dump().items():
        typer.echo(f"{name:<12} {value}")

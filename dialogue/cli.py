"""The `dialogue` command: `up` (the whole embedded stack), `api`, `worker`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from dialogue.settings import get_settings

app = typer.Typer(
    help="Dialogue Engine: chatbot conversations as durable Temporal workflows.", no_args_is_help=True
)


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
        typer.Option("--history-file", help="A JSON history export instead of the server's copy."),
    ] = None,
) -> None:
    """Replay a conversation's history against the current workflow code (no activity runs)."""
    from dialogue.temporal import connect
    from workflows.replay import load_history, replay

    async def run() -> int:
        client = None if history_file else await connect(get_settings())
        history = await load_history(conversation_id, client=client, history_file=history_file)
        result = await replay(history)
        events = len(history.events)
        if result.replay_failure is not None:
            typer.echo(f"{history.workflow_id}: replay FAILED over {events} events: {result.replay_failure}")
            return 1
        typer.echo(
            f"{history.workflow_id}: replayed {events} events; the current code makes the same decisions"
        )
        return 0

    raise typer.Exit(asyncio.run(run()))

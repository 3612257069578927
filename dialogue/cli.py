"""The `dialogue` command: `up` (the whole embedded stack), `api`, `worker`."""

from __future__ import annotations

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

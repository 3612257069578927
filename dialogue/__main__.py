from dialogue.cli import app

app()

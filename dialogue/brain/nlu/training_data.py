"""A bot's training examples, each with where it came from: a line of its `nlu.train` file, or a labelled line
of one of its `nlu.reviewed` annotation files (and then the conversation and turn it was said in)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from dialogue.brain.nlu.annotations import labelled_examples
from dialogue.brain.nlu.data import OUT_OF_SCOPE, Example, read_examples
from dialogue.platform.bot import BotDefinition


class Origin(BaseModel):
    """Where one training example came from."""

    file: str
    """As the bot file names it (relative to the bot file)."""
    line: int
    conversation_id: str | None = None
    """For a reviewed example: the conversation it was said in (`tenant/id`)."""
    turn_id: str | None = None
    also: list[str] = []
    """For a reviewed example: the other conversations in which the same was said."""


@dataclass
class TrainingData:
    examples: list[Example]
    origins: list[Origin]
    """One per example, in the same order."""


def bot_training_data(bot: BotDefinition) -> TrainingData:
    """The bot's `nlu.train` examples, then the labelled lines of its `nlu.reviewed` files, in file order.
    Their digest (`data_hash`) is the model's data: a new label trains the model again."""
    assert bot.nlu is not None
    examples = read_examples(bot.resolve(bot.nlu.train))
    origins = _file_lines(bot.resolve(bot.nlu.train), bot.nlu.train)
    known = {intent.name for intent in bot.intents} | {e.intent for e in examples} | {OUT_OF_SCOPE}
    for name in bot.nlu.reviewed:
        for number, annotation, example in labelled_examples(bot.resolve(name), known):
            examples.append(example)
            origins.append(
                Origin(
                    file=name,
                    line=number,
                    conversation_id=annotation.conversation_id,
                    turn_id=annotation.turn_id,
                    also=[o.conversation_id for o in annotation.also],
                )
            )
    return TrainingData(examples, origins)


def _file_lines(path: Path, name: str) -> list[Origin]:
    # The line numbers of the non-blank lines: read_jsonl skips blank ones and keeps the others' order.
    with path.open("rb") as lines:
        return [Origin(file=name, line=n) for n, line in enumerate(lines, start=1) if line.strip()]

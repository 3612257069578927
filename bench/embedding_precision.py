"""The embedding model in float32 beside its int8 copy (`DIALOGUE_EMBEDDING_PRECISION=int8`: the ONNX
export's matrix products quantized per output channel), in one run:

- `cpu_ms`: CPU time of one utterance on one thread (as a turn embeds it), the two models alternating
  round by round over the demo's held-out utterances;
- `cosine`: how close each int8 vector is to its float one (mean, 5th percentile, minimum);
- `held_out`: the demo's NLU trained on each model's vectors and measured with them on its test file (280
  examples): accuracy, macro-F1, out-of-scope recall, as its model card would say; and the float-trained
  model reading int8 vectors: what runs (a model is trained on the float model's vectors, `embed_many`,
  and reads a turn's text as the run-time model, `embed`, makes it).

The end-to-end QA of the demo both ways is `bench.quality --only end-to-end` run once as it is (int8) and
once with `DIALOGUE_EMBEDDING_PRECISION=float32`, each with its own `DIALOGUE_DATA_DIR`.

    .venv/bin/python -m bench.embedding_precision [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.streaming import RESULTS, header
from dialogue.brain.nlu import embeddings
from dialogue.brain.nlu.data import read_examples
from dialogue.brain.nlu.model import train
from dialogue.brain.nlu.model_card import _measured
from dialogue.platform.bot import load_bot

DEMO = Path(__file__).parent.parent / "examples" / "demo"


def _cpu_ms(encode: Callable[[list[str]], Any], texts: list[str]) -> float:
    started = time.process_time()
    for text in texts:
        encode([text])
    return (time.process_time() - started) / len(texts) * 1000


@contextmanager
def _embedding_with(encode: Callable[[list[str]], Any]) -> Iterator[None]:
    """Every embedding in the block made by `encode` (a turn's text by `embed`, training's by `embed_many`)."""
    originals = embeddings._encoder, embeddings._bulk_encoder
    embeddings._encoder = embeddings._bulk_encoder = lambda: encode  # type: ignore[assignment]
    try:
        yield
    finally:
        embeddings._encoder, embeddings._bulk_encoder = originals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bot = load_bot(DEMO / "bot.yaml")
    assert bot.nlu is not None and bot.nlu.test is not None
    train_examples = read_examples(bot.resolve(bot.nlu.train))
    test_examples = read_examples(bot.resolve(bot.nlu.test))
    texts = [e.text for e in test_examples]

    embeddings._encoder()  # the float export, made once per machine
    exported = embeddings._export_path()
    quantized = embeddings.quantized_copy(exported, "int8")
    models = {"float32": exported, "int8": quantized}
    batches = {"float32": 64, "int8": 1}  # as `embeddings.RUN_TIME_BATCH` runs each
    encoders = {name: embeddings._onnx_encoder(path, 1, batches[name]) for name, path in models.items()}
    for encode in encoders.values():
        _cpu_ms(encode, texts[:20])  # warm
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(args.rounds):
        order = list(models) if round_ % 2 == 0 else list(reversed(models))
        for name in order:
            cpu[name].append(round(_cpu_ms(encoders[name], texts), 3))
    floats, ints = encoders["float32"](texts), encoders["int8"](texts)
    cosine = (floats * ints).sum(1) / np.linalg.norm(floats, axis=1) / np.linalg.norm(ints, axis=1)

    # Each model measured with the vectors it reads at run time: trained and tested on one embedder, and a
    # float-trained model reading int8 vectors (what runs).
    held_out: dict[str, dict[str, Any]] = {}
    trained: dict[str, Any] = {}
    for trained_on, tested_on in (("float32", "float32"), ("int8", "int8"), ("float32", "int8")):
        with _embedding_with(encoders[trained_on]):
            if trained_on not in trained:
                trained[trained_on] = train(train_examples, use_embeddings=True)
        with _embedding_with(encoders[tested_on]):
            measured = _measured(bot, trained[trained_on], test_examples, bot.nlu.test)
        name = trained_on if trained_on == tested_on else f"{trained_on} model, {tested_on} vectors"
        held_out[name] = measured.model_dump(exclude={"data"})

    result = header(
        "embedding_precision",
        rounds=args.rounds,
        utterances=len(texts),
        cpu_ms={name: {"rounds": values, "median": float(np.median(values))} for name, values in cpu.items()},
        ratio=round(float(np.median(cpu["int8"]) / np.median(cpu["float32"])), 3),
        cosine={
            "mean": round(float(cosine.mean()), 4),
            "p5": round(float(np.percentile(cosine, 5)), 4),
            "min": round(float(cosine.min()), 4),
        },
        held_out=held_out,
    )
    print(json.dumps(result, indent=2))
    (RESULTS / "embedding_precision.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

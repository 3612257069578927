"""Knowledge-base ingest at production size: a generated corpus of abstracts (about 1.6 KB each, the size
of the public scientific abstracts the issue measured with) written as files and ingested as `dialogue
kb ingest` does, into a fresh SQLite store, with embeddings.

Side by side in one run, on the same first `--sample` documents: one document a transaction with its
chunks embedded on their own (as ingest worked before batching), and batches of `--batch-size`
documents a transaction with their chunks embedded together. Then the whole corpus for each size in
`--sizes`, batched. Reported: documents/s, chunks, the process's peak RSS. Results in
bench/results/kb_ingest.json.

    .venv/bin/python -m bench.kb_ingest [--sizes 5000 50000] [--sample 500] [--batch-size 64] [--keep DIR]

`--keep DIR` leaves the stores (`DIR/n<size>.db`) for `bench.kb_memory` to search.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.streaming import RESULTS, header
from dialogue.brain.knowledge import documents
from dialogue.platform.db import get_engine, init_db

SYLLABLES = (
    "ka lo mi ne ra tu si ve po da gre stro phy chem bio neu ron gen cell tis sue pro tein lig and".split()
)
TOPICS = [
    "protein folding",
    "neural circuits",
    "soil bacteria",
    "ocean currents",
    "graph theory",
    "galaxy survey",
]


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(size)]


def abstract(rng: random.Random, words: list[str], number: int) -> str:
    """An abstract of about 1.6 KB: a title, then sentences of Zipf-distributed words."""
    topic = TOPICS[number % len(TOPICS)]
    title = f"On {topic} and {rng.choice(words)} {rng.choice(words)} ({number})"
    sentences: list[str] = []
    while sum(len(sentence) for sentence in sentences) < 1500:
        ranks = [int(rng.paretovariate(1.1)) - 1 for _ in range(rng.randint(8, 18))]
        picked = [words[min(rank, len(words) - 1)] for rank in ranks]
        sentences.append(" ".join(picked).capitalize() + f" in {topic}.")
    return f"# {title}\n\n" + " ".join(sentences) + "\n"


def write_corpus(folder: Path, count: int, seed: int = 7) -> list[Path]:
    rng = random.Random(seed)
    words = vocabulary(rng)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"abstract-{number:06d}.md"
        path.write_text(abstract(rng, words, number))
        paths.append(path)
    return paths


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ingest_one_by_one(url: str, files: list[Path]) -> dict[str, Any]:
    """As before batching: a transaction per document, its chunks embedded by the one-thread encoder."""
    from dialogue.brain.nlu import embeddings

    engine = get_engine(url)
    init_db(engine)
    bulk = embeddings.embed_many
    embeddings_single = embeddings.embed
    documents.embed_many = embeddings_single  # what a document's ingest used
    try:
        began = time.perf_counter()
        chunks = sum(
            documents.ingest_batch(engine, [documents.read_document(path)])[0].chunks for path in files
        )
        elapsed = time.perf_counter() - began
    finally:
        documents.embed_many = bulk
    return {
        "documents": len(files),
        "chunks": chunks,
        "seconds": round(elapsed, 1),
        "docs_per_s": round(len(files) / elapsed, 1),
    }


def ingest_batched(url: str, files: list[Path], batch_size: int) -> dict[str, Any]:
    engine = get_engine(url)
    init_db(engine)
    began = time.perf_counter()
    stored, skipped = documents.ingest_files(engine, files, batch_size=batch_size)
    elapsed = time.perf_counter() - began
    return {
        "documents": len(stored),
        "skipped": len(skipped),
        "chunks": sum(r.chunks for r in stored),
        "seconds": round(elapsed, 1),
        "docs_per_s": round(len(stored) / elapsed, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "kb_ingest.json")
    parser.add_argument("--keep", type=Path, help="write the sized stores here and keep them")
    args = parser.parse_args()
    from dialogue.brain.nlu.embeddings import embed, embed_many

    embed(["warm up"]), embed_many(["warm up", "the bulk encoder too"])  # load the models before timing
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        stores = args.keep or root
        stores.mkdir(parents=True, exist_ok=True)
        for n in args.sizes:
            (stores / f"n{n}.db").unlink(missing_ok=True)
        files = write_corpus(root / "corpus", max(args.sizes))
        size_kb = sum(p.stat().st_size for p in files[: args.sample]) / args.sample / 1024
        sample = files[: args.sample]
        one_by_one = ingest_one_by_one(f"sqlite:///{root}/one.db", sample)
        batched_sample = ingest_batched(f"sqlite:///{root}/sample.db", sample, args.batch_size)
        result = header(
            "kb_ingest",
            corpus="generated abstracts",
            mean_document_kb=round(size_kb, 2),
            batch_size=args.batch_size,
            side_by_side={
                "one_by_one": one_by_one,
                "batched": batched_sample,
                "speedup": round(batched_sample["docs_per_s"] / one_by_one["docs_per_s"], 1),
            },
            sizes=[
                ingest_batched(f"sqlite:///{stores}/n{n}.db", files[:n], args.batch_size) for n in args.sizes
            ],
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

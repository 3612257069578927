"""Which index engine serves which size: a worker's memory and search time with the `memory` engine (BM25
and vectors in the process) and the `store` engine (SQLite FTS5 in the store, vectors in a shared
memory-mapped file), side by side in one run, at each size in `--sizes`.

Each engine is measured in a fresh interpreter, as a worker would hold it: the embedding model loaded,
then the index built (the first search), then `--queries` hybrid searches. Reported per engine and size:
the build's seconds, search p50/p99, and the process's memory after the searches: RSS, of which
private (anonymous) memory and mapped files (the vector file's pages are the file cache, shared by every
worker on the machine that maps it). The stores come from `bench.kb_ingest --keep DIR`: the largest one
is used as it is, smaller ones are its first documents copied. Results in bench/results/kb_memory.json.

    .venv/bin/python -m bench.kb_ingest --sizes 50000 --keep .bench-stores
    .venv/bin/python -m bench.kb_memory --stores .bench-stores [--sizes 5000 50000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.kb_ingest import TOPICS, vocabulary
from bench.streaming import RESULTS, header, percentiles

ENGINES = ("memory", "store")


def memory_mb() -> dict[str, float]:
    """This process's resident memory from /proc: all of it, the private part, the mapped files."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return {
        "rss_mb": fields["VmRSS"],
        "private_mb": fields["RssAnon"],
        "mapped_files_mb": fields["RssFile"],
        "peak_rss_mb": fields["VmHWM"],
    }


def queries(count: int) -> list[str]:
    rng = random.Random(7)  # the corpus's own seed: the same made-up words (bench.kb_ingest.write_corpus)
    words = vocabulary(rng)
    return [
        f"{rng.choice(TOPICS)} {words[int(rng.paretovariate(1.1)) % 200]} {rng.choice(words)}"
        for _ in range(count)
    ]


def child(engine_kind: str, url: str, folder: Path, count: int) -> dict[str, Any]:
    from dialogue.brain.knowledge.search import open_index
    from dialogue.brain.nlu.embeddings import embed
    from dialogue.platform.db import get_engine

    embed(["warm up"])
    before = memory_mb()
    index = open_index(get_engine(url), engine_kind, folder=folder, reload_seconds=3600)  # type: ignore[arg-type]
    started = time.perf_counter()
    index.search("warm up", top_k=5)
    built = time.perf_counter() - started
    latencies = []
    for text in queries(count):
        started = time.perf_counter()
        index.search(text, top_k=5)
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "build_s": round(built, 2),
        "search_ms": percentiles(latencies),
        "model_loaded": before,
        "after_searches": memory_mb(),
    }


def sized_store(source: Path, documents: int, target: Path) -> None:
    """The first `documents` documents of `source` and their chunks, as a store at the newest schema."""
    from alembic import command

    from dialogue.platform.db import get_engine, init_db
    from dialogue.platform.migrations import alembic_config

    url = f"sqlite:///{target}"
    command.upgrade(alembic_config(url), "0002")  # the chunks go in before 0003 fills the full-text index
    with sqlite3.connect(target) as connection:
        connection.execute("ATTACH DATABASE ? AS source", (str(source),))
        ids = "SELECT id FROM source.knowledge_document ORDER BY id LIMIT ?"
        connection.execute(
            f"INSERT INTO knowledge_document SELECT * FROM source.knowledge_document WHERE id IN ({ids})",
            (documents,),
        )
        connection.execute(
            f"INSERT INTO knowledge_chunk SELECT * FROM source.knowledge_chunk WHERE document_id IN ({ids})",
            (documents,),
        )
        connection.execute("INSERT INTO knowledge_revision (id, revision) VALUES (1, 1)")
    init_db(get_engine(url))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", type=Path, default=Path(".bench-stores"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "kb_memory.json")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "URL", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, url, folder = args.child
        print(json.dumps(child(kind, url, Path(folder), args.queries)))
        return
    from dialogue.platform.db import get_engine, init_db

    largest = args.stores / f"n{max(args.sizes)}.db"
    started = time.perf_counter()
    init_db(get_engine(f"sqlite:///{largest}"))  # a store kept before migration 0003 gets its index here
    migrated_s = time.perf_counter() - started
    sizes = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sorted(args.sizes):
            path = largest if size == max(args.sizes) else Path(scratch) / f"n{size}.db"
            if path != largest:
                sized_store(largest, size, path)
            measured: dict[str, Any] = {"documents": size}
            with sqlite3.connect(path) as connection:
                measured["chunks"] = connection.execute("SELECT count(*) FROM knowledge_chunk").fetchone()[0]
            measured["store_mb"] = round(path.stat().st_size / 2**20)
            for kind in ENGINES:
                run = subprocess.run(
                    [sys.executable, "-m", "bench.kb_memory", "--queries", str(args.queries), "--child", kind,
                     f"sqlite:///{path}", str(Path(scratch) / f"vectors-{size}")],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                measured[kind] = json.loads(run.stdout.strip().splitlines()[-1])
            sizes.append(measured)
            print(json.dumps(measured), flush=True)
    result = header(
        "kb_memory",
        corpus="generated abstracts (bench.kb_ingest)",
        queries=args.queries,
        full_text_backfill_s=round(migrated_s, 1),
        sizes=sizes,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

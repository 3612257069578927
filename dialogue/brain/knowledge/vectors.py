"""The chunks' vectors at one knowledge revision, in a file every worker of a machine maps into memory.

`open_or_write` streams the vectors out of the store into `revision-<n>/vectors.f32` (float32 rows) and
their chunk ids into `revision-<n>/chunk_ids` (one a line), then maps the matrix read-only: its pages are
the operating system's file cache, shared by every process that maps the same file and given back under
memory pressure, instead of a copy of the corpus in each worker's own memory. The second worker to reach
a revision finds the folder made and only maps it. A folder is written under a temporary name and renamed
whole, so a reader never sees half of one, nor ids of one writer beside another's vectors; older
revisions' folders are removed once a newer one is in place (a process still mapping one keeps its pages
until it lets go: unlinking does not unmap).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Engine

PAGE = 4096


@dataclass(frozen=True)
class Vectors:
    revision: int
    chunk_ids: list[str]
    matrix: np.ndarray
    """(chunks, dimensions) float32, memory-mapped; empty when no chunk has a vector."""

    def nearest(self, query: np.ndarray, limit: int) -> list[tuple[str, float]]:
        if not self.chunk_ids:
            return []
        similarities = self.matrix @ query
        limit = min(limit, len(similarities))
        best = np.argpartition(similarities, -limit)[-limit:]
        best = best[np.argsort(similarities[best])[::-1]]
        return [(self.chunk_ids[i], float(similarities[i])) for i in best]


def open_or_write(engine: Engine, folder: Path, revision: int) -> Vectors:
    """The vectors of `revision`, written from the store first if no process of this machine has."""
    made = folder / f"revision-{revision}"
    if not made.exists():
        _write(engine, folder, made)
        _remove_older(folder, revision)
    chunk_ids = (made / "chunk_ids").read_text().split("\n")[:-1]
    if not chunk_ids:
        return Vectors(revision, [], np.zeros((0, 0), dtype=np.float32))
    matrix = np.memmap(made / "vectors.f32", dtype=np.float32, mode="r")
    return Vectors(revision, chunk_ids, matrix.reshape(len(chunk_ids), -1))


def _write(engine: Engine, folder: Path, made: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="writing-", dir=folder))
    try:
        with (
            engine.connect() as connection,
            (scratch / "vectors.f32").open("wb") as matrix,
            (scratch / "chunk_ids").open("w") as ids,
        ):
            rows = connection.execution_options(stream_results=True, yield_per=PAGE).execute(
                text("SELECT id, embedding FROM knowledge_chunk WHERE embedding IS NOT NULL ORDER BY id")
            )
            for chunk_id, embedding in rows:
                matrix.write(embedding)
                ids.write(f"{chunk_id}\n")
        with contextlib.suppress(OSError):  # another worker of this machine renamed its own first
            scratch.rename(made)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_older(folder: Path, revision: int) -> None:
    for path in folder.glob("revision-*"):
        number = path.name.removeprefix("revision-")
        if number.isdigit() and int(number) < revision:
            shutil.rmtree(path, ignore_errors=True)

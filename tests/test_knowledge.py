"""The knowledge base: parsing by structure, chunking, versioned storage on both databases, hybrid search."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from dialogue.brain.knowledge import documents, fulltext
from dialogue.brain.knowledge.chunking import SPECIAL_TOKENS, chunk, sentences
from dialogue.brain.knowledge.evaluate import Question, evaluate_retrieval, read_questions
from dialogue.brain.knowledge.parsing import parse
from dialogue.brain.knowledge.search import MemoryIndex, StoreIndex, open_index
from dialogue.brain.nlu.embeddings import MAX_TOKENS, count_tokens
from dialogue.brain.text import stems, terms
from dialogue.platform.bot import BotDefinition
from dialogue.platform.db import KnowledgeChunk, KnowledgeDocument, get_engine, init_db
from dialogue.platform.jsonl import DataError
from dialogue.platform.settings import PROJECT_ROOT
from tests.conftest import ingest_knowledge

MARKDOWN = """# Gift cards

Gift cards never expire.

## Buying

Buy them online in amounts from 10 to 500 euros.

```
## not a heading inside code
```

### Delivery

They arrive by e-mail within minutes.

## Returns

Gift cards cannot be returned.
"""

HTML = """<html><head><title>Ignored</title><style>p {color: red}</style></head><body>
<nav><p>Menu</p></nav><h1>Contact</h1><p>Call us on weekdays.</p>
<h2>Hours</h2><ul><li>Monday to Friday, 8 to 20</li><li>Saturday, 9 to 14</li></ul></body></html>"""


def test_markdown_sections_follow_headings_not_code() -> None:
    document = parse(MARKDOWN, "markdown", fallback_title="x")
    assert document.title == "Gift cards"
    assert [(s.heading, len(s.paragraphs)) for s in document.sections] == [
        ("", 1),
        ("Buying", 2),
        ("Buying > Delivery", 1),
        ("Returns", 1),
    ]


def test_html_and_text_parse_to_title_and_sections() -> None:
    html = parse(HTML, "html", fallback_title="x")
    assert html.title == "Contact"
    assert [(s.heading, s.paragraphs) for s in html.sections] == [
        ("", ["Call us on weekdays."]),
        ("Hours", ["Monday to Friday, 8 to 20", "Saturday, 9 to 14"]),
    ]
    text = parse("Opening hours\n\nWe open at 8.\n\nWe close at 20.", "text", fallback_title="x")
    assert text.title == "Opening hours"
    assert text.sections[0].paragraphs == ["We open at 8.", "We close at 20."]


def test_chunks_never_cross_a_heading_and_overlap_by_a_sentence() -> None:
    paragraphs = "\n\n".join(
        f"Sentence {i} of a long section. It has a second sentence {i}." for i in range(12)
    )
    document = parse(
        f"# T\n\n## Long\n\n{paragraphs}\n\n## Short\n\nOne line.", "markdown", fallback_title="x"
    )
    chunks = chunk(document, max_chars=200)
    assert {c.heading for c in chunks} == {"Long", "Short"}
    long_chunks = [c for c in chunks if c.heading == "Long"]
    assert len(long_chunks) > 2
    assert all(len(c.text) <= 260 for c in long_chunks)
    for previous, following in itertools.pairwise(long_chunks):
        assert previous.text.split(". ")[-1].rstrip(".") in following.text  # the overlap


def test_a_long_paragraph_becomes_chunks_within_the_embedders_window() -> None:
    sentence = "Each of these words is counted by the embedding model's own tokenizer, pieces included."
    paragraph = " ".join([sentence] * 200)  # a 3,000-word paragraph
    assert len(paragraph.split()) >= 2_800
    document = parse(f"# Manual\n\n## Everything\n\n{paragraph}", "markdown", fallback_title="x")
    chunks = chunk(document)
    assert len(chunks) > 10
    for piece in chunks:
        embedded = documents.indexed_text(document.title, piece.heading, piece.text)
        assert count_tokens(embedded) + SPECIAL_TOKENS <= MAX_TOKENS
        assert piece.text.startswith("Each of these words") and piece.text.endswith("included.")
    # One long sentence with no end is cut between words, still within the window.
    run_on = " ".join(["unending"] * 600)
    pieces = chunk(parse(f"# T\n\n{run_on}", "markdown", fallback_title="x"))
    assert len(pieces) > 1 and all(
        count_tokens(f"T  {p.text}") + SPECIAL_TOKENS <= MAX_TOKENS for p in pieces
    )
    assert " ".join(p.text for p in pieces).split() == run_on.split()


def test_a_code_block_survives_parsing_and_chunking_as_written() -> None:
    code = "def refund(order):\n    if order.paid:\n        return order.total\n    return 0"
    document = parse(
        f"Returns\n=======\n\nSetup\n-----\n\nRun this:\n\n```python\n{code}\n```\n\n    indented = True\n",
        "markdown",
        fallback_title="x",
    )
    assert document.title == "Returns"  # an underlined heading is a heading
    assert [s.heading for s in document.sections] == ["Setup"]
    texts = [c.text for c in chunk(document)]
    assert any(code in text for text in texts)  # lines and indentation as written
    assert any("indented = True" in text for text in texts)


def test_markdown_inline_markup_lists_and_tables_read_as_plain_text() -> None:
    document = parse(
        "# Fees\n\nPay **no fee** with [a card](https://example.com/cards) or `PayPal`.\n\n"
        "- Express: 12.90 euros\n- Standard: 4.90 euros\n\n| Country | Days |\n|---|---|\n| Austria | 2 |\n",
        "markdown",
        fallback_title="x",
    )
    assert document.sections[0].paragraphs == [
        "Pay no fee with a card or PayPal.",
        "Express: 12.90 euros",
        "Standard: 4.90 euros",
        "Country | Days",
        "Austria | 2",
    ]
    assert sentences("Express: 12.90 euros\n\nStandard: 4.90 euros") == [
        "Express: 12.90 euros",
        "Standard: 4.90 euros",
    ]


def test_ingest_is_idempotent_and_versions_changes(engine: Engine) -> None:
    first = documents.ingest(
        engine, document_id="gift-cards", text=MARKDOWN, content_type="markdown", with_embeddings=False
    )
    again = documents.ingest(
        engine, document_id="gift-cards", text=MARKDOWN, content_type="markdown", with_embeddings=False
    )
    assert (first.version, first.chunks, first.changed) == (1, 4, True)
    assert (again.version, again.changed) == (1, False)
    revision = documents.revision(engine)

    changed = documents.ingest(
        engine,
        document_id="gift-cards",
        text=MARKDOWN + "\n## Lost cards\n\nWe replace lost cards.",
        content_type="markdown",
        with_embeddings=False,
    )
    assert (changed.version, changed.chunks, changed.changed) == (2, 5, True)
    assert documents.revision(engine) == revision + 1
    with Session(engine) as session:
        versions = {c.document_version for c in session.exec(select(KnowledgeChunk)).all()}
    assert versions == {2}  # the old version's chunks are gone

    assert documents.delete(engine, "gift-cards")
    assert not documents.delete(engine, "gift-cards")
    assert documents.get(engine, "gift-cards") is None
    with Session(engine) as session:
        assert session.exec(select(KnowledgeChunk)).all() == []


def demo_copy(demo_store: Path, tmp_path: Path) -> Engine:
    """A copy of the demo store that a test may change."""
    copy = tmp_path / "copy.db"
    copy.write_bytes(demo_store.read_bytes())
    return get_engine(f"sqlite:///{copy}")


def test_hybrid_search_finds_the_answering_document_and_follows_changes(
    tmp_path: Path, demo_store: Path
) -> None:
    from dialogue.platform.db import get_engine

    engine = get_engine(f"sqlite:///{demo_store}")
    index = MemoryIndex(engine, reload_seconds=0)
    best = index.search("how much does express shipping cost", top_k=3)[0]
    assert best.document_id == "shipping"
    assert best.lexical_score > 0 and best.chunk_id and best.document_version == 1
    refund = index.search("how long does the refund take after I return an item?", top_k=5)
    assert "returns" in [p.document_id for p in refund]

    mutable = demo_copy(demo_store, tmp_path)
    index = MemoryIndex(mutable, reload_seconds=0)
    assert index.search("zorblax teleporter", top_k=1)[0].lexical_score == 0
    documents.ingest(
        mutable,
        document_id="teleporter",
        text="# Zorblax teleporter\n\nThe zorblax teleporter ships in 2030.",
        content_type="markdown",
    )
    assert index.search("zorblax teleporter", top_k=1)[0].document_id == "teleporter"


def test_retrieval_evaluation_on_the_demo_qa_set(demo_store: Path, demo_bot: BotDefinition) -> None:
    from dialogue.platform.db import get_engine

    questions = read_questions(demo_bot.resolve("qa.jsonl"))
    assert len(questions) >= 50
    report = evaluate_retrieval(MemoryIndex(get_engine(f"sqlite:///{demo_store}")), questions)
    assert report.n_questions == len(questions)
    assert 0.6 <= report.recall_at_1 <= report.recall_at_5 <= 1
    assert report.recall_at_1 <= report.mrr <= report.recall_at_5


def test_read_questions_rejects_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(orjson.dumps({"question": "q"}) + b"\n")
    with pytest.raises(DataError, match=r"qa\.jsonl:1"):
        read_questions(path)


def test_retrieval_modes_keep_one_ranking(demo_store: Path) -> None:
    from dialogue.platform.db import get_engine

    engine = get_engine(f"sqlite:///{demo_store}")
    lexical = MemoryIndex(engine, mode="lexical").search("express shipping cost", top_k=3)
    semantic = MemoryIndex(engine, mode="semantic").search("express shipping cost", top_k=3)
    assert all(p.semantic_score is None for p in lexical)
    assert all(p.lexical_score == 0 for p in semantic)
    assert lexical[0].document_id == semantic[0].document_id == "shipping"


def test_two_files_with_one_document_id_are_refused(tmp_path: Path) -> None:
    (tmp_path / "faq").mkdir()
    (tmp_path / "legal").mkdir()
    (tmp_path / "faq" / "returns.md").write_text("# Returns\n\nFree.")
    (tmp_path / "legal" / "returns.html").write_text("<h1>Returns</h1><p>Terms.</p>")
    with pytest.raises(ValueError, match="both be document 'returns'"):
        documents.knowledge_files([tmp_path])


def test_a_long_file_name_makes_a_document_id_that_fits_its_column(tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / f"{'very-long-name-' * 16}.md"  # 240 characters, as a file system allows
    path.write_text("# Long\n\nA document with a long file name.")
    ingested = documents.ingest_path(engine, path)
    assert len(ingested.document_id) == documents.MAX_DOCUMENT_ID
    assert documents.get(engine, ingested.document_id) is not None


DEMO = PROJECT_ROOT / "examples" / "demo"


def test_follow_ups_retrieve_better_with_the_conversation_and_questions_lose_nothing(
    demo_store: Path,
) -> None:
    """The demo's multi-turn set (50 exchanges whose last message leans on the earlier ones): recall@5 of
    the last message made standalone from the conversation against the message alone; and the single-turn
    set, each question after another topic's, unchanged by it."""
    index = MemoryIndex(get_engine(f"sqlite:///{demo_store}"))
    multi = read_questions(DEMO / "qa_multiturn.jsonl")
    with_context = evaluate_retrieval(index, multi, context=True)
    alone = evaluate_retrieval(index, multi, context=False)
    print(f"\nmulti-turn: with context {with_context}; without {alone}")
    assert len(multi) >= 40 and all(len(q.turns) >= 2 for q in multi)
    assert with_context.recall_at_5 >= alone.recall_at_5 + 0.05

    single = read_questions(DEMO / "qa.jsonl")
    after_another = [
        Question(turns=[other.question, q.question], document_ids=q.document_ids)
        for q, other in zip(single, single[1:] + single[:1], strict=True)
    ]
    assert evaluate_retrieval(index, after_another, context=True).recall_at_5 >= (
        evaluate_retrieval(index, single).recall_at_5 - 0.02
    )


def _dialogue(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dialogue", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_an_ingest_reports_and_skips_what_it_cannot_read_and_stores_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "returns.md").write_text("# Returns\n\nReturns are free within 30 days.")
    (folder / "latin1.txt").write_bytes("Caf\xe9 opening hours".encode("latin-1"))  # not UTF-8
    (folder / "huge.md").write_text("# Huge\n\n" + "word " * 3000)  # over --max-file-bytes below
    (folder / "faq").mkdir()
    (folder / "faq" / "returns.html").write_text("<h1>Returns again</h1><p>A second returns page.</p>")
    (folder / "shipping.md").write_text("# Shipping\n\nShipping takes two days.")
    env = {**os.environ, "DIALOGUE_DATABASE_URL": f"sqlite:///{tmp_path}/kb.db", "NO_COLOR": "1"}
    run = _dialogue("kb", "ingest", str(folder), "--max-file-bytes", "10000", env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    report = run.stderr.replace("\n", " ")
    assert f"skipped {folder / 'latin1.txt'}: not UTF-8" in report
    assert f"skipped {folder / 'huge.md'}: 15,008 bytes, more than the 10,000" in report
    # The second file with the id `returns` (sorted: faq/returns.html comes first) is left out.
    assert (
        f"skipped {folder / 'returns.md'}: its id 'returns' is {folder / 'faq' / 'returns.html'}'s" in report
    )
    assert "2 documents, 2 new or changed" in run.stdout and "3 skipped" in run.stdout
    engine = get_engine(env["DIALOGUE_DATABASE_URL"])
    assert sorted(d.id for d in documents.list_documents(engine, limit=10, offset=0)[0]) == [
        "returns",
        "shipping",
    ]


def test_a_file_gone_before_it_is_read_is_skipped(tmp_path: Path, engine: Engine) -> None:
    kept, gone = tmp_path / "kept.md", tmp_path / "gone.md"
    kept.write_text("# Kept\n\nStill here.")
    gone.write_text("# Gone\n\nDeleted before its turn.")
    files = documents.knowledge_files([tmp_path])
    gone.unlink()
    stored, skipped = documents.ingest_files(engine, files, batch_size=1)
    assert [r.document_id for r in stored] == ["kept"]
    assert [(s.path, s.reason.split(":")[0]) for s in skipped] == [(gone, "unreadable")]


def test_an_ingest_stopped_with_ctrl_c_leaves_each_document_wholly_old_or_wholly_new(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    for number in range(3000):
        paragraphs = "\n\n".join(f"Fact {number}.{p}: " + "returns and refunds " * 20 for p in range(4))
        (folder / f"doc-{number:04d}.md").write_text(f"# Document {number}\n\n{paragraphs}")
    url = f"sqlite:///{tmp_path}/kb.db"
    env = {**os.environ, "DIALOGUE_DATABASE_URL": url, "NO_COLOR": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dialogue", "kb", "ingest", str(folder), "--batch-size", "50"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    engine = get_engine(url)
    deadline = time.monotonic() + 300  # at nice 10 it waits for any other busy process on the machine
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            if documents.list_documents(engine, limit=1, offset=0)[1] >= 100:
                break
        except Exception:  # the store's tables are being made
            continue
    assert os.getpriority(os.PRIO_PROCESS, process.pid) == 10  # bulk work yields the CPU to the turns
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "interrupted" in output
    with Session(engine) as session:
        stored = session.exec(select(KnowledgeDocument)).all()
        chunks = session.exec(select(KnowledgeChunk)).all()
    assert 100 <= len(stored) < 3000  # stopped in the middle
    per_document = {d.id: 0 for d in stored}
    for row in chunks:
        per_document[row.document_id] += 1
    assert all(per_document[d.id] == d.chunk_count > 1 for d in stored)  # no document half-chunked
    with engine.connect() as connection:  # nor half in the full-text index
        indexed = connection.execute(
            text(f"SELECT document_id, count(*) FROM {fulltext.TABLE} GROUP BY document_id")
        ).all()
    assert dict(indexed) == {d.id: d.chunk_count for d in stored}


def test_a_change_is_indexed_beside_the_searches_and_replaces_the_index_in_one_step(
    tmp_path: Path, demo_store: Path
) -> None:
    engine = demo_copy(demo_store, tmp_path)
    index = MemoryIndex(engine, reload_seconds=0.01)
    before = index.search("zorblax teleporter", top_k=1)[0]
    revision = REGISTRY.get_sample_value("dialogue_knowledge_index_revision")
    documents.ingest(
        engine,
        document_id="teleporter",
        text="# Zorblax teleporter\n\nThe zorblax teleporter ships in 2030.",
        content_type="markdown",
    )
    # A duration, not an ordering: the index looks at the store's revision at most every `reload_seconds`
    # (0.01 s), so the next search must come after that long to see the change.
    time.sleep(0.02)
    # The first search after the change answers at once, from the index it had: the new one is built
    # on its own thread.
    assert index.search("zorblax teleporter", top_k=1)[0].document_id == before.document_id
    index.wait_for_rebuild(timeout=60)  # the new index is in place once its build is done
    assert index.search("zorblax teleporter", top_k=1)[0].document_id == "teleporter"
    assert REGISTRY.get_sample_value("dialogue_knowledge_index_revision") == (revision or 0) + 1
    assert (
        REGISTRY.get_sample_value("dialogue_knowledge_index_built_timestamp_seconds") or 0
    ) > time.time() - 60


def test_reindex_chunks_and_embeds_every_document_again_and_keeps_its_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/kb.db"
    engine = get_engine(url)
    init_db(engine)
    long_text = "# Long\n\n" + "\n\n".join(f"Paragraph {n}: " + "shipping rules " * 20 for n in range(6))
    documents.ingest(engine, document_id="long", text=long_text, content_type="markdown")
    documents.ingest(engine, document_id="short", text="# Short\n\nOne line.", content_type="markdown")
    before_revision = documents.revision(engine)
    with Session(engine) as session:  # as an older chunker would have left it: one chunk, no vector
        session.execute(delete(KnowledgeChunk).where(col(KnowledgeChunk.position) > 0))
        session.commit()
    env = {**os.environ, "DIALOGUE_DATABASE_URL": url, "NO_COLOR": "1"}
    run = _dialogue("kb", "reindex", "--batch-size", "1", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 documents" in run.stdout
    with Session(engine) as session:
        rows = session.exec(select(KnowledgeChunk).where(col(KnowledgeChunk.document_id) == "long")).all()
        stored = {d.id: d for d in session.exec(select(KnowledgeDocument)).all()}
    assert len(rows) == stored["long"].chunk_count > 1 and all(r.embedding for r in rows)
    assert {d.version for d in stored.values()} == {1}
    assert documents.revision(engine) == before_revision + 2  # a batch each


def demo_engine(database_url: str, demo_bot: BotDefinition) -> Engine:
    engine = get_engine(database_url)
    init_db(engine)
    ingest_knowledge(engine, demo_bot)
    return engine


def test_the_store_engine_searches_in_the_store_and_follows_every_change_at_once_lexically(
    database_url: str, demo_bot: BotDefinition, tmp_path: Path
) -> None:
    """SQLite FTS5 or PostgreSQL full-text for the words, the shared vector file for the meaning: the
    answering document first, and a document added, changed or deleted found (or not) by its words at the
    next search, before any rebuild (the lexical index is written with the chunks)."""
    engine = demo_engine(database_url, demo_bot)
    index = StoreIndex(engine, tmp_path / "vectors", reload_seconds=3600)
    best = index.search("how much does express shipping cost", top_k=3)[0]
    assert best.document_id == "shipping" and best.lexical_score > 0 and best.semantic_score is not None

    documents.ingest(
        engine,
        document_id="teleporter",
        text="# Zorblax\n\nThe zorblax ships in 2030.",
        content_type="markdown",
    )
    words = StoreIndex(engine, tmp_path / "vectors", reload_seconds=3600, mode="lexical")
    assert words.search("when does the zorblax ship", top_k=1)[0].document_id == "teleporter"

    documents.ingest(
        engine,
        document_id="teleporter",
        text="# Quuxotron\n\nThe quuxotron ships in 2031.",
        content_type="markdown",
    )
    assert "teleporter" not in [p.document_id for p in words.search("zorblax", top_k=30)]
    assert words.search("quuxotron", top_k=1)[0].text == "The quuxotron ships in 2031."

    documents.delete(engine, "teleporter")
    assert words.search("quuxotron", top_k=30) == []


def test_the_store_engine_keeps_the_vectors_in_one_file_per_revision_that_workers_share(
    demo_store: Path, tmp_path: Path
) -> None:
    engine = demo_copy(demo_store, tmp_path)
    folder = tmp_path / "vectors"
    first, second = (StoreIndex(engine, folder, reload_seconds=0) for _ in range(2))
    first.search("express shipping", top_k=1)
    second.search("express shipping", top_k=1)
    revision = documents.revision(engine)
    (folder,) = folder.iterdir()  # the store's own folder
    assert [p.name for p in folder.iterdir()] == [f"revision-{revision}"]
    mapped = [index._snapshot.vectors.matrix for index in (first, second) if index._snapshot]
    assert all(isinstance(matrix, np.memmap) for matrix in mapped)
    assert mapped[0].shape == (len(documents.all_chunks(engine)[1]), 384)

    documents.ingest(
        engine,
        document_id="teleporter",
        text="# Zorblax\n\nThe zorblax ships in 2030.",
        content_type="markdown",
    )
    assert first.search("when does the zorblax ship", top_k=1)[0].semantic_score is not None
    assert [p.name for p in folder.iterdir()] == [f"revision-{revision + 1}"]  # the older one removed
    assert second.search("express shipping", top_k=1)[0].document_id == "shipping"  # maps the new one


def test_the_engines_retrieve_as_well_as_each_other_on_the_demo_sets(
    database_url: str, demo_bot: BotDefinition, tmp_path: Path
) -> None:
    """Quality kept: the store engine's hybrid search (FTS5's BM25 or PostgreSQL's ts_rank for the words)
    finds the answer in the first five at least as often as the in-memory one, on the single-question set
    and on the multi-turn one; every mode is reported."""
    engine = demo_engine(database_url, demo_bot)
    sets = {
        "qa": read_questions(DEMO / "qa.jsonl"),
        "multi-turn": read_questions(DEMO / "qa_multiturn.jsonl"),
    }
    for name, questions in sets.items():
        reports = {
            (kind, mode): evaluate_retrieval(
                open_index(engine, kind, folder=tmp_path / "vectors", reload_seconds=0, mode=mode), questions
            )
            for kind in ("memory", "store")
            for mode in ("hybrid", "lexical", "semantic")
        }
        print(
            f"\n{name}: "
            + "; ".join(f"{k} {m} r@5 {r.recall_at_5} mrr {r.mrr}" for (k, m), r in reports.items())
        )
        assert reports["store", "hybrid"].recall_at_5 >= reports["memory", "hybrid"].recall_at_5
        assert reports["store", "hybrid"].mrr >= reports["memory", "hybrid"].mrr - 0.01
        assert reports["store", "semantic"] == reports["memory", "semantic"]  # the same vectors, exactly


def test_a_store_upgraded_to_the_full_text_revision_is_searchable_at_once(
    database_url: str, demo_bot: BotDefinition, tmp_path: Path
) -> None:
    """Migration 0003 fills the full-text index from the chunks already stored."""
    from alembic import command

    from dialogue.platform.migrations import alembic_config

    engine = demo_engine(database_url, demo_bot)
    command.downgrade(alembic_config(database_url), "0002")
    assert fulltext.TABLE not in inspect(engine).get_table_names()
    command.upgrade(alembic_config(database_url), "head")
    index = StoreIndex(engine, tmp_path / "vectors", reload_seconds=0, mode="lexical")
    assert index.search("how much does express shipping cost", top_k=1)[0].document_id == "shipping"


def test_a_store_upgraded_to_the_stems_revision_searches_by_stems(
    database_url: str, demo_bot: BotDefinition
) -> None:
    """Migration 0004 writes the full-text rows again as stems: a store whose rows are still words (as 0003
    wrote them) finds "delivering" in chunks that say "deliver" or "delivered" once upgraded."""
    from alembic import command

    from dialogue.platform.migrations import alembic_config

    engine = demo_engine(database_url, demo_bot)
    with engine.begin() as connection:
        rows = connection.execute(
            text(
                "SELECT c.id, d.title, c.heading, c.text FROM knowledge_chunk c"
                " JOIN knowledge_document d ON d.id = c.document_id"
            )
        ).all()
        for chunk_id, title, heading, body in rows:  # as 0003 wrote them: the words
            connection.execute(
                text(f"UPDATE {fulltext.TABLE} SET terms = :terms WHERE chunk_id = :id"),
                {"terms": " ".join(terms(documents.indexed_text(title, heading, body))), "id": chunk_id},
            )
        connection.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    assert not fulltext.search(engine, stems("delivering"), 5)  # the stem "deliv" is no word

    # To 0004 itself: the later revisions' tables are there already (the store was made at head).
    command.upgrade(alembic_config(database_url), "0004")
    assert fulltext.search(engine, stems("delivering"), 5)
    with engine.connect() as connection:
        written: dict[str, str] = dict(
            connection.execute(text(f"SELECT chunk_id, terms FROM {fulltext.TABLE}")).tuples().all()
        )
    assert len(written) == len(rows)
    chunk_id, title, heading, body = rows[0]
    assert written[chunk_id] == " ".join(stems(documents.indexed_text(title, heading, body)))


def test_kb_evaluate_reports_every_mode_of_the_chosen_engine(demo_store: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DIALOGUE_DATABASE_URL": f"sqlite:///{demo_store}",
        "DIALOGUE_DATA_DIR": str(tmp_path),
    }
    questions = str(DEMO / "qa.jsonl")
    run = _dialogue(
        "kb", "evaluate", "--data", questions, "--mode", "all", "--index", "store", "--json", env=env
    )
    assert run.returncode == 0, run.stderr
    reports = orjson.loads(run.stdout)
    assert set(reports) == {"hybrid", "lexical", "semantic"}
    assert all(r["n_questions"] == 88 and 0 < r["recall_at_1"] <= r["recall_at_5"] for r in reports.values())
    refused = _dialogue("kb", "evaluate", "--data", questions, "--index", "disk", env=env)
    assert refused.returncode == 2 and "disk" in refused.stderr

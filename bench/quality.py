"""Quality, each number beside plain baselines measured in the same run: intents, retrieval, and the bot's
answers end to end.

- `intents`: the NLU's intent classifier (`dialogue.brain.nlu.model.train`: word and character TF-IDF with
  sentence embeddings, the out-of-scope threshold tuned on held-out examples) against TF-IDF + logistic
  regression and the plain embedder + logistic regression, on public intent benchmarks: in-scope accuracy,
  out-of-scope recall where the set has out-of-scope queries, ms per utterance, training seconds.
- `retrieval`: the knowledge base's search (`dialogue.brain.knowledge.search`: the chunker, BM25 and vectors fused)
  against BM25 alone and the plain embedder alone over the same chunks, and each lever taken out or
  changed (the Snowball stemmer: words unstemmed; the lexical weight of the fusion: equal weights; the
  chunker's cutting of long paragraphs: paragraphs whole): nDCG@10, recall@10 and MRR@10 per document.
- `end-to-end`: the demo bot through its API (`dialogue kb evaluate --end-to-end`): the share of the demo's
  questions answered from a right document, of out-of-domain ones declined, and the answers' rubric; the
  same with each lever taken out (the router; meaning in the grounded answer).

The public sets are not shipped: they live in `.quality-data/` (git ignores it), fetched from their public
repositories as `docs/quality.md` says; a set that is missing is reported so and skipped. The demo's own
sets are in `examples/demo/`.

    .venv/bin/python -m bench.quality [--only intents|retrieval|end-to-end] [--sets clinc150,scifact]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from bench.streaming import RESULTS, header
from dialogue.brain.knowledge.search import RetrievalMode
from dialogue.brain.nlu.data import Example, read_examples
from dialogue.model.contracts import OUT_OF_SCOPE

DATA = Path(__file__).parent.parent / ".quality-data"
CACHE = DATA / "cache"
INTENT_SETS = ("hwu64", "snips", "clinc150", "banking77")
RETRIEVAL_SETS = ("demo", "stackfaq", "scifact", "nfcorpus")
DEMO = Path(__file__).parent.parent / "examples" / "demo"
LATENCY_SAMPLE = 200
"""Utterances parsed one at a time to time the classifier as a turn meets it."""


def embedded(texts: list[str]) -> np.ndarray:
    """MiniLM vectors of `texts`, cached on disk by content (a benchmark re-run embeds nothing again)."""
    from dialogue.brain.nlu.embeddings import embed_many

    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:20]
    path = CACHE / f"vectors-{digest}.npy"
    if path.exists():
        return np.load(path)
    vectors = embed_many(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


# Intents.


def intent_set(name: str) -> tuple[list[Example], list[Example] | None, list[Example]] | None:
    folder = DATA / "intents" / name
    if not (folder / "train.jsonl").exists():
        return None
    valid = folder / "valid.jsonl"
    return (
        read_examples(folder / "train.jsonl"),
        read_examples(valid) if valid.exists() else None,
        read_examples(folder / "test.jsonl"),
    )


def scores(truth: list[str], predicted: list[str]) -> dict[str, float | None]:
    pairs = list(zip(truth, predicted, strict=True))
    in_scope = [(t, p) for t, p in pairs if t != OUT_OF_SCOPE]
    out = [p for t, p in pairs if t == OUT_OF_SCOPE]
    return {
        "in_scope_accuracy": round(sum(t == p for t, p in in_scope) / len(in_scope), 4),
        "oos_recall": round(sum(p == OUT_OF_SCOPE for p in out) / len(out), 4) if out else None,
    }


def tfidf_baseline(train: list[Example], test: list[Example]) -> dict[str, Any]:
    """Word uni- and bigrams, TF-IDF, multinomial logistic regression: out of scope only as a class."""
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(C=10.0, max_iter=2000).fit(
        vectorizer.fit_transform([e.text for e in train]), [e.intent for e in train]
    )
    seconds = time.perf_counter() - started
    predicted = [str(p) for p in model.predict(vectorizer.transform([e.text for e in test]))]
    return {**scores([e.intent for e in test], predicted), "training_seconds": round(seconds, 1)}


def embedder_baseline(train: list[Example], test: list[Example]) -> dict[str, Any]:
    """The plain sentence embedder (all-MiniLM-L6-v2) and a logistic regression on its vectors."""
    train_vectors = embedded([e.text for e in train])
    started = time.perf_counter()
    model = LogisticRegression(C=10.0, max_iter=2000).fit(train_vectors, [e.intent for e in train])
    seconds = time.perf_counter() - started
    predicted = [str(p) for p in model.predict(embedded([e.text for e in test]))]
    return {**scores([e.intent for e in test], predicted), "training_seconds": round(seconds, 1)}


def ours(train: list[Example], valid: list[Example] | None, test: list[Example]) -> dict[str, Any]:
    """The NLU's classifier as `dialogue nlu train` makes it, then one utterance at a time as a turn parses."""
    from dialogue.brain.nlu.classifier import IntentClassifier
    from dialogue.brain.nlu.model import train as train_model

    texts = [e.text for e in train + (valid or [])]
    embedded(texts)  # warm the cache: training time is the model's, not the embedder's first run
    started = time.perf_counter()
    model = train_model(train, valid)
    seconds = time.perf_counter() - started
    classifier: IntentClassifier = model.classifier
    vectors = embedded([e.text for e in test])
    predicted = [
        p.intent for p in classifier.decide(classifier.probabilities([e.text for e in test], vectors))
    ]
    sample = [e.text for e in test[:LATENCY_SAMPLE]]
    classifier.predict(sample[:1])
    started = time.perf_counter()
    for text in sample:
        classifier.predict([text])
    per_utterance = (time.perf_counter() - started) * 1000 / len(sample)
    return {
        **scores([e.intent for e in test], predicted),
        "threshold": classifier.threshold,
        "training_seconds": round(seconds, 1),
        "ms_per_utterance": round(per_utterance, 2),
    }


def intents(names: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        loaded = intent_set(name)
        if loaded is None:
            results[name] = {"missing": f"{DATA / 'intents' / name} (see docs/quality.md)"}
            continue
        train, valid, test = loaded
        print(f"intents: {name} ({len(train)} training, {len(test)} test examples)", flush=True)
        results[name] = {
            "examples": {"train": len(train), "valid": len(valid or []), "test": len(test)},
            "intents": len({e.intent for e in train} - {OUT_OF_SCOPE}),
            "ours": ours(train, valid, test),
            "tfidf_logistic_regression": tfidf_baseline(train + (valid or []), test),
            "embedder_logistic_regression": embedder_baseline(train + (valid or []), test),
        }
        print(json.dumps(results[name]), flush=True)
    return results


# Retrieval.


def read_beir(folder: Path) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    corpus = {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        corpus[str(row["_id"])] = {"title": row.get("title") or "", "text": row["text"]}
    queries = {
        str(row["_id"]): row["text"]
        for row in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())
    }
    relevant: dict[str, dict[str, int]] = defaultdict(dict)
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query, document, grade = line.split("\t")
        if int(grade) > 0:
            relevant[query][document] = int(grade)
    return corpus, {q: queries[q] for q in relevant}, relevant


@contextmanager
def plain_words(on: bool) -> Iterator[None]:
    """The lexical side with the words as they were before the stemmer (singular-folded, `text.terms`),
    index and queries alike, for the block."""
    import dialogue.brain.knowledge.search as search
    from dialogue.brain.text import terms

    if not on:
        yield
        return
    kept = search.stems
    search.stems = terms
    try:
        yield
    finally:
        search.stems = kept


def ranked_documents(search: Callable[[str, int], list[Any]], query: str, depth: int = 10) -> list[str]:
    documents: list[str] = []
    for passage in search(query, 4 * depth):
        if passage.document_id not in documents:
            documents.append(passage.document_id)
    return documents[:depth]


def retrieval_scores(
    search: Callable[[str, int], list[Any]], queries: dict[str, str], relevant: dict[str, dict[str, int]]
) -> dict[str, float]:
    ndcg = recall = reciprocal = 0.0
    for query_id, query in queries.items():
        found = ranked_documents(search, query)
        grades = relevant[query_id]
        gains = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(found))
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(grades.values(), reverse=True)[:10]))
        ndcg += gains / ideal
        recall += len(set(found) & set(grades)) / len(grades)
        reciprocal += next((1 / (i + 1) for i, d in enumerate(found) if d in grades), 0.0)
    n = len(queries)
    return {
        "ndcg_at_10": round(ndcg / n, 4),
        "recall_at_10": round(recall / n, 4),
        "mrr_at_10": round(reciprocal / n, 4),
    }


@contextmanager
def whole_paragraphs(on: bool) -> Iterator[None]:
    """The chunker as it was before it fit the embedder's window: a paragraph is never cut (the model reads
    the first 256 word pieces of a longer one)."""
    from dialogue.brain.knowledge import chunking

    if not on:
        yield
        return
    kept = chunking._pieces
    chunking._pieces = lambda paragraph, max_chars, budget: [
        chunking._Piece(paragraph.removeprefix(chunking.CODE_MARK))
    ]
    try:
        yield
    finally:
        chunking._pieces = kept


def corpus_store(name: str, corpus: dict[str, dict[str, str]], *, whole: bool = False) -> Any:
    """The corpus chunked, embedded and stored as `dialogue kb ingest` does, once per chunker version
    (`whole`: paragraphs never cut, as before)."""
    from dialogue.brain.knowledge import chunking, documents
    from dialogue.platform.db import get_engine, init_db

    version = hashlib.sha256(Path(chunking.__file__).read_bytes()).hexdigest()[:12]
    path = CACHE / f"{name}-{version}{'-whole' if whole else ''}.db"
    CACHE.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists()
    engine = get_engine(f"sqlite:///{path}")
    init_db(engine)
    if fresh:
        started = time.perf_counter()
        inputs = [
            documents.DocumentInput(
                document_id=document_id,
                title=row["title"] or document_id,
                text=row["text"],
                content_type="text",
                source=None,
            )
            for document_id, row in corpus.items()
        ]
        with whole_paragraphs(whole):
            for start in range(0, len(inputs), 64):
                documents.ingest_batch(engine, inputs[start : start + 64])
        print(f"  ingested {len(inputs)} documents in {time.perf_counter() - started:.0f} s", flush=True)
    return engine


def demo_sets() -> Iterator[tuple[str, Any, Any, dict[str, str], dict[str, dict[str, int]]]]:
    """The demo's knowledge base and its question sets as retrieval sets (a follow-up searched as the
    conversation makes it standalone), each with the knowledge base stored twice: as the chunker makes it
    and with paragraphs never cut."""
    import tempfile

    from dialogue.brain.knowledge import documents
    from dialogue.brain.knowledge.evaluate import read_questions
    from dialogue.platform.bot import load_bot
    from dialogue.platform.db import get_engine, init_db

    bot = load_bot(DEMO / "bot.yaml")
    assert bot.knowledge_dir
    folder = Path(tempfile.mkdtemp(prefix="quality-demo-"))
    engines = []
    for whole in (False, True):
        engine = get_engine(f"sqlite:///{folder / f'demo-{whole}.db'}")
        init_db(engine)
        with whole_paragraphs(whole):
            for path in documents.knowledge_files([bot.resolve(bot.knowledge_dir)]):
                documents.ingest_path(engine, path)
        engines.append(engine)
    for name in ("qa", "qa_dev", "qa_multiturn", "qa_dev_multiturn"):
        questions = [q for q in read_questions(DEMO / f"{name}.jsonl") if q.document_ids]
        queries = {str(i): q.query(context=True) for i, q in enumerate(questions)}
        relevant = {str(i): dict.fromkeys(q.document_ids, 1) for i, q in enumerate(questions)}
        yield f"demo_{name}", engines[0], engines[1], queries, relevant


def retrieval(names: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        if name == "demo":
            for label, engine, whole, queries, relevant in demo_sets():
                print(f"retrieval: {label} ({len(queries)} queries)", flush=True)
                results[label] = levers(engine, whole, queries, relevant)
            continue
        folder = DATA / "retrieval" / name
        if not (folder / "corpus.jsonl").exists():
            results[name] = {"missing": f"{folder} (see docs/quality.md)"}
            continue
        corpus, queries, relevant = read_beir(folder)
        print(f"retrieval: {name} ({len(corpus)} documents, {len(queries)} queries)", flush=True)
        results[name] = {
            "documents": len(corpus),
            "queries": len(queries),
            **levers(corpus_store(name, corpus), corpus_store(name, corpus, whole=True), queries, relevant),
        }
    return results


def levers(
    engine: Any, whole: Any, queries: dict[str, str], relevant: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """The search as it is, its two halves alone, and each lever, side by side over the same store (`whole`:
    the store chunked with paragraphs never cut)."""
    import dialogue.brain.knowledge.search as search

    row: dict[str, Any] = {}
    variants: tuple[tuple[str, RetrievalMode, bool, float], ...] = (
        ("bm25", "lexical", False, search.LEXICAL_WEIGHT),
        ("embedder", "semantic", False, search.LEXICAL_WEIGHT),
        ("ours_hybrid", "hybrid", False, search.LEXICAL_WEIGHT),
        ("bm25_words_unstemmed", "lexical", True, search.LEXICAL_WEIGHT),
        ("hybrid_words_unstemmed", "hybrid", True, search.LEXICAL_WEIGHT),
        ("hybrid_equal_weights", "hybrid", False, 1.0),
    )
    for label, mode, unstemmed, weight in variants:
        kept = search.LEXICAL_WEIGHT
        search.LEXICAL_WEIGHT = weight
        try:
            with plain_words(unstemmed):
                row[label] = retrieval_scores(
                    search.MemoryIndex(engine, reload_seconds=0, mode=mode).search, queries, relevant
                )
        finally:
            search.LEXICAL_WEIGHT = kept
        print(f"  {label}: {row[label]}", flush=True)
    row["hybrid_whole_paragraphs"] = retrieval_scores(
        search.MemoryIndex(whole, reload_seconds=0).search, queries, relevant
    )
    print(f"  hybrid_whole_paragraphs: {row['hybrid_whole_paragraphs']}", flush=True)
    return row


# End to end.


@contextmanager
def lever(name: str) -> Iterator[None]:
    """The bot with one lever of the end-to-end path taken out, for the block (the worker runs in this
    process): `without_router` (the NLU decides alone, as before the router), `without_meaning` (the
    grounded answer weighs sentences by shared words only)."""
    from activities.understand import UnderstandActivity
    from dialogue.brain.generation import grounded

    kept_weighs, kept_weight = UnderstandActivity.weighs_evidence, grounded.SEMANTIC_WEIGHT
    if name == "without_router":
        UnderstandActivity.weighs_evidence = property(lambda self: False)  # type: ignore[assignment,method-assign]
    elif name == "without_meaning":
        grounded.SEMANTIC_WEIGHT = 0.0
    try:
        yield
    finally:
        UnderstandActivity.weighs_evidence = kept_weighs  # type: ignore[method-assign]
        grounded.SEMANTIC_WEIGHT = kept_weight


END_TO_END_SETS = (
    "qa",
    "qa_dev",
    "qa_multiturn",
    "qa_dev_multiturn",
    "out_of_domain",
    "out_of_domain_near",
    "nlu_test_out_of_scope",
)
LEVER_SETS = ("qa", "qa_dev", "out_of_domain", "nlu_test_out_of_scope")
"""The sets each lever is measured on beside the bot as it is."""


def end_to_end() -> dict[str, Any]:
    """The demo's sets through the API of the bot's own stack, in this process: the bot as it is on every
    set, and with each lever taken out on the main ones."""
    from dialogue.apps.client import AsyncDialogueClient
    from dialogue.apps.end_to_end import evaluate_end_to_end, following_sentences
    from dialogue.apps.testing.stack import in_process_stack
    from dialogue.brain.knowledge.evaluate import Question, read_questions
    from dialogue.platform.bot import load_bot
    from dialogue.platform.settings import Settings

    settings = Settings(bot_path=DEMO / "bot.yaml")
    bot = load_bot(settings.bot_path)
    assert bot.knowledge_dir
    follows = following_sentences(bot.resolve(bot.knowledge_dir))
    sets = {name: read_questions(DEMO / f"{name}.jsonl") for name in END_TO_END_SETS[:-1]}
    sets["nlu_test_out_of_scope"] = [
        Question(question=e.text, document_ids=[])
        for e in read_examples(DEMO / "nlu" / "test.jsonl")
        if e.intent == OUT_OF_SCOPE
    ]

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = defaultdict(dict)
        async with in_process_stack(settings.bot_path, settings) as stack:
            api = AsyncDialogueClient.wrapping(await stack.api())
            for variant in ("ours", "without_router", "without_meaning"):
                with lever(variant):
                    for name in END_TO_END_SETS if variant == "ours" else LEVER_SETS:
                        report = await evaluate_end_to_end(api, sets[name], follows)
                        out[variant][name] = report.model_dump(exclude={"asked"})
                        print(f"end-to-end: {variant}: {name}: {json.dumps(out[variant][name])}", flush=True)
        return dict(out)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["intents", "retrieval", "end-to-end"])
    parser.add_argument("--sets", help="Comma-separated set names (default: all present).")
    args = parser.parse_args()
    chosen = set(args.sets.split(",")) if args.sets else None
    result = header("quality")
    if args.only in (None, "intents"):
        result["intents"] = intents([n for n in INTENT_SETS if chosen is None or n in chosen])
    if args.only in (None, "retrieval"):
        result["retrieval"] = retrieval([n for n in RETRIEVAL_SETS if chosen is None or n in chosen])
    if args.only in (None, "end-to-end"):
        result["end_to_end"] = end_to_end()
    parts = [args.only or "all", *sorted(chosen or [])]
    name = "quality.json" if args.only is None and chosen is None else f"quality-{'-'.join(parts)}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS / name}")


if __name__ == "__main__":
    main()

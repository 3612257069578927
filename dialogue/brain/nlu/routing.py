"""Routing: whether a message is answered by the knowledge base, by the intent the NLU found, or declined.

The intent classifier knows only the intents it was trained on; the knowledge base knows what its
articles say. A question about a topic no intent covers ("How much off do students get?") is out of
scope to the classifier and plainly answered by an article; a question that mentions an order is not a
request to look one up. The router weighs both: the classifier's probabilities (the top intent's, the
margin to the next, out-of-scope's, and what the bot does with the top intent) and the knowledge
base's evidence (how close the best passage is in meaning, how many of the message's words a passage has,
and how far ahead of the next document the best one stands), in one multinomial logistic regression over
three routes.

It is trained with the intent model, on the bot's own examples, never on the examples it is judged by:
- every example with the probabilities of a classifier that did not see it (k-fold): an example of
  an intent answered from the knowledge base is routed `knowledge`, an out-of-scope example
  `out_of_scope`, any other `intent`;
- every example of each knowledge-answered intent again, with the probabilities of a classifier
  trained without that whole intent: what a question looks like to the classifier when no intent
  covers its topic, while the knowledge base answers it.
Its probabilities are calibrated on those held-out predictions, so the policy compares them, not
thresholds set by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.linear_model import LogisticRegression

from dialogue.brain.nlu.classifier import IntentClassifier, out_of_fold_probabilities, trusted_inputs
from dialogue.brain.text import stems
from dialogue.model.contracts import OUT_OF_SCOPE, IntentPrediction, Passage, Routing

if TYPE_CHECKING:
    from numpy.typing import NDArray

KNOWLEDGE = "knowledge"
INTENT = "intent"
ROUTES = (KNOWLEDGE, INTENT, OUT_OF_SCOPE)
ACTIONS = ("answer", "respond", "flow", "handoff", "end")
"""What a bot does with an intent (`Intent.action`): one feature each for the top intent."""

Search = Callable[[str], list[Passage]]
"""The knowledge base's passages for a text, best first."""


@dataclass(frozen=True)
class _Ranked:
    """What the router reads of the classifier's ranking."""

    top: float
    out_of_scope: float
    margin: float
    action: str

    @property
    def scripted(self) -> float:
        return 0.0 if self.action == "answer" else 1.0


@dataclass(frozen=True)
class _Evidence:
    """What the router reads of the passages: the best one's similarity in meaning (cosine), the largest
    share of the message's words (stems) a passage has, and how far the best document stands ahead of the
    next one in meaning. Neither depends on the index engine (BM25 in memory, FTS5's BM25, PostgreSQL's
    `ts_rank` score on scales of their own) nor on the size of the corpus."""

    semantic: float
    lexical: float
    lead: float


def _ranked(ranking: Sequence[IntentPrediction], actions: dict[str, str]) -> _Ranked:
    in_scope = [p for p in ranking if p.name != OUT_OF_SCOPE]
    top = in_scope[0].confidence if in_scope else 0.0
    second = in_scope[1].confidence if len(in_scope) > 1 else 0.0
    out_of_scope = next((p.confidence for p in ranking if p.name == OUT_OF_SCOPE), 0.0)
    action = actions.get(in_scope[0].name, "answer") if in_scope else "answer"
    return _Ranked(top=top, out_of_scope=out_of_scope, margin=top - second, action=action)


def _evidence(text: str, passages: list[Passage]) -> _Evidence:
    semantic = max([0.0, *(p.semantic_score or 0.0 for p in passages)])
    asked = set(stems(text))
    lexical = (
        max(
            [
                0.0,
                *(len(asked & set(stems(f"{p.title} {p.heading} {p.text}"))) / len(asked) for p in passages),
            ]
        )
        if asked
        else 0.0
    )
    best = passages[0].document_id if passages else None
    other = max([0.0, *(p.semantic_score or 0.0 for p in passages if p.document_id != best)])
    return _Evidence(semantic=semantic, lexical=lexical, lead=min(max(semantic - other, 0.0), semantic))


def _row(ranked: _Ranked, evidence: _Evidence) -> list[float]:
    return [
        ranked.top,
        ranked.out_of_scope,
        ranked.margin,
        *(1.0 if ranked.action == name else 0.0 for name in ACTIONS),
        evidence.semantic,
        evidence.lexical,
        evidence.lead,
        evidence.semantic * ranked.scripted,
        ranked.top * ranked.scripted,
        evidence.semantic * ranked.out_of_scope,
    ]


def features(
    text: str, ranking: Sequence[IntentPrediction], actions: dict[str, str], passages: list[Passage]
) -> list[float]:
    """The router's view of one message: the classifier's ranking of it (top five, as `NluResult.ranking`)
    and the passages retrieval found for it."""
    return _row(_ranked(ranking, actions), _evidence(text, passages))


@dataclass
class Router:
    model: LogisticRegression
    actions: dict[str, str]
    """Each intent's action in the bot definition, as trained."""

    def route(self, text: str, ranking: Sequence[IntentPrediction], passages: list[Passage]) -> Routing:
        row = np.array([features(text, ranking, self.actions, passages)])
        with trusted_inputs():
            predicted = self.model.predict_proba(row)[0]
        probabilities = dict(zip(self.model.classes_, predicted, strict=True))
        return Routing(
            knowledge=round(float(probabilities.get(KNOWLEDGE, 0.0)), 4),
            intent=round(float(probabilities.get(INTENT, 0.0)), 4),
            out_of_scope=round(float(probabilities.get(OUT_OF_SCOPE, 0.0)), 4),
            document_id=passages[0].document_id if passages else None,
        )


@dataclass
class RoutingExample:
    """One held-out prediction to train the router on."""

    text: str
    ranking: list[IntentPrediction]
    passages: list[Passage]
    route: str


def route_of(intent: str, actions: dict[str, str]) -> str:
    """Where an example of `intent` should go: the knowledge base answers an intent whose action is
    `answer` (its examples are questions the articles answer)."""
    if intent == OUT_OF_SCOPE:
        return OUT_OF_SCOPE
    return KNOWLEDGE if actions.get(intent, "answer") == "answer" else INTENT


def ranking_of(
    labels: Sequence[str], probabilities: NDArray[np.float64], top: int = 5
) -> list[IntentPrediction]:
    """A classifier's row of probabilities as the parser reports it: the top five, rounded."""
    order = np.argsort(probabilities)[::-1][:top]
    return [IntentPrediction(name=labels[i], confidence=round(float(probabilities[i]), 4)) for i in order]


def fit_router(examples: list[RoutingExample], actions: dict[str, str]) -> Router | None:
    """The router fitted on held-out predictions; None unless every route has examples."""
    if {e.route for e in examples} != set(ROUTES):
        return None
    rows = np.array([features(e.text, e.ranking, actions, e.passages) for e in examples])
    # Balanced: out-of-scope examples are few beside the questions, and declining matters as much.
    model = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced")
    model.fit(rows, [e.route for e in examples])
    return Router(model=model, actions=dict(actions))


def train_router(
    classifier: IntentClassifier,
    texts: list[str],
    labels: list[str],
    vectors: NDArray[np.float32] | None,
    actions: dict[str, str],
    search: Search,
    *,
    out_of_fold: NDArray[np.float64] | None = None,
    folds: int = 3,
) -> Router | None:
    """Fit the router on held-out predictions of the bot's own examples (see the module's docstring);
    None when the examples are too few to hold any out, or cover too few routes. `out_of_fold`: the
    classifier's held-out probabilities of `texts`, when the threshold's tuning made them already."""
    if out_of_fold is None:
        out_of_fold = out_of_fold_probabilities(classifier, texts, labels, vectors, folds=folds)
    if out_of_fold is None:
        return None
    found: dict[str, list[Passage]] = {}

    def passages(text: str) -> list[Passage]:
        if text not in found:
            found[text] = search(text)
        return found[text]

    examples = [
        RoutingExample(text, ranking_of(classifier.labels, row), passages(text), route_of(label, actions))
        for text, label, row in zip(texts, labels, out_of_fold, strict=True)
    ]
    known = np.array(labels)
    for intent in sorted(set(labels)):
        if route_of(intent, actions) != KNOWLEDGE:
            continue
        kept = np.flatnonzero(known != intent)
        if len(set(known[kept])) < 2:
            continue
        without = IntentClassifier(
            use_embeddings=classifier.use_embeddings,
            c=classifier.c,
            embedding_weight=classifier.embedding_weight,
        ).fit([texts[i] for i in kept], [labels[i] for i in kept], None if vectors is None else vectors[kept])
        held = np.flatnonzero(known == intent)
        probabilities = without.probabilities(
            [texts[i] for i in held], None if vectors is None else vectors[held]
        )
        examples += [
            RoutingExample(texts[i], ranking_of(without.labels, row), passages(texts[i]), KNOWLEDGE)
            for i, row in zip(held, probabilities, strict=True)
        ]
    return fit_router(examples, actions)

"""Sentiment from VADER, a lexicon and rule model made for short, informal text."""

from __future__ import annotations

from functools import lru_cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from dialogue.model.contracts import Sentiment

# VADER's own recommended cut-offs on its compound score.
POSITIVE, NEGATIVE = 0.05, -0.05


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> Sentiment:
    score = float(_analyzer().polarity_scores(text)["compound"])
    label = "positive" if score >= POSITIVE else "negative" if score <= NEGATIVE else "neutral"
    return Sentiment(label=label, score=round(score, 4))

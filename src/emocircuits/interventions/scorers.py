"""Scorers of generated text that do not depend on the steered model.

- :func:`vader`: VADER compound sentiment (Hutto & Gilbert 2014; the ``vadersentiment``
  package ships its lexicon), in [-1, 1];
- :func:`textblob_polarity`: TextBlob's polarity (the lexicon of the Pattern library,
  shipped inside the ``textblob`` wheel; no NLTK corpora), in [-1, 1]: the second judge of
  tone, independent of VADER's lexicon and rules, reported next to it and never used to
  choose a steering setting;
- :func:`nrc_counts`: NRC Emotion Lexicon (Mohammad & Turney 2013) word counts per
  category (anger, fear, joy, sadness, trust, positive, ...), from the lexicon file the
  ``nrclex`` package ships (read as JSON; nrclex's own TextBlob-based tokenising and
  NLTK data are not used);
- :func:`marker_rate`: whether a text contains a marker word of an emotion (:data:`MARKERS`,
  matched on lowercase word prefixes, so ``apolog`` matches apologise / apologize /
  apology);
- fluency: :func:`distinct_n` (share of distinct word n-grams over a set of texts) and
  :func:`repetition` (share of a text's word trigrams that already occurred in it).

Words are split by the project (:func:`words`): lowercase runs of letters and apostrophes,
so nothing needs NLTK data.

>>> round(float(vader(["Thank you, this is wonderful!"])[0]), 2) > 0.5
True
>>> marker_rate(["I'm so sorry about that.", "Fine."], "apology").tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np

from emocircuits.errors import DataError

MARKERS: dict[str, tuple[str, ...]] = {
    "gratitude": ("thank", "grateful", "gratitude", "appreciat", "thankful", "indebted"),
    "apology": ("sorry", "apolog", "forgive", "regret", "my fault", "my bad", "pardon"),
    "anger": (
        "angry",
        "anger",
        "furious",
        "hate",
        "rage",
        "outrag",
        "annoy",
        "livid",
        "infuriat",
        "mad at",
        "sick of",
        "fed up",
    ),
}
"""Emotion-marker word prefixes (two-word entries match as a phrase)."""

_WORD = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
    """Lowercase words (letters and apostrophes); the project's own tokenizer."""
    return _WORD.findall(text.lower())


@cache
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score of each text."""
    a = _analyzer()
    return np.array([a.polarity_scores(t)["compound"] for t in texts], dtype=float)


def textblob_polarity(texts: Sequence[str]) -> np.ndarray:
    """TextBlob polarity of each text (-1 negative to 1 positive; 0 where no word of its
    lexicon occurs). Reads only the lexicon inside the ``textblob`` package (offline).

    >>> textblob_polarity(["Thank you, this is wonderful!", "The bus is at noon."]).tolist()
    [1.0, 0.0]
    """
    from textblob.en import sentiment

    return np.array([sentiment(t)[0] for t in texts], dtype=float)


NRC_CATEGORIES = (
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "negative",
    "positive",
    "sadness",
    "surprise",
    "trust",
)
"""The NRC Emotion Lexicon's eight emotions and two sentiments."""

_SUFFIXES = ("'s", "s", "es", "ed", "d", "ing", "ly")


@cache
def _nrc() -> dict[str, frozenset[str]]:
    import json
    from importlib import resources

    raw = json.loads(resources.files("nrclex.data").joinpath("nrc_en.json").read_text("utf-8"))
    return {w: frozenset(cats) for w, cats in raw.items()}


def _nrc_lookup(word: str, lex: dict[str, frozenset[str]]) -> frozenset[str]:
    """The word's NRC categories; if it is not in the lexicon, those of the word with one
    plain suffix (``'s s es ed d ing ly``) removed, tried in that order."""
    if word in lex:
        return lex[word]
    for suf in _SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= 3 and word[: -len(suf)] in lex:
            return lex[word[: -len(suf)]]
    return frozenset()


def nrc_counts(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per NRC category, how many words of each text carry it (a word can carry several).

    >>> c = nrc_counts(["I am furious and angry.", "The bus is late."])
    >>> c["anger"].tolist(), c["joy"].tolist()
    ([2.0, 0.0], [0.0, 0.0])
    """
    lex = _nrc()
    out = {c: np.zeros(len(texts)) for c in NRC_CATEGORIES}
    for i, t in enumerate(texts):
        for w in words(t):
            for c in _nrc_lookup(w, lex):
                out[c][i] += 1
    return out


def marker_rate(texts: Sequence[str], emotion: str) -> np.ndarray:
    """1.0 where a text contains a marker of ``emotion``, else 0.0."""
    if emotion not in MARKERS:
        raise DataError(f"no marker words for {emotion!r} (known: {', '.join(MARKERS)})")
    out = []
    for t in texts:
        ws = words(t)
        joined = " " + " ".join(ws) + " "
        hit = any(
            (f" {m}" in joined) if " " in m else any(w.startswith(m) for w in ws)
            for m in MARKERS[emotion]
        )
        out.append(float(hit))
    return np.array(out)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams of ``texts`` (1.0: no n-gram repeats)."""
    grams = [
        tuple(ws[i : i + n]) for t in texts for ws in [words(t)] for i in range(len(ws) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition(text: str, n: int = 3) -> float:
    """Share of a text's word n-grams that already occurred earlier in it (0: none)."""
    ws = words(text)
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def _markers(texts: Sequence[str]) -> dict[str, np.ndarray]:
    return {f"marker_{e}": marker_rate(texts, e) for e in MARKERS}


def _nrc_columns(texts: Sequence[str]) -> dict[str, np.ndarray]:
    return {f"nrc_{c}": v for c, v in nrc_counts(texts).items()}


SCORERS: dict[str, Callable[[Sequence[str]], dict[str, np.ndarray]]] = {
    "vader": lambda texts: {"vader": vader(texts)},
    "textblob": lambda texts: {"textblob": textblob_polarity(texts)},
    "markers": _markers,
    "nrc": _nrc_columns,
}
"""Every scorer of steered text: name -> function from texts to named per-text columns.
Each column becomes a field of every steering row (``rows.jsonl``). A new scorer is one
function added here.

>>> sorted(score_texts(["Thank you so much!"]))[:3]
['marker_anger', 'marker_apology', 'marker_gratitude']
"""


def score_texts(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Every column of every scorer in :data:`SCORERS`, in registry order."""
    out: dict[str, np.ndarray] = {}
    for scorer in SCORERS.values():
        out.update(scorer(texts))
    return out

"""The logit-difference readout shared by patching, ablation and head tests.

A prompt is followed by a short **cue** (``" I feel"`` by default) and the model's next-token
logits are read at the cue's last token. The metric for an emotion is

    LD = mean logit of the emotion's feeling words - mean logit of the reference words

- feeling words (:data:`FEELING_WORDS`): the adjectives that complete "I feel ..." with the
  emotion (grateful, sorry, angry, ...); only words that are **one token** with a leading
  space in the model's tokenizer are used (multi-token words would be read by their first
  piece, which is often a generic fragment);
- reference words (:data:`REFERENCE_WORDS`): frequent function words (like, that, the,
  ...), a baseline that cancels the logit shift and the overall confidence of the run.

An emotion prompt gives a larger LD than a neutral one; patching and ablation report how
much of that gap they recover or remove.

>>> sorted(FEELING_WORDS)
['anger', 'apology', 'gratitude']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emocircuits.errors import DataError

CUE = " I feel"
"""Appended to every prompt before the readout (``readout_texts``)."""

FEELING_WORDS: dict[str, tuple[str, ...]] = {
    "gratitude": ("grateful", "thankful", "blessed", "appreciated", "indebted", "lucky"),
    "apology": ("sorry", "guilty", "ashamed", "terrible", "awful", "bad", "regret"),
    "anger": ("angry", "furious", "mad", "annoyed", "frustrated", "outraged", "livid"),
}
REFERENCE_WORDS: tuple[str, ...] = ("like", "that", "the", "it", "a", "so", "very", "as")


@dataclass(frozen=True)
class Readout:
    """Token ids of one emotion's feeling words and of the reference words."""

    emotion: str
    emotion_ids: tuple[int, ...]
    reference_ids: tuple[int, ...]
    emotion_words: tuple[str, ...]
    cue: str = CUE

    def meta(self) -> dict[str, Any]:
        return {
            "emotion": self.emotion,
            "cue": self.cue,
            "emotion_words": list(self.emotion_words),
            "reference_words": list(REFERENCE_WORDS),
            "metric": "mean logit(feeling words) - mean logit(reference words), next token "
            "after the cue",
        }


def _single_tokens(tokenizer: Any, ws: Sequence[str]) -> tuple[list[int], list[str]]:
    ids, kept = [], []
    for w in ws:
        t = tokenizer.encode(" " + w, add_special_tokens=False)
        if len(t) == 1 and t[0] not in ids:
            ids.append(t[0])
            kept.append(w)
    return ids, kept


def readout(tokenizer: Any, emotion: str, cue: str = CUE) -> Readout:
    """The :class:`Readout` of ``emotion`` for this tokenizer.

    >>> r = readout(lm.tokenizer, "gratitude")  # doctest: +SKIP
    >>> r.emotion_words  # doctest: +SKIP
    ('grateful', 'thankful', 'blessed', ...)
    """
    if emotion not in FEELING_WORDS:
        raise DataError(
            f"no feeling words for {emotion!r} (known: {', '.join(FEELING_WORDS)}); "
            "the logit-difference readout needs them"
        )
    ids, kept = _single_tokens(tokenizer, FEELING_WORDS[emotion])
    ref, _ = _single_tokens(tokenizer, REFERENCE_WORDS)
    if not ids or not ref:
        raise DataError(
            f"the tokenizer splits every {'feeling' if not ids else 'reference'} word of "
            f"{emotion!r} into several tokens; no logit-difference readout possible"
        )
    return Readout(emotion, tuple(ids), tuple(ref), tuple(kept), cue)


def readout_texts(texts: Sequence[str], cue: str = CUE) -> list[str]:
    """Each text with the cue appended (a space is not doubled)."""
    return [t.rstrip() + cue for t in texts]


def readout_columns(readouts: Iterable[Readout | None]) -> list[int]:
    """The vocabulary ids the ``readouts`` read (sorted, each once; None entries skipped):
    the only unembedding rows a logit difference needs.

    >>> readout_columns([Readout("a", (7, 3), (5,), ("x", "y"))])
    [3, 5, 7]
    """
    return sorted(
        {i for r in readouts if r is not None for i in (*r.emotion_ids, *r.reference_ids)}
    )


def logit_diff(logits: Any, r: Readout, columns: Sequence[int] | None = None) -> np.ndarray:
    """LD of each row of ``logits`` (``[..., vocab]`` array or tensor, the readout
    position's next-token logits; with ``columns``, ``[..., len(columns)]``: the logits of
    those vocabulary ids only, e.g. :func:`readout_columns`).

    >>> float(logit_diff(np.array([1.0, 4.0, 2.0]), Readout("a", (9,), (7, 8), ("x",)),
    ...                  columns=[7, 8, 9]))   # 2 - (1 + 4) / 2
    -0.5
    """
    x = np.asarray(logits.float() if hasattr(logits, "float") else logits, dtype=np.float64)
    if columns is None:
        emo, ref = list(r.emotion_ids), list(r.reference_ids)
    else:
        at = {c: j for j, c in enumerate(columns)}
        emo, ref = [at[i] for i in r.emotion_ids], [at[i] for i in r.reference_ids]
    return x[..., emo].mean(-1) - x[..., ref].mean(-1)

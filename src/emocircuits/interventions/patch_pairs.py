"""Matched pairs for activation patching: each emotion prompt with a neutral prompt of the
same token length, so that a position counted from the end is the same position in both
(the rule, with an example: "Matched pairs" in :mod:`~emocircuits.interventions.patching`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emocircuits.errors import DataError


@dataclass(frozen=True)
class Pair:
    """An emotion prompt and a neutral prompt of the same token length (row indices into
    the texts given to :func:`~emocircuits.interventions.patching.run_patching`)."""

    emotion: str
    emotion_row: int
    neutral_row: int
    n_tokens: int


def match_pairs(
    labels: Sequence[str],
    lengths: Sequence[int],
    emotions: Sequence[str],
    *,
    baseline: str = "neutral",
    n_pairs: int | None = None,
    min_pairs: int = 5,
    seed: int = 0,
) -> tuple[list[Pair], dict[str, int]]:
    """Pairs of equal token length per emotion (the rule in the module docstring) and the
    number of candidates found per emotion; at most ``n_pairs`` per emotion (None: all)."""
    lab = np.asarray(labels)
    n = np.asarray(lengths)
    if lab.shape != n.shape:
        raise ValueError("labels and lengths differ in length")
    if not (lab == baseline).any():
        raise DataError(f"no {baseline!r} prompts to pair the emotion prompts with")
    rng = np.random.default_rng(seed)
    pairs: list[Pair] = []
    found: dict[str, int] = {}
    for emo in emotions:
        if not (lab == emo).any():
            raise DataError(f"no {emo!r} prompts in the data (labels: {sorted(set(labels))})")
        cand: list[Pair] = []
        for t in sorted(set(n[lab == emo].tolist()) & set(n[lab == baseline].tolist())):
            er = rng.permutation(np.flatnonzero((lab == emo) & (n == t)))
            nr = rng.permutation(np.flatnonzero((lab == baseline) & (n == t)))
            cand += [Pair(emo, int(a), int(b), int(t)) for a, b in zip(er, nr, strict=False)]
        found[emo] = len(cand)
        if len(cand) < min_pairs:
            raise DataError(
                f"only {len(cand)} {emo!r} prompts have a {baseline!r} prompt of the same "
                f"token length; patching needs at least {min_pairs} pairs (use more prompts)"
            )
        if n_pairs is not None and len(cand) > n_pairs:
            cand = [cand[i] for i in sorted(rng.choice(len(cand), n_pairs, replace=False))]
        pairs += cand
    return pairs, found

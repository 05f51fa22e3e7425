"""A first look at an activation folder: per layer, how far each emotion's mean is from the
baseline class, and how well a nearest-class-mean classifier separates the classes.

This is the quick check ``make demo`` prints; the full geometry (directions with intervals,
stability, subspaces, probes) lives in the rest of this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emocircuits.errors import DataError
from emocircuits.geometry.probes import cross_validated


@dataclass
class LayerSummary:
    """``diff_norms[label][l]``: L2 norm of mean(label) - mean(baseline) at layer ``l``;
    ``ncm_accuracy[l]``: k-fold nearest-class-mean accuracy on raw activations,
    ``ncm_accuracy_std[l]``: the same after per-dimension standardisation (fitted on the
    training folds); ``chance`` = 1 / classes."""

    layers: list[int]
    labels: list[str]
    baseline: str
    diff_norms: dict[str, np.ndarray]
    ncm_accuracy: np.ndarray
    ncm_accuracy_std: np.ndarray
    chance: float
    folds: int
    provenance: dict[str, Any] = field(default_factory=dict)


def ncm_accuracy(
    x: np.ndarray,
    labels: np.ndarray,
    k: int = 5,
    seed: int = 0,
    *,
    standardize: bool = False,
) -> np.ndarray:
    """k-fold nearest-class-mean accuracy for every layer at once.

    ``x``: ``[n, layers, width]``. Returns ``[layers]``. With ``standardize``, each dimension
    is z-scored with the training fold's mean and std first, so that a few huge "rogue"
    dimensions of the residual stream do not decide every distance.

    >>> x = np.array([[[0.0]], [[0.1]], [[1.0]], [[1.1]]]); y = np.array([0, 0, 1, 1])
    >>> ncm_accuracy(x, y, k=2).tolist()
    [1.0]
    """
    return cross_validated(x, labels, "ncm", k=k, seed=seed, standardize=standardize)


def summarize(
    x: np.ndarray,
    labels: list[str],
    *,
    layers: list[int] | None = None,
    baseline: str = "neutral",
    folds: int = 5,
) -> LayerSummary:
    """Per-layer mean-difference norms and NCM accuracy for activations ``[n, L, w]``."""
    lab = np.asarray(labels)
    uniq = list(dict.fromkeys(labels))
    if baseline not in uniq:
        raise DataError(f"baseline label {baseline!r} not in the labels ({', '.join(uniq)})")
    small = [u for u in uniq if (lab == u).sum() < folds]
    if small:
        raise DataError(
            f"label {small[0]!r} has {(lab == small[0]).sum()} examples; {folds}-fold "
            f"accuracy needs at least {folds} per label"
        )
    base = x[lab == baseline].mean(0)
    norms = {u: np.linalg.norm(x[lab == u].mean(0) - base, axis=-1) for u in uniq if u != baseline}
    return LayerSummary(
        layers=layers if layers is not None else list(range(x.shape[1])),
        labels=uniq,
        baseline=baseline,
        diff_norms=norms,
        ncm_accuracy=ncm_accuracy(x, lab, folds),
        ncm_accuracy_std=ncm_accuracy(x, lab, folds, standardize=True),
        chance=1.0 / len(uniq),
        folds=folds,
    )

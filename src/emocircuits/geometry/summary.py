"""A first look at an activation folder: per layer, how far each emotion's mean is from the
baseline class, and how well a nearest-class-mean classifier separates the classes.

This is the quick check ``make demo`` prints; the full geometry (directions with intervals,
stability, subspaces, probes) lives in the rest of this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from emocircuits.capture.store import ActivationStore, as_store
from emocircuits.errors import DataError
from emocircuits.geometry.probes import cross_validated
from emocircuits.results import Result


@dataclass(repr=False)
class LayerSummary(Result):
    """``diff_norms[label][l]``: L2 norm of mean(label) - mean(baseline) at layer ``l``;
    ``ncm_accuracy[l]``: k-fold nearest-class-mean accuracy on raw activations,
    ``ncm_accuracy_std[l]``: the same after per-dimension standardisation (fitted on the
    training folds); ``chance`` = 1 / classes. ``rows()``: one row per layer (the table
    ``emocircuits summary`` prints; that command writes no file, so there is no ``save``)."""

    command: ClassVar[str] = "summary"

    layers: list[int]
    labels: list[str]
    baseline: str
    diff_norms: dict[str, np.ndarray]
    ncm_accuracy: np.ndarray
    ncm_accuracy_std: np.ndarray
    chance: float
    folds: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"layer": layer, **{lab: float(v[i]) for lab, v in self.diff_norms.items()},
             "ncm_raw": float(self.ncm_accuracy[i]), "ncm_std": float(self.ncm_accuracy_std[i])}
            for i, layer in enumerate(self.layers)
        ]  # fmt: skip

    def title(self) -> str:
        p = self.provenance
        where = " · ".join(str(p[k]) for k in ("model", "dataset", "site", "position") if k in p)
        return f"LayerSummary: {where or f'{len(self.layers)} layers'} (chance {self.chance:.2f})"


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


def layer_summary(
    acts: ActivationStore | str | Path,
    *,
    site: str = "resid",
    position: str | None = None,
    baseline: str = "neutral",
    folds: int = 5,
) -> LayerSummary:
    """:func:`summarize` of a store at ``site`` / ``position`` (default: the store's
    ``default_position``), with the model, dataset, site and position in ``provenance``.

    >>> layer_summary(load_activations("runs/base")).rows()[0]  # doctest: +SKIP
    """
    acts = as_store(acts)
    position = position or acts.default_position
    s = summarize(
        acts.get(site, position), acts.labels, layers=acts.layers(site), baseline=baseline,
        folds=folds,
    )  # fmt: skip
    m = acts.manifest
    s.provenance = {
        "model": m["model"].get("name"),
        "dataset": m["dataset"].get("source"),
        "site": site,
        "position": position,
    }
    return s

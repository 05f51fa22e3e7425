"""Within-model geometry with uncertainty: cosine similarity between emotion directions,
direction norms and distances between class means, each with a stratified bootstrap
percentile interval over prompts; split-half stability of each direction.

Directions are contrasts over class means (``mean_diff`` against the baseline class,
``one_vs_rest``; ``raw_mean`` reproduces the pilot's uncontrasted numbers), recomputed
inside every bootstrap replicate from resampled class means.

Norms and distances are *debiased*: the plain norm of a difference of noisy class means is
biased upward by ``sum_c a_c^2 tr(S_c) / n_c`` (large with 500+ dimensions and 50 prompts
a class), and its bootstrap replicates twice over, so a plain percentile interval can miss
its own estimate. The estimate subtracts that term (``ddof=1``); each replicate subtracts
it too, plus its plug-in version (``ddof=0``) for the noise that resampling adds on top,
so the replicates centre on the debiased estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from emocircuits.errors import DataError
from emocircuits.geometry.directions import contrast_coefficients
from emocircuits.geometry.stats import (
    bootstrap_weights,
    class_means,
    percentile_ci,
    split_halves,
)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-30)


def _debiased_norm(sq: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(sq - noise, 0.0))


@dataclass
class Geometry:
    """Per-layer estimates with bootstrap intervals. Keys: an emotion, or an ``(a, b)``
    pair; values ``[L]`` arrays (``*_lo`` / ``*_hi``: the interval)."""

    layers: list[int]
    method: str
    baseline: str
    level: float
    n_boot: int
    cos: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    cos_lo: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    cos_hi: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    norm: dict[str, np.ndarray] = field(default_factory=dict)
    norm_lo: dict[str, np.ndarray] = field(default_factory=dict)
    norm_hi: dict[str, np.ndarray] = field(default_factory=dict)
    dist: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    dist_lo: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    dist_hi: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows in the shape of the pilot's pairwise table, plus interval columns."""
        out = []
        for (a, b), v in self.cos.items():
            d = self.dist[(a, b)]
            for i, layer in enumerate(self.layers):
                out.append(
                    {
                        "layer": layer,
                        "emotion_1": a,
                        "emotion_2": b,
                        "cosine": float(v[i]),
                        "ci_low": float(self.cos_lo[(a, b)][i]),
                        "ci_high": float(self.cos_hi[(a, b)][i]),
                        "class_mean_distance": float(d[i]),
                        "distance_ci_low": float(self.dist_lo[(a, b)][i]),
                        "distance_ci_high": float(self.dist_hi[(a, b)][i]),
                        "method": self.method,
                        "baseline": self.baseline,
                        "ci_level": self.level,
                        "n_boot": self.n_boot,
                    }
                )
        return out


def geometry(
    x: np.ndarray,
    labels: list[str],
    *,
    layers: list[int] | None = None,
    method: str = "mean_diff",
    baseline: str = "neutral",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Geometry:
    """Cosines between emotion directions, (debiased) direction norms and class-mean
    distances per layer, with stratified-bootstrap percentile intervals. ``x``: ``[n, L, W]``.
    """
    lab = np.asarray(labels)
    classes = list(dict.fromkeys(labels))
    if baseline not in classes:
        raise DataError(f"baseline label {baseline!r} not in the labels ({', '.join(classes)})")
    counts = np.array([(lab == c).sum() for c in classes], dtype=float)
    groups = [x[lab == c].astype(np.float64) for c in classes]
    full = np.stack([g.mean(0) for g in groups])  # [C, L, W]
    # summed per-dimension variance of each class per layer, [C, L]
    var1 = np.stack([g.var(0, ddof=1).sum(-1) if len(g) > 1 else 0 * g[0, :, 0] for g in groups])
    var0 = np.stack([g.var(0).sum(-1) for g in groups])
    boot = class_means(x, bootstrap_weights(lab, n_boot, seed, classes))  # [B, C, L, W]
    coef = contrast_coefficients(classes, counts, baseline, method)
    d_full = {e: np.einsum("c,clw->lw", a, full) for e, a in coef.items()}
    d_boot = {e: np.einsum("c,bclw->blw", a, boot) for e, a in coef.items()}
    g = Geometry(layers or list(range(x.shape[1])), method, baseline, level, n_boot)
    for e, a in coef.items():
        w = a**2 / counts
        g.norm[e] = _debiased_norm((d_full[e] ** 2).sum(-1), w @ var1)
        rep = _debiased_norm((d_boot[e] ** 2).sum(-1), w @ var0 + w @ var1)
        g.norm_lo[e], g.norm_hi[e] = percentile_ci(rep, level)
    for a, b in combinations(coef, 2):
        g.cos[(a, b)] = _cos(d_full[a], d_full[b])
        g.cos_lo[(a, b)], g.cos_hi[(a, b)] = percentile_ci(_cos(d_boot[a], d_boot[b]), level)
    for a, b in combinations(classes, 2):
        i, j = classes.index(a), classes.index(b)
        n1 = var1[i] / counts[i] + var1[j] / counts[j]
        n0 = var0[i] / counts[i] + var0[j] / counts[j]
        g.dist[(a, b)] = _debiased_norm(((full[i] - full[j]) ** 2).sum(-1), n1)
        rep = _debiased_norm(((boot[:, i] - boot[:, j]) ** 2).sum(-1), n0 + n1)
        g.dist_lo[(a, b)], g.dist_hi[(a, b)] = percentile_ci(rep, level)
    return g


def split_half_stability(
    x: np.ndarray,
    labels: list[str],
    *,
    method: str = "mean_diff",
    baseline: str = "neutral",
    n_splits: int = 100,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``{emotion: [n_splits, L]}``: cosine between the direction estimated on one half of
    the prompts and on the other (halves balanced within each class)."""
    lab = np.asarray(labels)
    classes = list(dict.fromkeys(labels))
    counts = np.array([(lab == c).sum() for c in classes], dtype=float)
    halves = split_halves(lab, n_splits, seed).astype(np.float32)  # [S, n]
    onehot = np.stack([(lab == c) for c in classes]).astype(np.float32)  # [C, n]
    parts = []
    for part in (halves, 1 - halves):
        w = part[:, None, :] * onehot[None]  # [S, C, n]
        parts.append(class_means(x, w / w.sum(-1, keepdims=True)))  # [S, C, L, W]
    out = {}
    for e, a in contrast_coefficients(classes, counts, baseline, method).items():
        d1 = np.einsum("c,sclw->slw", a, parts[0])
        d2 = np.einsum("c,sclw->slw", a, parts[1])
        out[e] = _cos(d1, d2)
    return out

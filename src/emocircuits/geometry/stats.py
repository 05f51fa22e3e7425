"""Resampling statistics, vectorised: stratified bootstrap of class means, percentile
intervals, split halves. No Python loop over resamples where a matrix product does.

>>> w = bootstrap_weights(np.array(["a", "a", "b"]), n_boot=4, seed=0)
>>> w.shape, np.allclose(w.sum(-1), 1)   # per-class weights: each class sums to 1
((4, 2, 3), True)
"""

from __future__ import annotations

import numpy as np


def bootstrap_weights(
    labels: np.ndarray, n_boot: int = 1000, seed: int = 0, classes: list[str] | None = None
) -> np.ndarray:
    """``[n_boot, n_classes, n_rows]`` weights: row j's share in class c's resampled mean.
    Rows are resampled with replacement *within* each class (stratified bootstrap)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes = classes if classes is not None else list(dict.fromkeys(labels.tolist()))
    w = np.zeros((n_boot, len(classes), len(labels)), dtype=np.float32)
    for c, lab in enumerate(classes):
        idx = np.flatnonzero(labels == lab)
        m = len(idx)
        draws = rng.integers(0, m, size=(n_boot, m)) + m * np.arange(n_boot)[:, None]
        counts = np.bincount(draws.ravel(), minlength=n_boot * m).reshape(n_boot, m)
        w[:, c, idx] = counts / m
    return w


def class_means(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Resampled class means ``[n_boot, n_classes, *x.shape[1:]]`` from
    :func:`bootstrap_weights` (one matrix product)."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    n_boot, n_classes, _ = weights.shape
    out = np.empty((n_boot, n_classes, flat.shape[1]), dtype=np.float32)
    for c in range(n_classes):  # one GEMM per class over its own rows only
        rows = np.flatnonzero(weights[:, c].any(0))
        out[:, c] = weights[:, c, rows] @ flat[rows]
    return out.reshape(n_boot, n_classes, *x.shape[1:])


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 (NaN replicates, undefined statistics, ignored)."""
    a = (1 - level) / 2
    q = np.nanquantile if np.isnan(samples).any() else np.quantile  # nanquantile is slow
    return q(samples, a, axis=0), q(samples, 1 - a, axis=0)


def split_halves(labels: np.ndarray, n_splits: int = 100, seed: int = 0) -> np.ndarray:
    """``[n_splits, n_rows]`` booleans: True = first half, balanced within every class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    out = np.zeros((n_splits, len(labels)), dtype=bool)
    for lab in dict.fromkeys(labels.tolist()):
        idx = np.flatnonzero(labels == lab)
        for s in range(n_splits):
            out[s, rng.permutation(idx)[: len(idx) // 2]] = True
    return out


def bootstrap_counts(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]``: how often each of ``n`` rows is drawn in each plain (not
    stratified) bootstrap resample; every row of the result sums to ``n``. A resampled sum
    of paired per-row values ``x [n, ...]`` is ``counts @ x``, so every statistic built
    from sums (means, ratios of means) shares one resampling.

    >>> c = bootstrap_counts(5, n_boot=3, seed=0)
    >>> c.shape, c.sum(1).tolist()
    ((3, 5), [5.0, 5.0, 5.0])
    """
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def bootstrap_mean_ci(
    x: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean of ``x`` over its first axis (rows
    resampled with :func:`bootstrap_counts`).

    >>> lo, hi = bootstrap_mean_ci(np.array([1.0, 2.0, 3.0, 4.0]), n_boot=200)
    >>> bool(1.0 <= lo <= 2.5 <= hi <= 4.0)
    True
    """
    x = np.asarray(x, dtype=np.float64)
    means = (bootstrap_counts(len(x), n_boot, seed) / len(x)) @ x.reshape(len(x), -1)
    lo, hi = percentile_ci(means.reshape(n_boot, *x.shape[1:]), level)
    return lo, hi

"""Permutations and p-values shared by every cross-model null.

Random permutations are drawn all at once (``argsort`` of uniform numbers) from a seeded
generator, so the same seed gives the same nulls for a folder and its rotated copy.

>>> permutations(5, 3, seed=0).shape
(3, 5)
>>> float(perm_p(0.9, np.array([0.1, 0.2, 0.95])))  # (1 + 1) / (1 + 3)
0.5
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def permutations(n: int, n_perm: int, seed: int = 0) -> np.ndarray:
    """``[n_perm, n]`` independent uniform permutations of ``range(n)``."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n_perm, n)), axis=1)


def relabelings(c: int, n_perm: int, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Permutations of ``c`` class labels: all ``c!`` of them when that is at most
    ``n_perm`` (an exact test; the identity comes first), otherwise ``n_perm`` random ones.
    Returns ``(perms [P, c], exact)``.

    >>> relabelings(3, 1000)[0].shape, relabelings(3, 1000)[1]
    ((6, 3), True)
    """
    if math.factorial(c) <= n_perm:
        return np.array(list(itertools.permutations(range(c)))), True
    return permutations(c, n_perm, seed), False


def perm_p(observed: np.ndarray | float, null: np.ndarray, exact: bool = False) -> np.ndarray:
    """One-sided permutation p-value that ``observed`` is larger than ``null`` (axis 0).

    Random permutations: ``(1 + #{null >= observed}) / (1 + P)`` (never 0). Exact tests
    (``null`` holds every permutation, the observed one included): ``#{null >= obs} / P``.
    NaN where the observed value is NaN."""
    obs = np.asarray(observed, dtype=float)
    tol = 1e-6 * np.maximum(1.0, np.abs(obs))  # the identity replicate equals obs exactly
    hits = (null >= obs - tol).sum(0)
    p = hits / len(null) if exact else (1.0 + hits) / (1.0 + len(null))
    return np.where(np.isnan(obs), np.nan, p)


def null_band(null: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` range of a null over axis 0 (NaN replicates ignored)."""
    a = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        if np.isnan(null).any():
            return np.nanquantile(null, a, axis=0), np.nanquantile(null, 1 - a, axis=0)
        return np.quantile(null, a, axis=0), np.quantile(null, 1 - a, axis=0)

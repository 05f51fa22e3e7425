"""How large an intervention's effect is, and how it stands against random interventions:
the logit-difference gap between emotion and neutral prompts, the share of a gap that an
ablation removes (:func:`removed_fraction`) or a patch recovers
(:func:`recovered_fraction`), and an effect's place among the draws of a random null
(:func:`empirical_p`, :func:`null_summary`). Used by
:mod:`~emocircuits.interventions.patching`, :mod:`~emocircuits.interventions.ablation` and
:mod:`~emocircuits.interventions.heads`.

>>> removed_fraction(0.9, 0.4, 0.25)   # (0.9 - 0.4) / (0.9 - 0.25)
0.7692307692307692
>>> empirical_p(0.5, np.array([0.1, 0.6, 0.2, 0.3]))   # (1 + 1) / (1 + 4)
0.4
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from emocircuits.geometry.stats import bootstrap_counts, bootstrap_weights


def rounded(v: Any, nd: int = 6) -> float | None:
    """``v`` rounded to ``nd`` decimals for a table; None for None, NaN and infinities."""
    if v is None:
        return None
    v = float(v)
    return None if not np.isfinite(v) else round(v, nd)


# ------------------------------------------------------------------------------------ gaps
def gap(ld: np.ndarray, labels: Sequence[str], emotion: str, baseline: str = "neutral") -> float:
    """``mean LD(emotion prompts) - mean LD(baseline prompts)``."""
    lab = np.asarray(labels)
    return float(ld[lab == emotion].mean() - ld[lab == baseline].mean())


def gap_weights(
    labels: np.ndarray, emotion: str, baseline: str, n_boot: int, seed: int
) -> np.ndarray:
    """``[n_boot, 2, n]`` bootstrap weights of the emotion's and the baseline's mean (rows
    resampled within each class): ``w[:, 0] @ ld - w[:, 1] @ ld`` are resampled gaps."""
    return bootstrap_weights(labels, n_boot, seed, classes=[emotion, baseline]).astype(float)


def removed_fraction(before: Any, after: Any, floor: Any = 0.0) -> Any:
    """Share of ``before - floor`` that is gone: ``(before - after) / (before - floor)``
    (LD gap: floor 0; probe accuracy: floor = chance). NaN where ``before <= floor``."""
    b, a, f = (np.asarray(v, dtype=np.float64) for v in (before, after, floor))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(b - f > 0, (b - a) / (b - f), np.nan)
    return float(out) if out.ndim == 0 else out


def recovered_fraction(
    patched: np.ndarray, emotion: np.ndarray, neutral: np.ndarray, *,
    n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Recovered fraction ``sum(LD_p - LD_n) / sum(LD_e - LD_n)`` over the pairs (last
    axis) where ``patched`` is finite, with a percentile bootstrap interval over pairs
    (the same resampled pairs for every cell). ``patched``: ``[..., P]``; ``emotion``,
    ``neutral``: ``[P]``. Returns ``(value, lo, hi)`` of shape ``patched.shape[:-1]``.

    >>> v, lo, hi = recovered_fraction(np.array([1.0, 3.0]), np.array([2.0, 4.0]),
    ...                                np.array([0.0, 0.0]), n_boot=50)
    >>> float(v)   # (1 + 3) / (2 + 4)
    0.6666666666666666
    """
    p = np.asarray(patched, dtype=np.float64)
    e, n = np.asarray(emotion, dtype=np.float64), np.asarray(neutral, dtype=np.float64)
    mask = np.isfinite(p)
    num = np.where(mask, p - n, 0.0)
    den = np.where(mask, e - n, 0.0)
    w = bootstrap_counts(p.shape[-1], n_boot, seed)  # times each pair is drawn
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells without pairs stay NaN
        value = np.where(mask.any(-1), num.sum(-1) / den.sum(-1), np.nan)
        boots = (num @ w.T) / (den @ w.T)  # [..., n_boot]
        boots[~np.isfinite(boots)] = np.nan
        if n_boot == 0:
            return value, np.full(value.shape, np.nan), np.full(value.shape, np.nan)
        return value, np.nanquantile(boots, a, axis=-1), np.nanquantile(boots, 1 - a, axis=-1)


# ------------------------------------------------------------------------------ the null
def empirical_p(observed: float, null: np.ndarray, tol: float = 0.0) -> float:
    """One-sided p of an effect at least as large as ``observed`` among the null draws,
    counting the observation itself: ``(1 + #{null >= observed - tol}) / (1 + len(null))``
    over the finite draws (``tol``: a draw equal to the observation up to rounding counts).
    NaN without a finite observation or draw."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or not len(null):
        return float("nan")
    return float((1 + (null >= observed - tol).sum()) / (1 + len(null)))


def null_summary(value: float, null: np.ndarray) -> dict[str, Any]:
    """The null draws' mean, central 95% range and the empirical p of ``value`` (rounded;
    None without finite draws)."""
    fin = null[np.isfinite(null)]
    return {
        "null_mean": rounded(fin.mean()) if len(fin) else None,
        "null_95": [rounded(np.quantile(fin, 0.025)), rounded(np.quantile(fin, 0.975))]
        if len(fin)
        else None,
        "p": rounded(empirical_p(value, null)),
    }

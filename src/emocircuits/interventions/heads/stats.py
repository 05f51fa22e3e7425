"""Contrasts with bootstrap intervals, separation, and the ablation test statistic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emocircuits.errors import DataError
from emocircuits.geometry.stats import (
    bootstrap_mean_ci,
    bootstrap_weights,
    class_means,
    percentile_ci,
)
from emocircuits.interventions.effects import empirical_p


# --------------------------------------------------------------------------- statistics
@dataclass
class Contrast:
    """``value = emotion_mean - baseline_mean`` (any trailing shape) with a bootstrap
    percentile interval ``[lo, hi]`` over prompts (resampled within each class)."""

    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    emotion_mean: np.ndarray
    baseline_mean: np.ndarray
    n_emotion: int
    n_baseline: int


def contrast(
    values: np.ndarray,
    labels: Sequence[str],
    emotion: str,
    baseline: str = "neutral",
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Contrast:
    """Mean over ``emotion`` rows minus mean over ``baseline`` rows of ``values [n, ...]``.

    >>> c = contrast(np.array([3.0, 5.0, 1.0, 1.0]), ["a", "a", "neutral", "neutral"], "a")
    >>> float(c.value), float(c.lo) <= 3.0 <= float(c.hi)
    (3.0, True)
    """
    lab = np.asarray(labels)
    keep = (lab == emotion) | (lab == baseline)
    if not (lab == emotion).any() or not (lab == baseline).any():
        raise DataError(f"a contrast needs rows of both {emotion!r} and {baseline!r}")
    x, lab = np.asarray(values, np.float64)[keep], lab[keep]
    em, bm = x[lab == emotion].mean(0), x[lab == baseline].mean(0)
    wts = bootstrap_weights(lab, n_boot, seed, classes=[emotion, baseline])
    boot = class_means(x, wts)
    lo, hi = percentile_ci((boot[:, 0] - boot[:, 1]).astype(np.float64), level)
    return Contrast(
        em - bm, lo, hi, em, bm, int((lab == emotion).sum()), int((lab == baseline).sum())
    )


def separation(proj: np.ndarray, labels: Sequence[str], emotion: str, baseline: str) -> np.ndarray:
    """Cohen's d of ``proj [n, ...]`` between the emotion's and the baseline's rows: the
    difference of means over the pooled standard deviation (``ddof=1``).

    >>> round(float(separation(np.array([2.0, 4.0, 0.0, 2.0]), list("aann"), "a", "n")), 4)
    1.4142
    """
    lab = np.asarray(labels)
    a, b = proj[lab == emotion], proj[lab == baseline]
    pooled = np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2)
    return (a.mean(0) - b.mean(0)) / np.where(pooled > 0, pooled, np.nan)


@dataclass
class AblationStat:
    """Drops (unablated minus ablated, mean over prompts) of one measure."""

    top_drop: float
    top_lo: float
    top_hi: float
    random_mean: float
    random_lo: float
    random_hi: float
    p: float
    n_random: int


def ablation_stat(
    base: np.ndarray,
    top: np.ndarray,
    random: np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> AblationStat:
    """``base``, ``top`` ``[n]`` per-prompt values unablated and with the top-k heads
    ablated; ``random`` ``[draws, n]`` with random heads. The top-k interval resamples the
    prompts' paired drops; the random band is the percentile range over draws; ``p`` is
    one-sided: ``(1 + #draws with drop >= top drop) / (1 + draws)``
    (:func:`~emocircuits.interventions.effects.empirical_p`).

    >>> s = ablation_stat(np.ones(3), np.zeros(3), np.ones((4, 3)))
    >>> s.top_drop, s.random_mean, s.p
    (1.0, 0.0, 0.2)
    """
    base, top, random = (np.asarray(a, np.float64) for a in (base, top, random))
    drops = base - top
    lo, hi = bootstrap_mean_ci(drops, n_boot, level, seed)
    rd = (base[None] - random).mean(1) if random.size else np.array([])
    top_drop = float(drops.mean())
    if rd.size:
        rlo, rhi = percentile_ci(rd, level)
        p = empirical_p(top_drop, rd, tol=1e-12)
        rmean = float(rd.mean())
    else:
        rlo = rhi = rmean = p = float("nan")
    return AblationStat(top_drop, float(lo), float(hi), rmean, float(rlo), float(rhi), p, rd.size)

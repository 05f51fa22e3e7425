"""Within-model geometry with uncertainty: cosine similarity between emotion directions,
direction norms and distances between class means, each with a stratified bootstrap
percentile interval over prompts; split-half stability of each direction.

Directions are contrasts over class means (``mean_diff`` against the baseline class,
``one_vs_rest``; ``raw_mean`` reproduces the pilot's uncontrasted numbers), recomputed
inside every bootstrap replicate from resampled class means.

Norms, distances and cosines are *debiased*: the plain norm of a difference of noisy class means is
biased upward by ``sum_c a_c^2 tr(S_c) / n_c`` (large with 500+ dimensions and 50 prompts
a class), and its bootstrap replicates twice over, so a plain percentile interval can miss
its own estimate. The estimate subtracts that term (``ddof=1``); each replicate subtracts
it too, plus its plug-in version (``ddof=0``) for the noise that resampling adds on top,
so the replicates centre on the debiased estimate. Cosines subtract the same terms from
their dot product (``sum_c a_c b_c tr(S_c) / n_c``: two ``mean_diff`` directions share the
baseline mean's noise, which pulls the plain cosine toward +0.5 with small samples) and
from both norms. A direction not above its noise has an undefined cosine (NaN); a cosine
beyond +-1, or a row not ``reliable`` (a norm interval reaching 0), says the sample is too
small for that layer: the plain cosine (``cosine_plugin``) is reported next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from emocircuits.capture.store import ActivationStore, as_store
from emocircuits.errors import DataError
from emocircuits.geometry.directions import contrast_coefficients
from emocircuits.geometry.stats import (
    bootstrap_weights,
    class_means,
    percentile_ci,
    split_halves,
)
from emocircuits.results import Result


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-30)


def _debiased_norm(sq: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(sq - noise, 0.0))


def _inner_products(
    x: np.ndarray, weights: np.ndarray, full: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer inner products of class means: ``full·full`` ``[L, C, C]``, and for each
    bootstrap replicate (``weights`` ``[B, C, n]``) ``boot·boot`` and ``boot·full``
    ``[B, L, C, C]``, float64.

    With fewer rows than dimensions they come from the rows' Gram matrix per layer
    (``w G w^T``, no resampled means at all); otherwise from the resampled means."""
    import torch

    f = torch.from_numpy(np.ascontiguousarray(full.transpose(1, 0, 2), dtype=np.float64))
    ff = (f @ f.transpose(-1, -2)).numpy()
    n, width = x.shape[0], x.shape[-1]
    w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))  # [B, C, n]
    if 2 * n <= width:
        xl = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2), dtype=np.float32))
        gram = xl @ xl.transpose(-1, -2)  # [L, n, n]
        t = torch.einsum("bcn,lnm->lbcm", w, gram)  # [L, B, C, n]
        qb = torch.einsum("lbcm,bdm->blcd", t, w).double()
        h = xl @ f.float().transpose(-1, -2)  # [L, n, C]: each row against each class mean
        rb = torch.einsum("bcn,lnd->blcd", w, h).double()
        return ff, qb.numpy(), rb.numpy()
    # resampled class means laid out [B, L, C, W] (one GEMM per class over its own rows),
    # so that the inner products are one batched product over contiguous blocks
    n_boot, n_classes, _ = weights.shape
    flat = torch.from_numpy(np.ascontiguousarray(x.reshape(n, -1), dtype=np.float32))
    b = torch.empty(n_boot, x.shape[1], n_classes, width)
    for c in range(n_classes):
        rows = torch.from_numpy(np.flatnonzero(weights[:, c].any(0)))
        b[:, :, c, :] = (w[:, c, rows] @ flat[rows]).view(n_boot, x.shape[1], width)
    qb = (b @ b.transpose(-1, -2)).double()
    rb = (b @ f.float().transpose(-1, -2)).double()
    return ff, qb.numpy(), rb.numpy()


def _quad(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^T q b`` over the last two axes of ``q``."""
    return np.einsum("...cd,c,d->...", q, a, b)


def _quad_cos(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _quad(q, a, b) / np.sqrt(np.maximum(_quad(q, a, a) * _quad(q, b, b), 1e-60))


def _debiased_cos(
    q: np.ndarray, a: np.ndarray, b: np.ndarray, noise: tuple[np.ndarray, ...]
) -> np.ndarray:
    """Cosine of contrasts ``a``, ``b`` from inner products ``q`` with the noise terms
    (ab, aa, bb) removed; NaN where a direction is not above its noise."""
    return _cos_from(
        _quad(q, a, b) - noise[0], _quad(q, a, a) - noise[1], _quad(q, b, b) - noise[2]
    )


@dataclass
class Geometry:
    """Per-layer estimates with bootstrap intervals. Keys: an emotion, or an ``(a, b)``
    pair; values ``[L]`` arrays (``*_lo`` / ``*_hi``: the interval). ``self_cos``: the
    bootstrap stability of each direction, mean cosine of a resampled direction with the
    full-sample one (``self_cos_lo``: its lower percentile). ``cos`` is debiased (see the
    module docstring); ``cos_plugin`` is the plain cosine of the sample directions.
    :meth:`rows` marks a pair ``reliable`` where both directions' norm intervals exclude 0."""

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
    self_cos: dict[str, np.ndarray] = field(default_factory=dict)
    self_cos_lo: dict[str, np.ndarray] = field(default_factory=dict)
    cos_plugin: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
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
                        "cosine_plugin": float(self.cos_plugin[(a, b)][i]),
                        "reliable": bool(self.norm_lo[a][i] > 0 and self.norm_lo[b][i] > 0),
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

    >>> x = np.random.default_rng(0).normal(size=(60, 2, 5)); y = ["a", "b", "neutral"] * 20
    >>> g = geometry(x, y, n_boot=200)
    >>> sorted(g.cos), g.cos[("a", "b")].shape
    ([('a', 'b')], (2,))
    """
    return geometries(
        x, labels, (method,), layers=layers, baseline=baseline, n_boot=n_boot, level=level,
        seed=seed,
    )[method]  # fmt: skip


def geometries(
    x: np.ndarray,
    labels: list[str],
    methods: Sequence[str] = ("mean_diff",),
    *,
    layers: list[int] | None = None,
    baseline: str = "neutral",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Geometry]:
    """:func:`geometry` for several contrast methods from one bootstrap (the same
    resamples, the class-mean inner products computed once)."""
    lab = np.asarray(labels)
    classes = list(dict.fromkeys(labels))
    if baseline not in classes:
        raise DataError(f"baseline label {baseline!r} not in the labels ({', '.join(classes)})")
    counts = np.array([(lab == c).sum() for c in classes], dtype=float)
    groups = [x[lab == c] for c in classes]
    full = np.stack([g.mean(0, dtype=np.float64) for g in groups])  # [C, L, W]
    # summed per-dimension variance of each class per layer, [C, L]
    var0 = np.stack([g.var(0, dtype=np.float64).sum(-1) for g in groups])
    var1 = var0 * (counts / np.maximum(counts - 1, 1))[:, None]
    weights = bootstrap_weights(lab, n_boot, seed, classes)  # [B, C, n]
    # Every statistic is a quadratic form in the class means, so one pass computes their
    # inner products per layer (full x full, boot x boot, boot x full) and the rest is
    # [C x C] algebra: no [B, L, W] array per emotion or pair.
    ff, qb, rb = _inner_products(x, weights, full)
    out = {}
    for method in methods:
        coef = contrast_coefficients(classes, counts, baseline, method)
        g = Geometry(layers or list(range(x.shape[1])), method, baseline, level, n_boot)
        for e, a in coef.items():
            w = a**2 / counts
            g.norm[e] = _debiased_norm(_quad(ff, a, a), w @ var1)
            rep = _debiased_norm(_quad(qb, a, a), w @ var0 + w @ var1)
            g.norm_lo[e], g.norm_hi[e] = percentile_ci(rep, level)
            sc = _quad(rb, a, a) / np.sqrt(np.maximum(_quad(qb, a, a) * _quad(ff, a, a), 1e-60))
            g.self_cos[e], g.self_cos_lo[e] = sc.mean(0), percentile_ci(sc, level)[0]
        for a, b in combinations(coef, 2):
            ca, cb = coef[a], coef[b]

            # noise shared through common classes (both contrasts subtract the baseline
            # mean) biases the dot product by sum_c a_c b_c tr(S_c) / n_c: remove it
            def noise(u: np.ndarray, v: np.ndarray, var: np.ndarray) -> np.ndarray:
                return (u * v / counts) @ var

            full_terms = (noise(ca, cb, var1), noise(ca, ca, var1), noise(cb, cb, var1))
            v01 = var0 + var1
            boot_terms = (noise(ca, cb, v01), noise(ca, ca, v01), noise(cb, cb, v01))
            g.cos[(a, b)] = _debiased_cos(ff, ca, cb, full_terms)
            g.cos_plugin[(a, b)] = _quad_cos(ff, ca, cb)
            rep = _debiased_cos(qb, ca, cb, boot_terms)
            g.cos_lo[(a, b)], g.cos_hi[(a, b)] = percentile_ci(rep, level)
        for a, b in combinations(classes, 2):
            i, j = classes.index(a), classes.index(b)
            e = np.zeros(len(classes))
            e[i], e[j] = 1.0, -1.0
            n1 = var1[i] / counts[i] + var1[j] / counts[j]
            n0 = var0[i] / counts[i] + var0[j] / counts[j]
            g.dist[(a, b)] = _debiased_norm(_quad(ff, e, e), n1)
            rep = _debiased_norm(_quad(qb, e, e), n0 + n1)
            g.dist_lo[(a, b)], g.dist_hi[(a, b)] = percentile_ci(rep, level)
        out[method] = g
    return out


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


def half_to_full(r: np.ndarray) -> np.ndarray:
    """Cosine expected between a full-sample direction and the population one, from the
    split-half cosine ``r`` (each half has half the prompts, so half-sample noise is twice
    the full-sample noise): ``sqrt(2r / (1 + r))``, the Spearman-Brown step for directions.

    >>> round(float(half_to_full(np.array(0.8))), 3)
    0.943
    """
    r = np.clip(r, 0.0, 1.0)
    return np.sqrt(2 * r / (1 + r))


@dataclass
class SharedComponent:
    """Why raw class means all look alike. Per class and layer: ``along_global`` = the
    cosine of the class mean with the global mean (the share of its norm along the shared
    component); ``raw_cos`` / ``centred_cos`` ``{(a, b): [L]}`` = cosine between two class
    means before / after subtracting the global mean."""

    layers: list[int]
    along_global: dict[str, np.ndarray]
    raw_cos: dict[tuple[str, str], np.ndarray]
    centred_cos: dict[tuple[str, str], np.ndarray]


def shared_component(
    x: np.ndarray, labels: list[str], *, layers: list[int] | None = None
) -> SharedComponent:
    """The shared-component diagnosis of the pilot's "all 0.99" raw-mean similarities.

    >>> x = np.ones((4, 1, 3)) * 10; x[:2, 0, 0] += 1; x[2:, 0, 1] += 1
    >>> sc = shared_component(x, ["a", "a", "b", "b"])
    >>> [round(float(c[("a", "b")][0]), 3) for c in (sc.raw_cos, sc.centred_cos)]
    [0.997, -1.0]
    """
    lab = np.asarray(labels)
    classes = list(dict.fromkeys(labels))
    means = {c: x[lab == c].astype(np.float64).mean(0) for c in classes}
    glob = np.mean([means[c] for c in classes], axis=0)  # class-balanced global mean
    out = SharedComponent(layers or list(range(x.shape[1])), {}, {}, {})
    for c in classes:
        out.along_global[c] = _cos(means[c], glob)
    for a, b in combinations(classes, 2):
        out.raw_cos[(a, b)] = _cos(means[a], means[b])
        out.centred_cos[(a, b)] = _cos(means[a] - glob, means[b] - glob)
    return out


@dataclass
class Agreement:
    """Cosine per emotion and layer between directions from two sources (two methods,
    position rules, sites or presets), with a bootstrap interval when both are contrasts,
    and the 95% band of two random directions (``+-1.96 / sqrt(d)``)."""

    label_a: str
    label_b: str
    layers: list[int]
    cos: dict[str, np.ndarray]
    lo: dict[str, np.ndarray]
    hi: dict[str, np.ndarray]
    random_band: float


def agreement(
    xa: np.ndarray,
    labels_a: list[str],
    xb: np.ndarray,
    labels_b: list[str],
    *,
    method_a: str = "mean_diff",
    method_b: str = "mean_diff",
    baseline: str = "neutral",
    label_a: str = "a",
    label_b: str = "b",
    layers: list[int] | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    cache: dict | None = None,
) -> Agreement:
    """Do two ways of finding a direction agree? E.g. ``mean_diff`` vs ``probe`` on the same
    rows, the ``mean`` vs ``last`` rule, or the ``baseline`` vs ``extended`` preset.

    When both methods are contrasts the cosine is debiased like :func:`geometry`'s (norms
    minus their noise; for the same prompts, the dot product minus the noise both sides
    share, from the within-class cross-covariance) and the interval comes from a stratified
    bootstrap: the same resample on both sides when the rows are the same prompts (same
    labels, same count), independent resamples otherwise. Other methods get the plain
    cosine as a point estimate (lo = hi = cos). ``cache``: a dict kept across calls on the
    same arrays (one reference against several others) so that their resampled class means
    are computed once.
    """
    from emocircuits.geometry.directions import CONTRASTS, emotion_directions

    if xa.shape[1:] != xb.shape[1:]:
        raise DataError(
            f"the two sources have different shapes {xa.shape[1:]} vs {xb.shape[1:]} "
            "(different models or layers: use emocircuits compare)"
        )
    da = emotion_directions(xa, labels_a, method=method_a, baseline=baseline)
    db = emotion_directions(xb, labels_b, method=method_b, baseline=baseline)
    emotions = [e for e in da if e in db]
    out = Agreement(
        label_a,
        label_b,
        layers or list(range(xa.shape[1])),
        {},
        {},
        {},
        1.96 / np.sqrt(xa.shape[-1]),
    )
    for e in emotions:
        out.cos[e] = _cos(da[e], db[e])
        out.lo[e], out.hi[e] = out.cos[e].copy(), out.cos[e].copy()
    if method_a in CONTRASTS and method_b in CONTRASTS:
        _debiased_agreement(out, xa, labels_a, xb, labels_b, method_a, method_b, baseline,
                            n_boot, level, seed, cache)  # fmt: skip
    return out


def _debiased_agreement(
    out: Agreement,
    xa: np.ndarray,
    labels_a: list[str],
    xb: np.ndarray,
    labels_b: list[str],
    method_a: str,
    method_b: str,
    baseline: str,
    n_boot: int,
    level: float,
    seed: int,
    cache: dict | None,
) -> None:
    la, lb = np.asarray(labels_a), np.asarray(labels_b)
    paired = len(la) == len(lb) and bool((la == lb).all())
    sides = []
    for x, lab, method, s in ((xa, la, method_a, seed), (xb, lb, method_b, seed + 1)):
        key = (id(x), x.shape, n_boot, seed if paired else s)
        if cache is None or key not in cache:
            classes = list(dict.fromkeys(lab.tolist()))
            counts = np.array([(lab == c).sum() for c in classes], dtype=float)
            groups = [x[lab == c] for c in classes]
            full = np.stack([g.mean(0, dtype=np.float64) for g in groups])  # [C, L, W]
            var0 = np.stack([g.var(0, dtype=np.float64).sum(-1) for g in groups])  # [C, L]
            w = bootstrap_weights(lab, n_boot, key[-1], classes) if n_boot else None
            boot = class_means(x, w) if w is not None else None
            stats = (classes, counts, groups, full, var0, boot, x)  # x pins its id
            if cache is not None:
                cache[key] = stats
        classes, counts, groups, full, var0, boot, _ = stats if cache is None else cache[key]
        coef = contrast_coefficients(classes, counts, baseline, method)
        sides.append((counts, groups, full, var0, coef, boot))
    (ca, ga, fa, v0a, coa, ba), (cb, gb, fb, v0b, cob, bb) = sides
    bessel_a, bessel_b = (
        (ca / np.maximum(ca - 1, 1))[:, None],
        (cb / np.maximum(cb - 1, 1))[:, None],
    )
    cross0 = 0.0
    if paired:  # within-class cross-covariance trace between the two sides, [C, L]
        cross0 = np.stack([_cross_trace(a, b) for a, b in zip(ga, gb, strict=True)])
    for e in out.cos:
        a, b = coa[e], cob[e]
        noise_a1 = (a**2 / ca) @ (v0a * bessel_a)
        noise_b1 = (b**2 / cb) @ (v0b * bessel_b)
        noise_ab1 = (a * b / ca) @ (cross0 * bessel_a) if paired else 0.0
        da, db = np.einsum("c,clw->lw", a, fa), np.einsum("c,clw->lw", b, fb)
        out.cos[e] = _cos_from(
            (da * db).sum(-1) - noise_ab1,
            (da**2).sum(-1) - noise_a1,
            (db**2).sum(-1) - noise_b1,
        )
        if ba is None:
            out.lo[e] = out.hi[e] = out.cos[e]
            continue
        noise_a0, noise_b0 = (a**2 / ca) @ v0a, (b**2 / cb) @ v0b
        noise_ab0 = (a * b / ca) @ cross0 if paired else 0.0
        dab = np.einsum("c,bclw->blw", a, ba)
        dbb = np.einsum("c,bclw->blw", b, bb)
        rep = _cos_from(
            (dab * dbb).sum(-1) - noise_ab1 - noise_ab0,
            (dab**2).sum(-1) - noise_a1 - noise_a0,
            (dbb**2).sum(-1) - noise_b1 - noise_b0,
        )
        out.lo[e], out.hi[e] = percentile_ci(rep, level)


def _cross_trace(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_w cov(a[:, l, w], b[:, l, w])`` (ddof 0) per layer for paired rows."""
    a = a - a.mean(0, dtype=np.float64)
    b = b - b.mean(0, dtype=np.float64)
    return np.einsum("nlw,nlw->l", a, b) / len(a)


def _cos_from(dot: np.ndarray, na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """Cosine from a dot product and squared norms; NaN where a norm is not positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        c = dot / np.sqrt(na * nb)
    # Not clipped: a debiased cosine beyond +-1 says the directions are not measured well
    # enough at this sample size (and clipping would fake a [1, 1] interval).
    return np.where((na > 0) & (nb > 0), c, np.nan)


# ------------------------------------------------------------------ the similarity stage
@dataclass(repr=False)
class SimilarityResult(Result):
    """The table ``emocircuits similarity`` writes: one row per emotion pair and layer
    (cosine between the contrast directions and class-mean distance, with bootstrap
    intervals), tagged with site, position and model."""

    command: ClassVar[str] = "similarity"

    table: list[dict[str, Any]]
    method: str
    n_boot: int
    level: float

    def rows(self) -> list[dict[str, Any]]:
        return self.table

    def title(self) -> str:
        return (
            f"SimilarityResult: {len(self.table)} rows (pairs x layers), method {self.method}, "
            f"{self.level:.0%} intervals ({self.n_boot} resamples)"
        )

    def save(self, path: str | Path) -> Path:
        """Write the CSV file ``emocircuits similarity --out path`` writes."""
        from emocircuits.capture.store import atomic_write_bytes
        from emocircuits.tables import csv_bytes

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, csv_bytes(self.table))
        return out

    @classmethod
    def load(cls, path: str | Path) -> SimilarityResult:
        """Read a CSV file written by :meth:`save` (``reliable`` is read back as a bool)."""
        from emocircuits.tables import read_table

        path = Path(path)
        rows = read_table(path.parent, path.stem) if path.suffix == ".csv" else None
        if not rows or "cosine" not in rows[0]:
            raise DataError("not a similarity table", where=str(path))
        for r in rows:
            r["reliable"] = str(r["reliable"]) == "True"
        return cls(rows, rows[0]["method"], int(rows[0]["n_boot"]), float(rows[0]["ci_level"]))


def emotion_similarity(
    acts: ActivationStore | str | Path,
    *,
    method: str = "mean_diff",
    site: str = "resid",
    position: str | None = None,
    baseline: str = "neutral",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> SimilarityResult:
    """Cosines between the emotions' contrast directions (``method`` one of
    :data:`~emocircuits.geometry.directions.CONTRASTS`) and class-mean distances per layer,
    with stratified-bootstrap intervals over prompts, read at ``site`` / ``position``
    (default: the store's ``default_position``). ``.save(path)`` writes what
    ``emocircuits similarity --out path`` writes.

    >>> emotion_similarity(load_activations("runs/ext"), n_boot=200).rows()[0]  # doctest: +SKIP
    """
    acts = as_store(acts)
    position = position or acts.default_position
    g = geometry(
        acts.get(site, position), acts.labels, layers=acts.layers(site), method=method,
        baseline=baseline, n_boot=n_boot, level=level, seed=seed,
    )  # fmt: skip
    rows = g.rows()
    for r in rows:
        r.update(site=site, position=position, model=acts.manifest["model"].get("name"))
    return SimilarityResult(rows, g.method, g.n_boot, g.level)

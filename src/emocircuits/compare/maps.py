"""Direction-level comparison through fitted maps from model A's activations to model B's.

Coordinates of two models mean nothing to each other, so an emotion direction of A is
compared with B's only after mapping it with a map fitted on *other* stimuli:

- the rows are split, stratified by label, into ``fit`` rows (the maps are fitted there)
  and ``held`` rows (the emotion directions are computed there and R^2 is measured there);
- both models are centred on the fit rows and scaled to unit mean squared norm, so no
  statistic depends on a model's basis or scale;
- ``procrustes``: both models reduced to their top-``dim`` principal components (fitted on
  the fit rows), then the orthogonal map (with one scale factor) from A's to B's. Cosines
  are measured in B's principal subspace, and ``reach`` is the share of B's direction that
  lies in it (what the map can reach at all);
- ``ridge``: a linear map from all of A to all of B, its penalty chosen by leave-one-out
  cross-validation on the fit rows (closed form). Its predictions lie in the span of B's
  fit rows (all of B when there are more fit rows than dimensions), so B's directions are
  compared there, and ``reach`` is again the share of them inside.

For each emotion, ``cos(W v_A, v_B)`` has two nulls: **shuffled pairs** (the map refitted on
fit rows of B shuffled against A: any map's chance agreement) and **label permutation** (the
held rows' labels permuted, the same way in both models, and the directions recomputed: how
well *any* contrast of these stimuli maps, i.e. whether emotion directions map better than
arbitrary ones). Identification asks whether each mapped direction is closest to B's
direction of the same emotion (chance ``1/E``); its exact null relabels B's emotions. The
subspace spanned by the class means (``C - 1`` dimensions) is compared after mapping by the
mean squared cosine of the principal angles, against ``k/d`` and the label-permutation null.
Identification has only ``E!`` relabelings (3 emotions: p >= 1/6), so **decoding** asks the
same question with the power of every held row: is A's activation of a held-out prompt,
mapped into B, nearest to B's centroid (from the fit rows) of its own label? Chance is
``1/C``, the p-value binomial; ``decode_self`` is B's own accuracy with the same centroids
(the ceiling).

>>> rng = np.random.default_rng(0); y = np.repeat(["a", "b", "neutral"], 30)
>>> x = rng.normal(size=(90, 1, 12)) + 3 * (y == "a")[:, None, None] * rng.normal(size=12)
>>> fit, held = split_rows(y, seed=0)
>>> q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
>>> r = compare_directions(x, x @ q, y, [(0, 0)], fit=fit, held=held, n_perm=50, n_shuffle=20)
>>> bool(r["procrustes"].cos.min() > 0.999), float(r["ridge"].ident[0])
(True, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emocircuits.compare.perm import permutations, relabelings
from emocircuits.errors import DataError
from emocircuits.geometry.directions import contrast_coefficients
from emocircuits.geometry.probes import stratified_folds

MAPS = ("procrustes", "ridge")
"""Map kinds, by name."""


def split_rows(labels: Sequence[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint row indices ``(fit, held)``, each about half of every label.

    >>> split_rows(["a", "b"] * 4)[0].size
    4
    """
    fold = stratified_folds(np.asarray(labels), 2, seed)
    return np.flatnonzero(fold == 0), np.flatnonzero(fold == 1)


@dataclass
class MapResult:
    """One map kind's comparison at each matched layer pair (``layers_a[i]`` of A with
    ``layers_b[i]`` of B). Arrays are ``[L]`` or ``[L, E]``; nulls carry the replicates
    first: ``cos_shuffle`` ``[n_shuffle, L, E]``, ``cos_perm`` ``[n_perm, L, E]``,
    ``ident_null`` ``[relabelings, L]``, ``overlap_perm`` ``[n_perm, L]``. ``r2_null`` is
    the shuffled-pair null of the held-out R^2 (Procrustes; refitting ridge per shuffle
    costs a product over the full widths, so ridge is tested against the mean predictor
    instead: ``r2_gain`` ``[L, n_held]`` is each held row's squared-error gain over it)."""

    name: str
    layers_a: list[int]
    layers_b: list[int]
    emotions: list[str]
    dim: int
    k: int
    r2: np.ndarray
    r2_null: np.ndarray | None
    r2_gain: np.ndarray | None
    lam: np.ndarray | None
    cos: np.ndarray
    reach: np.ndarray
    cos_shuffle: np.ndarray
    cos_perm: np.ndarray
    ident: np.ndarray
    ident_null: np.ndarray
    ident_exact: bool
    overlap: np.ndarray
    overlap_perm: np.ndarray
    decode: np.ndarray
    decode_self: np.ndarray


def _torch():
    import torch

    return torch


def _normalised(x: np.ndarray, fit: np.ndarray):
    """Centred on the fit rows and scaled to unit mean squared norm there (float64)."""
    torch = _torch()
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    t = t - t[fit].mean(0)
    return t / t[fit].pow(2).sum(1).mean().sqrt().clamp_min(1e-300)


def _dir_stats(ma, mb, coef):
    """Cosines ``[P, E]`` of contrasts ``coef`` ``[E, C]`` of class means ``ma``/``mb``
    ``[P, C, D]`` (same D), and the overlap ``[P]`` of the spans of the centred means."""
    torch = _torch()
    ma, mb, coef = ma.double(), mb.double(), coef.double()  # tiny; float32 breaks the pinv
    da, db = torch.einsum("ec,pcd->ped", coef, ma), torch.einsum("ec,pcd->ped", coef, mb)
    cos = (da * db).sum(-1) / (da.norm(dim=-1) * db.norm(dim=-1)).clamp_min(1e-300)
    ca, cb = ma - ma.mean(1, keepdim=True), mb - mb.mean(1, keepdim=True)
    t = _pinv_sqrt(ca @ ca.transpose(1, 2)) @ (ca @ cb.transpose(1, 2))
    t = t @ _pinv_sqrt(cb @ cb.transpose(1, 2))
    return cos, t.pow(2).sum((1, 2)) / (ma.shape[1] - 1)


def _pinv_sqrt(g):
    torch = _torch()
    val, vec = torch.linalg.eigh(g)
    keep = val > 1e-10 * val.amax(-1, keepdim=True).clamp_min(1e-300)
    inv = torch.where(keep, val.clamp_min(1e-300).rsqrt(), torch.zeros_like(val))
    return (vec * inv[..., None, :]) @ vec.transpose(-1, -2)


def _nearest_centroid(x, centroids) -> np.ndarray:
    """Index of the nearest (Euclidean) centroid ``[C, D]`` for each row of ``x``."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centroids.T + (centroids**2).sum(1)[None]
    return d.argmin(1).numpy()


def _cos_rows(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def _loo_penalty(u, s, y) -> float:
    """The ridge penalty (on a log grid relative to the mean squared singular value) with
    the smallest leave-one-out error, in closed form from the SVD ``x = u diag(s) v^T``:
    the residual of row ``i`` left out is ``(y_i - yhat_i) / (1 - H_ii)``, where the hat
    matrix includes the centring (``1/n``): without it, centred rows are linearly dependent
    and leaving one out looks free. (Generalised cross-validation fails when there are fewer
    rows than dimensions: it prefers the interpolating map, whose held-out R^2 is far below
    0.)

    Computed in float64 and without cancellation: with fewer rows than dimensions the
    small penalties nearly interpolate, so ``y - yhat`` and ``1 - H_ii`` are both tiny;
    each is written as its part outside the span of ``u`` (once) plus the part the penalty
    leaves, ``lam / (s^2 + lam)``, which is exact however small. Subtracting ``H_ii`` from 1
    instead leaves rounding noise that decides the argmin (in float32 it moved the errors
    of small penalties by 1-2%, and the chosen penalty with them)."""
    torch = _torch()
    u, s, y = u.double(), s.double(), y.double()
    grid = (s**2).mean() * torch.logspace(-6, 3, 19, dtype=s.dtype)
    uy = u.T @ y
    resid_out = y - u @ uy  # what no penalty fits
    lev_out = 1.0 - 1.0 / len(u) - (u**2).sum(1)  # 1 - H_ii at penalty 0 (>= 0), centring in
    best, best_err = float(grid[0]), float("inf")
    for lam in grid:
        shrink = lam / (s**2 + lam)  # 1 - s^2 / (s^2 + lam)
        resid = resid_out + (u * shrink) @ uy
        one_minus_lev = (lev_out + (u**2 * shrink).sum(1)).clamp_min(1e-12)
        err = float((resid.pow(2).sum(1) / one_minus_lev**2).sum())
        if err < best_err:
            best, best_err = float(lam), err
    return best


@dataclass
class _Layer:
    """One model's layer, prepared: normalised rows ``t``, the SVD of its fit rows, the class
    means of the held rows for the real labels, and for the permuted ones in the coordinates
    of ``vt`` (``[P, C, r]``: every use projects them there, and ``r`` is at most the fit
    rows, often far below the width)."""

    t: Any
    u: Any
    s: Any
    vt: Any
    mean: Any
    mean_perm: Any


@dataclass
class _Setup:
    """What every layer pair shares: rows, contrasts, nulls' permutations, decoding."""

    fit: Any
    held: Any
    coef: Any  # [E, C] contrast coefficients over the class means
    shuffles: Any  # [n_shuffle, n_fit] Procrustes refits
    shuffles_ridge: Any  # [n_perm, n_fit]
    fit_avg: Any  # [C, n_fit] class-mean operator of the fit rows
    truth: np.ndarray  # class index of each held row


def _procrustes(a: _Layer, b: _Layer, d: int, st: _Setup) -> dict[str, Any]:
    """Orthogonal map (with one scale) between the top-``d`` principal coordinates."""
    torch = _torch()
    coef, fit, held = st.coef.double(), st.fit, st.held
    va, vb = a.vt[:d].T, b.vt[:d].T
    za, zb = a.t @ va, b.t @ vb
    u, s, vt = torch.linalg.svd(za[fit].T @ zb[fit])
    rot = u @ vt
    za_sq = za[fit].pow(2).sum()
    scale = s.sum() / za_sq
    zh_a, zh_b = za[held], zb[held]
    tot = (zh_b - zh_b.mean(0)).pow(2).sum()
    r2 = 1 - (scale * zh_a @ rot - zh_b).pow(2).sum() / tot
    cos, ov = _dir_stats((a.mean @ va @ rot)[None], (b.mean @ vb)[None], st.coef)
    cos_p, ov_p = _dir_stats(a.mean_perm[..., :d] @ rot, b.mean_perm[..., :d], st.coef)
    da, db = coef @ a.mean @ va, coef @ b.mean @ vb  # real directions, PCA coordinates
    # shuffled pairs: the map refitted with B's fit rows shuffled (batched SVDs). float64:
    # the rotation of a cross-covariance of unrelated rows is ill-conditioned (its change
    # goes like |dM| / (s_i + s_j) over its smallest singular values): on SmolLM2/Gemma 3,
    # inputs moved by float32 rounding moved this null by 2e-3 (R^2) and 4e-2 (cosines)
    # when computed in float32, by < 1e-6 in float64
    m_p = torch.einsum("nd,pne->pde", za[fit], zb[fit][st.shuffles])
    u_p, s_p, vt_p = torch.linalg.svd(m_p)
    rot_p = u_p @ vt_p
    cos_s = _cos_rows(torch.einsum("ed,pdf->pef", da, rot_p), db[None])
    scale_p = s_p.sum(-1) / za_sq
    res_p = (
        scale_p**2 * zh_a.pow(2).sum()
        - 2 * scale_p * (rot_p * (zh_a.T @ zh_b)).sum((1, 2))
        + zh_b.pow(2).sum()
    )
    cent = st.fit_avg @ zb[fit]
    return {
        "dim": d,
        "r2": float(r2),
        "r2_null": (1 - res_p / tot).numpy(),
        "r2_gain": None,
        "lam": None,
        "cos": cos[0].numpy(),
        "reach": (db.norm(dim=-1) / (coef @ b.mean).norm(dim=-1).clamp_min(1e-300)).numpy(),
        "cos_shuffle": cos_s.numpy(),
        "cos_perm": cos_p.numpy(),
        "ov": float(ov[0]),
        "ov_p": ov_p.numpy(),
        "cmat": _cos_matrix(da @ rot, db),
        "decode": (_nearest_centroid(scale * zh_a @ rot, cent) == st.truth).mean(),
        "decode_self": (_nearest_centroid(zh_b, cent) == st.truth).mean(),
    }


def _ridge(a: _Layer, b: _Layer, st: _Setup) -> dict[str, Any]:
    """Ridge map from all of A to all of B; B's directions compared in the span of its fit
    rows, where every prediction lies."""
    torch = _torch()
    coef, fit, held = st.coef.double(), st.fit, st.held
    y = b.t[fit]
    uy = a.u.T @ y  # [r, Wb]
    lam = _loo_penalty(a.u, a.s, y)
    g = a.s / (a.s**2 + lam)
    w = a.vt.T @ (g[:, None] * uy)  # [Wa, Wb]
    hb = b.t[held]
    tot = (hb - hb.mean(0)).pow(2).sum()
    err = (a.t[held] @ w - hb).pow(2).sum(1)
    r2 = 1 - err.sum() / tot
    inside = b.s > 1e-10 * b.s.max()
    span = b.vt[inside]  # [rank, Wb] orthonormal rows
    mean_b = b.mean
    if len(span) < span.shape[1]:  # fewer fit rows than dimensions: project onto their span
        mean_b = mean_b @ span.T @ span
    cos, ov = _dir_stats((a.mean @ w)[None], mean_b[None], st.coef)
    # the nulls in the coordinates of B's vt (an isometry of the span of its fit rows, where
    # every mapped vector lies): B's permuted means projected onto the span, A's mapped
    cos_p, ov_p = _dir_stats(
        a.mean_perm @ ((g[:, None] * uy) @ b.vt.T), b.mean_perm * inside, st.coef
    )
    dir_a, dir_b = coef @ a.mean, coef @ mean_b
    # a map refitted on shuffled pairs sends v_A to c^T P Y, with c = U g V^T v_A
    c = a.u @ (g[:, None] * (a.vt @ dir_a.T))  # [n_fit, E]
    inv = torch.argsort(st.shuffles_ridge, 1)
    mapped = torch.einsum("pne,nr->per", c[inv], b.u * b.s)  # Y = U S V^T: coordinates S U^T
    cent = st.fit_avg @ y
    return {
        "dim": len(span),
        "r2": float(r2),
        "r2_null": None,
        "r2_gain": ((hb - hb.mean(0)).pow(2).sum(1) - err).numpy(),
        "lam": lam,
        "cos": cos[0].numpy(),
        "reach": (dir_b.norm(dim=-1) / (coef @ b.mean).norm(dim=-1).clamp_min(1e-300)).numpy(),
        "cos_shuffle": _cos_rows(mapped, (dir_b @ b.vt.T)[None]).numpy(),
        "cos_perm": cos_p.numpy(),
        "ov": float(ov[0]),
        "ov_p": ov_p.numpy(),
        "cmat": _cos_matrix(dir_a @ w, dir_b),
        "decode": (_nearest_centroid(a.t[held] @ w, cent) == st.truth).mean(),
        "decode_self": (_nearest_centroid(hb, cent) == st.truth).mean(),
    }


def compare_directions(
    xa: np.ndarray,
    xb: np.ndarray,
    labels: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    *,
    fit: np.ndarray,
    held: np.ndarray,
    method: str = "one_vs_rest",
    baseline: str = "neutral",
    dim: int | None = None,
    n_perm: int = 1000,
    n_shuffle: int = 200,
    maps: Sequence[str] = MAPS,
    layers_a: Sequence[int] | None = None,
    layers_b: Sequence[int] | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, MapResult]:
    """Fit each map in ``maps`` at each layer pair ``(ia, ib)`` of ``pairs`` (indices along
    axis 1 of ``xa`` ``[n, La, Wa]`` and ``xb`` ``[n, Lb, Wb]``, same rows) on the ``fit``
    rows, and compare the emotion directions of the ``held`` rows (see the module
    docstring). ``dim``: Procrustes' principal components (default ``min(64, fit rows / 4)``:
    an orthogonal map of ``d^2 / 2`` parameters overfits few rows). ``n_perm`` label
    permutations (and ridge's shuffled pairs), ``n_shuffle`` Procrustes refits on shuffled
    pairs (one SVD each)."""
    torch = _torch()
    for m in maps:
        if m not in MAPS:
            raise DataError(f"unknown map {m!r}; choose from {', '.join(MAPS)}")
    lab = np.asarray(labels)
    if len(np.intersect1d(fit, held)):
        raise DataError("the map's fit rows and the direction rows must be disjoint")
    held_lab, fit_lab = lab[held], lab[fit]
    classes = list(dict.fromkeys(held_lab.tolist()))
    if baseline not in classes:
        raise DataError(f"baseline label {baseline!r} not in the labels ({', '.join(classes)})")
    counts = np.array([(held_lab == c).sum() for c in classes], dtype=float)
    coef_d = contrast_coefficients(classes, counts, baseline, method)
    emotions = list(coef_d)
    n_fit = len(fit)
    d = int(min(dim or max(2, min(64, n_fit // 4)), xa.shape[-1], xb.shape[-1], n_fit - 1))
    # class-mean operators of the held rows: [0] the real labels, [1:] permuted ones
    perm_lab = held_lab[permutations(len(held), n_perm, seed + 1)]
    onehot = np.concatenate([held_lab[None], perm_lab])[:, None, :] == np.array(classes)[:, None]
    avg = torch.from_numpy(onehot / counts[:, None])  # [1 + P, C, n_held], float64
    st = _Setup(
        fit=torch.from_numpy(fit),
        held=torch.from_numpy(held),
        coef=torch.from_numpy(np.stack([coef_d[e] for e in emotions])),
        shuffles=torch.from_numpy(permutations(n_fit, n_shuffle, seed + 2)),
        shuffles_ridge=torch.from_numpy(permutations(n_fit, n_perm, seed + 2)),
        fit_avg=torch.from_numpy(
            np.stack([(fit_lab == c) / max(1, (fit_lab == c).sum()) for c in classes])
        ).double(),
        truth=np.array([classes.index(v) for v in held_lab]),
    )
    relabel, exact = relabelings(len(emotions), n_perm, seed + 3)
    cache: dict[tuple[str, int], _Layer] = {}

    def prepared(side: str, x: np.ndarray, i: int) -> _Layer:
        if (side, i) not in cache:
            t = _normalised(x[:, i], st.fit)
            u, s, vt = torch.linalg.svd(t[st.fit], full_matrices=False)
            h = t[st.held]
            cache[(side, i)] = _Layer(t, u, s, vt, avg[0] @ h, avg[1:] @ (h @ vt.T))
        return cache[(side, i)]

    out: dict[str, dict[str, list]] = {m: {} for m in maps}
    for step, (ia, ib) in enumerate(pairs):
        a, b = prepared("a", xa, ia), prepared("b", xb, ib)
        for m in maps:
            res = _procrustes(a, b, d, st) if m == "procrustes" else _ridge(a, b, st)
            for key, v in res.items():
                out[m].setdefault(key, []).append(v)
        if progress is not None:
            progress(step)

    la = [int(i) for i, _ in pairs] if layers_a is None else [layers_a[i] for i, _ in pairs]
    lb = [int(j) for _, j in pairs] if layers_b is None else [layers_b[j] for _, j in pairs]
    results = {}
    for m, v in out.items():
        best = np.stack([c.argmax(1) for c in v["cmat"]])  # [L, E] B emotion nearest to each
        ident = (best == np.arange(len(emotions))).mean(1)
        ident_null = (best[None] == relabel[:, None, :]).mean(2)  # [R, L]
        results[m] = MapResult(
            name=m,
            layers_a=la,
            layers_b=lb,
            emotions=emotions,
            dim=int(min(v["dim"])),
            k=len(classes) - 1,
            r2=np.array(v["r2"]),
            r2_null=None if v["r2_null"][0] is None else np.stack(v["r2_null"], 1),
            r2_gain=None if v["r2_gain"][0] is None else np.stack(v["r2_gain"]),
            lam=None if v["lam"][0] is None else np.array(v["lam"]),
            cos=np.stack(v["cos"]),
            reach=np.stack(v["reach"]),
            cos_shuffle=np.stack(v["cos_shuffle"], 1),
            cos_perm=np.stack(v["cos_perm"], 1),
            ident=ident,
            ident_null=ident_null,
            ident_exact=exact,
            overlap=np.array(v["ov"]),
            overlap_perm=np.stack(v["ov_p"], 1),
            decode=np.array(v["decode"], dtype=float),
            decode_self=np.array(v["decode_self"], dtype=float),
        )
    return results


def _cos_matrix(a, b) -> np.ndarray:
    """``[E, E]`` cosines between rows of ``a`` and rows of ``b``."""
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return (a @ b.T).numpy()


def map_directions(
    xa: np.ndarray, xb: np.ndarray, directions: np.ndarray, *, method: str = "ridge"
) -> np.ndarray:
    """Unit directions ``[E, Wa]`` of model A carried into model B ``[E, Wb]`` by a map
    fitted on all paired rows ``xa`` ``[n, Wa]`` / ``xb`` ``[n, Wb]`` (the same stimuli),
    with the same maps as :func:`compare_directions`: ``"ridge"`` (penalty by closed-form
    leave-one-out) or ``"procrustes"`` (rotation between the top-d principal coordinates,
    d = min(64, n / 4)). A direction is a difference of activations, so it maps by the
    linear part of the map; the normalisation's scales change its length only.

    >>> vb = map_directions(xa, xb, vecs_a[:, layer_a], method="ridge")  # doctest: +SKIP
    """
    torch = _torch()
    if method not in ("ridge", "procrustes"):
        raise DataError(f"unknown map {method!r}; choose ridge or procrustes")
    fit = np.arange(len(xa))
    ta, tb = _normalised(xa, fit), _normalised(xb, fit)
    d = torch.from_numpy(np.asarray(directions, dtype=np.float64))
    u, s, vt = torch.linalg.svd(ta, full_matrices=False)
    if method == "ridge":
        lam = _loo_penalty(u, s, tb)
        out = d @ (vt.T @ ((s / (s**2 + lam))[:, None] * (u.T @ tb)))
    else:
        k = max(1, min(64, len(xa) // 4, min(ta.shape[1], tb.shape[1])))
        vb = torch.linalg.svd(tb, full_matrices=False)[2][:k].T
        za, zb = ta @ vt[:k].T, tb @ vb
        uu, _, vv = torch.linalg.svd(za.T @ zb)
        out = d @ vt[:k].T @ (uu @ vv) @ vb.T
    out = out.numpy()
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-300)

"""The pilot's naive cross-model table, kept to show why it means nothing.

It compares two models' direction vectors coordinate by coordinate. Coordinate ``i`` of one
model has no relation to coordinate ``i`` of another, so the cosine is what a random change
of basis gives: about ``0 +- 1/sqrt(W)`` per layer. Every row is therefore printed beside
the same statistics after a uniformly random rotation of the second model's directions (one
rotation for all layers: a model's directions are correlated across layers, so their mean
over layers does not average the noise away), and flagged coordinate-dependent.

>>> d = {"m1": {"anger": np.eye(3, 8)}, "m2": {"anger": np.eye(3, 8)[::-1]}}
>>> naive_table(d)[0]["mean"]
0.333333
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Any

import numpy as np

from emocircuits.compare.perm import null_band


def random_cosines(width: int, n_layers: int, n_draws: int = 20000, seed: int = 0) -> np.ndarray:
    """``[n_draws, n_layers]`` cosines of independent uniformly random unit vectors."""
    rng = np.random.default_rng(seed)
    c2 = rng.beta(0.5, (width - 1) / 2, size=(n_draws, n_layers))
    return np.sqrt(c2) * rng.choice([-1.0, 1.0], size=c2.shape)


def random_basis_cosines(
    a: np.ndarray, b: np.ndarray, n_draws: int = 2000, seed: int = 0
) -> np.ndarray:
    """``[n_draws, L]`` cosines ``cos(a_l, Q b_l)`` for uniformly random rotations ``Q`` of
    ``R^W`` (one per draw, shared by the layers). ``Q b`` only needs a random orthonormal
    frame for the span of ``b``'s rows: ``b = R^T F^T`` (QR), ``Q b = R^T G^T``."""
    rng = np.random.default_rng(seed)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-300)
    _, r = np.linalg.qr(b.T)  # b.T = F r, F [W, L] orthonormal
    g, rg = np.linalg.qr(rng.normal(size=(n_draws, *b.T.shape)))  # Haar frames
    g = g * np.sign(np.diagonal(rg, axis1=-2, axis2=-1))[:, None, :]
    qb = (g @ r).transpose(0, 2, 1)  # [D, L, W]
    return np.einsum("lw,dlw->dl", a, qb)


def _stats(c: np.ndarray) -> dict[str, np.ndarray]:
    return {"mean": c.mean(-1), "std": c.std(-1), "min": c.min(-1), "max": c.max(-1)}


def naive_table(
    directions: Mapping[str, Mapping[str, np.ndarray]], seed: int = 0
) -> list[dict[str, Any]]:
    """Rows ``emotion, model_a, model_b, mean, std, min, max`` of the raw cosine over
    layers (as the pilot), each with the range of the same statistic after a random rotation
    of the second model (``random_*``) and the share of rotations whose mean cosine is at
    least as far from 0 (``p_random``).
    ``directions``: ``{model: {emotion: [L, W]}}``; models of another width are skipped;
    different depths are matched by relative depth."""
    rows = []
    for ma, mb in combinations(directions, 2):
        da, db = directions[ma], directions[mb]
        for emo in [e for e in da if e in db]:
            a, b = np.asarray(da[emo], float), np.asarray(db[emo], float)
            if a.shape[-1] != b.shape[-1]:
                continue
            idx = np.rint(np.linspace(0, len(b) - 1, len(a))).astype(int)
            b = b[idx]
            with np.errstate(invalid="ignore", divide="ignore"):
                cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            obs = _stats(cos)
            null = _stats(random_basis_cosines(a, b, seed=seed))
            row: dict[str, Any] = {"emotion": emo, "model_a": ma, "model_b": mb}
            row.update({k: round(float(v), 6) for k, v in obs.items()})
            for k, v in null.items():
                lo, hi = null_band(v)
                row[f"random_{k}_lo"], row[f"random_{k}_hi"] = (
                    round(float(lo), 6),
                    round(float(hi), 6),
                )
            row["p_random"] = round(float((np.abs(null["mean"]) >= abs(obs["mean"])).mean()), 6)
            # one layer's cosine of two independent random vectors of this width (95%)
            lo, hi = null_band(random_cosines(a.shape[-1], 1, seed=seed)[:, 0])
            row["random_vector_lo"], row["random_vector_hi"] = (
                round(float(lo), 6),
                round(float(hi), 6),
            )
            row["width"], row["layers"] = a.shape[-1], len(a)
            row["basis"] = "coordinate-dependent: not a similarity between models"
            rows.append(row)
    return rows

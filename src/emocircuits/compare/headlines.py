"""The numbers :func:`~emocircuits.compare.comparison.compare_models` writes, each beside
its null: a headline for ``summary.json`` (value, null mean and 95% range, p, effect, z,
beyond chance) and, per fitted map, its rows of the ``maps`` and ``directions`` tables and
its headlines (mapped-direction cosines, identification, subspace overlap, decoding, R^2).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emocircuits.compare.maps import MapResult
from emocircuits.compare.perm import null_band, perm_p
from emocircuits.geometry.probes import binomial_p

ALPHA = 0.05


def _f(v: Any) -> float | None:
    """A number for the tables: 6 significant digits (tiny p-values stay > 0), NaN -> empty."""
    v = float(v)
    return None if np.isnan(v) else float(f"{v:.6g}")


def _headline(value: float, null: np.ndarray, what: str, exact: bool = False) -> dict[str, Any]:
    """A measure's value beside its null: mean, 95% range, p-value, effect (value - null
    mean) and z (effect / null sd). For exact tests, ``min_p`` is the smallest p possible."""
    lo, hi = null_band(null)
    p = float(perm_p(value, null, exact=exact))
    sd = float(np.nanstd(null))
    effect = float(value - np.nanmean(null))
    out = {
        "value": _f(value),
        "null": what,
        "null_mean": _f(np.nanmean(null)),
        "null_95": [_f(lo), _f(hi)],
        "n_null": len(null),
        "p": _f(p),
        "effect": _f(effect),
        "z": _f(effect / sd) if sd > 0 else None,
        "beyond_chance": bool(p < ALPHA),
    }
    if exact:
        out["min_p"] = _f(1 / len(null))
    return out


def _map_rows(tables: dict[str, list], r: MapResult, na: str, nb: str, n_held: int) -> None:
    s_lo, s_hi = null_band(r.cos_shuffle)
    p_lo, p_hi = null_band(r.cos_perm)
    s_p, p_p = perm_p(r.cos, r.cos_shuffle), perm_p(r.cos, r.cos_perm)
    o_lo, o_hi = null_band(r.overlap_perm)
    o_p = perm_p(r.overlap, r.overlap_perm)
    i_p = perm_p(r.ident, r.ident_null, exact=r.ident_exact)
    d_p = binomial_p(r.decode, n_held, 1 / (r.k + 1))
    if r.r2_null is not None:
        r_lo, r_hi = null_band(r.r2_null)
        r_p = perm_p(r.r2, r.r2_null)
    else:  # ridge: against the mean predictor
        r_lo = r_hi = np.zeros(len(r.r2))
        r_p = _gain_p(r.r2_gain)
    for li, (a, b) in enumerate(zip(r.layers_a, r.layers_b, strict=True)):
        row = {
            "model_a": na,
            "model_b": nb,
            "map": r.name,
            "layer_a": a,
            "layer_b": b,
            "dim": r.dim,
            "r2": _f(r.r2[li]),
            "r2_null_lo": _f(r_lo[li]),
            "r2_null_hi": _f(r_hi[li]),
            "r2_p": _f(r_p[li]),
            "lambda": _f(r.lam[li]) if r.lam is not None else None,
            "identification": _f(r.ident[li]),
            "chance": _f(1 / len(r.emotions)),
            "identification_p": _f(i_p[li]),
            "overlap": _f(r.overlap[li]),
            "k": r.k,
            "overlap_random": _f(r.k / r.dim),
            "overlap_null_lo": _f(o_lo[li]),
            "overlap_null_hi": _f(o_hi[li]),
            "overlap_p": _f(o_p[li]),
            "decoding": _f(r.decode[li]),
            "decoding_chance": _f(1 / (r.k + 1)),
            "decoding_p": _f(d_p[li]),
            "decoding_within_b": _f(r.decode_self[li]),
            "n_held": n_held,
        }
        tables["maps"].append(row)
        for e, emo in enumerate(r.emotions):
            tables["directions"].append(
                {
                    "model_a": na,
                    "model_b": nb,
                    "map": r.name,
                    "layer_a": a,
                    "layer_b": b,
                    "emotion": emo,
                    "cos": _f(r.cos[li, e]),
                    "reach": _f(r.reach[li, e]),
                    "shuffle_null_lo": _f(s_lo[li, e]),
                    "shuffle_null_hi": _f(s_hi[li, e]),
                    "shuffle_p": _f(s_p[li, e]),
                    "perm_null_lo": _f(p_lo[li, e]),
                    "perm_null_hi": _f(p_hi[li, e]),
                    "perm_p": _f(p_p[li, e]),
                }
            )


def _map_headlines(r: MapResult, nb: str, held_labels: np.ndarray) -> dict[str, Any]:
    m = r.name
    cos = r.cos.mean(1).mean()
    out = {
        f"{m}_cos": _headline(
            cos,
            r.cos_shuffle.mean((1, 2)),
            f"maps refitted on shuffled pairs ({len(r.cos_shuffle)})",
        )
        | {
            "statistic": "mean over layers and emotions of cos(W v_A, v_B)",
            "label_permuted": _headline(
                cos, r.cos_perm.mean((1, 2)), f"labels permuted ({len(r.cos_perm)})"
            ),
        },
        f"{m}_identification": _headline(
            r.ident.mean(),
            r.ident_null.mean(1),
            f"{nb}'s emotions relabelled ({len(r.ident_null)}"
            + (", exact)" if r.ident_exact else ")"),
            r.ident_exact,
        )
        | {
            "statistic": "mean over layers of the share of emotions identified",
            "chance": _f(1 / len(r.emotions)),
        },
        f"{m}_overlap": _headline(
            r.overlap.mean(), r.overlap_perm.mean(1), f"labels permuted ({len(r.overlap_perm)})"
        )
        | {
            "statistic": f"mean over layers of mean cos^2 of principal angles (k={r.k})",
            "random_subspace": _f(r.k / r.dim),
        },
    }
    # decoding: each layer's accuracy is binomial(n, 1/C)/n under the null; their mean over
    # layers has at most that variance (however correlated), so its binomial p is safe
    n = len(held_labels)
    chance = 1 / (r.k + 1)
    acc = float(r.decode.mean())
    p = float(binomial_p(np.array(acc), n, chance))
    sd = float(np.sqrt(chance * (1 - chance) / n))
    out[f"{m}_decoding"] = {
        "value": _f(acc),
        "null": f"chance 1/{r.k + 1} (binomial over {n} held-out rows)",
        "null_mean": _f(chance),
        "null_95": [_f(chance - 1.96 * sd), _f(chance + 1.96 * sd)],
        "p": _f(p),
        "beyond_chance": bool(p < ALPHA),
        "statistic": "mean over layers of the accuracy of B's centroids on A's mapped "
        "held-out rows",
        "within_b": _f(r.decode_self.mean()),
        "effect": _f(acc - chance),
        "z": _f((acc - chance) / sd),
    }
    if r.r2_null is not None:
        out[f"{m}_r2"] = _headline(
            r.r2.mean(), r.r2_null.mean(1), f"maps refitted on shuffled pairs ({len(r.r2_null)})"
        ) | {"statistic": f"mean over layers of held-out R^2 (top-{r.dim} PCA coordinates)"}
    else:
        p = float(_gain_p(r.r2_gain.mean(0, keepdims=True))[0])
        out[f"{m}_r2"] = {
            "value": _f(r.r2.mean()),
            "null": "mean predictor (R^2 = 0); p: sign test over the held-out rows of the "
            "squared-error gain over it",
            "null_mean": 0.0,
            "null_95": [0.0, 0.0],
            "p": _f(p),
            "effect": _f(r.r2.mean()),
            "beyond_chance": bool(p < ALPHA),
            "statistic": "mean over layers of held-out R^2",
        }
    return out


def _gain_p(gain: np.ndarray) -> np.ndarray:
    """Sign test per row of ``gain`` ``[L, n]``: p of at least that many held-out prompts
    predicted better than by the mean, if each were a coin flip. (Robust: one prompt with a
    huge activation dominates R^2 and would swamp a t-test.)"""
    from scipy.stats import binom

    n = gain.shape[1]
    return binom.sf((gain > 0).sum(1) - 1, n, 0.5)

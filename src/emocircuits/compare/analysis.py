"""Every cross-model comparison of two or more activation folders of the same stimuli:
``compare_models`` computes (nothing is written), ``write_comparison`` saves the tables
(CSV) and ``summary.json``; figures are drawn from the saved folder by
:func:`emocircuits.plots.analysis.plot_comparison`.

Per model pair, over every layer pair: linear CKA, RSA of emotion centroids and mutual kNN,
each with its permutation null. Per layer of the first model, at its best-matching layer of
the second (highest CKA; ``match="depth"``: the same relative depth): Procrustes and ridge
maps, mapped-direction cosines with two nulls, identification and subspace overlap (see
:mod:`emocircuits.compare.maps`). Headlines in ``summary.json`` are averages over the
layers of the first model (each with its best-matching layer of the second where the
measure is a grid), and their nulls are the same averages over null replicates, so choosing
the best layer is part of the null.

>>> res = compare_models([load_activations("runs/a"), load_activations("runs/b")])  # doctest: +SKIP
>>> write_comparison(res, "runs/compare-a-b")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from emocircuits.capture.store import ActivationStore
from emocircuits.compare.cka import cka_from_grams, cka_null, gram_matrices
from emocircuits.compare.maps import MAPS, MapResult, compare_directions, split_rows
from emocircuits.compare.naive import naive_table
from emocircuits.compare.perm import null_band, perm_p
from emocircuits.compare.rsa import knn_indices, mutual_knn, rsa
from emocircuits.errors import DataError
from emocircuits.geometry.analysis import write_tables
from emocircuits.geometry.directions import emotion_directions
from emocircuits.geometry.probes import binomial_p

MATCHES = ("cka", "depth")
ALPHA = 0.05


@dataclass
class Comparison:
    """Tidy tables (lists of flat dicts), the summary, and the settings."""

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _f(v: Any) -> float | None:
    """A number for the tables: 6 significant digits (tiny p-values stay > 0), NaN -> empty."""
    v = float(v)
    return None if np.isnan(v) else float(f"{v:.6g}")


def model_names(stores: Sequence[ActivationStore]) -> list[str]:
    """A short unique name per folder (its directory name, numbered if repeated)."""
    names = [s.path.name or str(s.path) for s in stores]
    seen: Counter[str] = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if names.count(n) == 1 else f"{n}#{seen[n]}")
    return out


def align_rows(
    stores: Sequence[ActivationStore], site: str, position: str
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Each folder's ``[n, L, W]`` activations in the first folder's row order (rows are
    matched by id), the ids and the labels. One-line errors when the folders do not hold
    the same stimuli with the same labels."""
    ref = stores[0]
    ids, labels = ref.ids, ref.labels
    if len(set(ids)) != len(ids):
        raise DataError("row ids are not unique; rows cannot be matched", where=str(ref.path))
    arrays = []
    for s in stores:
        x = s.get(site, position)
        if s is not ref:
            pos = {i: k for k, i in enumerate(s.ids)}
            missing = [i for i in ids if i not in pos]
            extra = len(s.ids) - (len(ids) - len(missing))
            if missing or extra:
                ex = f" (e.g. {missing[0]!r} is missing)" if missing else ""
                raise DataError(
                    f"not the same stimuli as {ref.path}: {len(missing)} of its ids missing, "
                    f"{extra} other ids{ex}; compare needs every model captured on one dataset",
                    where=str(s.path),
                )
            order = np.array([pos[i] for i in ids])
            other = np.asarray(s.labels)[order]
            bad = np.flatnonzero(other != np.asarray(labels))
            if len(bad):
                raise DataError(
                    f"row {ids[bad[0]]!r} is labelled {str(other[bad[0]])!r} here but "
                    f"{labels[bad[0]]!r} in {ref.path} ({len(bad)} rows differ)",
                    where=str(s.path),
                )
            x = x[order]
        arrays.append(x)
    return arrays, ids, labels


def outlier_rows(x: np.ndarray, ids: Sequence[str], factor: float = 10.0) -> list[str]:
    """Ids of rows whose norm is over ``factor`` times the layer's median at some layer:
    single rows that dominate every squared-error measure (e.g. R^2) of a comparison."""
    n = np.linalg.norm(x, axis=-1)
    ratio = (n / np.maximum(np.median(n, 0), 1e-30)).max(1)
    return [ids[i] for i in np.flatnonzero(ratio > factor)]


def _provenance(s: ActivationStore, name: str, site: str) -> dict[str, Any]:
    m = s.manifest
    return {
        "name": name,
        "activations": str(s.path),
        "model": m.get("model", {}),
        "dtype": m.get("dtype"),
        "dataset": m.get("dataset", {}),
        "width": m["width"],
        "layers": s.layers(site),
    }


def _depth(layers: list[int]) -> np.ndarray:
    return np.asarray(layers, float) / max(1, max(layers))


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


def compare_models(
    stores: Sequence[ActivationStore],
    names: Sequence[str] | None = None,
    *,
    site: str = "resid",
    position: str | None = None,
    method: str = "one_vs_rest",
    baseline: str = "neutral",
    k: int = 10,
    dim: int | None = None,
    n_perm: int = 1000,
    n_perm_heavy: int = 200,
    match: str = "cka",
    maps: Sequence[str] = MAPS,
    seed: int = 0,
    progress: bool = True,
) -> Comparison:
    """Compare every pair of ``stores`` (see the module docstring). ``n_perm``: label
    permutations, Mantel relabelings and ridge's shuffled pairs; ``n_perm_heavy``: the
    nulls that cost a matrix product per replicate over every layer pair (CKA, mutual kNN)
    and Procrustes refits (one SVD per replicate and layer)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if len(stores) < 2:
        raise DataError("compare needs at least two activation folders")
    for m in maps:
        if m not in MAPS:
            raise DataError(f"unknown map {m!r}; choose from {', '.join(MAPS)}")
    if match not in MATCHES:
        raise DataError(f"unknown layer matching {match!r}; choose from {', '.join(MATCHES)}")
    names = list(names) if names is not None else model_names(stores)
    if position is None:
        common = [p for p in stores[0].positions if all(p in s.positions for s in stores)]
        position = "mean" if "mean" in common else (common[0] if common else "mean")
    arrays, ids, labels = align_rows(stores, site, position)
    counts = Counter(labels)
    if baseline not in counts:
        raise DataError(f"baseline label {baseline!r} not in the labels", where=str(stores[0].path))
    small = [c for c, v in counts.items() if v < 4]
    if small:
        raise DataError(
            f"label {small[0]!r} has {counts[small[0]]} rows; the split into map rows and "
            "direction rows needs at least 4 per label",
            where=str(stores[0].path),
        )
    fit, held = split_rows(labels, seed)
    held_labels = np.asarray(labels)[held]
    layers = [s.layers(site) for s in stores]
    pairs = list(combinations(range(len(stores)), 2))
    total = len(pairs) * (2 * n_perm_heavy + max(len(x[0]) for x in arrays))
    bar = tqdm(total=total, desc="compare", unit="step", disable=not progress, leave=False)
    secs: Counter[str] = Counter()

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        secs[name] += time.perf_counter() - start

    grams, knn = [], []
    for x in arrays:
        with timed("grams"):
            g, diag = gram_matrices(x)
        with timed("mknn"):
            knn.append(knn_indices(g, diag, k))
        grams.append(g)
    tables: dict[str, list[dict[str, Any]]] = {"layer_pairs": [], "maps": [], "directions": []}
    summary_pairs = []
    for i, j in pairs:
        na, nb = names[i], names[j]
        la, lb = layers[i], layers[j]
        bar.set_postfix_str(f"{na} vs {nb}: CKA")
        with timed("cka"):
            cka = cka_from_grams(grams[i], grams[j])
            cka_n = cka_null(grams[i], grams[j], n_perm_heavy, seed, progress=bar.update)
        bar.set_postfix_str(f"{na} vs {nb}: RSA, mutual kNN")
        with timed("rsa"):
            rs = rsa(arrays[i], arrays[j], labels, n_perm, seed)
        with timed("mknn"):
            mk, mk_n = mutual_knn(knn[i], knn[j], n_perm_heavy, seed, progress=bar.update)
        grid = {
            "cka": (cka, cka_n, False),
            "rsa": (rs.rho, rs.null, rs.exact),
            "mknn": (mk, mk_n, False),
        }
        best_b = np.nanargmax(np.where(np.isnan(cka), -np.inf, cka), 1)
        if match == "depth":
            best_b = np.abs(_depth(la)[:, None] - _depth(lb)[None]).argmin(1)
        da, db = _depth(la), _depth(lb)
        stats = {}
        for key, (obs, null, exact) in grid.items():
            lo, hi = null_band(null)
            stats[key] = (obs, lo, hi, perm_p(obs, null, exact))
        for a in range(len(la)):
            for b in range(len(lb)):
                row: dict[str, Any] = {
                    "model_a": na,
                    "model_b": nb,
                    "layer_a": la[a],
                    "layer_b": lb[b],
                    "depth_a": _f(da[a]),
                    "depth_b": _f(db[b]),
                    "matched": bool(best_b[a] == b),
                }
                for key, (obs, lo, hi, p) in stats.items():
                    row[key] = _f(obs[a, b])
                    row[f"{key}_null_lo"], row[f"{key}_null_hi"] = _f(lo[a, b]), _f(hi[a, b])
                    row[f"{key}_p"] = _f(p[a, b])
                tables["layer_pairs"].append(row)
        heads: dict[str, Any] = {}
        what = {
            "cka": f"rows of {nb} shuffled ({n_perm_heavy} permutations)",
            "rsa": f"{nb}'s classes relabelled ({len(rs.null)} relabelings"
            + (", exact)" if rs.exact else ")"),
            "mknn": f"rows of {nb} shuffled ({n_perm_heavy} permutations)",
        }
        for key, (obs, null, exact) in grid.items():
            # each layer of A at its best layer of B, averaged; the null does the same
            value = np.nanmean(np.nanmax(obs, 1))
            null_v = np.nanmean(np.nanmax(null, 2), 1)
            heads[key] = _headline(value, null_v, what[key], exact) | {
                "statistic": "mean over layers of A of the best value over layers of B"
            }
        bar.set_postfix_str(f"{na} vs {nb}: maps")
        with timed("maps"):
            res = compare_directions(
                arrays[i],
                arrays[j],
                labels,
                list(enumerate(best_b.tolist())),
                fit=fit,
                held=held,
                method=method,
                baseline=baseline,
                dim=dim,
                n_perm=n_perm,
                n_shuffle=min(n_perm, n_perm_heavy),
                maps=maps,
                layers_a=la,
                layers_b=lb,
                seed=seed,
                progress=lambda _: bar.update(1),
            )
        for r in res.values():
            _map_rows(tables, r, na, nb, len(held))
            heads.update(_map_headlines(r, nb, held_labels))
        summary_pairs.append(
            {
                "model_a": na,
                "model_b": nb,
                "widths": [arrays[i].shape[-1], arrays[j].shape[-1]],
                "matched_layers": {str(la[a]): lb[b] for a, b in enumerate(best_b.tolist())},
                "measures": heads,
            }
        )
    bar.close()
    with timed("naive"):
        naive = _naive(arrays, labels, names, method, baseline)  # only pairs of equal width
    if naive:
        tables["naive"] = naive
    summary = {
        "format": "emocircuits.compare",
        "version": 1,
        "models": [
            _provenance(s, n, site) | {"outlier_rows": outlier_rows(x, ids)}
            for s, n, x in zip(stores, names, arrays, strict=True)
        ],
        "settings": {
            "site": site,
            "position": position,
            "method": method,
            "baseline": baseline,
            "k": k,
            "dim": dim,
            "n_perm": n_perm,
            "n_perm_heavy": n_perm_heavy,
            "match": match,
            "maps": list(maps),
            "seed": seed,
            "alpha": ALPHA,
            "n_rows": len(ids),
            "n_fit": len(fit),
            "n_held": len(held),
            "per_label": dict(counts),
        },
        "pairs": summary_pairs,
        "seconds": {"total": round(time.perf_counter() - t0, 2)}
        | {k: round(v, 2) for k, v in secs.items()},
    }
    return Comparison(tables, summary)


def _naive(
    arrays: list[np.ndarray], labels: list[str], names: list[str], method: str, baseline: str
) -> list[dict[str, Any]]:
    dirs = {
        n: emotion_directions(x, labels, method=method, baseline=baseline)
        for n, x in zip(names, arrays, strict=True)
    }
    return naive_table(dirs)


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


def write_comparison(res: Comparison, out: str | Path) -> Path:
    """Write ``{table}.csv`` and ``summary.json`` (last) into ``out``."""
    return write_tables(out, res.tables, {"summary.json": res.summary})

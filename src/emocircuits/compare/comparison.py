"""Every cross-model comparison of two or more activation stores of the same stimuli:
:func:`compare_models` computes, and its :class:`~emocircuits.compare.result.ComparisonResult`
saves the tables (CSV), ``summary.json`` and the figures, exactly as ``emocircuits compare
--out`` writes them.

Per model pair, over every layer pair: linear CKA, RSA of emotion centroids and mutual kNN,
each with its permutation null. Per layer of the first model, at its best-matching layer of
the second (highest CKA; ``match="depth"``: the same relative depth): Procrustes and ridge
maps, mapped-direction cosines with two nulls, identification and subspace overlap (see
:mod:`emocircuits.compare.maps`). Headlines in ``summary.json`` are averages over the
layers of the first model (each with its best-matching layer of the second where the
measure is a grid), and their nulls are the same averages over null replicates, so choosing
the best layer is part of the null (:mod:`emocircuits.compare.headlines`).

>>> res = compare_models([load_activations("runs/a"), load_activations("runs/b")])  # doctest: +SKIP
>>> res.save("runs/compare-a-b")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import combinations
from typing import Any

import numpy as np

from emocircuits.capture.store import ActivationStore
from emocircuits.compare.cka import cka_from_grams, cka_null, gram_matrices
from emocircuits.compare.common import as_store, store_meta, store_path, where
from emocircuits.compare.headlines import ALPHA, _f, _headline, _map_headlines, _map_rows
from emocircuits.compare.maps import MAPS, compare_directions, split_rows
from emocircuits.compare.naive import naive_table
from emocircuits.compare.perm import null_band, perm_p
from emocircuits.compare.result import FORMAT, ComparisonResult
from emocircuits.compare.rsa import knn_indices, mutual_knn, rsa
from emocircuits.errors import DataError
from emocircuits.geometry.directions import emotion_directions

MATCHES = ("cka", "depth")
#: the measures of every stimulus, not of the emotions (printed apart from the rest)
GENERAL = ("cka", "mknn", "procrustes_r2", "ridge_r2")


def model_names(stores: Sequence[ActivationStore]) -> list[str]:
    """A short unique name per store: its folder's name (numbered if repeated); a store
    held in memory is named by its model.

    >>> model_names([load_activations("runs/a"), load_activations("other/a")])  # doctest: +SKIP
    ['a#1', 'a#2']
    """
    names = []
    for k, s in enumerate(stores):
        path = store_path(s)
        model = store_meta(s).get("model", {}).get("name")
        names.append((path.name or str(path)) if path is not None else model or f"model{k + 1}")
    seen: Counter[str] = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if names.count(n) == 1 else f"{n}#{seen[n]}")
    return out


def align_rows(
    stores: Sequence[ActivationStore], site: str, position: str
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Each store's ``[n, L, W]`` activations in the first store's row order (rows are
    matched by id), the ids and the labels. One-line errors when the stores do not hold
    the same stimuli with the same labels.

    >>> (xa, xb), ids, labels = align_rows([acts_a, acts_b], "resid", "mean")  # doctest: +SKIP
    >>> xa.shape[0] == xb.shape[0] == len(ids)  # doctest: +SKIP
    True
    """
    ref = stores[0]
    ids, labels = ref.ids, ref.labels
    if len(set(ids)) != len(ids):
        raise DataError("row ids are not unique; rows cannot be matched", where=where(ref))
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
                    f"not the same stimuli as {where(ref)}: {len(missing)} of its ids missing, "
                    f"{extra} other ids{ex}; compare needs every model captured on one dataset",
                    where=where(s),
                )
            order = np.array([pos[i] for i in ids])
            other = np.asarray(s.labels)[order]
            bad = np.flatnonzero(other != np.asarray(labels))
            if len(bad):
                raise DataError(
                    f"row {ids[bad[0]]!r} is labelled {str(other[bad[0]])!r} here but "
                    f"{labels[bad[0]]!r} in {where(ref)} ({len(bad)} rows differ)",
                    where=where(s),
                )
            x = x[order]
        arrays.append(x)
    return arrays, ids, labels


def outlier_rows(x: np.ndarray, ids: Sequence[str], factor: float = 10.0) -> list[str]:
    """Ids of rows whose norm is over ``factor`` times the layer's median at some layer:
    single rows that dominate every squared-error measure (e.g. R^2) of a comparison.

    >>> x = np.ones((4, 2, 3)); x[2, 1] *= 100
    >>> outlier_rows(x, ["a", "b", "c", "d"])
    ['c']
    """
    n = np.linalg.norm(x, axis=-1)
    ratio = (n / np.maximum(np.median(n, 0), 1e-30)).max(1)
    return [ids[i] for i in np.flatnonzero(ratio > factor)]


def _provenance(s: ActivationStore, name: str, site: str, width: int) -> dict[str, Any]:
    m = store_meta(s)
    path = store_path(s)
    return {
        "name": name,
        "activations": None if path is None else str(path),
        "model": m.get("model", {}),
        "dtype": m.get("dtype"),
        "dataset": m.get("dataset", {}),
        "width": width,
        "layers": s.layers(site),
    }


def _depth(layers: list[int]) -> np.ndarray:
    return np.asarray(layers, float) / max(1, max(layers))


def compare_models(
    acts: Sequence[ActivationStore | str | os.PathLike[str]],
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
) -> ComparisonResult:
    """Compare every pair of activation stores (or folders) of the same stimuli, captured
    from different models (see the module docstring); rows are matched by id.

    ``names``: one short name per store (default: the folder names). ``position``: the
    position rule (default ``mean`` if every store has it, else the first they share).
    ``method``: the emotion directions compared through the maps. ``match``: the layer of
    the second model paired with each layer of the first (``cka``: highest CKA; ``depth``:
    the same relative depth). ``maps``: ``procrustes``, ``ridge``. ``dim``: Procrustes'
    principal components (default min(64, fit rows / 4)). ``k``: mutual kNN neighbours.
    ``n_perm``: label permutations, Mantel relabelings and ridge's shuffled pairs;
    ``n_perm_heavy``: the nulls that cost a matrix product per replicate over every layer
    pair (CKA, mutual kNN) and Procrustes refits (one SVD per replicate and layer).
    ``seed``: the fit/held split and every permutation.

    >>> res = compare_models(["runs/smollm2", "runs/gemma3"], n_perm=100)  # doctest: +SKIP
    >>> res.save("runs/compare")  # doctest: +SKIP
    PosixPath('runs/compare')
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if len(acts) < 2:
        raise DataError("compare needs at least two activation folders")
    for m in maps:
        if m not in MAPS:
            raise DataError(f"unknown map {m!r}; choose from {', '.join(MAPS)}")
    if match not in MATCHES:
        raise DataError(f"unknown layer matching {match!r}; choose from {', '.join(MATCHES)}")
    if names is not None and len(names) != len(acts):
        raise DataError(f"{len(names)} names for {len(acts)} activation stores")
    stores = [as_store(a) for a in acts]
    for st in stores:
        st.get(site, position or st.default_position)  # names what is missing
    names = list(names) if names is not None else model_names(stores)
    if position is None:
        common = [p for p in stores[0].positions if all(p in s.positions for s in stores)]
        position = "mean" if "mean" in common else (common[0] if common else "mean")
    arrays, ids, labels = align_rows(stores, site, position)
    counts = Counter(labels)
    if baseline not in counts:
        raise DataError(f"baseline label {baseline!r} not in the labels", where=where(stores[0]))
    small = [c for c, v in counts.items() if v < 4]
    if small:
        raise DataError(
            f"label {small[0]!r} has {counts[small[0]]} rows; the split into map rows and "
            "direction rows needs at least 4 per label",
            where=where(stores[0]),
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

    try:
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
    finally:
        bar.close()
    with timed("naive"):
        naive = _naive(arrays, labels, names, method, baseline)  # only pairs of equal width
    if naive:
        tables["naive"] = naive
    summary = {
        "format": FORMAT,
        "version": 1,
        "models": [
            _provenance(s, n, site, x.shape[-1]) | {"outlier_rows": outlier_rows(x, ids)}
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
    return ComparisonResult(tables, summary)


def _naive(
    arrays: list[np.ndarray], labels: list[str], names: list[str], method: str, baseline: str
) -> list[dict[str, Any]]:
    dirs = {
        n: emotion_directions(x, labels, method=method, baseline=baseline)
        for n, x in zip(names, arrays, strict=True)
    }
    return naive_table(dirs)

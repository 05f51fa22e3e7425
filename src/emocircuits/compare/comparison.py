"""Every cross-model comparison of two or more activation stores of the same stimuli:
:func:`compare_models` computes, and its :class:`ComparisonResult` saves the tables (CSV),
``summary.json`` and the figures, exactly as ``emocircuits compare --out`` writes them.

Per model pair, over every layer pair: linear CKA, RSA of emotion centroids and mutual kNN,
each with its permutation null. Per layer of the first model, at its best-matching layer of
the second (highest CKA; ``match="depth"``: the same relative depth): Procrustes and ridge
maps, mapped-direction cosines with two nulls, identification and subspace overlap (see
:mod:`emocircuits.compare.maps`). Headlines in ``summary.json`` are averages over the
layers of the first model (each with its best-matching layer of the second where the
measure is a grid), and their nulls are the same averages over null replicates, so choosing
the best layer is part of the null.

>>> res = compare_models([load_activations("runs/a"), load_activations("runs/b")])  # doctest: +SKIP
>>> res.save("runs/compare-a-b")  # doctest: +SKIP
>>> ComparisonResult.load("runs/compare-a-b").rows()[0]["measure"]  # doctest: +SKIP
'cka'
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from emocircuits.capture.store import ActivationStore
from emocircuits.compare.cka import cka_from_grams, cka_null, gram_matrices
from emocircuits.compare.common import (
    as_store,
    read_rows,
    safe_name,
    store_meta,
    store_path,
    where,
)
from emocircuits.compare.maps import MAPS, MapResult, compare_directions, split_rows
from emocircuits.compare.naive import naive_table
from emocircuits.compare.perm import null_band, perm_p
from emocircuits.compare.rsa import knn_indices, mutual_knn, rsa
from emocircuits.errors import DataError
from emocircuits.geometry.directions import emotion_directions
from emocircuits.geometry.probes import binomial_p
from emocircuits.results import Result
from emocircuits.tables import write_tables

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MATCHES = ("cka", "depth")
ALPHA = 0.05
FORMAT = "emocircuits.compare"
#: the measures of every stimulus, not of the emotions (printed apart from the rest)
GENERAL = ("cka", "mknn", "procrustes_r2", "ridge_r2")
#: the tables of a comparison folder, in the order they are written
TABLES = ("layer_pairs", "maps", "directions", "naive")


@dataclass(repr=False)
class ComparisonResult(Result):
    """What :func:`compare_models` found: tidy ``tables`` (lists of flat dicts: per layer
    pair, per map and layer, per mapped direction, and the pilot's naive table when two
    widths are equal) and the ``summary`` (provenance, settings, and per model pair one
    headline per measure beside its null).

    ``save(folder)`` writes ``{table}.csv``, ``summary.json`` (last) and, unless
    ``plots=False``, the figures in ``folder/figures``: what ``emocircuits compare --out
    folder`` writes. ``rows()`` is one row per model pair and measure.

    >>> res = ComparisonResult.load("runs/compare")  # doctest: +SKIP
    >>> [r["measure"] for r in res.rows() if r["beyond_chance"]][:2]  # doctest: +SKIP
    ['cka', 'rsa']
    >>> res.save("runs/compare-copy", plots=False)  # doctest: +SKIP
    PosixPath('runs/compare-copy')
    """

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    command: ClassVar[str] = "compare"

    def rows(self) -> list[dict[str, Any]]:
        """Per model pair and measure: its value, the null's 95% range, p, beyond chance."""
        out = []
        for pair in self.summary.get("pairs", []):
            for name, h in pair["measures"].items():
                lo, hi = h.get("null_95") or (None, None)
                out.append(
                    {
                        "pair": f"{pair['model_a']} vs {pair['model_b']}",
                        "measure": name,
                        "value": h["value"],
                        "null_lo": lo,
                        "null_hi": hi,
                        "p": h.get("p"),
                        "beyond_chance": h["beyond_chance"],
                    }
                )
        return out

    def title(self) -> str:
        names = " vs ".join(m["name"] for m in self.summary.get("models", []))
        rows = self.rows()
        yes = sum(r["beyond_chance"] for r in rows)
        return f"ComparisonResult: {names}: {yes} of {len(rows)} measures beyond chance"

    def save(self, path: str | os.PathLike[str], *, plots: bool = True) -> Path:
        """Write ``{table}.csv`` and ``summary.json`` (last) into ``path``, then the figures
        into ``path/figures`` unless ``plots`` is False; returns the folder."""
        out = write_tables(path, self.tables, {"summary.json": self.summary})
        if plots:
            self.plot(out / "figures")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ComparisonResult:
        """Read a folder written by :meth:`save` (or ``emocircuits compare``)."""
        folder = Path(path)
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            raise DataError(f"{folder} is not a comparison folder (no summary.json)")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summary.get("format") != FORMAT:
            raise DataError(f"{summary_path} is not an {FORMAT} summary")
        tables = {
            name: read_rows(folder / f"{name}.csv")
            for name in TABLES
            if (folder / f"{name}.csv").is_file()
        }
        return cls(tables, summary)

    def figure(self) -> Figure | None:
        """CKA over every layer pair of the first model pair, best matches marked."""
        return next((fig for _, fig in self._figures()), None)

    def plot(self, out: str | os.PathLike[str]) -> list[Path]:
        """Write every figure (PNG and SVG) into ``out``, per model pair: CKA over every
        layer pair, the mapped-direction cosines of each map with both nulls,
        identification and map quality by layer; returns the paths."""
        from emocircuits.plots.common import save_figure

        paths: list[Path] = []
        for stem, fig in self._figures():
            paths += save_figure(fig, Path(out) / stem)
        return paths

    def _figures(self) -> Iterator[tuple[str, Figure]]:
        """``(file stem, figure)`` pairs, drawn one at a time from the tables."""
        from emocircuits.plots.compare import (
            cka_heatmap,
            identification_curves,
            map_quality,
            mapped_cosines,
        )

        grid = self.tables.get("layer_pairs", [])
        maps = self.tables.get("maps", [])
        dirs = self.tables.get("directions", [])
        for ma, mb in dict.fromkeys((r["model_a"], r["model_b"]) for r in grid):
            stem = f"{safe_name(ma)}_vs_{safe_name(mb)}"
            rows = [r for r in grid if (r["model_a"], r["model_b"]) == (ma, mb)]
            la = sorted({r["layer_a"] for r in rows})
            lb = sorted({r["layer_b"] for r in rows})
            cka, p = np.full((len(la), len(lb)), np.nan), np.full((len(la), len(lb)), np.nan)
            best = np.zeros(len(la), dtype=int)
            for r in rows:
                a, b = la.index(r["layer_a"]), lb.index(r["layer_b"])
                cka[a, b], p[a, b] = _num(r["cka"]), _num(r["cka_p"])
                if _truthy(r["matched"]):
                    best[a] = b
            yield (
                f"{stem}-cka",
                cka_heatmap(cka, la, lb, name_a=ma, name_b=mb, best_b=best, p=p),
            )
            by_map: dict[str, list[dict[str, Any]]] = {}
            for r in maps:
                if (r["model_a"], r["model_b"]) == (ma, mb):
                    by_map.setdefault(r["map"], []).append(r)
            acc, acc_p, r2 = {}, {}, {}
            layers: list[int] = []
            for m, rs in by_map.items():
                layers = [r["layer_a"] for r in rs]
                acc[m] = np.array([_num(r["identification"]) for r in rs], float)
                acc_p[m] = np.array([_num(r["identification_p"]) for r in rs], float)
                r2[m] = np.array([_num(r["r2"]) for r in rs], float)
                drows = [r for r in dirs if (r["model_a"], r["model_b"], r["map"]) == (ma, mb, m)]
                emotions = list(dict.fromkeys(r["emotion"] for r in drows))

                def col(key: str, drows: list = drows, emotions: list = emotions) -> np.ndarray:
                    return np.array(
                        [[_num(r[key]) for r in drows if r["emotion"] == e] for e in emotions]
                    )

                yield (
                    f"{stem}-{m}-cosines",
                    mapped_cosines(
                        layers,
                        dict(zip(emotions, col("cos"), strict=True)),
                        null_lo=col("shuffle_null_lo").min(0),
                        null_hi=col("shuffle_null_hi").max(0),
                        perm_lo=col("perm_null_lo").min(0),
                        perm_hi=col("perm_null_hi").max(0),
                        title=f"{m} map {ma} → {mb}: cos(W v_A, v_B) per emotion (held-out rows)",
                        xlabel=f"layer of {ma} (each with its best-matching layer of {mb})",
                    ),
                )
            if acc:
                chance = 1.0 / max(1, len({r["emotion"] for r in dirs}))
                yield (
                    f"{stem}-identification",
                    identification_curves(
                        layers, acc, chance=chance, p=acc_p,
                        title=f"Cross-model identification {ma} → {mb}",
                    ),
                )  # fmt: skip
                yield (
                    f"{stem}-r2",
                    map_quality(layers, r2, title=f"Held-out R² of the maps {ma} → {mb}"),
                )


def _num(v: Any) -> float:
    """A table cell as a number for a figure (empty or None: NaN)."""
    return np.nan if v is None or v == "" else float(v)


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("true", "1")


def _f(v: Any) -> float | None:
    """A number for the tables: 6 significant digits (tiny p-values stay > 0), NaN -> empty."""
    v = float(v)
    return None if np.isnan(v) else float(f"{v:.6g}")


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

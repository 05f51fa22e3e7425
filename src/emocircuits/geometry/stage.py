"""The geometry stage: the whole within-model analysis of one activation store (RQ1), as
tidy tables, figures drawn from them, and a :class:`GeometryResult` that saves itself.

:func:`analyze_geometry` computes, for every site and position rule captured (no model is
run):

- ``similarity``: cosines between emotion directions, debiased direction norms and
  class-mean distances per layer with bootstrap intervals, for ``mean_diff``,
  ``one_vs_rest`` and the pilot's ``raw_mean`` (labelled);
- ``stability``: split-half cosine of each direction with itself (mean and 2.5-97.5%
  over random halves), its full-sample projection (:func:`~.similarity.half_to_full`) and
  the bootstrap self-cosine;
- ``shared``: the shared-component diagnosis of raw means (cosine of each class mean with
  the global mean; raw vs centred cosines between class means);
- ``agreement``: directions from other methods (``one_vs_rest``; ``pca`` and ``probe`` on the
  probed sites) and other position rules against ``mean_diff`` at the main rule, and
  against the same directions from a second store (another preset) when given;
- ``subspaces``: overlap between the ``between`` emotion subspaces of every pair of layers,
  of the main rule and each other rule, and of the two stores, with the analytic k/d null,
  a label-permutation null and p-values;
- ``probes``: k-fold logistic-regression and nearest-class-mean accuracy per layer.

``GeometryResult.save(folder)`` writes the tables (CSV), the probes (JSON), ``summary.json``
and the figures: the folder ``emocircuits geometry --out`` writes. The figures are drawn
from the saved tables (:mod:`emocircuits.plots.analysis`), so they can be redrawn without
recomputing.

>>> res = analyze_geometry(load_activations("runs/ext-smollm2"))   # doctest: +SKIP
>>> res.save("runs/ext-smollm2-geometry")                         # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from emocircuits.capture.store import ActivationStore, as_store, is_token_key
from emocircuits.errors import DataError
from emocircuits.geometry.directions import CONTRASTS
from emocircuits.geometry.probes import (
    binomial_p,
    check_classes,
    check_same_model,
    cross_validated,
    wilson_interval,
)
from emocircuits.geometry.similarity import (
    agreement,
    geometries,
    half_to_full,
    shared_component,
    split_half_stability,
)
from emocircuits.geometry.subspaces import KINDS, overlap_test
from emocircuits.results import Result
from emocircuits.tables import read_table, write_tables

SIMILARITY_METHODS = ("mean_diff", "one_vs_rest", "raw_mean")
STABILITY_METHODS = ("mean_diff", "one_vs_rest")
AGREEMENT_METHODS = ("one_vs_rest", "pca", "probe")
TABLES = ("similarity", "stability", "shared", "agreement", "subspaces")


@dataclass(repr=False)
class GeometryResult(Result):
    """Tidy tables (lists of flat dicts) of one store's within-model analysis, the k-fold
    probes (``probes_cv.json``) and ``summary.json``. ``rows()``: per layer of the residual
    stream at the main rule, the split-half stability, the shared component and the k-fold
    probe accuracy. ``projection`` holds what the class-projection figure needs (the rows
    at the layer the k-fold probe likes best); it is not saved, so a loaded result redraws
    every figure but that one."""

    command: ClassVar[str] = "geometry"

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    projection: dict[str, Any] | None = None

    @property
    def site(self) -> str:
        """The site the headline and the figures are about (resid when analysed)."""
        sites = self.summary["sites"]
        return "resid" if "resid" in sites else sites[0]

    def rows(self) -> list[dict[str, Any]]:
        site, pos = self.site, self.summary["main_position"]
        by_layer: dict[int, dict[str, Any]] = {}

        def add(layer: int, key: str, values: list[float]) -> None:
            by_layer.setdefault(layer, {"layer": layer})[key] = float(np.mean(values))

        groups: dict[tuple[int, str], list[float]] = {}
        for r in self.tables.get("stability", []):
            if (r["site"], r["position"], r["method"], r["measure"]) == (
                site, pos, "mean_diff", "split_half_cos"
            ):  # fmt: skip
                groups.setdefault((r["layer"], "split_half_cos"), []).append(r["value"])
        for r in self.tables.get("shared", []):
            if (
                r["site"] == site
                and r["position"] == pos
                and r["measure"] != "cos_with_global_mean"
            ):
                groups.setdefault((r["layer"], f"{r['measure']}_mean"), []).append(r["value"])
        for (layer, key), values in sorted(groups.items()):
            add(layer, key, values)
        probes = self.probes.get("sites", {}).get(site, {})
        for m, acc in probes.items():
            for layer, a in zip(self.probes["layers"][site], acc, strict=True):
                add(layer, f"cv_{m}", [a])
        return [by_layer[k] for k in sorted(by_layer)]

    def title(self) -> str:
        s = self.summary
        model = s.get("model", {}).get("name", "?")
        data = Path(str(s.get("dataset", {}).get("source", "?"))).stem
        return f"GeometryResult: {model} · {data} · {self.site}/{s['main_position']}"

    def figure(self) -> Any | None:
        """k-fold probe accuracy by layer (the split-half stability without probes)."""
        from emocircuits.plots.geometry import probe_accuracy, stability_curves

        rows, site = self.rows(), self.site
        layers = [r["layer"] for r in rows]
        probes = self.probes.get("sites", {}).get(site)
        if probes:
            return probe_accuracy(
                self.probes["layers"][site], {m: np.array(v) for m, v in probes.items()},
                chance=self.probes["chance"], title=self.title(),
            )  # fmt: skip
        if not rows or "split_half_cos" not in rows[0]:
            return None
        return stability_curves(
            layers, {"mean_diff": np.array([r["split_half_cos"] for r in rows])},
            title=self.title(),
        )  # fmt: skip

    def save(self, path: str | Path, *, figures: bool = True) -> Path:
        """Write ``{table}.csv``, ``probes_cv.json``, ``summary.json`` and (unless
        ``figures=False``) the figures: what ``emocircuits geometry --out path`` writes."""
        out = write_tables(
            path, self.tables, {"probes_cv.json": self.probes, "summary.json": self.summary}
        )
        if figures:
            self.save_figures(out)
        return out

    def save_figures(self, out: str | Path) -> list[Path]:
        """Draw the figures of the saved folder ``out`` into ``out/figures``; the paths."""
        from emocircuits.plots.analysis import plot_geometry, plot_projection
        from emocircuits.plots.common import save_figure

        out = Path(out)
        paths = plot_geometry(out, site=self.site)
        pr = self.projection
        if pr is not None:
            fig = plot_projection(pr["points"], pr["labels"], pr["explained"], title=pr["title"])
            paths += save_figure(fig, out / "figures" / pr["stem"])
        return paths

    @classmethod
    def load(cls, path: str | Path) -> GeometryResult:
        """Read a folder written by :meth:`save` (or ``emocircuits geometry``)."""
        import json

        folder = Path(path)
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            raise DataError(f"{folder} is not a geometry folder (no summary.json)")
        summary = json.loads(summary_path.read_text())
        if summary.get("format") != "emocircuits.geometry":
            raise DataError("not an emocircuits geometry summary", where=str(summary_path))
        tables = {name: read_table(folder, name) for name in TABLES}
        probes = json.loads((folder / "probes_cv.json").read_text())
        return cls(tables, probes, summary)


def _f(v: Any) -> float:
    return round(float(v), 6)


def analyze_geometry(
    acts: ActivationStore | str | Path,
    *,
    compare: ActivationStore | str | Path | None = None,
    sites: list[str] | None = None,
    positions: list[str] | None = None,
    position: str | None = None,
    baseline: str = "neutral",
    n_boot: int = 1000,
    n_splits: int = 100,
    n_perm: int = 200,
    folds: int = 5,
    probe_sites: tuple[str, ...] = ("resid",),
    subspace: str = "between",
    k: int | None = None,
    var: float = 0.5,
    seed: int = 0,
) -> GeometryResult:
    """Every within-model analysis of ``acts`` (a store or a folder; see the module
    docstring). ``sites``: default every captured site but heads. ``position`` is the main
    rule (default ``mean`` when captured: mean-pooled directions steer best); ``compare`` a
    store of the same model on another dataset (e.g. ``baseline`` vs ``extended``). k-fold
    probes run on ``probe_sites`` (``emocircuits probe`` for more). ``subspace``:
    ``between`` (one subspace of the class-mean contrasts, ``k`` <= classes-1) or ``within``
    (one per emotion, ``k`` given or chosen by explained variance ``var``; slower: its
    permutation null recomputes a PCA per permutation).

    >>> res = analyze_geometry("runs/ext-smollm2", n_boot=200)   # doctest: +SKIP
    >>> res.rows()[0]["cv_logreg"], res.save("runs/ext-geometry")  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    acts = as_store(acts)
    other = None if compare is None else as_store(compare)
    if subspace not in KINDS:
        raise DataError(f"unknown subspace kind {subspace!r}; choose from {', '.join(KINDS)}")
    for site in sites or []:
        acts.get(site, acts.positions[0])  # names a site that was not captured
    sites = list(sites) if sites else [s for s in acts.sites if s != "heads"]
    positions = positions or [p for p in acts.positions if not is_token_key(f"x/{p}")]
    if not sites or not positions:
        raise DataError(
            "nothing to analyse: needs a resid/attn/mlp site and a per-prompt position rule "
            f"(captured: sites {acts.sites}, positions {acts.positions})",
            where=acts.where,
        )
    if position is None:
        position = "mean" if "mean" in positions else positions[0]
    if position not in positions:
        raise DataError(f"position {position!r} is not among {positions}", where=acts.where)
    labels = acts.labels
    if other is not None:
        for site in sites:
            check_same_model(acts, other, site, position)
    if baseline not in labels:
        raise DataError(f"baseline label {baseline!r} not in the labels", where=acts.where)
    if any(site in probe_sites for site in sites):
        check_classes(labels, labels, min_per_class=folds)
    res = GeometryResult()
    t = res.tables
    for key in ("similarity", "stability", "shared", "agreement", "subspaces"):
        t[key] = []
    timings: dict[str, float] = {}

    def tick(name: str, start: float) -> None:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

    for site in sites:
        layers = acts.layers(site)
        for pos in positions:
            x = acts.get(site, pos)
            where = {"site": site, "position": pos}
            s = time.perf_counter()
            gs = geometries(
                x, labels, SIMILARITY_METHODS, layers=layers, baseline=baseline,
                n_boot=n_boot, seed=seed,
            )  # fmt: skip
            for method, g in gs.items():
                for row in g.rows():
                    t["similarity"].append({**where, **row})
                for e in g.norm:
                    for i, layer in enumerate(layers):
                        t["stability"].append({
                            **where, "method": method, "emotion": e, "layer": layer,
                            "measure": "norm", "value": _f(g.norm[e][i]),
                            "lo": _f(g.norm_lo[e][i]), "hi": _f(g.norm_hi[e][i]),
                        })  # fmt: skip
                        t["stability"].append({
                            **where, "method": method, "emotion": e, "layer": layer,
                            "measure": "bootstrap_self_cos", "value": _f(g.self_cos[e][i]),
                            "lo": _f(g.self_cos_lo[e][i]), "hi": 1.0,
                        })  # fmt: skip
            tick("similarity+norms", s)
            s = time.perf_counter()
            for method in STABILITY_METHODS:
                sh = split_half_stability(
                    x, labels, method=method, baseline=baseline, n_splits=n_splits, seed=seed
                )
                for e, v in sh.items():
                    mean, lo, hi = v.mean(0), *np.quantile(v, [0.025, 0.975], axis=0)
                    full = half_to_full(mean)
                    for i, layer in enumerate(layers):
                        t["stability"].append({
                            **where, "method": method, "emotion": e, "layer": layer,
                            "measure": "split_half_cos", "value": _f(mean[i]),
                            "lo": _f(lo[i]), "hi": _f(hi[i]),
                        })  # fmt: skip
                        t["stability"].append({
                            **where, "method": method, "emotion": e, "layer": layer,
                            "measure": "full_sample_cos_est", "value": _f(full[i]),
                            "lo": _f(half_to_full(lo[i])), "hi": _f(half_to_full(hi[i])),
                        })  # fmt: skip
            tick("stability", s)
            s = time.perf_counter()
            sc = shared_component(x, labels, layers=layers)
            for c, v in sc.along_global.items():
                for i, layer in enumerate(layers):
                    t["shared"].append({
                        **where, "layer": layer, "class_1": c, "class_2": "",
                        "measure": "cos_with_global_mean", "value": _f(v[i]),
                    })  # fmt: skip
            for (a, b), v in sc.raw_cos.items():
                for i, layer in enumerate(layers):
                    for measure, arr in (("raw_cos", v), ("centred_cos", sc.centred_cos[(a, b)])):
                        t["shared"].append({
                            **where, "layer": layer, "class_1": a, "class_2": b,
                            "measure": measure, "value": _f(arr[i]),
                        })  # fmt: skip
            tick("shared", s)

        # agreement and subspaces, against the main position rule of this site
        x = acts.get(site, position)
        s = time.perf_counter()
        # the fitted methods (pca, probe) are compared where the probes run (resid by
        # default): their fits are most of this stage's time
        methods = [m for m in AGREEMENT_METHODS if site in probe_sites or m in CONTRASTS]
        comparisons: list[tuple[str, np.ndarray, list[str], str]] = [
            (f"method:{m}", x, labels, m) for m in methods
        ]
        comparisons += [(f"position:{p}", acts.get(site, p), labels, "mean_diff")
                        for p in positions if p != position]  # fmt: skip
        if other is not None and site in other.sites and position in other.positions:
            comparisons.append(
                (f"data:{other.manifest['dataset'].get('source', other.where)}",
                 other.get(site, position), other.labels, "mean_diff")
            )  # fmt: skip
        cache: dict = {}  # the reference side's resampled means, computed once per site
        for name, xb, lb, mb in comparisons:
            if xb.shape[1:] != x.shape[1:]:
                continue
            ag = agreement(
                x, labels, xb, lb, method_b=mb, baseline=baseline, label_a="mean_diff",
                label_b=name, layers=layers, n_boot=min(n_boot, 200), seed=seed, cache=cache,
            )  # fmt: skip
            for e, v in ag.cos.items():
                for i, layer in enumerate(layers):
                    t["agreement"].append({
                        "site": site, "position": position, "reference": "mean_diff",
                        "compared": name, "emotion": e, "layer": layer, "cos": _f(v[i]),
                        "lo": _f(ag.lo[e][i]), "hi": _f(ag.hi[e][i]),
                        "random_band": _f(ag.random_band),
                    })  # fmt: skip
        tick("agreement", s)
        s = time.perf_counter()
        tests = [("layers", None, None)]
        tests += [(f"position:{p}", acts.get(site, p), labels) for p in positions if p != position]
        if other is not None and site in other.sites and position in other.positions:
            tests.append((comparisons[-1][0], other.get(site, position), other.labels))
        kinds = [("between", None)] if subspace == "between" else [
            ("within", e) for e in dict.fromkeys(labels) if e != baseline
        ]  # fmt: skip
        for (name, xb, lb), (kind, emotion) in itertools.product(tests, kinds):
            if xb is not None and xb.shape[1:] != x.shape[1:]:
                continue
            ot = overlap_test(
                x, labels, xb, lb, kind=kind, emotion=emotion, k=k, var=var,
                baseline=baseline, n_perm=n_perm, seed=seed,
            )  # fmt: skip
            la = layers
            for i, layer_a in enumerate(la):
                cols = range(len(la)) if name == "layers" else [i]
                for j in cols:
                    t["subspaces"].append({
                        "site": site, "position": position, "compared": name,
                        "kind": ot.kind, "subspace": ot.name, "k": ot.k,
                        "layer_a": layer_a, "layer_b": la[j],
                        "overlap": _f(ot.overlap[i, j]),
                        "min_angle_deg": _f(ot.angles[i, j].min()),
                        "max_angle_deg": _f(ot.angles[i, j].max()),
                        "null_mean": _f(ot.null_mean[i, j]), "null_95": _f(ot.null_hi[i, j]),
                        "p_value": _f(ot.p_value[i, j]), "analytic_null": _f(ot.analytic),
                        "n_perm": ot.n_perm,
                    })  # fmt: skip
        tick("subspaces", s)
        if site in probe_sites:
            s = time.perf_counter()
            res.probes[site] = {
                m: [_f(v) for v in cross_validated(x, labels, m, k=folds, seed=seed)]
                for m in ("logreg", "ncm")
            }
            tick("probes", s)
    m = acts.manifest
    chance = max(labels.count(c) for c in set(labels)) / len(labels)
    intervals, p_values = {}, {}
    for site, accs in res.probes.items():
        intervals[site], p_values[site] = {}, {}
        for method, acc in accs.items():
            lo, hi = wilson_interval(np.array(acc), len(labels))
            intervals[site][method] = {"low": [_f(v) for v in lo], "high": [_f(v) for v in hi]}
            p_values[site][method] = [
                float(v) for v in binomial_p(np.array(acc), len(labels), chance)
            ]
    res.probes = {
        "format": "emocircuits.probe_cv",
        "mode": "cross_validation",
        "position": position,
        "folds": folds,
        "layers": {site: acts.layers(site) for site in sites},
        "chance": chance,
        "sites": res.probes,
        # 95% Wilson intervals and binomial p-values against chance over all rows (each
        # row is tested once across the folds)
        "ci": intervals,
        "p_value": p_values,
    }
    res.summary = {
        "format": "emocircuits.geometry",
        "version": 1,
        "main_position": position,
        "sites": sites,
        "positions": positions,
        "baseline": baseline,
        "n_boot": n_boot,
        "n_splits": n_splits,
        "n_perm": n_perm,
        "subspace": {"kind": subspace, "k": k, "var": var},
        "seed": seed,
        "activations": None if acts.path is None else str(acts.path),
        "other": None if other is None or other.path is None else str(other.path),
        "model": m.get("model", {}),
        "dtype": m.get("dtype"),
        "dataset": m.get("dataset", {}),
        "n_per_label": {c: labels.count(c) for c in dict.fromkeys(labels)},
        "seconds": {k: round(v, 2) for k, v in timings.items()}
        | {"total": round(time.perf_counter() - t0, 2)},
        "headline": _headline(res, position),
    }
    res.projection = _projection(acts, res, baseline)
    return res


def _projection(acts: ActivationStore, res: GeometryResult, baseline: str) -> dict | None:
    """What the figure of the classes at the layer the k-fold probe likes best needs."""
    from emocircuits.geometry.subspaces import class_projection

    best = res.summary["headline"].get("cv_logreg", {}).get("best_layer")
    if best is None:
        return None
    site, pos = res.site, res.summary["main_position"]
    x = acts.get(site, pos)[:, acts.layers(site).index(best)]
    points, explained = class_projection(x, acts.labels, baseline=baseline)
    return {
        "points": points,
        "labels": acts.labels,
        "explained": explained,
        "title": f"classes at layer {best} (best k-fold probe) · "
        f"{acts.manifest['model'].get('name')} · {site}/{pos}",
        "stem": f"projection-{site}-{pos}-layer{best}",
    }


def _headline(res: GeometryResult, position: str) -> dict[str, Any]:
    """A few numbers that answer RQ1 at a glance (residual stream, main rule)."""
    stab = [r for r in res.tables["stability"]
            if r["site"] == "resid" and r["position"] == position
            and r["method"] == "mean_diff" and r["measure"] == "split_half_cos"]  # fmt: skip
    out: dict[str, Any] = {}
    if stab:
        layers = sorted({r["layer"] for r in stab})
        mid = layers[len(layers) // 4 : 3 * len(layers) // 4 + 1]
        vals = [r["value"] for r in stab if r["layer"] in mid]
        out["split_half_mean_diff_middle_layers"] = {
            "layers": [mid[0], mid[-1]], "min": min(vals), "mean": _f(np.mean(vals)),
        }  # fmt: skip
    shared = [r for r in res.tables["shared"] if r["site"] == "resid" and r["position"] == position]
    raw = [r["value"] for r in shared if r["measure"] == "raw_cos"]
    cen = [r["value"] for r in shared if r["measure"] == "centred_cos"]
    if raw:
        out["raw_mean_cos_median"] = _f(np.median(raw))
        out["centred_mean_cos_median"] = _f(np.median(cen))
    if "resid" in res.probes.get("sites", {}):
        acc = res.probes["sites"]["resid"]
        layers = res.probes["layers"]["resid"]
        for mth, v in acc.items():
            i = int(np.argmax(v))
            out[f"cv_{mth}"] = {"best_layer": layers[i], "best": v[i], "layer0": v[0]}
    return out

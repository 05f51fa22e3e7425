"""Figures of a saved within-model analysis (the folder ``emocircuits geometry`` writes) and
of a probe file (``emocircuits probe``): read the tables, draw, save PNG + SVG. Nothing is
recomputed, so a figure can be redrawn or restyled without the activations.

>>> plot_geometry("runs/ext-smollm2-geometry")            # doctest: +SKIP
[PosixPath('runs/ext-smollm2-geometry/figures/norms-resid-mean.png'), ...]
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

import emocircuits.plots.geometry as figures
from emocircuits.errors import DataError
from emocircuits.plots.common import save_figure
from emocircuits.tables import read_table


def _series(rows: list[dict[str, Any]], key: str, value: str) -> tuple[list[int], dict]:
    """``{rows[key]: values by layer}`` for rows that share a layer axis."""
    layers = sorted({r["layer"] for r in rows})
    out: dict[Any, list[float]] = defaultdict(lambda: [np.nan] * len(layers))
    for r in rows:
        out[r[key]][layers.index(r["layer"])] = r[value]
    return layers, {k: np.array(v) for k, v in out.items()}


def plot_geometry(
    folder: str | Path,
    out: str | Path | None = None,
    *,
    site: str = "resid",
    position: str | None = None,
    method: str = "mean_diff",
) -> list[Path]:
    """All figures of a geometry folder for one site and position rule (default: the
    analysis' main rule), into ``out`` (default ``folder/figures``)."""
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"{folder} is not a geometry folder (no summary.json)")
    summary = json.loads(summary_path.read_text())
    position = position or summary["main_position"]
    out = Path(out) if out is not None else folder / "figures"
    model = summary.get("model", {}).get("name", "?")
    data = Path(str(summary.get("dataset", {}).get("source", "?"))).stem
    tag = f"{model} · {data} · {site}/{position}"
    sel = {"site": site, "position": position}

    def pick(rows: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
        return [r for r in rows if all(r.get(k) == v for k, v in {**sel, **kw}.items())]

    paths: list[Path] = []
    stem = f"{site}-{position}"
    stab = read_table(folder, "stability")
    rows = pick(stab, method=method, measure="norm")
    if not rows:
        raise DataError(f"no rows for site {site!r}, position {position!r} in {folder}")
    layers, val = _series(rows, "emotion", "value")
    _, lo = _series(rows, "emotion", "lo")
    _, hi = _series(rows, "emotion", "hi")
    fig = figures.layer_norms(layers, val, lo, hi, title=f"‖{method} direction‖ by layer\n{tag}")
    paths += save_figure(fig, out / f"norms-{stem}")

    rows = pick(stab, method=method, measure="split_half_cos")
    layers, val = _series(rows, "emotion", "value")
    _, lo = _series(rows, "emotion", "lo")
    _, hi = _series(rows, "emotion", "hi")
    fig = figures.stability_curves(
        layers, val, lo, hi, title=f"split-half stability of {method} directions\n{tag}",
        reference=0.9, reference_label="target 0.9",
    )  # fmt: skip
    paths += save_figure(fig, out / f"stability-{stem}")

    sim = pick(read_table(folder, "similarity"), method=method)
    for r in sim:
        r["pair"] = (r["emotion_1"], r["emotion_2"])
    layers, dist = _series(sim, "pair", "class_mean_distance")
    _, dlo = _series(sim, "pair", "distance_ci_low")
    _, dhi = _series(sim, "pair", "distance_ci_high")
    fig = figures.distance_curves(
        layers, dist, dlo, dhi, title=f"distance between class means\n{tag}"
    )
    paths += save_figure(fig, out / f"distances-{stem}")

    for m in ("mean_diff", "one_vs_rest", "raw_mean"):
        rows = pick(read_table(folder, "similarity"), method=m)
        if not rows:
            continue
        emotions = list(
            dict.fromkeys([r["emotion_1"] for r in rows] + [r["emotion_2"] for r in rows])
        )
        layers = sorted({r["layer"] for r in rows})
        cos = np.tile(np.eye(len(emotions)), (len(layers), 1, 1))
        clo, chi = cos.copy(), cos.copy()
        for r in rows:
            i, j, li = (
                emotions.index(r["emotion_1"]),
                emotions.index(r["emotion_2"]),
                layers.index(r["layer"]),
            )
            cos[li, i, j] = cos[li, j, i] = r["cosine"]
            clo[li, i, j] = clo[li, j, i] = r["ci_low"]
            chi[li, i, j] = chi[li, j, i] = r["ci_high"]
        what = (
            "the pilot's raw class means (shared component included)"
            if m == "raw_mean"
            else f"{m} directions"
        )
        fig = figures.similarity_heatmaps(
            emotions, cos, layers, lo=clo, hi=chi, title=f"cosine between {what}\n{tag}"
        )
        paths += save_figure(fig, out / f"similarity-{m}-{stem}")

    shared = pick(read_table(folder, "shared"))
    vals: dict[str, np.ndarray] = {}
    for measure, name in (("raw_cos", "raw"), ("centred_cos", "centred")):
        rows = [
            dict(r, pair=f"{name} {r['class_1']}–{r['class_2']}")
            for r in shared
            if r["measure"] == measure
        ]
        layers, v = _series(rows, "pair", "value")
        vals.update(v)
    fig = figures.stability_curves(
        layers, vals,
        title=f"class means: raw cosines ≈ 1 (shared component), centred not\n{tag}",
        ylabel="cosine between class means",
    )  # fmt: skip
    paths += save_figure(fig, out / f"shared-component-{stem}")

    sub = [r for r in read_table(folder, "subspaces")
           if r["site"] == site and r["compared"] == "layers"]  # fmt: skip
    for name in dict.fromkeys(r.get("subspace", "emotions") for r in sub):
        rows = [r for r in sub if r.get("subspace", "emotions") == name]
        layers = sorted({r["layer_a"] for r in rows})
        mat = np.full((len(layers), len(layers)), np.nan)
        for r in rows:
            mat[layers.index(r["layer_a"]), layers.index(r["layer_b"])] = r["overlap"]
        what = "emotion subspaces" if name == "emotions" else f"{name} subspaces (PCA)"
        fig = figures.subspace_overlap(
            mat, [str(v) for v in layers], [str(v) for v in layers],
            title=f"overlap of {rows[0]['k']}-dim {what} between layers\n{model} · "
            f"{site}/{rows[0]['position']} · permutation null in subspaces.csv",
            xlabel="layer", ylabel="layer", null=rows[0]["analytic_null"],
        )  # fmt: skip
        suffix = "" if name == "emotions" else f"-{name}"
        paths += save_figure(fig, out / f"subspace-layers-{site}{suffix}")

    probes_path = folder / "probes_cv.json"
    if probes_path.is_file():
        pj = json.loads(probes_path.read_text())
        if site in pj.get("sites", {}):
            acc = {m: np.array(v) for m, v in pj["sites"][site].items()}
            layers = pj["layers"][site]
            lexical = (
                {m: float(v[layers.index(0)]) for m, v in acc.items()} if 0 in layers else None
            )
            ci = pj.get("ci", {}).get(site, {})
            lo = {m: np.array(v["low"]) for m, v in ci.items()} or None
            hi = {m: np.array(v["high"]) for m, v in ci.items()} or None
            fig = figures.probe_accuracy(
                layers, acc, chance=pj["chance"], lo=lo, hi=hi,
                lexical=lexical if pj["position"] == "mean" else None,
                title=f"{pj['folds']}-fold probe accuracy · {model} · {data} · "
                f"{site}/{pj['position']}",
                ylabel=f"{pj['folds']}-fold accuracy (within one prompt style)",
            )  # fmt: skip
            paths += save_figure(fig, out / f"probes-cv-{site}")
    return paths


def probe_figure(pj: dict[str, Any]) -> Any:
    """The accuracy-by-layer figure of a probe result (the JSON ``emocircuits probe``
    writes, as a dict).

    >>> fig = probe_figure(ProbeResult.load("runs/probe.json").to_json())  # doctest: +SKIP
    """
    res = pj["methods"]
    acc = {m: np.array(r["accuracy"]) for m, r in res.items()}
    lo = {m: np.array(r["ci_low"]) for m, r in res.items()}
    hi = {m: np.array(r["ci_high"]) for m, r in res.items()}
    lex = pj.get("lexical_baseline") or {}
    lexical = {m: lex[m] for m in res if m in lex} or None
    train = Path(str(pj["provenance"]["train"]["dataset"].get("source", "train"))).stem
    test = pj["provenance"].get("test")
    where = (
        f"trained on {train}, tested on {Path(str(test['dataset'].get('source'))).stem}"
        if test
        else "k-fold"
    )
    model = pj["provenance"]["train"]["model"].get("name", "?")
    return figures.probe_accuracy(
        pj["layers"], acc, lo=lo, hi=hi, chance=pj["chance"], lexical=lexical,
        title=f"probe accuracy by layer · {model} · {pj['site']}/{pj['position']}\n{where}",
        ylabel="accuracy on the test set" if test else "k-fold accuracy",
    )  # fmt: skip


def plot_probe(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """The accuracy-by-layer figure of a file written by ``emocircuits probe``."""
    path = Path(path)
    try:
        pj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read probe file ({e})", where=str(path)) from None
    if pj.get("format") != "emocircuits.probe":
        raise DataError("not an emocircuits probe file", where=str(path))
    out = Path(out) if out is not None else path.parent
    return save_figure(probe_figure(pj), out / path.stem)


def plot_projection(
    points: np.ndarray, labels: list[str], explained: np.ndarray, *, title: str
) -> Any:
    """2-D view of the classes at one layer: ``points [n, 2]`` and the share of
    between-class variance of each axis, from
    :func:`emocircuits.geometry.subspaces.class_projection`.

    >>> fig = plot_projection(np.zeros((2, 2)), ["a", "b"], np.array([0.6, 0.4]), title="t")
    """
    return figures.projection_2d(
        points, labels, title=title,
        xlabel=f"emotion axis 1 ({explained[0]:.0%} of between-class variance; "
        "standardised units)",
        ylabel=f"emotion axis 2 ({explained[1]:.0%})" if len(explained) > 1 else "",
    )  # fmt: skip


def plot_vectors(v: Any, out: str | Path, stem: str) -> list[Path]:
    """The pilot's three figures of an :class:`~emocircuits.geometry.vectors.EmotionVectors`
    (``emocircuits vectors``): direction norms by layer, distances between the emotions'
    (raw) direction vectors, and cosine heatmaps, as ``out/{stem}-*``. Point estimates
    only: ``emocircuits geometry`` adds the intervals."""
    out = Path(out)
    model = v.provenance.get("model", {}).get("name", "?")
    data = Path(str(v.provenance.get("dataset", {}).get("source", "?"))).stem
    tag = f"{model} · {data} · {v.site}/{v.position} · {v.method} (no intervals)"
    paths = save_figure(
        figures.layer_norms(v.layers, v.norms, title=f"‖direction‖ by layer\n{tag}",
                            ylabel="‖direction‖ (plug-in)"),
        out / f"{stem}-norms",
    )  # fmt: skip
    raw = {e: v.directions[e] * v.norms[e][:, None] for e in v.emotions}
    pairs = [(a, b) for i, a in enumerate(v.emotions) for b in v.emotions[i + 1 :]]
    dist = {(a, b): np.linalg.norm(raw[a] - raw[b], axis=-1) for a, b in pairs}
    paths += save_figure(
        figures.distance_curves(v.layers, dist,
                                title=f"distance between direction vectors\n{tag}",
                                ylabel="‖v_a − v_b‖ (plug-in)"),
        out / f"{stem}-distances",
    )  # fmt: skip
    d = np.stack([v.directions[e] for e in v.emotions], 1)  # [L, E, W]
    cos = np.einsum("lew,lfw->lef", d, d)
    paths += save_figure(
        figures.similarity_heatmaps(
            v.emotions, cos, v.layers, title=f"cosine between directions\n{tag}"
        ),
        out / f"{stem}-similarity",
    )
    return paths


# ------------------------------------------------------------------------- comparisons
def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("true", "1")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

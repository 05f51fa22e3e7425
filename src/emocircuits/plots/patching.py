"""Figures of activation patching and direction ablation, drawn from their tables (the rows
of ``patching.csv``, ``ablation_ld.csv`` and ``ablation_probe.csv``; see
:mod:`emocircuits.interventions.patching` and :mod:`~emocircuits.interventions.ablation`).
Pure functions from rows to a :class:`~matplotlib.figure.Figure`; :func:`plot_patch_folder`
and :func:`plot_ablation_folder` read a written folder and save PNG + SVG, so a figure can
be redrawn without running the model.

- :func:`patching_heatmaps`: recovered fraction per (layer, position), full and
  directional side by side, one figure per emotion;
- :func:`directional_by_layer`: directional patching of every position, per layer, with
  its bootstrap band, against the random-direction control;
- :func:`ablation_effects`: the fraction of the LD gap and of the probe's above-chance
  accuracy removed by each target, beside the random draws (the null) and their p;
- :func:`ablation_probe_layers`: probe accuracy by layer, clean, ablated and the range of
  the random draws.

>>> rows = [{"emotion": "anger", "kind": k, "layer": l, "position": p, "token": "",
...          "recovered": 0.5, "ci_low": 0.4, "ci_high": 0.6}
...         for k in ("full", "directional") for l in (0, 1) for p in ("body", "-1")]
>>> patching_heatmaps(rows, "anger", title="anger").axes[0].get_title()
'full residual'
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from emocircuits.errors import DataError
from emocircuits.plots.common import _figure, label_color, save_figure

_NULL = "0.55"


def _num(v: Any) -> float:
    """A table value as a float (``""``/None -> NaN)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _grid(rows: Sequence[dict], kind: str, columns: list[str], layers: list[int]) -> np.ndarray:
    g = np.full((len(layers), len(columns)), np.nan)
    for r in rows:
        if r["kind"] == kind and str(r["position"]) in columns:
            g[layers.index(int(r["layer"])), columns.index(str(r["position"]))] = _num(
                r["recovered"]
            )
    return g


def patching_heatmaps(rows: Sequence[dict], emotion: str, *, title: str) -> Figure:
    """Two heatmaps, layers (rows, embedding at the bottom) by positions counted from the
    end (columns): the recovered fraction of the full-residual patch and of the directional
    patch, each with its own diverging scale centred at 0 (full: -1..1; directional: its
    largest absolute value, values printed in every cell)."""
    mine = [r for r in rows if r["emotion"] == emotion and str(r["position"]) != "all"]
    if not mine:
        raise ValueError(f"no patching rows for {emotion!r}")
    layers = sorted({int(r["layer"]) for r in mine})
    columns = list(dict.fromkeys(str(r["position"]) for r in mine))
    tokens = {str(r["position"]): str(r.get("token") or "") for r in mine}
    labels = [c + (f"\n{tokens[c]!r}" if tokens.get(c) else "") for c in columns]
    height = 1.6 + 0.22 * len(layers)
    fig, axes = _figure(1, 2, figsize=(3.2 + 1.6 * len(columns), height))
    fig.suptitle(title)
    for ax, kind, name in zip(axes[0], ("full", "directional"), ("full residual", "direction only"),
                              strict=True):  # fmt: skip
        g = _grid(mine, kind, columns, layers)
        lim = 1.0 if kind == "full" else max(0.05, float(np.nanmax(np.abs(g), initial=0.0)))
        im = ax.imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower", aspect="auto")
        ax.set_title(name)
        ax.set_xticks(range(len(columns)), labels, fontsize=7)
        step = max(1, len(layers) // 16)
        ax.set_yticks(range(0, len(layers), step), [str(v) for v in layers[::step]], fontsize=7)
        ax.set_xlabel("position from the end (body = all earlier positions)")
        if kind == "full":
            ax.set_ylabel("layer (0 = embedding output)")
        font = 6 if len(layers) <= 32 else 4.5
        for i in range(len(layers)):
            for j in range(len(columns)):
                v = g[i, j]
                if np.isfinite(v):
                    color = "white" if abs(v) > 0.6 * lim else "black"
                    text = f"{v:.2f}".replace("-0.00", "0.00")
                    ax.text(j, i, text, ha="center", va="center", fontsize=font, color=color)
        fig.colorbar(im, ax=ax, shrink=0.8, label="recovered fraction")
    return fig


def directional_by_layer(rows: Sequence[dict], *, title: str) -> Figure:
    """Directional patching of every position at one layer, per layer and emotion, with
    its bootstrap band; the random-direction control dashed in the same colour."""
    fig, axes = _figure(figsize=(7.5, 4.2))
    ax = axes[0, 0]
    emotions = list(dict.fromkeys(r["emotion"] for r in rows))
    for emo in emotions:
        color = label_color(emo)
        for kind, ls in (("directional", "-"), ("random", "--")):
            sel = [r for r in rows if r["emotion"] == emo and r["kind"] == kind
                   and str(r["position"]) == "all"]  # fmt: skip
            sel.sort(key=lambda r: int(r["layer"]))
            if not sel:
                continue
            x = np.array([int(r["layer"]) for r in sel])
            y = np.array([_num(r["recovered"]) for r in sel])
            label = emo if kind == "directional" else f"{emo}: random direction"
            ax.plot(x, y, ls, color=color, marker="o" if ls == "-" else None, markersize=3,
                    linewidth=1.6 if ls == "-" else 1.0, label=label)  # fmt: skip
            if kind == "directional":
                lo = np.array([_num(r["ci_low"]) for r in sel])
                hi = np.array([_num(r["ci_high"]) for r in sel])
                ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel("recovered fraction of the LD gap")
    ax.set_title(title)
    ax.legend(fontsize=7, ncols=2, frameon=False)
    return fig


def ablation_effects(
    ld_rows: Sequence[dict], probe_rows: Sequence[dict], *, method: str, probe_layer: int,
    title: str,
) -> Figure:  # fmt: skip
    """Left: fraction of each emotion's LD gap removed, by target (an emotion's own
    direction, or ``all``); right: fraction of the probe's above-chance accuracy removed at
    the probe layer. Grey dots: the random draws of the same dimension (the null);
    coloured: the target, with its bootstrap interval (LD) and p."""
    targets = [r for r in ld_rows if r["kind"] == "direction"]
    fig, axes = _figure(1, 2, figsize=(11, 4.2))
    fig.suptitle(title)
    rng = np.random.default_rng(0)
    # LD: one column per (target, emotion) with the target's dimension's null
    ax = axes[0, 0]
    cols = [(r["target"], r["emotion"]) for r in targets
            if r["target"] in ("all", r["emotion"])]  # fmt: skip
    for j, (t, emo) in enumerate(cols):
        obs = next(r for r in targets if r["target"] == t and r["emotion"] == emo)
        null = [_num(r["removed"]) for r in ld_rows if r["kind"] == "random"
                and r["emotion"] == emo and int(r["dim"]) == int(obs["dim"])]  # fmt: skip
        ax.scatter(j + rng.uniform(-0.15, 0.15, len(null)), null, s=9, color=_NULL, zorder=2)
        v, lo, hi = (_num(obs[k]) for k in ("removed", "ci_low", "ci_high"))
        ax.errorbar([j], [v], yerr=[[v - lo], [hi - v]] if np.isfinite(lo) else None, fmt="o",
                    color=label_color(emo), markersize=7, capsize=3, zorder=3)  # fmt: skip
        p = (1 + sum(n >= v for n in null)) / (1 + len(null)) if null and np.isfinite(v) else None
        if p is not None:
            ax.annotate(f"p={p:.2g}", (j, v), xytext=(8, 0), textcoords="offset points",
                        fontsize=7, va="center")  # fmt: skip
    ax.set_xticks(range(len(cols)), [e if t == e else f"all → {e}" for t, e in cols],
                  fontsize=8, rotation=20)  # fmt: skip
    ax.set_ylabel("fraction of the LD gap removed")
    ax.set_title("model readout (LD gap, emotion vs neutral prompts)", fontsize=9)
    # probe
    ax = axes[0, 1]
    fixed = [r for r in probe_rows if r["probe"] == "fixed" and r["method"] == method
             and int(r["layer"]) == probe_layer]  # fmt: skip
    tg = [r for r in fixed if r["kind"] == "direction"]
    for j, obs in enumerate(tg):
        null = [_num(r["removed"]) for r in fixed
                if r["kind"] == "random" and int(r["dim"]) == int(obs["dim"])]  # fmt: skip
        ax.scatter(j + rng.uniform(-0.15, 0.15, len(null)), null, s=9, color=_NULL, zorder=2)
        v = _num(obs["removed"])
        color = label_color(obs["target"]) if obs["target"] != "all" else "black"
        ax.plot([j], [v], "o", color=color, markersize=7, zorder=3)
        fin = [n for n in null if np.isfinite(n)]
        if fin and np.isfinite(v):
            p = (1 + sum(n >= v for n in fin)) / (1 + len(fin))
            ax.annotate(f"p={p:.2g}", (j, v), xytext=(8, 0), textcoords="offset points",
                        fontsize=7, va="center")  # fmt: skip
    ax.set_xticks(range(len(tg)), [r["target"] for r in tg], fontsize=8)
    ax.set_ylabel("fraction of above-chance accuracy removed")
    ax.set_title(f"{method} probe at layer {probe_layer} (trained on clean activations)",
                 fontsize=9)  # fmt: skip
    for a in axes[0]:
        a.axhline(0, color="0.3", linewidth=0.8)
        a.grid(True, axis="y", alpha=0.3, linewidth=0.6)
    return fig


def ablation_probe_layers(
    probe_rows: Sequence[dict], *, method: str, chance: float, from_layer: int, title: str
) -> Figure:
    """Accuracy of the probe fitted on clean activations, by layer: clean, under each
    target's ablation, and the range of the random draws of each dimension (grey band)."""
    fixed = [r for r in probe_rows if r["probe"] == "fixed" and r["method"] == method]
    layers = sorted({int(r["layer"]) for r in fixed})
    fig, axes = _figure(figsize=(7.5, 4.2))
    ax = axes[0, 0]

    def curve(sel: Sequence[dict]) -> np.ndarray:
        y = np.full(len(layers), np.nan)
        for r in sel:
            y[layers.index(int(r["layer"]))] = _num(r["accuracy"])
        return y

    x = np.array(layers)
    dims = sorted({int(r["dim"]) for r in fixed if r["kind"] == "random"})
    for k, dim in enumerate(dims):
        draws = {r["draw"] for r in fixed if r["kind"] == "random" and int(r["dim"]) == dim}
        ys = np.array([curve([r for r in fixed if r["kind"] == "random" and int(r["dim"]) == dim
                              and r["draw"] == d]) for d in draws])  # fmt: skip
        ax.fill_between(x, ys.min(0), ys.max(0), color=_NULL, alpha=0.25 + 0.1 * k, linewidth=0,
                        label=f"random {dim}-dim subspaces (range of {len(draws)})")  # fmt: skip
    ax.plot(x, curve([r for r in fixed if r["kind"] == "none"]), color="black", linewidth=1.8,
            label="clean")  # fmt: skip
    for t in dict.fromkeys(r["target"] for r in fixed if r["kind"] == "direction"):
        sel = [r for r in fixed if r["kind"] == "direction" and r["target"] == t]
        color = label_color(t) if t != "all" else "#9467bd"
        ax.plot(x, curve(sel), color=color, linewidth=1.5, marker="o", markersize=2.5,
                label=f"{t} ablated")  # fmt: skip
    ax.axhline(chance, color="0.4", linestyle=":", linewidth=1)
    ax.axvline(from_layer - 0.5, color="0.4", linestyle="--", linewidth=0.8)
    ax.text(from_layer - 0.4, chance, f" ablated from layer {from_layer} on; chance {chance:.2f}",
            fontsize=7, va="bottom", color="0.3")  # fmt: skip
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel(f"{method} probe accuracy (held-out prompts)")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.set_title(title)
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    return fig


# --------------------------------------------------------------------------------- folders
def _summary(folder: Path, fmt: str) -> dict[str, Any]:
    try:
        s = json.loads((folder / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read summary.json ({e})", where=str(folder)) from None
    if s.get("format") != fmt:
        raise DataError(f"not an {fmt} folder", where=str(folder))
    return s


def patch_figures(
    summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[str, Figure]]:
    """``(name, figure)`` of a patch result (its summary and ``patching`` rows), one at a
    time: ``patching-{emotion}`` per emotion, then ``directional-by-layer``."""
    model = summary["model"].get("name", "?")
    for emo in dict.fromkeys(r["emotion"] for r in rows):
        g = next(x for x in summary["gaps"] if x["emotion"] == emo)
        fig = patching_heatmaps(rows, emo, title=f"{emo}: recovered fraction of the LD gap "
                                f"({g['gap']:.2f}, {g['pairs_used']} pairs) · {model}")  # fmt: skip
        yield f"patching-{emo}", fig
    fig = directional_by_layer(rows, title=f"directional patching of every position · {model}")
    yield "directional-by-layer", fig


def plot_patch_folder(folder: str | Path, out: str | Path | None = None) -> list[Path]:
    """Heatmaps per emotion and the directional-by-layer figure of an ``emocircuits patch``
    folder, into ``out`` (default ``folder/figures``)."""
    from emocircuits.tables import read_table

    folder = Path(folder)
    s = _summary(folder, "emocircuits.patch")
    rows = read_table(folder, "patching")
    out = Path(out) if out is not None else folder / "figures"
    paths = []
    for name, fig in patch_figures(s, rows):
        paths += save_figure(fig, out / name)
    return paths


def ablation_figures(
    summary: Mapping[str, Any],
    ld: Sequence[Mapping[str, Any]],
    probe: Sequence[Mapping[str, Any]],
) -> Iterator[tuple[str, Figure]]:
    """``(name, figure)`` of an ablation result (its summary, ``ablation_ld`` and
    ``ablation_probe`` rows), one at a time: per probe method ``ablation-effects-{method}``
    and ``ablation-probe-{method}``."""
    st = summary["settings"]
    model = summary["model"].get("name", "?")
    how = f"{st['mode']} direction(s) projected out from layer {st['from_layer']} on"
    for m in st["methods"]:
        fig = ablation_effects(ld, probe, method=m, probe_layer=st["probe_layer"],
                               title=f"direction ablation · {model} · {how}")  # fmt: skip
        yield f"ablation-effects-{m}", fig
        fig = ablation_probe_layers(probe, method=m, chance=summary["chance"],
                                    from_layer=st["from_layer"],
                                    title=f"probe accuracy under ablation · {model}")  # fmt: skip
        yield f"ablation-probe-{m}", fig


def plot_ablation_folder(folder: str | Path, out: str | Path | None = None) -> list[Path]:
    """The effects-vs-null and accuracy-by-layer figures of an ``emocircuits ablate``
    folder, per probe method, into ``out`` (default ``folder/figures``)."""
    from emocircuits.tables import read_table

    folder = Path(folder)
    s = _summary(folder, "emocircuits.ablate")
    ld, probe = read_table(folder, "ablation_ld"), read_table(folder, "ablation_probe")
    out = Path(out) if out is not None else folder / "figures"
    paths = []
    for name, fig in ablation_figures(s, ld, probe):
        paths += save_figure(fig, out / name)
    return paths

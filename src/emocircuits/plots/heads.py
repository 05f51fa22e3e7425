"""Figures for heads and neurons (``emocircuits heads``): a layer x head heatmap of the heads'
direct contributions per emotion, and the top-k vs random ablation curves.

Same conventions as :mod:`emocircuits.plots.common` (pure figure functions, no pyplot,
fixed emotion colours); :func:`plot_heads` reads a folder written by
:class:`~emocircuits.interventions.heads.HeadsResult` and saves the figures into
``figures/`` (PNG + SVG).

>>> fig = head_heatmaps({"anger": np.array([[0.5, -0.1], [0.0, 2.0]])}, title="heads")
>>> save_figure(fig, "figures/heads")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from emocircuits.errors import DataError
from emocircuits.plots.common import _figure, label_color, save_figure
from emocircuits.tables import read_table

__all__ = ["ablation_curves", "head_heatmaps", "heads_figures", "plot_heads"]

_RANKING_STYLE = {0: "-", 1: "--"}


def head_heatmaps(
    contrast: Mapping[str, np.ndarray],
    lo: Mapping[str, np.ndarray] | None = None,
    hi: Mapping[str, np.ndarray] | None = None,
    *,
    title: str,
    n_ranked: int = 8,
    unit: str = "contrast (emotion - neutral)",
) -> Figure:
    """One ``[blocks, heads]`` panel per emotion on a shared symmetric colour scale. The
    ``n_ranked`` largest contrasts carry their rank; an x marks cells whose interval
    ``[lo, hi]`` includes 0."""
    emos = list(contrast)
    if not emos:
        raise ValueError("no emotion to draw")
    shapes = {np.asarray(contrast[e]).shape for e in emos}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every emotion needs one [blocks, heads] array, got shapes {shapes}")
    n_blocks, n_heads = next(iter(shapes))
    vmax = max(float(np.nanmax(np.abs(contrast[e]))) for e in emos) or 1.0
    fig, axes = _figure(
        1, len(emos), figsize=(1.2 + len(emos) * (0.9 + 0.32 * n_heads), 2.0 + 0.2 * n_blocks)
    )
    image = None
    for ax, e in zip(axes[0], emos, strict=True):
        c = np.asarray(contrast[e], dtype=float)
        image = ax.imshow(c, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        if lo is not None and hi is not None and e in lo and e in hi:
            ns = (np.asarray(lo[e]) <= 0) & (np.asarray(hi[e]) >= 0)
            ys, xs = np.nonzero(ns)
            ax.plot(xs, ys, ls="none", marker="x", ms=3, mew=0.8, color="0.35")
        order = np.argsort(-c, axis=None, kind="stable")[:n_ranked]
        for r, k in enumerate(order):
            i, h = divmod(int(k), n_heads)
            ax.text(h, i, str(r + 1), ha="center", va="center", fontsize=7, weight="bold",
                    color="white" if abs(c[i, h]) > 0.6 * vmax else "black")  # fmt: skip
        ax.set_title(e, color=label_color(e), fontsize=10)
        ax.set_xlabel("head")
        ax.set_xticks(range(n_heads))
        step = max(1, n_blocks // 15)
        ax.set_yticks(range(0, n_blocks, step))
    axes[0][0].set_ylabel("block (layer of the head)")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label=unit)
    fig.suptitle(
        title + f"\nnumbers: rank of the {n_ranked} largest; x: the 95% interval includes 0",
        fontsize=9,
    )
    return fig


def ablation_curves(rows: Sequence[Mapping[str, Any]], *, title: str) -> Figure:
    """Drop of each measure (rows) per emotion (columns) against k: the top-k heads (one
    line per ranking, with the prompts' bootstrap interval) over the band of random heads
    (2.5-97.5% of the draws, dashed: their mean). ``rows``: the ``ablation`` table."""
    if not rows:
        raise ValueError("no ablation rows to draw")
    emos = list(dict.fromkeys(str(r["emotion"]) for r in rows))
    metrics = list(dict.fromkeys(str(r["metric"]) for r in rows))
    rankings = list(dict.fromkeys(str(r["ranked_at"]) for r in rows))
    size = (1.0 + 3.2 * len(emos), 0.8 + 2.6 * len(metrics))
    fig, axes = _figure(len(metrics), len(emos), figsize=size)
    ylabels = {
        "logit_diff": "drop in logit difference\n(at the cue)",
        "projection": "drop in projection on v\n(readout layer)",
    }
    for mi, m in enumerate(metrics):
        for ei, e in enumerate(emos):
            ax = axes[mi][ei]
            sel = [r for r in rows if r["emotion"] == e and r["metric"] == m]
            ref = [r for r in sel if r["ranked_at"] == rankings[0]]
            ks = np.array([r["k"] for r in ref], dtype=float)
            if ref:
                ax.fill_between(
                    ks,
                    [r["random_lo"] for r in ref],
                    [r["random_hi"] for r in ref],
                    color="0.6",
                    alpha=0.3,
                    linewidth=0,
                    label="random heads (95%)",
                )
                ax.plot(ks, [r["random_mean"] for r in ref], color="0.4", ls=":", lw=1.2,
                        label="random heads (mean)")  # fmt: skip
            for ri, rk in enumerate(rankings):
                rr = [r for r in sel if r["ranked_at"] == rk]
                if not rr:
                    continue
                y = np.array([r["top_drop"] for r in rr], dtype=float)
                err = np.array([[r["top_drop"] - r["top_lo"] for r in rr],
                                [r["top_hi"] - r["top_drop"] for r in rr]])  # fmt: skip
                ax.errorbar(
                    [r["k"] for r in rr],
                    y,
                    yerr=np.clip(err, 0, None),
                    marker="o",
                    ms=4,
                    capsize=2,
                    color=label_color(e),
                    ls=_RANKING_STYLE.get(ri, "-."),
                )
            ax.axhline(0, color="0.2", lw=0.6)
            ax.set_xscale("log", base=2)
            if len(ks):
                ax.set_xticks(ks, [str(int(k)) for k in ks])
            if mi == 0:
                ax.set_title(e, color=label_color(e), fontsize=10)
            if mi == len(metrics) - 1:
                ax.set_xlabel("heads ablated (k)")
            if ei == 0:
                ax.set_ylabel(ylabels.get(m, f"drop in {m}"))
    proxies = [Patch(color="0.6", alpha=0.3), Line2D([], [], color="0.4", ls=":")]
    names = ["random heads (95% of draws)", "random heads (mean)"]
    for ri, rk in enumerate(rankings):
        proxies.append(
            Line2D([], [], color="0.1", marker="o", ms=4, ls=_RANKING_STYLE.get(ri, "-."))
        )
        names.append(f"top-k heads ranked at {rk} (95% interval over prompts)")
    fig.legend(proxies, names, loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    return fig


def _grid(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    n_b = max(int(r["layer"]) for r in rows) + 1
    n_h = max(int(r["head"]) for r in rows) + 1
    out = np.full((n_b, n_h), np.nan)
    for r in rows:
        out[int(r["layer"]), int(r["head"])] = float(r[key])
    return out


def heads_figures(
    summary: Mapping[str, Any], tables: Mapping[str, Sequence[Mapping[str, Any]]]
) -> Iterator[tuple[str, Figure]]:
    """``(name, figure)`` for a heads result (its summary and tables, in memory or read from
    a folder), one at a time: ``heads-{position}`` per position, then ``ablation`` (if there
    are ablation rows)."""
    st = summary["settings"]
    model = summary.get("model", {}).get("name", "?")
    layer = st["layer"]
    heads = list(tables["heads"])
    for pos in dict.fromkeys(str(r["position"]) for r in heads):
        by_e: dict[str, list[Mapping[str, Any]]] = {}
        for r in heads:
            if str(r["position"]) == pos:
                by_e.setdefault(str(r["emotion"]), []).append(r)
        where = "the cue's last token" if pos == "cue" else f"'{pos}' over the prompt"
        fig = head_heatmaps(
            {e: _grid(rs, "contrast") for e, rs in by_e.items()},
            {e: _grid(rs, "lo") for e, rs in by_e.items()},
            {e: _grid(rs, "hi") for e, rs in by_e.items()},
            title=f"direct contribution of each head to the emotion direction at resid layer "
            f"{layer} · {model} · read at {where}",
            n_ranked=max(st.get("top_k") or [8]),
        )
        yield f"heads-{pos}", fig
    abl = tables.get("ablation") or []
    if abl:
        fig = ablation_curves(
            abl,
            title=f"mean-ablating the top-k heads vs {st.get('n_random')} draws of k random "
            f"heads (blocks < {layer}) · {model} · on each emotion's prompts",
        )
        yield "ablation", fig


def plot_heads(folder: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draw the figures of a heads folder into ``out`` (default ``folder/figures``):
    ``heads-{position}`` per position and ``ablation`` (if the folder has ablation rows)."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read summary.json ({e})", where=str(folder)) from None
    if summary.get("format") != "emocircuits.heads":
        raise DataError("not a heads folder (emocircuits heads)", where=str(folder))
    out = Path(out) if out is not None else folder / "figures"
    tables = {"heads": read_table(folder, "heads")}
    if (folder / "ablation.csv").is_file():
        tables["ablation"] = read_table(folder, "ablation")
    paths: list[Path] = []
    for name, fig in heads_figures(summary, tables):
        paths += save_figure(fig, out / name)
    return paths

"""Figures of a dataset audit (:mod:`emocircuits.geometry.audit`): the surface features
of each class side by side, and the words that give each class away.

Both take the plain rows an :class:`~emocircuits.geometry.audit.AuditResult` saves, so a
saved audit can be drawn again without the dataset.

>>> rows = [{"feature": "exclaim", "description": "has !", "anger": 0.9, "neutral": 0.1}]
>>> fig = feature_rates(rows, ["anger", "neutral"], title="t")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emocircuits.plots.common import _colors, _figure


def feature_rates(rows: Sequence[dict[str, Any]], classes: Sequence[str], *, title: str) -> Figure:
    """Per class, the share of rows with each binary surface feature (grouped bars) and,
    on the left, the mean length in words. ``rows``: one dict per feature with a value per
    class (the audit's ``features`` table)."""
    binary = [r for r in rows if r["feature"] != "words"]
    length = next((r for r in rows if r["feature"] == "words"), None)
    fig = Figure(figsize=(10.0, 0.5 * max(len(binary), 3) + 2.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax_len, ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.6]})
    colors = _colors(list(classes))
    width = 0.8 / max(len(classes), 1)
    y = np.arange(len(binary))
    for k, c in enumerate(classes):
        vals = [float(r.get(c) or 0.0) for r in binary]
        ax.barh(
            y + (k - (len(classes) - 1) / 2) * width, vals, height=width, color=colors[c], label=c
        )
    ax.set_yticks(y, [r.get("description") or r["feature"] for r in binary])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the class's rows")
    fig.legend(
        *ax.get_legend_handles_labels(),
        loc="outside lower center",
        ncols=len(classes),
        fontsize=8,
        frameon=False,
    )
    ax.grid(axis="x", alpha=0.3)
    if length is not None:
        vals = [float(length.get(c) or 0.0) for c in classes]
        ax_len.barh(np.arange(len(classes)), vals, color=[colors[c] for c in classes])
        ax_len.set_yticks(np.arange(len(classes)), list(classes))
        ax_len.invert_yaxis()
        ax_len.set_xlabel("mean length (words)")
        ax_len.grid(axis="x", alpha=0.3)
    else:
        ax_len.set_axis_off()
    fig.suptitle(title, fontsize=11)
    return fig


def giveaway_words(
    rows: Sequence[dict[str, Any]], classes: Sequence[str], *, title: str, top: int = 10
) -> Figure:
    """Per class, the ``top`` tokens with the largest log-odds z-score against the other
    classes (Monroe et al. 2008); a dashed line at z = 1.96."""
    n = max(len(classes), 1)
    cols = min(n, 4)
    nrows = (n + cols - 1) // cols
    fig, axes = _figure(nrows, cols, figsize=(3.0 * cols, 0.28 * top * nrows + 1.4))
    colors = _colors(list(classes))
    for k in range(nrows * cols):
        ax = axes[k // cols][k % cols]
        if k >= n:
            ax.set_axis_off()
            continue
        c = classes[k]
        mine = sorted((r for r in rows if r["class"] == c), key=lambda r: -r["z"])[:top]
        z = [r["z"] for r in mine]
        ax.barh(np.arange(len(mine)), z, color=colors[c])
        ax.set_yticks(np.arange(len(mine)), [str(r["token"]) for r in mine], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.96, color="black", lw=0.8, ls="--")
        ax.set_title(c, fontsize=10, color=colors[c])
        ax.set_xlabel("log-odds z", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig

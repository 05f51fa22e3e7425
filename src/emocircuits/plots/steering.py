"""Dose-response figure of a steering sweep: the effect, its fluency cost and the KL per
alpha, one curve per layer, the random direction as a grey band, ``none`` and the prompting
baseline as reference lines, the recommended setting circled.

>>> rows = [{"condition": "none", "emotion": None, "layer": None, "alpha": 0.0,
...          "vader_change": 0.0, "vader_change_lo": 0.0, "vader_change_hi": 0.0,
...          "perplexity_ratio_median": 1.0, "kl": 0.0}]
>>> for a, v in [(0.1, 0.2), (0.2, 0.5)]:
...     rows.append({"condition": "direction", "emotion": "gratitude", "layer": 15,
...                  "alpha": a, "vader_change": v, "vader_change_lo": v - 0.1,
...                  "vader_change_hi": v + 0.1, "perplexity_ratio_median": 1 + a,
...                  "kl": a * a})
>>> fig = dose_response(rows, "gratitude")
>>> len(fig.axes)
3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from emocircuits.plots.common import _figure, label_color

__all__ = ["dose_response"]


def _effect_keys(emotion: str) -> tuple[str, str]:
    from emocircuits.interventions.scorers import MARKERS

    if emotion in ("gratitude", "anger") or emotion not in MARKERS:
        return "vader_change", "VADER change from none"
    return f"marker_{emotion}", f"share with a {emotion} marker"


def dose_response(
    summary: Sequence[Mapping[str, Any]],
    emotion: str,
    *,
    recommended: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Figure:
    """Three panels over alpha (log scale) for ``emotion``: its effect with 95% intervals,
    the perplexity ratio to ``none``, the KL on neutral text."""
    key, ylabel = _effect_keys(emotion)
    rows = [r for r in summary if r["condition"] == "direction" and r["emotion"] == emotion]
    rand = [r for r in summary if r["condition"] == "random"]
    layers = sorted({r["layer"] for r in rows})
    cmap = colormaps["viridis"]
    fig, grid = _figure(1, 3, figsize=(13, 4))
    axes = list(grid[0])
    panels = [(key, ylabel), ("perplexity_ratio_median", "perplexity ratio to none (median)"),
              ("kl", "KL on neutral text (nats/token)")]  # fmt: skip
    for ax, (k, label) in zip(axes, panels, strict=True):
        if not any(np.isfinite(float(r.get(k, np.nan))) for r in rows):  # e.g. KL not measured
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_ylabel(label)
            continue
        if rand and k in rand[0]:
            alphas = sorted({r["alpha"] for r in rand})
            vals = np.array([[r[k] for r in rand if r["alpha"] == a] for a in alphas], dtype=float)
            ax.fill_between(alphas, vals.min(1), vals.max(1), color="0.85",
                            label="random direction (range over layers)")  # fmt: skip
        for j, layer in enumerate(layers):
            rs = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["alpha"])
            a = [r["alpha"] for r in rs]
            y = np.array([r[k] for r in rs], dtype=float)
            color = cmap(j / max(1, len(layers) - 1) * 0.85)
            ax.plot(a, y, "o-", color=color, label=f"layer {layer}", ms=4)
            if f"{k}_lo" in rs[0]:
                lo = [r[f"{k}_lo"] for r in rs]
                hi = [r[f"{k}_hi"] for r in rs]
                ax.fill_between(a, lo, hi, color=color, alpha=0.15, lw=0)
        for r in summary:
            if r["condition"] == "prompt" and r["emotion"] == emotion and k in r:
                ax.axhline(r[k], color=label_color(emotion), ls="--", lw=1,
                           label="prompting baseline")  # fmt: skip
        ax.axhline(1.0 if k.startswith("perplexity") else 0.0, color="0.4", lw=0.8)
        if recommended is not None:
            hit = [r for r in rows if r["layer"] == recommended["layer"]
                   and r["alpha"] == recommended["alpha"]]  # fmt: skip
            if hit:
                ax.plot(recommended["alpha"], hit[0][k], "o", ms=12, mfc="none", mec="red",
                        mew=1.5, label="recommended")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("alpha (x typical residual norm)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title or f"steering with the {emotion} direction: dose-response")
    return fig

"""Figures for the geometry stage: norms, distances, similarities, probes, projections.

Conventions (pure functions, Agg figures, one colour per label, direct labels, interval
bands, layer 0 marked as the lexical baseline) and :func:`save_figure` are in
:mod:`emocircuits.plots.common`.

>>> fig = layer_norms([0, 1, 2], {"anger": np.array([0.1, 0.5, 0.9])}, title="norms")
>>> fig.axes[0].get_title()
'norms'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from emocircuits.plots.common import (
    _HALO,
    _colors,
    _curves,
    _end_labels,
    _figure,
    _label_gap,
    _layer_figure,
    _layers,
    _reference_lines,
    _spread,
    _ylim_signed,
    label_color,
)

_LINESTYLES = ["-", "--", ":", "-."]
LEXICAL_LABEL = "lexical baseline (layer-0, mean-pooled)"


def layer_norms(
    layers: Sequence[int],
    norms: Mapping[str, ArrayLike],
    lo: Mapping[str, ArrayLike] | None = None,
    hi: Mapping[str, ArrayLike] | None = None,
    *,
    title: str,
    ylabel: str = "‖direction‖ (debiased)",
) -> Figure:
    """One line per emotion over layers, with its interval band when ``lo``/``hi`` are given.

    >>> g = geometry(x, labels)  # doctest: +SKIP
    >>> fig = layer_norms(g.layers, g.norm, g.norm_lo, g.norm_hi, title="norms")  # doctest: +SKIP
    """
    fig, ax, x, series = _layer_figure(layers, norms, lo, hi, title=title, ylabel=ylabel)
    _curves(ax, x, series)
    if all(not (a < 0).any() for s in series for a in s[1:4] if a is not None):
        ax.set_ylim(bottom=0)
    _end_labels(ax, [(s[0], s[1], s[4]) for s in series])
    return fig


def distance_curves(
    layers: Sequence[int],
    dist: Mapping[tuple[str, str], ArrayLike],
    lo: Mapping[tuple[str, str], ArrayLike] | None = None,
    hi: Mapping[tuple[str, str], ArrayLike] | None = None,
    *,
    title: str,
    ylabel: str = "distance between class means (debiased)",
) -> Figure:
    """One line per class pair (labelled ``anger–neutral``) over layers, with bands.

    A pair takes the colour of its non-neutral member; pairs sharing a colour differ in
    line style.

    >>> fig = distance_curves([0, 1], {("anger", "neutral"): np.array([1.0, 2.0])}, title="d")
    """
    names = {pair: "–".join(map(str, pair)) for pair in dist}
    fig, ax, x, series = _layer_figure(
        layers, dist, lo, hi, title=title, ylabel=ylabel, names=names
    )
    owners = [next((p for p in pair if str(p).lower() != "neutral"), pair[0]) for pair in dist]
    owner_colors = _colors([str(o) for o in dict.fromkeys(owners)])
    seen: dict[str, int] = {}
    for i, owner in enumerate(owners):
        k = seen[str(owner)] = seen.get(str(owner), -1) + 1
        series[i] = (*series[i][:4], owner_colors[str(owner)], _LINESTYLES[k % len(_LINESTYLES)])
    _curves(ax, x, series)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    _end_labels(ax, [(s[0], s[1], s[4]) for s in series])
    return fig


def stability_curves(
    layers: Sequence[int],
    values: Mapping[str, ArrayLike],
    lo: Mapping[str, ArrayLike] | None = None,
    hi: Mapping[str, ArrayLike] | None = None,
    *,
    title: str,
    ylabel: str = "split-half cosine",
    reference: float | None = None,
    reference_label: str | None = None,
) -> Figure:
    """Per-emotion stability over layers on a [0, 1] axis (or [-1, 1] if any value is
    negative), with an optional dashed reference line (``"target 0.9"`` by default).

    >>> fig = stability_curves(g.layers, g.stability, title="split-half", reference=0.9)
    ... # doctest: +SKIP
    """
    fig, ax, x, series = _layer_figure(layers, values, lo, hi, title=title, ylabel=ylabel)
    _curves(ax, x, series)
    _ylim_signed(ax, [a for s in series for a in s[1:4]])
    if reference is not None:
        label = reference_label if reference_label is not None else f"target {reference:g}"
        _reference_lines(ax, [(reference, label, "black", "--")])
    _end_labels(ax, [(s[0], s[1], s[4]) for s in series])
    return fig


def probe_accuracy(
    layers: Sequence[int],
    acc: Mapping[str, ArrayLike],
    *,
    chance: float,
    title: str,
    lo: Mapping[str, ArrayLike] | None = None,
    hi: Mapping[str, ArrayLike] | None = None,
    lexical: float | Mapping[str, float] | None = None,
    best: bool = True,
    ylabel: str = "held-out accuracy",
) -> Figure:
    """Probe accuracy by layer, one curve per method, on a 0..1 axis.

    Adds a dashed ``chance`` line, a dotted lexical-baseline line (one per method when
    ``lexical`` is a dict) and, with ``best``, a star at each method's best layer labelled
    ``best: L{layer} {acc:.2f}``.

    >>> fig = probe_accuracy([0, 1, 2], {"logistic": np.array([0.4, 0.8, 0.9])},
    ...                      chance=1 / 3, lexical=0.5, title="probes")
    """
    fig, ax, x, series = _layer_figure(layers, acc, lo, hi, title=title, ylabel=ylabel)
    _curves(ax, x, series)
    ax.set_ylim(0, 1)
    refs = [(float(chance), "chance", "0.25", "--")]
    if isinstance(lexical, Mapping):
        colors = {s[0]: s[4] for s in series}
        for method, value in lexical.items():
            color = colors.get(str(method), label_color(str(method)))
            refs.append((float(value), f"{LEXICAL_LABEL}: {method}", color, ":"))
    elif lexical is not None:
        refs.append((float(lexical), LEXICAL_LABEL, "0.25", ":"))
    _reference_lines(ax, refs)
    if best:
        _best_markers(ax, x, [(s[1], s[4]) for s in series])
    _end_labels(ax, [(s[0], s[1], s[4]) for s in series])
    return fig


def _best_markers(ax: Axes, x: np.ndarray, series: Sequence[tuple[np.ndarray, str]]) -> None:
    """Star each curve's maximum; label it ``best: L{layer} {value:.2f}`` with a thin
    leader line, the labels stacked so that they never overlap (below high maxima, above
    low ones)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    bests = []
    for y, color in series:
        if np.isfinite(y).any():
            j = int(np.nanargmax(y))
            ax.plot(x[j], y[j], marker="*", markersize=13, color=color, mec="black", zorder=6)
            bests.append((x[j], y[j], color))
    gap = _label_gap(ax, 7.5)
    high = [b for b in bests if (b[1] - y0) / (y1 - y0) > 0.55]
    low = [b for b in bests if (b[1] - y0) / (y1 - y0) <= 0.55]
    for below, group in ((True, high), (False, low)):
        # labels 0.12 below high maxima (stacked downwards), 0.12 above low ones (upwards)
        sign = -1 if below else 1
        group.sort(key=lambda b: sign * b[1])
        fracs = [sign * ((b[1] - y0) / (y1 - y0)) + 0.12 for b in group]
        spread = [sign * f for f in _spread(fracs, gap)]
        for frac, (xb, yb, color) in zip(spread, group, strict=True):
            xfrac = (xb - x0) / (x1 - x0)
            right = xfrac > 0.5
            ax.annotate(
                f"best: L{xb} {yb:.2f}",
                (xb, yb),
                xytext=(xfrac - 0.04 if right else xfrac + 0.04, frac),
                textcoords="axes fraction",
                ha="right" if right else "left",
                va="center",
                fontsize=7.5,
                color=color,
                bbox=_HALO,
                arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.8},
                zorder=7,
            )


def _default_layers(n: int, k: int = 6) -> list[int]:
    """Indices of the first, last and evenly spaced middle layers, at most ``k``."""
    return sorted({int(i) for i in np.round(np.linspace(0, n - 1, min(n, k)))})


def similarity_heatmaps(
    emotions: Sequence[str],
    cos: ArrayLike,
    layers: Sequence[int],
    *,
    title: str,
    show_layers: Sequence[int] | None = None,
    lo: ArrayLike | None = None,
    hi: ArrayLike | None = None,
) -> Figure:
    """Small cosine-similarity heatmaps ``[L, E, E]`` for a few layers on one shared [-1, 1]
    diverging scale; cells show the value and, given ``lo``/``hi``, the interval.

    By default at most six layers: the first, the last and evenly spaced ones between.
    ``show_layers`` names layers by their number (an entry of ``layers``).

    >>> fig = similarity_heatmaps(["anger", "gratitude"], np.ones((3, 2, 2)), [0, 1, 2],
    ...                           title="cosine between directions")
    """
    names = [str(e) for e in emotions]
    c = np.asarray(cos, dtype=float)
    x = _layers(layers)
    e = len(names)
    if c.shape != (x.size, e, e):
        raise ValueError(f"cos: expected shape ({x.size}, {e}, {e}), got {c.shape}")
    bounds = None
    if lo is not None and hi is not None:
        bounds = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        if bounds[0].shape != c.shape or bounds[1].shape != c.shape:
            raise ValueError(f"lo/hi: expected shape {c.shape} like cos")
    if show_layers is None:
        idx = _default_layers(x.size)
    else:
        where = {int(v): i for i, v in enumerate(x)}
        missing = [v for v in show_layers if int(v) not in where]
        if missing:
            raise ValueError(f"show_layers {missing} are not in layers {x.tolist()}")
        idx = [where[int(v)] for v in show_layers]
    n = len(idx)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    side = 1.2 + (0.55 if bounds else 0.42) * e
    fig, axes = _figure(nrows, ncols, figsize=(side * ncols + 1.1, side * nrows + 0.6))
    fig.suptitle(title)
    annotate = e <= 10
    font = 8 if e <= 4 else 6.5 if e <= 7 else 5.5
    image = None
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.set_visible(False)
            continue
        i = idx[k]
        image = ax.imshow(c[i], cmap="RdBu_r", vmin=-1, vmax=1)
        layer = x[i]
        ax.set_title(f"layer {layer}" + (" (embedding)" if layer == 0 else ""), fontsize=9)
        row, col = divmod(k, ncols)
        ax.set_xticks(range(e), names if row == nrows - 1 or k + ncols >= n else [])
        ax.set_yticks(range(e), names if col == 0 else [])
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
        for lab in ax.get_xticklabels():
            lab.set_ha("right")
            lab.set_rotation_mode("anchor")
        if col == 0:
            ax.set_ylabel("emotion direction", fontsize=8)
        if row == nrows - 1 or k + ncols >= n:
            ax.set_xlabel("emotion direction", fontsize=8)
        if not annotate:
            continue
        for r in range(e):
            for q in range(e):
                v = c[i, r, q]
                color = "white" if abs(v) > 0.55 else "black"
                text = f"{v:.2f}"
                if bounds is not None:
                    ax.text(q, r - 0.1, text, ha="center", va="center", fontsize=font, color=color)
                    ax.text(
                        q,
                        r + 0.22,
                        f"[{bounds[0][i, r, q]:.2f}, {bounds[1][i, r, q]:.2f}]",
                        ha="center",
                        va="center",
                        fontsize=font - 2,
                        color=color,
                    )
                else:
                    ax.text(q, r, text, ha="center", va="center", fontsize=font, color=color)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, label="cosine similarity (−1 … 1)")
    return fig


def projection_2d(
    points: ArrayLike,
    labels: Sequence[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Figure:
    """Scatter of 2-D points per class, each class mean a large marker named on the plot.

    >>> fig = projection_2d(pcs[:, :2], labels, title="layer 12, PCA",  # doctest: +SKIP
    ...                     xlabel="PC1 (31% var.)", ylabel="PC2 (12% var.)")
    """
    p = np.asarray(points, dtype=float)
    labs = [str(v) for v in labels]
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] != len(labs):
        raise ValueError(f"points must be [n, 2] with n = len(labels) = {len(labs)}; got {p.shape}")
    classes = list(dict.fromkeys(labs))
    colors = _colors(classes)
    fig, axes = _figure(figsize=(6.0, 5.0))
    ax = axes[0, 0]
    arr = np.asarray(labs)
    for cls in classes:
        pts = p[arr == cls]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.5, color=colors[cls], linewidths=0)
    for cls in classes:
        mean = np.nanmean(p[arr == cls], axis=0)
        ax.scatter(*mean, s=170, color=colors[cls], edgecolors="black", linewidths=1.3, zorder=5)
        ax.annotate(
            f"{cls} (n={int((arr == cls).sum())})",
            mean,
            xytext=(8, 6),
            textcoords="offset points",
            fontsize=9,
            fontweight="bold",
            color=colors[cls],
            bbox=_HALO,
            zorder=6,
        )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    return fig


def subspace_overlap(
    matrix: ArrayLike,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    null: float | None = None,
) -> Figure:
    """Heatmap of mean cos² overlap between subspaces on a fixed [0, 1] sequential scale,
    cells annotated up to 12 × 12; ``null`` (the random-subspace value k/d) is written
    under the title and marked on the colour bar.

    >>> fig = subspace_overlap(np.eye(2), ["a", "b"], ["a", "b"], title="overlap",
    ...                        xlabel="model B subspace", ylabel="model A subspace", null=0.005)
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix: expected shape ({len(row_labels)}, {len(col_labels)}), got {m.shape}"
        )
    a, b = m.shape
    fig, axes = _figure(figsize=(1.8 + 0.55 * max(b, 4), 1.4 + 0.5 * max(a, 4)))
    ax = axes[0, 0]
    image = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(b), [str(v) for v in col_labels], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(a), [str(v) for v in row_labels], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    caption = (
        "" if null is None else f"\nrandom-subspace null k/d = {null:.3g} (red line on colour bar)"
    )
    ax.set_title(title + caption, fontsize=10)
    if a <= 12 and b <= 12:
        for r in range(a):
            for q in range(b):
                v = m[r, q]
                ax.text(
                    q,
                    r,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color="white" if v < 0.55 else "black",
                )
    bar = fig.colorbar(image, ax=ax, label="mean cos² overlap (0 … 1)")
    if null is not None:
        bar.ax.axhline(null, color="crimson", linewidth=2)
    return fig

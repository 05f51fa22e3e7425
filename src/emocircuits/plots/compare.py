"""Figures for the cross-model comparison stage: CKA between the layers of two models, mapped
emotion directions against their nulls, identification accuracy and map quality.

Same conventions as :mod:`emocircuits.plots.common` (pure functions returning an Agg
:class:`~matplotlib.figure.Figure`, one colour per label, curves labelled at their right end,
labelled reference lines, layer 0 = embedding); the helpers are shared from there. Where a
figure marks something (significance, best matches), a caption under the title says how.

>>> fig = map_quality([0, 1, 2], {"ridge": np.array([0.1, 0.5, 0.4])}, title="map R²")
>>> from emocircuits.plots import save_figure
>>> save_figure(fig, "figures/map-quality")  # doctest: +SKIP
[PosixPath('figures/map-quality.png'), PosixPath('figures/map-quality.svg')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from numpy.typing import ArrayLike

from emocircuits.plots.common import (
    _HALO,
    _curves,
    _end_labels,
    _figure,
    _layer_figure,
    _layers,
    _reference_lines,
)

__all__ = ["cka_heatmap", "identification_curves", "map_quality", "mapped_cosines"]

_CAPTION_FONT = 8
_NULL_LABEL = "shuffled-pair null (95%)"
_PERM_LABEL = "label-permuted null (95%)"
_DEFAULT_XLABEL = "layer of model A (0 = embedding)"


# ----------------------------------------------------------------------------- helpers


def _named_layers(name: str, layers: ArrayLike) -> np.ndarray:
    """:func:`~emocircuits.plots.common._layers`, with the argument's name in the error."""
    try:
        return _layers(layers)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _series(name: str, values: ArrayLike | None, n: int) -> np.ndarray:
    """One value per layer as a float vector, or a one-line error naming the mismatch."""
    y = np.asarray(values, dtype=float)
    if y.shape != (n,):
        got = f"has {y.shape[0]} values" if y.ndim == 1 else f"has shape {list(y.shape)}"
        raise ValueError(f"{name} {got} but layers has {n} entries")
    return y


def _check_mapping(name: str, values: Mapping, n: int) -> None:
    if not values:
        raise ValueError(f"nothing to plot: {name} is empty")
    for key, v in values.items():
        _series(f"{name}[{key!r}]", v, n)


def _caption(fig: Figure, ax: Axes, title: str, lines: Sequence[str]) -> None:
    """The title above the figure and, when there is something to explain, a small gray
    caption line per item just above the axes."""
    if lines:
        fig.suptitle(title)
        ax.set_title("\n".join(lines), fontsize=_CAPTION_FONT, color="0.3")
    else:
        ax.set_title(title)


def _layer_ticks(n: int, limit: int = 16) -> list[int]:
    """Indices to label on a heatmap axis: all of them when few, else evenly spaced + last."""
    if n <= limit:
        return list(range(n))
    step = -(-n // 12)
    idx = list(range(0, n, step))
    if idx[-1] != n - 1:
        if n - 1 - idx[-1] < step / 2:
            idx.pop()
        idx.append(n - 1)
    return idx


def _relative_depth(name: str, layers: np.ndarray) -> np.ndarray:
    if np.any(np.diff(layers.astype(float)) <= 0):
        raise ValueError(f"{name} must be strictly increasing, got {layers.tolist()}")
    top = float(layers.max())
    return layers.astype(float) / (top if top > 0 else 1.0)


def _depth_ticks(rel: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Positions (in cell indices) of relative depths 0, 0.25, … 1 that the layers cover."""
    marks = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    marks = marks[(marks >= rel[0] - 1e-9) & (marks <= rel[-1] + 1e-9)]
    return np.interp(marks, rel, np.arange(rel.size)), [f"{m:g}" for m in marks]


def _significance_markers(
    ax: Axes, x: np.ndarray, y: np.ndarray, p: np.ndarray, alpha: float, color: str
) -> None:
    """Filled markers where ``p < alpha``, hollow ones elsewhere (NaN p counts as not)."""
    ok = np.isfinite(y)
    sig = ok & (p < alpha)  # NaN < alpha is False
    ns = ok & ~sig
    ax.plot(x[sig], y[sig], ls="none", marker="o", ms=6.5, color=color, mec=color, zorder=4)[
        0
    ].set_gid("significant")
    ax.plot(x[ns], y[ns], ls="none", marker="o", ms=6.5, mfc="white", mec=color, mew=1.4, zorder=4)[
        0
    ].set_gid("not-significant")


# ----------------------------------------------------------------------------- figures


def cka_heatmap(
    cka: ArrayLike,
    layers_a: Sequence[int],
    layers_b: Sequence[int],
    *,
    name_a: str,
    name_b: str,
    best_b: ArrayLike | None = None,
    p: ArrayLike | None = None,
    alpha: float = 0.05,
    title: str | None = None,
) -> Figure:
    """Linear CKA between every layer of model A (rows, y) and model B (columns, x).

    Sequential scale from ``min(0, min cka)`` to 1; NaN cells are light gray. The top and
    right axes give relative depth (layer / last layer), and a dashed line joins cells of
    equal relative depth. ``best_b[i]`` (an index into ``layers_b``) puts a white dot on A
    layer ``i``'s best match; with ``p``, cells with ``p >= alpha`` are hatched.

    >>> fig = cka_heatmap(np.eye(3), [0, 1, 2], [0, 2, 4], name_a="smollm2", name_b="gemma3",
    ...                   best_b=[0, 1, 2])
    """
    m = np.asarray(cka, dtype=float)
    ya = _named_layers("layers_a", layers_a)
    xb = _named_layers("layers_b", layers_b)
    if m.ndim != 2:
        raise ValueError(f"cka must be 2-D [layers_a, layers_b], got shape {list(m.shape)}")
    if m.shape[0] != ya.size:
        raise ValueError(f"cka is {list(m.shape)} but layers_a has {ya.size} entries")
    if m.shape[1] != xb.size:
        raise ValueError(f"cka is {list(m.shape)} but layers_b has {xb.size} entries")
    rel_a = _relative_depth("layers_a", ya)
    rel_b = _relative_depth("layers_b", xb)
    la, lb = m.shape
    best = None
    if best_b is not None:
        best = np.asarray(best_b)
        if best.shape != (la,):
            raise ValueError(f"best_b has shape {list(best.shape)} but layers_a has {la} entries")
        if not np.all(np.isfinite(best.astype(float))) or np.any(best != np.round(best)):
            raise ValueError("best_b must hold integer indices into layers_b")
        best = best.astype(int)
        if best.min() < 0 or best.max() >= lb:
            raise ValueError(f"best_b must index into layers_b (0..{lb - 1}), got {best.tolist()}")
    pv = None
    if p is not None:
        pv = np.asarray(p, dtype=float)
        if pv.shape != m.shape:
            raise ValueError(f"p is {list(pv.shape)} but cka is {list(m.shape)}")

    fig, axes = _figure(
        figsize=(min(max(3.2 + 0.32 * lb, 5.5), 11.0), min(max(2.6 + 0.3 * la, 4.6), 10.0))
    )
    ax = axes[0, 0]
    finite = m[np.isfinite(m)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    image = ax.imshow(
        np.ma.masked_invalid(m),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, label="linear CKA (unbiased HSIC)", pad=0.02)

    ticks_b, ticks_a = _layer_ticks(lb), _layer_ticks(la)
    ax.set_xticks(ticks_b, [str(xb[i]) for i in ticks_b], fontsize=8)
    ax.set_yticks(ticks_a, [str(ya[i]) for i in ticks_a], fontsize=8)
    ax.set_xlabel(f"layer of {name_b} (0 = embedding)")
    ax.set_ylabel(f"layer of {name_a} (0 = embedding)")
    top = ax.secondary_xaxis("top")
    top.set_xticks(*_depth_ticks(rel_b), fontsize=7, color="0.35")
    top.set_xlabel(f"relative depth in {name_b}", fontsize=8, color="0.35")
    right = ax.secondary_yaxis("right")
    right.set_yticks(*_depth_ticks(rel_a), fontsize=7, color="0.35")
    right.set_ylabel(f"relative depth in {name_a}", fontsize=8, color="0.35")

    # the line of equal relative depth, over the depths both models cover
    lo, hi = max(rel_a[0], rel_b[0]), min(rel_a[-1], rel_b[-1])
    if hi > lo and la > 1 and lb > 1:
        r = np.linspace(lo, hi, 200)
        dx, dy = np.interp(r, rel_b, np.arange(lb)), np.interp(r, rel_a, np.arange(la))
        ax.plot(dx, dy, color="white", linestyle="--", linewidth=0.9, zorder=3)
        k = int(0.8 * (r.size - 1))
        ax.text(
            dx[k],
            dy[k],
            "equal relative depth",
            fontsize=7,
            color="0.15",
            ha="right",
            va="bottom",
            bbox=_HALO,
            zorder=6,
        )

    caption, handles = [], []
    if pv is not None:
        rows, cols = np.nonzero(pv >= alpha)  # NaN p is not marked
        cells = [Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in zip(rows, cols, strict=True)]
        hatch = PatchCollection(
            cells, facecolor="none", edgecolor="0.8", linewidth=0, hatch="xxx", zorder=2
        )
        hatch.set_gid("not-significant")
        ax.add_collection(hatch)
        caption.append(f"hatched: not significant at α = {alpha:g} (permutation null)")
        handles.append(Patch(facecolor="0.3", edgecolor="0.8", hatch="xxx", label=f"p ≥ {alpha:g}"))
    if best is not None:
        dots = ax.scatter(
            best,
            np.arange(la),
            s=22,
            color="white",
            edgecolors="black",
            linewidths=0.7,
            zorder=5,
        )
        dots.set_gid("best-match")
        caption.append(f"white dots: best-matching {name_b} layer for each {name_a} layer")
        handles.append(
            Line2D([], [], ls="none", marker="o", mfc="white", mec="black", label="best match in B")
        )
    if not finite.size or finite.size < m.size:
        caption.append("gray: CKA undefined")
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7.5)
    _caption(fig, ax, title if title is not None else f"Linear CKA, {name_a} vs {name_b}", caption)
    return fig


def mapped_cosines(
    layers: Sequence[int],
    cos: Mapping[str, ArrayLike],
    *,
    null_lo: ArrayLike,
    null_hi: ArrayLike,
    perm_lo: ArrayLike | None = None,
    perm_hi: ArrayLike | None = None,
    chance_line: float = 0.0,
    title: str,
    ylabel: str = "cos(W v_A, v_B)",
    xlabel: str | None = None,
    null_label: str = _NULL_LABEL,
) -> Figure:
    """Cosine between each mapped A direction and the matching B direction, one curve per
    emotion over A's layers, over the 95% band of the shuffled-pair null (gray) and, given
    ``perm_lo``/``perm_hi``, the label-permuted null (hatched). The y axis spans [-1, 1].

    >>> fig = mapped_cosines([0, 1, 2], {"anger": [0.2, 0.6, 0.7]}, null_lo=[-0.2] * 3,
    ...                      null_hi=[0.2] * 3, title="mapped anger direction")
    """
    x = _layers(layers)
    _check_mapping("cos", cos, x.size)
    lo, hi = _series("null_lo", null_lo, x.size), _series("null_hi", null_hi, x.size)
    if (perm_lo is None) != (perm_hi is None):
        raise ValueError("perm_lo and perm_hi must be given together")
    fig, ax, x, series = _layer_figure(layers, cos, None, None, title=title, ylabel=ylabel)
    ax.set_xlabel(xlabel if xlabel is not None else _DEFAULT_XLABEL)
    null = ax.fill_between(x, lo, hi, color="0.55", alpha=0.28, linewidth=0, zorder=1)
    null.set_gid("shuffled-pair-null")
    handles = [Patch(facecolor="0.55", alpha=0.28, label=null_label)]
    if perm_lo is not None:
        plo, phi = _series("perm_lo", perm_lo, x.size), _series("perm_hi", perm_hi, x.size)
        perm = ax.fill_between(
            x, plo, phi, facecolor="none", edgecolor="#b5651d", hatch="////", linewidth=0.8
        )
        perm.set_zorder(1.2)
        perm.set_gid("label-permuted-null")
        handles.append(
            Patch(facecolor="none", edgecolor="#b5651d", hatch="////", label=_PERM_LABEL)
        )
    _curves(ax, x, series)
    ax.set_ylim(-1.05, 1.05)
    _reference_lines(ax, [(float(chance_line), f"chance (cos = {chance_line:g})", "0.25", "--")])
    _end_labels(ax, [(s[0], s[1], s[4]) for s in series])
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7.5)
    return fig


def identification_curves(
    layers: Sequence[int],
    accuracy: Mapping[str, ArrayLike],
    *,
    chance: float,
    p: Mapping[str, ArrayLike] | None = None,
    alpha: float = 0.05,
    title: str,
    ylabel: str = "identification accuracy",
    xlabel: str | None = None,
) -> Figure:
    """How often a mapped A direction is nearest to the B direction of the same emotion,
    one curve per map over A's layers on [0, 1.05], with a labelled chance line. Given
    ``p`` (same keys), points with ``p < alpha`` are filled and the others hollow.

    >>> fig = identification_curves([0, 1, 2], {"ridge": [0.25, 0.75, 1.0]}, chance=0.25,
    ...                             p={"ridge": [0.6, 0.01, 0.001]}, title="identification")
    """
    x = _layers(layers)
    _check_mapping("accuracy", accuracy, x.size)
    pv = {}
    if p is not None:
        unknown = [k for k in p if k not in accuracy]
        if unknown:
            raise ValueError(f"p has keys {unknown} that accuracy does not have")
        pv = {k: _series(f"p[{k!r}]", v, x.size) for k, v in p.items()}
    fig, ax, x, series = _layer_figure(layers, accuracy, None, None, title=title, ylabel=ylabel)
    ax.set_xlabel(xlabel if xlabel is not None else _DEFAULT_XLABEL)
    _curves(ax, x, series)
    for key, s in zip(accuracy, series, strict=True):
        if key in pv:
            _significance_markers(ax, x, s[1], pv[key], alpha, s[4])
    ax.set_ylim(0, 1.05)
    n = round(1 / chance) if chance > 0 else 0
    exact = n > 0 and abs(chance * n - 1) < 1e-6
    label = f"chance 1/{n} = {chance:.2f}" if exact else f"chance {chance:.2f}"
    _reference_lines(ax, [(float(chance), label, "0.25", "--")])
    _end_labels(ax, [(s[0], s[1], s[4]) for s in series])
    caption = []
    if pv:
        caption.append(
            f"filled: p < {alpha:g} (permutation null); hollow: not significant"
            + ("" if len(pv) == len(accuracy) else "; small dots: no test")
        )
    _caption(fig, ax, title, caption)
    return fig


def map_quality(
    layers: Sequence[int],
    r2: Mapping[str, ArrayLike],
    *,
    title: str,
    ylabel: str = "held-out R² of the map",
    xlabel: str | None = None,
    floor: float = -1.0,
) -> Figure:
    """Held-out R² of each fitted map over A's layers, with a labelled line at 0 (no better
    than predicting the mean). The axis tops out at 1; values below ``floor`` are drawn at
    ``floor`` and the caption says so.

    >>> fig = map_quality([0, 1, 2], {"procrustes": [-0.2, 0.3, 0.5]}, title="map R²")
    """
    x = _layers(layers)
    _check_mapping("r2", r2, x.size)
    fig, ax, x, series = _layer_figure(layers, r2, None, None, title=title, ylabel=ylabel)
    ax.set_xlabel(xlabel if xlabel is not None else _DEFAULT_XLABEL)
    clipped = sum(int(np.sum(s[1] < floor)) for s in series)
    series = [(s[0], np.maximum(s[1], floor), *s[2:]) for s in series]  # keeps NaN
    _curves(ax, x, series)
    low = min((float(np.nanmin(s[1])) for s in series if np.isfinite(s[1]).any()), default=0.0)
    ax.set_ylim(min(-0.05, low - 0.05), 1.05)
    _reference_lines(ax, [(0.0, "R² = 0 (predicting the mean)", "0.25", "--")])
    _end_labels(ax, [(s[0], s[1], s[4]) for s in series])
    caption = [f"{clipped} value(s) below {floor:g} drawn at {floor:g}"] if clipped else []
    _caption(fig, ax, title, caption)
    return fig

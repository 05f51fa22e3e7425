"""Shared style of every figure, its helpers, and :func:`save_figure`, the one writer.

Conventions
-----------
* **Pure.** Every figure function takes arrays and dicts and returns a
  :class:`matplotlib.figure.Figure`; nothing is read from disk and nothing is shown.
  :func:`save_figure` is the only writer.
* **No global state.** Figures are built from :class:`~matplotlib.figure.Figure` with an Agg
  canvas, never through pyplot, so importing this module neither selects a backend nor changes
  ``rcParams``; it works headless and leaves a notebook's or GUI's settings alone.
* **One colour per label, everywhere.** :data:`PALETTE` fixes gratitude, anger, apology and
  neutral; any other label (another emotion, a probe method) gets a tab10 colour picked by a
  stable hash of its name (:func:`label_color`), so it matches across figures and runs.
* **Readable without a legend.** Curves over layers carry their label at their right end;
  intervals ``lo``/``hi`` (same keys and shapes as the values) are bands in the curve's
  colour; reference lines (chance, lexical baseline, targets) are labelled on the line.
  Layer 0 is the embedding output, i.e. the lexical baseline: it is shaded and named.
* Every figure has a title and axis labels that say what is measured.
* **Deterministic files.** SVG text stays text, SVG ids are salted with a fixed string and
  SVG/PDF dates are left out, so the same figure saves to the same bytes.

>>> label_color("anger")
'#d62728'
>>> save_figure(fig, "figures/norms")  # doctest: +SKIP
[PosixPath('figures/norms.png'), PosixPath('figures/norms.svg')]
"""

from __future__ import annotations

import os
import sys
import uuid
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

__all__ = ["PALETTE", "label_color", "save_figure"]

PALETTE: dict[str, str] = {
    "gratitude": "#2ca02c",  # tab:green
    "anger": "#d62728",  # tab:red
    "apology": "#1f77b4",  # tab:blue
    "neutral": "#7f7f7f",  # tab:gray
}
# tab10 without the colours PALETTE already uses: orange, purple, brown, pink, olive, cyan.
_OTHER = ["#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
_LABEL_FONT = 8
# a light box behind labels drawn over data (path-effect outlines would turn SVG text into paths)
_HALO = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.75}
EMBEDDING_LABEL = "embedding (lexical)"


def label_color(label: str) -> str:
    """The colour of one label: fixed for the four core classes, else a stable tab10 pick.

    >>> label_color("anger"), label_color("Anger")
    ('#d62728', '#d62728')
    """
    fixed = PALETTE.get(label.lower())
    if fixed is not None:
        return fixed
    return _OTHER[zlib.crc32(label.encode()) % len(_OTHER)]


def _colors(labels: Sequence[str]) -> dict[str, str]:
    """Colours for the labels of one figure: :func:`label_color`, except that a hash
    collision between two non-core labels moves the later one to the next free colour."""
    out = {lab: PALETTE[lab.lower()] for lab in labels if lab.lower() in PALETTE}
    used = set(out.values())
    for lab in labels:
        if lab in out:
            continue
        start = _OTHER.index(label_color(lab))
        ring = [_OTHER[(start + k) % len(_OTHER)] for k in range(len(_OTHER))]
        out[lab] = next((c for c in ring if c not in used), ring[0])
        used.add(out[lab])
    return out


# ----------------------------------------------------------------------------- helpers


def _figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float]) -> tuple:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _layers(layers: ArrayLike) -> np.ndarray:
    x = np.asarray(layers)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"layers must be a non-empty 1-D list, got shape {x.shape}")
    return x


def _vector(name: str, values: ArrayLike, n: int) -> np.ndarray:
    y = np.asarray(values, dtype=float)
    if y.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one value per layer), got {y.shape}")
    return y


def _band(bounds: Mapping | None, key: object, n: int, what: str) -> np.ndarray | None:
    if bounds is None or key not in bounds:
        return None
    return _vector(f"{what}[{key!r}]", bounds[key], n)


def _spread(fracs: Sequence[float], gap: float) -> list[float]:
    """Push sorted positions apart to at least ``gap``, staying inside [0, 1] if they fit."""
    pos = list(fracs)
    for i in range(1, len(pos)):
        pos[i] = max(pos[i], pos[i - 1] + gap)
    if pos and pos[-1] > 1:
        pos[-1] = 1.0
        for i in range(len(pos) - 2, -1, -1):
            pos[i] = min(pos[i], pos[i + 1] - gap)
    return pos


def _label_gap(ax: Axes, fontsize: float) -> float:
    """Axes fraction of one text line (the axes take ~75% of the figure height)."""
    return 1.5 * fontsize / (ax.figure.get_figheight() * 72 * 0.75)


def _curves(
    ax: Axes,
    x: np.ndarray,
    series: Sequence[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None, str, str]],
) -> None:
    """Draw ``(label, y, lo, hi, colour, linestyle)`` curves with bands."""
    for _, y, lo, hi, color, ls in series:
        ax.plot(x, y, color=color, linestyle=ls, linewidth=1.8, marker="o", markersize=3)
        if lo is not None and hi is not None:
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)


def _side_labels(
    ax: Axes,
    items: Sequence[tuple[float, str, str]],
    *,
    x: float,
    fontsize: float,
    lift: float = 0.0,
    **text: object,
) -> None:
    """Write ``(y, label, colour)`` labels at axes fraction ``x``, each at the height of its
    data value ``y`` (raised by ``lift``), pushed apart so that no two overlap."""
    y0, y1 = ax.get_ylim()
    placed = sorted(
        (((y - y0) / (y1 - y0), label, color) for y, label, color in items), key=lambda t: t[0]
    )
    fracs = _spread([f for f, _, _ in placed], _label_gap(ax, fontsize))
    for frac, (_, label, color) in zip(fracs, placed, strict=True):
        ax.text(
            x,
            frac + lift,
            label,
            transform=ax.transAxes,
            color=color,
            fontsize=fontsize,
            ha="left",
            **text,
        )


def _end_labels(ax: Axes, series: Sequence[tuple[str, np.ndarray, str]]) -> None:
    """Write each label right of the axes at the height of its curve's last finite value."""
    items = []
    for label, y, color in series:
        finite = np.flatnonzero(np.isfinite(y))
        if finite.size:
            items.append((y[finite[-1]], label, color))
    _side_labels(ax, items, x=1.01, fontsize=_LABEL_FONT, va="center", clip_on=False)


def _reference_lines(
    ax: Axes, lines: Sequence[tuple[float, str, str, str]], *, fontsize: float = 7.5
) -> None:
    """Horizontal ``(y, label, colour, linestyle)`` lines labelled just above, at the left."""
    for y, _, color, ls in sorted(lines, key=lambda t: t[0]):
        ax.axhline(y, color=color, linestyle=ls, linewidth=1.2, zorder=1.5)
    _side_labels(
        ax,
        [(y, label, color) for y, label, color, _ in lines],
        x=0.01,
        fontsize=fontsize,
        lift=0.008,
        va="bottom",
        bbox=_HALO,
        zorder=5,
    )


def _layer_axis(ax: Axes, x: np.ndarray) -> None:
    """Integer layer ticks; shade layer 0 and name it on a top tick (the lexical baseline)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3, linewidth=0.6)
    if 0 in x:
        ax.axvspan(-0.5, 0.5, color="0.5", alpha=0.12, linewidth=0, zorder=0)
        top = ax.secondary_xaxis("top")
        top.set_xticks([0], [EMBEDDING_LABEL], fontsize=7, color="0.35", ha="left")
        top.tick_params(length=2, color="0.5")
        ax.set_xlabel("layer (0 = embedding output)")
    else:
        ax.set_xlabel("layer")
    pad = 0.5 if x.size > 1 else 1.0
    ax.set_xlim(float(x.min()) - pad, float(x.max()) + pad)


def _ylim_signed(ax: Axes, arrays: Sequence[np.ndarray | None], pad: float = 0.03) -> None:
    """[0, 1] when every value is non-negative, else [-1, 1]."""
    finite = [a[np.isfinite(a)] for a in arrays if a is not None]
    low = min((float(a.min()) for a in finite if a.size), default=0.0)
    ax.set_ylim((0.0 if low >= 0 else -1.0) - pad, 1.0 + pad)


def _layer_figure(
    layers: ArrayLike,
    values: Mapping,
    lo: Mapping | None,
    hi: Mapping | None,
    *,
    title: str,
    ylabel: str,
    names: Mapping | None = None,
) -> tuple[Figure, Axes, np.ndarray, list]:
    """The shared body of every "one curve per key over layers" figure."""
    x = _layers(layers)
    if not values:
        raise ValueError("nothing to plot: the values dict is empty")
    names = names or {k: str(k) for k in values}
    colors = _colors([names[k] for k in values])
    series = []
    for key, v in values.items():
        label = names[key]
        series.append(
            (
                label,
                _vector(f"values[{key!r}]", v, x.size),
                _band(lo, key, x.size, "lo"),
                _band(hi, key, x.size, "hi"),
                colors[label],
                "-",
            )
        )
    fig, axes = _figure(figsize=(7.5, 4.2))
    ax = axes[0, 0]
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _layer_axis(ax, x)
    return fig, ax, x, series


# ----------------------------------------------------------------------------- saving

_SAVE_RC = {"svg.fonttype": "none", "svg.hashsalt": "emocircuits"}
_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def save_figure(
    fig: Figure,
    stem: str | os.PathLike,
    formats: Sequence[str] = ("png", "svg"),
    *,
    dpi: int = 150,
) -> list[Path]:
    """Write ``stem.<format>`` for each format atomically, creating the folder; close the
    figure; return the paths. SVG text stays text (searchable, editable).

    A temporary file in the same folder is written first and moved into place with
    :func:`os.replace`, so a reader never sees half a figure.

    >>> save_figure(fig, "runs/smollm2/figures/norms")  # doctest: +SKIP
    [PosixPath('runs/smollm2/figures/norms.png'), PosixPath('runs/smollm2/figures/norms.svg')]
    """
    from emocircuits.capture.store import writing

    stem = Path(stem)
    if stem.suffix.lstrip(".").lower() in formats:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        with matplotlib.rc_context(_SAVE_RC):
            for fmt in formats:
                path = stem.with_name(f"{stem.name}.{fmt}")
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
                try:
                    with writing(path), open(tmp, "xb") as fh:  # full disk: one line
                        fig.savefig(fh, format=fmt, dpi=dpi, metadata=_METADATA.get(fmt))
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
                paths.append(path)
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # only a pyplot-made figure is registered anywhere
            pyplot.close(fig)
    return paths

"""Figures: every plot renders to a non-blank PNG and a searchable SVG with its title and
labels; save_figure is atomic; colours are fixed per emotion; no global matplotlib state."""

from __future__ import annotations

import html
import sys
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from emocircuits import plots
from emocircuits.plots import common as pg

EMOTIONS = ["gratitude", "anger", "apology", "neutral"]
LAYERS = list(range(5))


def check(fig, folder: Path, name: str, *texts: str) -> str:
    """Save ``fig`` as PNG and SVG, check both, return the SVG text."""
    paths = plots.save_figure(fig, folder / name)
    assert paths == [folder / f"{name}.png", folder / f"{name}.svg"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    pixels = matplotlib.image.imread(paths[0])
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0
    svg = paths[1].read_text(encoding="utf-8")
    for text in texts:
        assert html.escape(text, quote=False) in svg, f"{text!r} not in {name}.svg"
    return svg


def curves(keys, rng, scale=1.0):
    values = {k: scale * (0.2 + 0.15 * np.arange(len(LAYERS)) + rng.uniform(0, 0.05)) for k in keys}
    lo = {k: v - 0.05 for k, v in values.items()}
    hi = {k: v + 0.05 for k, v in values.items()}
    return values, lo, hi


def line_colors(fig) -> dict[str, str]:
    """Colour of each end label (the curve's label) in a one-axes figure."""
    ax = fig.axes[0]
    return {t.get_text(): to_hex(t.get_color()) for t in ax.texts}


def test_layer_norms(tmp_path):
    values, lo, hi = curves(EMOTIONS[:3], np.random.default_rng(0))
    fig = plots.layer_norms(LAYERS, values, lo, hi, title="Direction norms")
    assert len(fig.axes[0].collections) == 3  # one band per emotion
    check(
        fig,
        tmp_path,
        "norms",
        "Direction norms",
        "‖direction‖ (debiased)",
        "embedding (lexical)",
        *EMOTIONS[:3],
    )


def test_layer_norms_without_layer_zero_or_bands(tmp_path):
    fig = plots.layer_norms([3, 4, 5], {"anger": np.array([1.0, 2.0, 3.0])}, title="Norms")
    assert not fig.axes[0].collections
    svg = check(fig, tmp_path, "norms", "Norms", "anger", "layer")
    assert "embedding (lexical)" not in svg


def test_distance_curves(tmp_path):
    pairs = [("anger", "neutral"), ("gratitude", "neutral"), ("anger", "gratitude")]
    values, lo, hi = curves(pairs, np.random.default_rng(1), scale=3)
    fig = plots.distance_curves(LAYERS, values, lo, hi, title="Class-mean distances")
    lines = fig.axes[0].lines
    assert to_hex(lines[0].get_color()) == plots.PALETTE["anger"]
    assert lines[0].get_linestyle() != lines[2].get_linestyle()  # both anger-coloured
    check(
        fig,
        tmp_path,
        "dist",
        "Class-mean distances",
        "anger–neutral",
        "anger–gratitude",
        "gratitude–neutral",
    )


def test_stability_curves_reference_and_range(tmp_path):
    values, lo, hi = curves(EMOTIONS[:2], np.random.default_rng(2))
    fig = plots.stability_curves(LAYERS, values, lo, hi, title="Split-half", reference=0.9)
    assert fig.axes[0].get_ylim()[0] == pytest.approx(-0.03)
    check(fig, tmp_path, "stab", "Split-half", "split-half cosine", "target 0.9", "gratitude")
    signed = plots.stability_curves(LAYERS, {"anger": np.linspace(-0.5, 1, 5)}, title="Signed")
    assert signed.axes[0].get_ylim()[0] < -1


def test_probe_accuracy(tmp_path):
    acc = {"logistic": np.array([0.3, 0.6, 0.9, 0.8, 0.7]), "ncm": np.linspace(0.3, 0.7, 5)}
    lo = {k: v - 0.05 for k, v in acc.items()}
    hi = {k: np.minimum(v + 0.05, 1) for k, v in acc.items()}
    fig = plots.probe_accuracy(
        LAYERS, acc, chance=0.25, title="Probe accuracy", lo=lo, hi=hi, lexical=0.5
    )
    assert fig.axes[0].get_ylim() == (0, 1)
    check(
        fig,
        tmp_path,
        "probe",
        "Probe accuracy",
        "chance",
        "held-out accuracy",
        "lexical baseline (layer-0, mean-pooled)",
        "best: L2 0.90",
        "best: L4 0.70",
        "logistic",
        "ncm",
    )


def test_probe_accuracy_lexical_per_method_and_no_best(tmp_path):
    acc = {"logistic": np.linspace(0.3, 0.9, 5), "ncm": np.linspace(0.3, 0.7, 5)}
    fig = plots.probe_accuracy(
        LAYERS, acc, chance=0.5, title="Probes", lexical={"logistic": 0.6, "ncm": 0.55}, best=False
    )
    svg = check(fig, tmp_path, "probe", "Probes", "lexical baseline (layer-0, mean-pooled): ncm")
    assert "best: L" not in svg


@pytest.mark.parametrize(("n_layers", "panels"), [(1, 1), (30, 6)])
def test_similarity_heatmaps(tmp_path, n_layers, panels):
    rng = np.random.default_rng(3)
    cos = np.clip(rng.normal(0, 0.4, (n_layers, 3, 3)), -1, 1)
    cos[:, range(3), range(3)] = 1
    fig = plots.similarity_heatmaps(EMOTIONS[:3], cos, list(range(n_layers)), title="Cosines")
    shown = [ax for ax in fig.axes if ax.images and ax.get_visible()]
    assert len(shown) == panels
    assert all(ax.images[0].get_clim() == (-1, 1) for ax in shown)
    titles = [ax.get_title() for ax in shown]
    assert titles[0] == "layer 0 (embedding)"
    if n_layers > 1:  # first, last and evenly spaced middle layers
        assert titles[1:] == ["layer 6", "layer 12", "layer 17", "layer 23", "layer 29"]
    check(
        fig,
        tmp_path,
        f"heat{n_layers}",
        "Cosines",
        "cosine similarity",
        "gratitude",
        f"{cos[-1, 0, 1]:.2f}",
    )


def test_similarity_heatmaps_intervals_and_chosen_layers(tmp_path):
    cos = np.tile(np.eye(2), (4, 1, 1)) * 0.5
    fig = plots.similarity_heatmaps(
        ["anger", "neutral"],
        cos,
        [2, 4, 6, 8],
        title="Cos",
        show_layers=[8, 4],
        lo=cos - 0.25,
        hi=cos + 0.25,
    )
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["layer 8", "layer 4"]
    check(fig, tmp_path, "heat", "Cos", "0.50", "[0.25, 0.75]", "[-0.25, 0.25]")
    with pytest.raises(ValueError, match="not in layers"):
        plots.similarity_heatmaps(
            ["anger", "neutral"], cos, [2, 4, 6, 8], title="x", show_layers=[3]
        )
    with pytest.raises(ValueError, match="expected shape"):
        plots.similarity_heatmaps(["anger"], cos, [2, 4, 6, 8], title="x")


def test_projection_2d(tmp_path):
    rng = np.random.default_rng(4)
    points = np.concatenate([rng.normal(m, 0.3, (20, 2)) for m in [(0, 0), (3, 0), (0, 3)]])
    labels = [e for e in ["anger", "gratitude", "joy"] for _ in range(20)]
    fig = plots.projection_2d(points, labels, title="PCA, layer 3", xlabel="PC1", ylabel="PC2")
    check(fig, tmp_path, "proj", "PCA, layer 3", "PC1", "PC2", "anger (n=20)", "joy (n=20)")
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        plots.projection_2d(points[:5], labels, title="x", xlabel="a", ylabel="b")


@pytest.mark.parametrize("size", [3, 20])
def test_subspace_overlap(tmp_path, size):
    m = np.random.default_rng(5).uniform(0, 1, (size, size))
    names = [f"k{i}" for i in range(size)]
    fig = plots.subspace_overlap(
        m, names, names, title="Overlap", null=0.005, xlabel="model B", ylabel="model A"
    )
    ax = fig.axes[0]
    assert ax.images[0].get_clim() == (0, 1)
    assert len(ax.texts) == (size * size if size <= 12 else 0)  # annotated when small
    if size > 12:
        return
    check(
        fig,
        tmp_path,
        "overlap",
        "Overlap",
        "random-subspace null k/d = 0.005",
        "model B",
        "mean cos² overlap",
    )


def test_colours_fixed_per_emotion_and_distinct_for_others():
    values = {e: np.linspace(0.1, 0.5, 5) for e in EMOTIONS}
    a = line_colors(plots.layer_norms(LAYERS, values, title="a"))
    b = line_colors(plots.stability_curves(LAYERS, dict(reversed(values.items())), title="b"))
    assert {e: a[e] for e in EMOTIONS} == {e: b[e] for e in EMOTIONS} == plots.PALETTE
    others = [f"method{i}" for i in range(6)]
    colors = pg._colors(others)
    assert len(set(colors.values())) == 6
    assert not set(colors.values()) & set(plots.PALETTE.values())
    assert plots.label_color("joy") == plots.label_color("joy")


def test_save_figure_is_atomic_and_leaves_no_temp_files(tmp_path):
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    folder = tmp_path / "new" / "dir"
    paths = plots.save_figure(fig, folder / "fig.v1")
    assert sorted(p.name for p in folder.iterdir()) == ["fig.v1.png", "fig.v1.svg"]
    assert paths == [folder / "fig.v1.png", folder / "fig.v1.svg"]
    assert plots.save_figure(fig, folder / "fig.v1.png", formats=("png",)) == paths[:1]
    with pytest.raises(ValueError):
        plots.save_figure(fig, folder / "broken", formats=("png", "no-such-format"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "broken.png",
        "fig.v1.png",
        "fig.v1.svg",
    ]


def test_plots_change_no_global_matplotlib_state(tmp_path):
    had_pyplot = "matplotlib.pyplot" in sys.modules

    def raw_rc():  # read without resolving rcParams["backend"] (which imports pyplot)
        return dict(dict.items(matplotlib.rcParams))

    before = raw_rc()
    fig = plots.probe_accuracy(LAYERS, {"ncm": np.ones(5) / 2}, chance=0.25, title="t")
    plots.save_figure(fig, tmp_path / "f")
    assert raw_rc() == before  # no backend chosen, no style or rc change
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_shape_errors_name_the_series():
    with pytest.raises(ValueError, match="anger"):
        plots.layer_norms(LAYERS, {"anger": np.ones(3)}, title="t")
    with pytest.raises(ValueError, match="empty"):
        plots.probe_accuracy(LAYERS, {}, chance=0.5, title="t")

"""Cross-model comparison figures: the heatmap shows the CKA values as given (NaN masked),
marks exactly the best matches and the non-significant cells, and reads in relative depth;
curve figures label every series, draw the nulls and significance as asked, keep their axis
ranges, reject wrong shapes with a message naming the mismatch, and save as PNG + SVG with
labels kept as escaped text."""

from __future__ import annotations

import html
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_hex

from emocircuits import plots
from emocircuits.plots import compare as pc

LAYERS = list(range(5))
EMOTIONS = ["anger", "gratitude", "<script>"]


def check(fig, folder: Path, name: str, *texts: str) -> str:
    """Save ``fig`` as PNG and SVG, check both are non-empty, return the SVG text."""
    paths = plots.save_figure(fig, folder / name)
    assert paths == [folder / f"{name}.png", folder / f"{name}.svg"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    pixels = matplotlib.image.imread(paths[0])
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 0
    svg = paths[1].read_text(encoding="utf-8")
    for text in texts:
        assert html.escape(text, quote=False) in svg, f"{text!r} not in {name}.svg"
    return svg


def end_labels(ax) -> dict[str, str]:
    """Text → colour of the labels written right of the axes (the curves' names)."""
    return {
        t.get_text(): to_hex(t.get_color())
        for t in ax.texts
        if t.get_transform() == ax.transAxes and t.get_position()[0] > 1
    }


def by_gid(artists, gid):
    found = [a for a in artists if a.get_gid() == gid]
    assert len(found) == 1, f"expected one artist with gid {gid!r}, found {len(found)}"
    return found[0]


# ----------------------------------------------------------------------------- CKA heatmap


def heatmap_inputs():
    cka = np.array(
        [[0.9, 0.4, 0.1], [0.5, 0.8, np.nan], [0.2, 0.7, 0.6], [-0.04, 0.3, 0.95]],
    )
    p = np.array([[0.001, 0.2, 0.5], [0.01, 0.001, np.nan], [0.06, 0.001, 0.02], [0.9, 0.05, 0.0]])
    return cka, [0, 1, 2, 3], [0, 2, 4], np.array([0, 1, 1, 2]), p


def test_cka_heatmap(tmp_path):
    cka, la, lb, best, p = heatmap_inputs()
    fig = plots.cka_heatmap(cka, la, lb, name_a="smollm2", name_b="gemma3", best_b=best, p=p)
    (ax,) = [a for a in fig.axes if a.images]
    image = ax.images[0]
    data = image.get_array()
    np.testing.assert_array_equal(data.mask, np.isnan(cka))  # NaN masked, drawn in gray
    np.testing.assert_array_equal(data.filled(np.nan), cka)
    assert image.get_clim() == (pytest.approx(-0.04), 1.0)  # min(0, nanmin) .. 1
    assert image.get_cmap().name.startswith("viridis")
    assert [a.get_ylabel() for a in fig.axes if a is not ax] == ["linear CKA (unbiased HSIC)"]

    # rows = model A's layers, columns = model B's, labelled with layer numbers
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2", "4"]
    # relative depth on top (B: 0, 0.5, 1 at cells 0, 1, 2) and right (A: 0, 1/3, 2/3, 1)
    top, right = ax.child_axes
    np.testing.assert_allclose(top.get_xticks(), [0, 0.5, 1, 1.5, 2])
    assert [t.get_text() for t in top.get_xticklabels()] == ["0", "0.25", "0.5", "0.75", "1"]
    np.testing.assert_allclose(right.get_yticks(), [0, 0.75, 1.5, 2.25, 3])

    # the dashed diagonal of equal relative depth runs corner to corner, and is named
    (diag,) = [line for line in ax.lines if line.get_linestyle() == "--"]
    np.testing.assert_allclose(diag.get_xydata()[[0, -1]], [[0, 0], [2, 3]])
    assert "equal relative depth" in [t.get_text() for t in ax.texts]

    # white dots on exactly the best-matching cells
    dots = by_gid(ax.collections, "best-match")
    np.testing.assert_array_equal(dots.get_offsets(), np.c_[best, np.arange(4)])

    # one hatched cell per p >= alpha (NaN p is not marked), centred on those cells
    hatch = by_gid(ax.collections, "not-significant")
    centres = {tuple(path.vertices[:4].mean(axis=0)) for path in hatch.get_paths()}
    expected = {(float(c), float(r)) for r, c in zip(*np.nonzero(p >= 0.05), strict=True)}
    assert len(hatch.get_paths()) == 5 and centres == expected
    assert hatch.get_hatch()

    assert fig.get_suptitle() == "Linear CKA, smollm2 vs gemma3"
    caption = ax.get_title()
    assert "not significant at α = 0.05 (permutation null)" in caption
    assert "best-matching gemma3 layer" in caption and "undefined" in caption
    check(
        fig,
        tmp_path,
        "cka",
        "Linear CKA, smollm2 vs gemma3",
        "linear CKA (unbiased HSIC)",
        "relative depth in gemma3",
        "layer of smollm2 (0 = embedding)",
        "equal relative depth",
        "best match in B",
    )


def test_cka_heatmap_plain_alpha_and_title():
    cka = np.linspace(0.1, 0.9, 6).reshape(3, 2)
    plain = plots.cka_heatmap(cka, [0, 1, 2], [0, 1], name_a="a", name_b="b", title="CKA")
    (ax,) = [a for a in plain.axes if a.images]
    assert ax.get_title() == "CKA" and not plain.get_suptitle()
    assert not ax.collections and not plain.legends  # nothing marked, nothing explained
    assert ax.images[0].get_clim() == (0.0, 1.0)

    p = np.full((3, 2), 0.03)
    strict = plots.cka_heatmap(cka, [0, 1, 2], [0, 1], name_a="a", name_b="b", p=p, alpha=0.01)
    (ax,) = [a for a in strict.axes if a.images]
    assert len(by_gid(ax.collections, "not-significant").get_paths()) == 6
    assert "α = 0.01" in ax.get_title()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layers_b": [0, 1, 2, 3, 4]}, r"cka is \[4, 3\] but layers_b has 5 entries"),
        ({"layers_a": [0, 1]}, r"cka is \[4, 3\] but layers_a has 2 entries"),
        ({"cka": np.ones(3)}, "cka must be 2-D"),
        ({"p": np.ones((3, 4))}, r"p is \[3, 4\] but cka is \[4, 3\]"),
        ({"best_b": [0, 1, 2]}, r"best_b has shape \[3\] but layers_a has 4 entries"),
        ({"best_b": [0, 1, 2, 3]}, r"best_b must index into layers_b \(0..2\)"),
        ({"layers_a": [0, 2, 1, 3]}, "layers_a must be strictly increasing"),
    ],
)
def test_cka_heatmap_rejects_mismatches(change, message):
    cka, la, lb, best, p = heatmap_inputs()
    args = {"cka": cka, "layers_a": la, "layers_b": lb, "best_b": best, "p": p} | change
    with pytest.raises(ValueError, match=message):
        plots.cka_heatmap(**args, name_a="a", name_b="b")


# ----------------------------------------------------------------------------- mapped cosines


def cosines():
    rng = np.random.default_rng(0)
    return {e: np.clip(np.linspace(0.1, 0.8, 5) + rng.normal(0, 0.05, 5), -1, 1) for e in EMOTIONS}


def test_mapped_cosines(tmp_path):
    null_lo, null_hi = np.array([-0.3, -0.25, -0.2, -0.2, -0.15]), np.full(5, 0.22)
    perm_lo, perm_hi = np.full(5, -0.5), np.array([0.4, 0.45, 0.5, 0.45, 0.4])
    xlabel = "layer of smollm2 → matched layer of gemma3"
    fig = plots.mapped_cosines(
        LAYERS,
        cosines(),
        null_lo=null_lo,
        null_hi=null_hi,
        perm_lo=perm_lo,
        perm_hi=perm_hi,
        title="Mapped directions",
        xlabel=xlabel,
    )
    ax = fig.axes[0]
    labels = end_labels(ax)
    assert sorted(labels) == sorted(EMOTIONS)
    assert labels["anger"] == plots.PALETTE["anger"]
    assert len(set(labels.values())) == 3

    for gid, lo, hi in [
        ("shuffled-pair-null", null_lo, null_hi),
        ("label-permuted-null", perm_lo, perm_hi),
    ]:
        verts = by_gid(ax.collections, gid).get_paths()[0].vertices
        for x, low, high in zip(LAYERS, lo, hi, strict=True):
            ys = verts[np.isclose(verts[:, 0], x), 1]
            assert ys.min() == pytest.approx(low) and ys.max() == pytest.approx(high)
    null = by_gid(ax.collections, "shuffled-pair-null")
    perm = by_gid(ax.collections, "label-permuted-null")
    assert perm.get_hatch() and not null.get_hatch()  # visibly different bands

    assert ax.get_ylim() == (-1.05, 1.05)
    chance = [line for line in ax.lines if np.all(np.asarray(line.get_ydata()) == 0.0)]
    assert len(chance) == 1 and chance[0].get_linestyle() == "--"
    assert ax.get_xlabel() == xlabel
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "shuffled-pair null (95%)",
        "label-permuted null (95%)",
    ]
    svg = check(
        fig,
        tmp_path,
        "cosines",
        "Mapped directions",
        "cos(W v_A, v_B)",
        xlabel,
        "chance (cos = 0)",
        "shuffled-pair null (95%)",
        "label-permuted null (95%)",
        "gratitude",
    )
    assert "&lt;script&gt;" in svg and "<script>" not in svg  # a label is text, never markup


def test_mapped_cosines_defaults_and_errors():
    fig = plots.mapped_cosines(
        LAYERS,
        {"anger": np.full(5, 0.5)},
        null_lo=-np.ones(5) / 4,
        null_hi=np.ones(5) / 4,
        title="t",
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "layer of model A (0 = embedding)"
    assert [c.get_gid() for c in ax.collections] == ["shuffled-pair-null"]
    with pytest.raises(ValueError, match=r"null_lo has 4 values but layers has 5 entries"):
        plots.mapped_cosines(LAYERS, cosines(), null_lo=np.zeros(4), null_hi=np.zeros(5), title="t")
    with pytest.raises(ValueError, match=re.escape("cos['anger'] has 3 values but layers has 5")):
        plots.mapped_cosines(
            LAYERS, {"anger": np.zeros(3)}, null_lo=np.zeros(5), null_hi=np.zeros(5), title="t"
        )
    with pytest.raises(ValueError, match="perm_lo and perm_hi must be given together"):
        plots.mapped_cosines(
            LAYERS,
            cosines(),
            null_lo=np.zeros(5),
            null_hi=np.zeros(5),
            perm_lo=np.zeros(5),
            title="t",
        )


# ----------------------------------------------------------------------------- identification


def test_identification_curves(tmp_path):
    acc = {"procrustes": np.linspace(0.25, 1, 5), "ridge": np.array([0.2, 0.4, 0.6, 0.8, 0.7])}
    p = {
        "procrustes": np.array([0.5, 0.2, 0.04, 0.01, 0.001]),
        "ridge": np.array([0.5, 0.05, np.nan, 0.01, 0.3]),
    }
    fig = plots.identification_curves(LAYERS, acc, chance=0.25, p=p, title="Identification")
    ax = fig.axes[0]
    labels = end_labels(ax)
    assert sorted(labels) == ["procrustes", "ridge"]
    filled = [line for line in ax.lines if line.get_gid() == "significant"]
    hollow = [line for line in ax.lines if line.get_gid() == "not-significant"]
    assert [len(line.get_xdata()) for line in filled] == [3, 1]  # p < 0.05
    assert [len(line.get_xdata()) for line in hollow] == [2, 4]  # p >= 0.05 or NaN
    np.testing.assert_array_equal(hollow[1].get_xdata(), [0, 1, 2, 4])
    for line, key in zip(filled, acc, strict=True):
        assert to_hex(line.get_markerfacecolor()) == labels[key]
    for line, key in zip(hollow, acc, strict=True):
        assert to_hex(line.get_markerfacecolor()) == "#ffffff"
        assert to_hex(line.get_markeredgecolor()) == labels[key]
    assert ax.get_ylim() == (0, 1.05)
    assert fig.get_suptitle() == "Identification"
    assert ax.get_title() == "filled: p < 0.05 (permutation null); hollow: not significant"
    check(
        fig,
        tmp_path,
        "ident",
        "Identification",
        "chance 1/4 = 0.25",
        "identification accuracy",
        "filled: p < 0.05 (permutation null); hollow: not significant",
        "procrustes",
        "ridge",
    )


def test_identification_curves_without_p_and_errors():
    acc = {"ridge": np.linspace(0.2, 0.9, 5)}
    fig = plots.identification_curves(LAYERS, acc, chance=0.3, title="Id", xlabel="matched")
    ax = fig.axes[0]
    assert not [line for line in ax.lines if line.get_gid()]
    assert ax.get_title() == "Id" and ax.get_xlabel() == "matched"
    assert "chance 0.30" in [t.get_text() for t in ax.texts]
    with pytest.raises(ValueError, match=re.escape("p['ridge'] has 4 values but layers has 5")):
        plots.identification_curves(LAYERS, acc, chance=0.25, p={"ridge": np.ones(4)}, title="t")
    with pytest.raises(ValueError, match="p has keys \\['lasso'\\] that accuracy does not have"):
        plots.identification_curves(LAYERS, acc, chance=0.25, p={"lasso": np.ones(5)}, title="t")
    with pytest.raises(ValueError, match="nothing to plot: accuracy is empty"):
        plots.identification_curves(LAYERS, {}, chance=0.25, title="t")


# ----------------------------------------------------------------------------- map quality


def test_map_quality(tmp_path):
    r2 = {"procrustes": np.array([-0.4, 0.1, 0.3, np.nan, 0.5]), "ridge": np.linspace(0, 0.7, 5)}
    fig = plots.map_quality(LAYERS, r2, title="Map quality")
    ax = fig.axes[0]
    assert sorted(end_labels(ax)) == ["procrustes", "ridge"]
    zero = [line for line in ax.lines if np.all(np.asarray(line.get_ydata()) == 0.0)]
    assert len(zero) == 1 and zero[0].get_linestyle() == "--"
    bottom, top = ax.get_ylim()
    assert top == 1.05 and bottom == pytest.approx(-0.45)
    assert ax.get_title() == "Map quality"  # nothing clipped, no caption
    check(fig, tmp_path, "r2", "Map quality", "R² = 0 (predicting the mean)", "held-out R²")


def test_map_quality_clips_very_negative_values_and_says_so():
    r2 = {"ridge": np.array([-30.0, -2.0, -0.5, 0.2, 0.6])}
    fig = plots.map_quality(LAYERS, r2, title="R²")
    ax = fig.axes[0]
    assert ax.get_ylim() == (pytest.approx(-1.05), 1.05)
    (curve,) = [line for line in ax.lines if line.get_marker() == "o"]
    np.testing.assert_array_equal(curve.get_ydata(), [-1, -1, -0.5, 0.2, 0.6])
    assert ax.get_title() == "2 value(s) below -1 drawn at -1"
    with pytest.raises(ValueError, match=re.escape("r2['ridge'] has shape [5, 1]")):
        plots.map_quality(LAYERS, {"ridge": np.ones((5, 1))}, title="t")


def test_exported_from_plots_package():
    for name in ["cka_heatmap", "mapped_cosines", "identification_curves", "map_quality"]:
        assert getattr(plots, name) is getattr(pc, name)
        assert name in plots.__all__

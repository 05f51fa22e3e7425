"""Figures: pure functions from arrays to :class:`matplotlib.figure.Figure`, and
:func:`save_figure` to write them (PNG and SVG, atomically).

Figures are built without pyplot on an Agg canvas, so importing this package changes no
matplotlib settings. See :mod:`emocircuits.plots.common` for the conventions (one fixed
colour per emotion, direct labels, interval bands, layer 0 marked as the lexical baseline).

>>> from emocircuits import plots
>>> fig = plots.layer_norms([0, 1], {"anger": [0.2, 0.7]}, title="‖anger‖ by layer")
>>> plots.save_figure(fig, "figures/norms")  # doctest: +SKIP
[PosixPath('figures/norms.png'), PosixPath('figures/norms.svg')]
"""

from emocircuits.plots.common import PALETTE, label_color, save_figure
from emocircuits.plots.compare import (
    cka_heatmap,
    identification_curves,
    map_quality,
    mapped_cosines,
)
from emocircuits.plots.geometry import (
    distance_curves,
    layer_norms,
    probe_accuracy,
    projection_2d,
    similarity_heatmaps,
    stability_curves,
    subspace_overlap,
)

__all__ = [
    "PALETTE",
    "cka_heatmap",
    "distance_curves",
    "identification_curves",
    "label_color",
    "layer_norms",
    "map_quality",
    "mapped_cosines",
    "probe_accuracy",
    "projection_2d",
    "save_figure",
    "similarity_heatmaps",
    "stability_curves",
    "subspace_overlap",
]

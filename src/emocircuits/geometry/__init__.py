"""Geometry inside one model (directions, similarity, probes). Reads activation stores.

The stage calls are :func:`~emocircuits.geometry.vectors.directions`,
:func:`~emocircuits.geometry.stage.analyze_geometry` and
:func:`~emocircuits.geometry.probes.probe`; they are exported at the top level
(``emocircuits.directions`` ...) and not here, where ``directions`` would be shadowed by the
submodule of that name.
"""

from emocircuits.geometry.directions import METHODS, emotion_directions
from emocircuits.geometry.summary import LayerSummary, ncm_accuracy, summarize
from emocircuits.geometry.vectors import EmotionVectors, compute_vectors

__all__ = [
    "METHODS",
    "EmotionVectors",
    "LayerSummary",
    "compute_vectors",
    "emotion_directions",
    "ncm_accuracy",
    "summarize",
]

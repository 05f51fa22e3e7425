"""Geometry inside one model (directions, similarity, probes). Reads activation folders."""

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

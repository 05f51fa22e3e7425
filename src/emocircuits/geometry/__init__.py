"""Geometry inside one model (directions, similarity, probes). Reads activation folders."""

from emocircuits.geometry.summary import LayerSummary, ncm_accuracy, summarize

__all__ = ["LayerSummary", "ncm_accuracy", "summarize"]

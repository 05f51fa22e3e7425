"""Capture: hooks, position rules, one-pass capture, the activation store (in memory or
on disk)."""

from emocircuits.capture.capture import CaptureSpec, capture, iter_capture
from emocircuits.capture.extract import capture_positions, extract
from emocircuits.capture.hooks import count_hooks, hooked
from emocircuits.capture.positions import RULES, Selection, TokenBatch
from emocircuits.capture.store import ActivationStore, as_store, load_activations

__all__ = [
    "RULES",
    "ActivationStore",
    "CaptureSpec",
    "Selection",
    "TokenBatch",
    "as_store",
    "capture",
    "capture_positions",
    "count_hooks",
    "extract",
    "hooked",
    "iter_capture",
    "load_activations",
]

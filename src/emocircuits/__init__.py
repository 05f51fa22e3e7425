"""emocircuits: find, compare and test how emotions are represented inside causal LMs.

>>> import emocircuits as ec
>>> lm = ec.load_model("smollm2-135m")                                   # doctest: +SKIP
>>> acts = ec.extract(lm, ec.load_dataset("baseline"), "runs/baseline")  # doctest: +SKIP
>>> acts.get("resid", "last").shape                                      # doctest: +SKIP
(200, 31, 576)
"""

from emocircuits._version import __version__
from emocircuits.capture import (
    ActivationStore,
    CaptureSpec,
    capture,
    count_hooks,
    extract,
    load_activations,
)
from emocircuits.data import Dataset, Example, load_dataset, presets
from emocircuits.errors import EmocircuitsError
from emocircuits.models import LoadedModel, architecture, load_model

__all__ = [
    "ActivationStore",
    "CaptureSpec",
    "Dataset",
    "EmocircuitsError",
    "Example",
    "LoadedModel",
    "__version__",
    "architecture",
    "capture",
    "count_hooks",
    "extract",
    "load_activations",
    "load_dataset",
    "load_model",
    "presets",
]

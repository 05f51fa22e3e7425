"""emocircuits: find, compare and test how emotions are represented inside causal LMs.

The whole pipeline as one call per stage; each result saves exactly what the matching
``emocircuits`` command writes (docs/DESIGN.md).

>>> import emocircuits as ec
>>> lm = ec.load_model("smollm2-135m")                                   # doctest: +SKIP
>>> acts = ec.extract(lm, ec.load_dataset("extended"))  # in memory      # doctest: +SKIP
>>> vecs = ec.directions(acts, method="one_vs_rest")                     # doctest: +SKIP
>>> ec.analyze_geometry(acts).save("runs/geometry")                      # doctest: +SKIP
>>> sweep = ec.steer_sweep(lm, None, vecs)                               # doctest: +SKIP
>>> with ec.steering(lm, vecs, "gratitude", layer=15, alpha=0.2):       # doctest: +SKIP
...     print(ec.generate_text(lm, ["The meeting moved to Thursday, so"])[0])
>>> ec.patch(lm, "extended", vecs).save("runs/patch")                    # doctest: +SKIP
"""

from emocircuits._version import __version__
from emocircuits.capture import (
    ActivationStore,
    CaptureSpec,
    as_store,
    capture,
    count_hooks,
    extract,
    load_activations,
)
from emocircuits.compare.comparison import compare_models
from emocircuits.compare.naive import NaiveComparison, compare_pilot_vectors
from emocircuits.compare.result import ComparisonResult
from emocircuits.compare.transfer import map_vectors
from emocircuits.data import Dataset, Example, load_dataset, presets
from emocircuits.data.dataset import neutral_prompts
from emocircuits.errors import EmocircuitsError
from emocircuits.geometry.audit import AuditResult, audit_dataset
from emocircuits.geometry.probes import ProbeResult, probe
from emocircuits.geometry.similarity import SimilarityResult, emotion_similarity
from emocircuits.geometry.stage import GeometryResult, analyze_geometry
from emocircuits.geometry.summary import LayerSummary, layer_summary
from emocircuits.geometry.vectors import EmotionVectors, directions
from emocircuits.interventions.ablate_stage import AblationResult, ablate
from emocircuits.interventions.generation import generate_text
from emocircuits.interventions.heads import HeadsResult, heads
from emocircuits.interventions.patch_stage import PatchResult, patch
from emocircuits.interventions.run import SteerResult, steer
from emocircuits.interventions.steering import steering, steering_scales
from emocircuits.interventions.sweep import Recommendation, SweepResult, steer_sweep
from emocircuits.models import LoadedModel, architecture, load_model
from emocircuits.report.html import build_report
from emocircuits.results import Result
from emocircuits.study.config import StudyConfig, load_config
from emocircuits.study.runner import StudyResult, run_study

__all__ = [
    "AblationResult",
    "ActivationStore",
    "AuditResult",
    "CaptureSpec",
    "ComparisonResult",
    "Dataset",
    "EmocircuitsError",
    "EmotionVectors",
    "Example",
    "GeometryResult",
    "HeadsResult",
    "LayerSummary",
    "LoadedModel",
    "NaiveComparison",
    "PatchResult",
    "ProbeResult",
    "Recommendation",
    "Result",
    "SimilarityResult",
    "SteerResult",
    "StudyConfig",
    "StudyResult",
    "SweepResult",
    "__version__",
    "ablate",
    "analyze_geometry",
    "architecture",
    "as_store",
    "audit_dataset",
    "build_report",
    "capture",
    "compare_models",
    "compare_pilot_vectors",
    "count_hooks",
    "directions",
    "emotion_similarity",
    "extract",
    "generate_text",
    "heads",
    "layer_summary",
    "load_activations",
    "load_config",
    "load_dataset",
    "load_model",
    "map_vectors",
    "neutral_prompts",
    "patch",
    "presets",
    "probe",
    "run_study",
    "steer",
    "steer_sweep",
    "steering",
    "steering_scales",
]

"""Causal tests (RQ3, RQ4): steering the residual stream, and scoring what it does to text.

Work in progress for issue 5: the steering context manager, the residual-norm scale and the
text scorers exist; the `steer` command, the sweep, patching, ablation and heads do not yet.
"""

from emocircuits.interventions.steering import Steer, steering, typical_norms

__all__ = ["Steer", "steering", "typical_norms"]

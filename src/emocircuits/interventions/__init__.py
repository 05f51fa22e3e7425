"""Causal tests (RQ3, RQ4): does the model use the directions it represents?

- :mod:`~.steering`: add ``alpha * s_l * v`` to the residual stream (context manager, works
  with ``generate`` and its KV cache, per-row for batched conditions);
- :mod:`~.scorers`: model-independent text scores (VADER, NRC lexicon, marker words,
  distinct-n, repetition);
- :mod:`~.generation`: batched greedy generation (per-row steering), perplexity and KL
  fluency costs;
- :mod:`~.run`: steering runs (none / direction / random / prompt / transfer) and
  ``steer``; :mod:`~.summary`: per-setting summaries with bootstrap intervals;
  :mod:`~.inputs`: the prompts and vectors a run is given, checked;
- :mod:`~.sweep`: dose-response over layers x alphas, alpha calibration, the recommended
  setting; :mod:`~.settings`: the recommended settings file next to the vectors;
- :mod:`~.readout`: the logit-difference metric for patching, ablation and heads;
- :mod:`~.patching`, :mod:`~.ablation`, :mod:`~.heads`: activation and directional
  patching, direction ablation against random directions, heads' and neurons' direct
  contributions and top-k head ablation.
"""

from emocircuits.interventions.steering import Steer, steering, typical_norms

__all__ = ["Steer", "steering", "typical_norms"]

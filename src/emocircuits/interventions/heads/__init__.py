"""Heads and neurons (RQ4): which attention heads and MLP neurons write an emotion direction,
and what mean-ablating the top heads does, against random heads.

**Direct contributions.** Head h of block i writes ``z_h @ W_h.T`` into the residual stream
(``z_h``: its slice of the input of the attention output projection, ``W_h``: its columns of
that projection, :meth:`~emocircuits.models.architectures.Architecture.o_proj_weight`).
Neuron j of block i writes ``a_j * W[:, j]`` (``a``: the input of the MLP's down projection,
:meth:`~emocircuits.models.architectures.Architecture.mlp_proj_weight`). The direct
contribution is that write projected on the unit direction ``v`` of the emotion at the
readout layer ``R`` (activation-folder numbering: resid layer R is the output of block R-1,
so blocks ``i < R`` contribute directly; heads and neurons are named by their block, e.g.
``L12H3``). Through the residual stream the sum is exact::

    resid_R . v = embedding . v + sum_{i<R} (sum_h head_ih + attn bias_i
                                             + sum_j neuron_ij + mlp bias_i) . v

- **Positions.** Every prompt runs once with the readout cue appended
  (:func:`~emocircuits.interventions.readout.readout_texts`). Writes are read (a) at the
  positions the vectors were built with (``vectors.position``, e.g. ``mean``: the mean over
  the prompt's content tokens without the first), restricted to the prompt's own tokens: in
  a causal model they do not see the cue, so they equal a run of the prompt alone; and (b)
  at the cue's last token (``cue``), where the logit difference is read. Neurons: (a) only.
- **Gemma 2/3** normalise the attention (MLP) output ``o`` before adding it:
  ``y_t = g * o_t * r_t`` (gain ``g``, per-position normaliser ``r_t = 1 / rms(o_t)``). This is
  linearised with each position's **actual** normaliser, measured in the run as
  ``r_t = |y_t| / |g * o_t|``: head h contributes ``g * (z_ht @ W_h.T) * r_t``, and heads
  (plus bias) sum exactly to what the block adds. Other families: ``r_t = 1``.
- **Contrast.** Per emotion: mean contribution over the emotion's prompts minus the mean over
  the baseline (neutral) prompts, with a stratified bootstrap percentile interval over
  prompts (:func:`contrast`). What a head writes on every prompt alike (its bias, a constant
  write) cancels. Positive: the head pushes the emotion's prompts further along ``v``.
- **Readout layer.** ``layer``, else the vectors' layer (>= 1) whose projections separate
  the emotions from the baseline best: the largest mean over emotions of Cohen's d
  (:func:`separation`) on the prompts analysed.

**Ablation.** A head is **mean-ablated**: its ``z`` is replaced by its mean over the baseline
prompts (every token of the cue-appended texts except each text's first, the attention sink)
at every position except the first (:func:`ablating_heads`, a forward pre-hook on the output
projection, always removed). Zero-ablation would take the model far off its distribution;
the mean removes what is specific to the prompt and keeps the head's average write. The
top-k heads by contrast (k = 1, 2, 4, 8; ranked at the readout positions and, separately,
at the cue) are compared with ``n_random`` draws of k heads from the same candidates
(every head of blocks < R, shared by emotions and rankings), on a sample of each emotion's
prompts. Two measures, both as **drops** (unablated minus ablated, per prompt, averaged):
(a) the logit difference at the cue's last token (what the model says, see
:func:`~emocircuits.interventions.readout.logit_diff`), (b) the projection on ``v`` at layer
R at the readout positions (the direction itself). ``p = (1 + #draws with a drop >= the
top-k drop) / (1 + n_random)``, one-sided. ``share_of_gap``: the drop as a fraction of the
unablated emotion-minus-neutral gap of the measure. Cost: the clean run of each batch of
prompts is recorded once; each (draw, prompt) then runs only the blocks from its first
ablated head on, many draws in one batch (:mod:`~emocircuits.interventions.forward`), and
only the readout words' logits are computed. A whole-study run uses the budget ``fast``
of :data:`HEADS_BUDGETS`.

Why two rankings: the direction lives at the prompt's positions, the logit difference at
the cue's last token, and a head can write the direction at one and not the other. Heads
ranked at the readout positions test the direction itself (measure b) and whether it
matters for the output (a); heads ranked at the cue are the ones whose direct write could
move the logit difference, so their effect on (a) is the fair comparison for the logits.

The package, one idea per module: :mod:`~.common` (names, cue-appended batches),
:mod:`~.capture` (the recording pass), :mod:`~.attribution` (direct contributions),
:mod:`~.stats` (contrasts, separation, the ablation statistic), :mod:`~.ablation` (mean
ablation), :mod:`~.tables` (checks, readout layer, tables), :mod:`~.analysis` (the whole
analysis and :func:`heads`, the public call), :mod:`~.result` (:class:`HeadsResult`).

>>> res = heads(lm, "extended", "runs/vectors.safetensors")         # doctest: +SKIP
>>> res.save("runs/heads-smollm2")                                  # doctest: +SKIP
"""

from emocircuits.interventions.budgets import HEADS_BUDGETS
from emocircuits.interventions.heads.ablation import (
    Condition,
    ablating_heads,
    run_conditions,
)
from emocircuits.interventions.heads.analysis import (
    analyze_heads,
    heads,
    write_heads,
)
from emocircuits.interventions.heads.attribution import (
    WriteWeights,
    bias_contributions,
    head_contributions,
    neuron_contributions,
    neuron_weights,
    write_weights,
)
from emocircuits.interventions.heads.capture import (
    HeadCapture,
    capture_heads,
)
from emocircuits.interventions.heads.common import (
    CUE_POSITION,
    FORMAT,
    METRICS,
    head_name,
)
from emocircuits.interventions.heads.result import (
    HeadsResult,
)
from emocircuits.interventions.heads.stats import (
    AblationStat,
    Contrast,
    ablation_stat,
    contrast,
    separation,
)
from emocircuits.interventions.heads.tables import (
    check_request,
    choose_layer,
)

__all__ = [
    "CUE_POSITION",
    "FORMAT",
    "HEADS_BUDGETS",
    "METRICS",
    "AblationStat",
    "Condition",
    "Contrast",
    "HeadCapture",
    "HeadsResult",
    "WriteWeights",
    "ablating_heads",
    "ablation_stat",
    "analyze_heads",
    "bias_contributions",
    "capture_heads",
    "check_request",
    "choose_layer",
    "contrast",
    "head_contributions",
    "head_name",
    "heads",
    "neuron_contributions",
    "neuron_weights",
    "run_conditions",
    "separation",
    "write_heads",
    "write_weights",
]

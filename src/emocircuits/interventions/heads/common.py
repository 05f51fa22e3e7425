"""What the heads modules share: names, the cue-appended batches, the post-norm factor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from emocircuits.capture.capture import tokenize
from emocircuits.capture.positions import Selection, TokenBatch, get_rule, last
from emocircuits.errors import DataError

if TYPE_CHECKING:
    from emocircuits.models.loading import LoadedModel


FORMAT = "emocircuits.heads"
CUE_POSITION = "cue"
METRICS = ("logit_diff", "projection")


def head_name(block: int, head: int) -> str:
    """``L{block}H{head}``: block numbering (block i adds to resid layer i + 1).

    >>> head_name(12, 3)
    'L12H3'
    """
    return f"L{block}H{head}"


# ---------------------------------------------------------------------------- batches
@dataclass
class _Batch:
    """One tokenised batch (left padding: the cue's last token is the last position)."""

    rows: np.ndarray
    inputs: dict[str, torch.Tensor]
    selections: dict[str, Selection]  # "readout" (prompt's tokens, vectors' rule), "cue"
    where: torch.Tensor  # [b, s] positions an ablation touches: attended, not the first


def _prepare(
    lm: LoadedModel,
    texts: Sequence[str],
    limits: Sequence[int],
    spans: Sequence[tuple[int, int] | None],
    rows: Sequence[int],
    position: str,
) -> _Batch:
    batch, inputs = tokenize(
        lm, [texts[i] for i in rows], [spans[i] for i in rows], padding_side="left"
    )
    mask = batch.attention_mask.bool()
    lim = torch.tensor([limits[i] for i in rows]).unsqueeze(1)
    in_prompt = mask & (batch.offsets[..., 1] <= lim)  # the cue's tokens end after the prompt
    prompt_only = TokenBatch(
        batch.input_ids, in_prompt.long(), batch.special, batch.offsets, batch.spans
    )
    first = mask.long().argmax(1)
    where = mask.clone()
    where[torch.arange(len(rows)), first] = False
    return _Batch(
        np.asarray(rows),
        inputs,
        {"readout": get_rule(position)(prompt_only), CUE_POSITION: last(batch)},
        where,
    )


def _check_position(position: str) -> None:
    get_rule(position)
    if position == "all":
        raise DataError("heads need a position rule that reads one value per prompt, not 'all'")


def _normaliser(y: torch.Tensor, o: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` per-position factor ``r`` with ``y = gain * o * r`` (an RMSNorm's output
    ``y`` of ``o``), measured from the run; 0 where ``o`` is 0."""
    num = y.float().norm(dim=-1)
    den = (o.float().to(y.device) * gain.to(y.device)).norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float32).tiny), 0.0)

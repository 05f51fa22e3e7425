"""The forward passes of activation patching (:mod:`~emocircuits.interventions.patching`,
"Cost"): pairs in left-padded batches (:class:`PairBatch`), and a :class:`PatchRunner` that
runs them clean, over a cached prefix with edits at chosen layers, or resumed from a layer
with a patched residual (:func:`enter_patched`). Only the readout words' logits at the
last position are computed; the model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emocircuits.capture.hooks import hooked
from emocircuits.interventions.forward import Trace, resid_edit_hooks, trace, unembed
from emocircuits.interventions.readout import Readout, logit_diff, readout_columns
from emocircuits.models.compat import cache_kwarg, output_cache

if TYPE_CHECKING:
    import torch

    from emocircuits.interventions.patch_pairs import Pair
    from emocircuits.models.loading import LoadedModel


@dataclass
class PairBatch:
    """Pairs run together, left-padded to a common width so that the positions counted
    from the end share a column; position ids from the mask (as in capture)."""

    rows: np.ndarray  # pair indices
    ids_e: torch.Tensor
    ids_n: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    lengths: np.ndarray

    @property
    def width(self) -> int:
        return int(self.ids_n.shape[1])

    @classmethod
    def make(
        cls, pairs: Sequence[Pair], rows: list[int], token_ids: Sequence[list[int]], pad: int
    ) -> PairBatch:
        """The pairs ``pairs[rows]``, both sides' ``token_ids`` left-padded with ``pad``."""
        import torch

        t = np.array([pairs[i].n_tokens for i in rows])
        s = int(t.max())

        def padded(key: str) -> torch.Tensor:
            seqs = [token_ids[getattr(pairs[i], key)] for i in rows]
            return torch.tensor([[pad] * (s - len(q)) + list(q) for q in seqs])

        mask = torch.tensor([[0] * (s - n) + [1] * n for n in t])
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return cls(np.array(rows), padded("emotion_row"), padded("neutral_row"), mask, pos, t)


def _patch_fn(
    source: torch.Tensor, index: slice, direction: torch.Tensor | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h[:, index] <- source`` (full) or ``h[:, index] += ((source - h) . v) v`` with
    ``direction`` ``[batch, width]`` or ``[width]`` (unit rows)."""

    def fn(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        src = source.to(device=h.device, dtype=h.dtype)
        if direction is None:
            h[:, index] = src
        else:
            v = direction.to(device=h.device, dtype=h.dtype)
            v = v.expand(h.shape[0], -1)[:, None]  # [batch, 1, width]
            cur = h[:, index]
            h[:, index] = cur + ((src - cur) * v).sum(-1, keepdim=True) * v
        return h

    return fn


class PatchRunner:
    """Forward passes of one model on a left-padded batch of pairs, reading only the
    readout words' logits at the last position: clean traces
    (:func:`~emocircuits.interventions.forward.trace`), KV-cached passes over the last
    columns (rows = pairs x layers, each row with its own patched layer) and resumed
    staircases (:func:`~emocircuits.interventions.forward.resume`)."""

    def __init__(self, lm: LoadedModel, readouts: Mapping[str, Readout]) -> None:
        self.lm, self.readouts = lm, readouts
        self.cols = readout_columns(readouts.values())
        self.device = lm.input_device
        self.passes = 0

    def trace(self, batch: PairBatch, neutral: bool) -> Trace:
        """The clean run of every pair, with its key-value cache."""
        self.passes += 1
        ids = batch.ids_n if neutral else batch.ids_e
        inputs = {"input_ids": ids, "attention_mask": batch.mask, "position_ids": batch.pos}
        return trace(self.lm, inputs, use_cache=True)

    def final(self, h: torch.Tensor, normed: bool = False) -> torch.Tensor:
        """Readout-word logits ``[n, len(cols)]`` from the last position's ``h [n, W]``."""
        return unembed(self.lm, h, self.cols, normed=normed).float().cpu()

    def prefix(self, batch: PairBatch, end: int, tr: Trace, neutral: bool = True) -> Any:
        """KV cache of the neutral (or emotion) run's columns ``:end``: the trace's
        cache ``tr.cache`` cropped, or (where a sliding-window layer has already dropped
        columns) a pass over them."""
        import torch

        cache = copy.deepcopy(tr.cache)
        try:
            cache.crop(end - batch.width)
            return cache
        except RuntimeError:  # a sliding-window layer kept only its window
            pass
        ids = batch.ids_n if neutral else batch.ids_e
        with torch.inference_mode():
            out = self.lm.arch.base_model(
                input_ids=ids[:, :end].to(self.device),
                attention_mask=batch.mask[:, :end].to(self.device),
                position_ids=batch.pos[:, :end].to(self.device),
                use_cache=True,
            )
        self.passes += 1
        return output_cache(out)

    def cached(
        self,
        batch: PairBatch,
        rows: np.ndarray,
        start: int,
        past: Any,
        edits: Mapping[int, Callable],
        mix: tuple[Any, np.ndarray] | None = None,
    ) -> torch.Tensor:
        """Readout logits of the neutral run's columns ``start:`` for the batch rows
        ``rows`` (repeated as needed), the columns before coming from ``past`` (None: no
        prefix); ``mix = (emotion_past, use [n_rows, n_layers])``: block i of row j reads
        the emotion run's prefix where ``use[j, i]``."""
        import torch

        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        kw: dict[str, Any] = {"use_cache": past is not None}
        if past is not None:
            kw[cache_kwarg(self.lm.arch.base_model)] = _select(past, idx, mix)
        with torch.inference_mode(), hooked(resid_edit_hooks(self.lm.arch, edits)):
            out = self.lm.arch.base_model(
                input_ids=batch.ids_n[idx, start:].to(self.device),
                attention_mask=batch.mask[idx].to(self.device),
                position_ids=batch.pos[idx, start:].to(self.device),
                **kw,
            )
        self.passes += 1
        return self.final(out.last_hidden_state[:, -1], normed=True)

    def ld(self, logits: torch.Tensor, emotions: Sequence[str]) -> np.ndarray:
        """The LD of each row of readout logits, with the readout of its row's emotion."""
        out = np.empty(len(emotions))
        for emo in set(emotions):
            m = np.array([e == emo for e in emotions])
            out[m] = logit_diff(logits[_index(m)], self.readouts[emo], self.cols)
        return out


def _select(past: Any, idx: torch.Tensor, mix: tuple[Any, np.ndarray] | None) -> Any:
    """A new cache holding the rows ``idx`` of ``past`` (and, per ``mix``, per layer and
    row, of the emotion run's cache instead)."""
    import torch

    out = copy.deepcopy(past)
    out.batch_select_indices(idx)
    if mix is not None:
        other, use = mix
        for i, layer in enumerate(out.layers):
            src = other.layers[i]
            if layer.keys is None or not layer.keys.numel():
                continue
            m = torch.from_numpy(use[:, i]).view(-1, 1, 1, 1).to(layer.keys.device)
            layer.keys = torch.where(m, src.keys[idx], layer.keys)
            layer.values = torch.where(m, src.values[idx], layer.values)
    return out


def rows_patch(
    rows: np.ndarray, source: torch.Tensor, index: slice, direction: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`_patch_fn` applied to the batch rows ``rows`` only (``source`` and
    ``direction`` one row per entry of ``rows``)."""
    import torch

    idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    fn = _patch_fn(source, index, direction)

    def edit(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        i = idx.to(h.device)
        h[i] = fn(h[i])
        return h

    return edit


def enter_patched(
    tr_e: Trace,
    tr_n: Trace,
    part: Sequence[tuple[int, int, int]],
    kinds: Sequence[tuple],
    body: int,
    rnd: torch.Tensor,
) -> Callable[[int, np.ndarray], torch.Tensor]:
    """For :func:`~emocircuits.interventions.forward.resume`: the neutral residual of the
    jobs ``part[q] = (layer index, kind, pair row)`` at their layer, patched along the
    kind's direction (``kinds[kind] = (name, [n_layers, rows, W] or None: random)``) at
    the body's columns (``name == "body"``) or at all of them."""
    import torch

    def enter(i: int, new: np.ndarray) -> torch.Tensor:
        hs = []
        for q in new:
            li, kind, j = part[q]
            name, vv = kinds[kind]
            d = rnd[li] if vv is None else vv[li, j]
            cols = slice(0, body) if name == "body" else slice(None)
            src = tr_e.resid[i][j : j + 1, cols]
            hs.append(_patch_fn(src, cols, d)(tr_n.resid[i][j : j + 1]))
        return torch.cat([x.to(hs[0].device) for x in hs])

    return enter


def _index(mask: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.flatnonzero(mask))

"""Mean ablation of heads (a pre-hook on the output projection) and batched conditions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emocircuits.capture.capture import token_lengths
from emocircuits.capture.hooks import hooked
from emocircuits.errors import DataError
from emocircuits.interventions.forward import length_groups, resume, take_rows, trace, unembed
from emocircuits.interventions.heads.common import METRICS, _check_position, _prepare
from emocircuits.interventions.readout import Readout, logit_diff, readout_columns, readout_texts

if TYPE_CHECKING:
    from emocircuits.models.loading import LoadedModel


# ----------------------------------------------------------------------------- ablation
@contextmanager
def ablating_heads(
    lm: LoadedModel,
    heads: np.ndarray | Sequence[tuple[int, int]],
    values: np.ndarray | None = None,
    where: torch.Tensor | None = None,
    rows: Callable[[], np.ndarray] | None = None,
) -> Iterator[None]:
    """Replace heads' ``z`` (input of the attention output projection) for the duration of
    the block: by ``values [L, H, d]`` (e.g. :attr:`HeadCapture.z_mean`; None: zero) at the
    positions ``where [b, s]`` (None: every position). ``heads``: ``(block, head)`` pairs,
    a ``[L, H]`` boolean mask, or ``[b, L, H]`` (its own heads for each row of the batch).
    ``rows``: when the batch a block sees holds only some of the ``b`` rows (a
    :func:`~emocircuits.interventions.forward.resume` staircase), a function that returns
    their indices.

    >>> with ablating_heads(lm, [(3, 1)], cap.z_mean, where):  # doctest: +SKIP
    ...     lm.model(**inputs)
    """
    arch = lm.arch
    L, H, d = arch.n_layers, arch.n_heads, arch.head_dim
    if isinstance(heads, np.ndarray) and heads.dtype == bool:
        mask = torch.from_numpy(heads)
    else:
        mask = torch.zeros(L, H, dtype=torch.bool)
        for i, h in heads:
            mask[arch.normalize_layer(i, "heads"), h] = True
    if mask.shape[-2:] != (L, H):
        raise DataError(f"head mask has shape {tuple(mask.shape)}; the model has {L} x {H}")
    rep = None if values is None else torch.as_tensor(np.asarray(values), dtype=torch.float32)

    def hook(i: int) -> Callable[..., Any]:
        m_all = mask[..., i, :]  # [H] or [b, H]

        def fn(zt: torch.Tensor) -> torch.Tensor:
            b, s = zt.shape[:2]
            m, w = m_all, where
            if rows is not None:
                idx = torch.from_numpy(np.asarray(rows()))
                m = m if m.dim() == 1 else m[idx]
                w = None if w is None else w[idx.to(w.device)]
            sel = m.reshape(-1, 1, H, 1).to(zt.device)  # one row of heads, or one per row
            if w is not None:
                sel = sel & w.to(zt.device).view(b, s, 1, 1)
            new = torch.zeros((), dtype=zt.dtype) if rep is None else rep[i].to(zt.dtype)
            return torch.where(sel, new.to(zt.device), zt.view(b, s, H, d)).reshape(zt.shape)

        return fn

    layers = [i for i in range(L) if bool(mask[..., i, :].any())]
    with hooked([arch.place("heads", i).edit(hook(i)) for i in layers]):
        yield


@dataclass(frozen=True)
class Condition:
    """One ablation run: the heads ``(block, head)`` to ablate (empty: none) on ``rows``."""

    heads: tuple[tuple[int, int], ...]
    rows: tuple[int, ...]


def run_conditions(
    lm: LoadedModel,
    prompts: Sequence[str],
    conditions: Sequence[Condition],
    *,
    position: str,
    layer: int,
    directions: np.ndarray,
    readouts: Sequence[Readout | None],
    values: np.ndarray | None,
    spans: Sequence[tuple[int, int] | None] | None = None,
    batch_size: int = 16,
    rows_per_pass: int = 64,
    progress: bool = False,
) -> list[dict[str, np.ndarray]]:
    """For each condition, per row: the logit difference of each readout at the cue's last
    token (``"logit_diff" [rows, E]``; NaN for a None readout) and the projection of
    resid layer ``layer`` at the readout positions on each direction (``"projection"
    [rows, E]``, ``directions [W, E]``), with the condition's heads ablated (mean values
    ``values``; None: zero).

    Cost: each batch of ``batch_size`` prompts runs once clean
    (:func:`~emocircuits.interventions.forward.trace`, which also gives every condition
    without heads); each (condition, prompt) then runs only the blocks from its first
    ablated head on, ``rows_per_pass`` of them in one batch
    (:func:`~emocircuits.interventions.forward.resume`), and only up to ``layer`` when no
    readout needs the logits. Only the readout words' logits are computed."""
    from tqdm.auto import tqdm

    _check_position(position)
    arch = lm.arch
    L, H = arch.n_layers, arch.n_heads
    layer = arch.normalize_layer(layer, "resid")
    if layer < 1:
        raise DataError("the readout layer must be >= 1 (layer 0 is the embedding)")
    texts = readout_texts(prompts)
    limits = [len(p.rstrip()) for p in prompts]
    spans = list(spans) if spans is not None else [None] * len(prompts)
    vecs = torch.as_tensor(np.asarray(directions, np.float32))
    n_e = vecs.shape[1]
    cols = readout_columns(readouts)
    stop = L if cols else layer
    masks = np.zeros((len(conditions), L, H), bool)
    for c, cond in enumerate(conditions):
        for i, h in cond.heads:
            masks[c, arch.normalize_layer(i, "heads"), h] = True
    first = [int(np.flatnonzero(m.any(1))[0]) if m.any() else stop for m in masks]
    out = [{m: np.full((len(c.rows), n_e), np.nan) for m in METRICS} for c in conditions]
    slot = {(c, r): k for c, cond in enumerate(conditions) for k, r in enumerate(cond.rows)}
    by_row: dict[int, list[int]] = {}
    for c, cond in enumerate(conditions):
        for r in cond.rows:
            by_row.setdefault(int(r), []).append(c)
    needed = np.array(sorted(by_row), dtype=np.int64)
    lengths = token_lengths(lm, [texts[i] for i in needed])
    batches = [needed[b] for b in length_groups(lengths, batch_size)]  # little padding
    n_jobs = sum(len(v) for v in by_row.values())
    bar = tqdm(total=n_jobs, desc="heads: ablation", unit="run", disable=not progress)

    def put(c: int, r: int, proj: torch.Tensor, ld: torch.Tensor | None) -> None:
        k = slot[(c, r)]
        out[c]["projection"][k] = proj.numpy()
        if ld is not None:
            for e, rd in enumerate(readouts):
                if rd is not None:
                    out[c]["logit_diff"][k, e] = logit_diff(ld, rd, cols)

    try:
        for rows in batches:
            b = _prepare(lm, texts, limits, spans, rows, position)
            tr = trace(lm, b.inputs, stop=stop)
            sel = b.selections["readout"]
            clean_proj = sel.reduce(tr.resid[layer].float().cpu()) @ vecs  # [B, E]
            clean_ld = unembed(lm, tr.resid[L][:, -1], cols).float().cpu() if cols else None
            jobs = []
            for j, r in enumerate(rows):
                for c in by_row[int(r)]:
                    if first[c] >= stop:  # nothing to ablate before the last layer needed
                        put(c, int(r), clean_proj[j], None if clean_ld is None else clean_ld[j])
                    else:
                        jobs.append((first[c], c, j))
            bar.update(sum(len(by_row[int(r)]) for r in rows) - len(jobs))
            jobs.sort()
            for s0 in range(0, len(jobs), rows_per_pass):
                part = jobs[s0 : s0 + rows_per_pass]
                src = torch.tensor([j for _, _, j in part])
                proj = clean_proj[src].clone()
                state: dict[str, np.ndarray] = {}

                def before(i: int, active: np.ndarray, state=state) -> None:
                    state["rows"] = active

                def after(
                    i: int, h: torch.Tensor, active: np.ndarray, src=src, proj=proj, sel=sel
                ) -> Any:
                    if i == layer - 1:
                        rs = torch.from_numpy(active)
                        proj[rs] = take_rows(sel, src[rs]).reduce(h.float().cpu()) @ vecs
                    return h

                with ablating_heads(
                    lm, masks[[c for _, c, _ in part]], values, b.where[src],
                    rows=lambda state=state: state["rows"],
                ):  # fmt: skip
                    h = resume(lm, tr, src.numpy(), [f for f, _, _ in part], stop=stop,
                               before=before, after=after)  # fmt: skip
                ld = unembed(lm, h[:, -1], cols).float().cpu() if cols else None
                for q, (_, c, j) in enumerate(part):
                    put(c, int(rows[j]), proj[q], None if ld is None else ld[q])
                bar.update(len(part))
    finally:
        bar.close()
    return out

"""Resumable forward passes: run a batch once, then re-run many edited copies of its rows
from the block where their edit starts.

A causal-LM intervention at resid layer ``l`` (patching, ablating a direction, ablating a
head of block ``l``) leaves every block before ``l`` exactly as in the clean run. So the
clean pass is recorded once (:func:`trace`: the residual stream entering every block and
the arguments transformers passed to it: attention masks, position embeddings, ...) and
each edited copy runs only the blocks from its own start on (:func:`resume`). Copies with
different starts share one batch as a staircase: a row joins the batch at its start
block. Nothing here knows an architecture: blocks are called with the arguments the
model itself gave them, gathered to the rows of the batch.

An edit of a normal forward pass (one that reuses a key-value cache, say) is a hook on the
residual stream (:func:`resid_edit_hooks`).

The readout never needs the whole vocabulary: :func:`unembed` applies the final norm to
the last position and multiplies by the few unembedding rows the logit difference reads
(Gemma 3's vocabulary has 262k entries).

>>> tr = trace(lm, inputs)                                     # doctest: +SKIP
>>> h = resume(lm, tr, src=[0, 0, 1], start=[5, 12, 5])       # doctest: +SKIP
>>> logits = unembed(lm, h[:, -1], [1034, 2201])              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicCache

from emocircuits.capture.hooks import Hook, first_tensor, hooked
from emocircuits.capture.positions import Selection
from emocircuits.models.architectures import materialised
from emocircuits.models.compat import cache_kwarg

if TYPE_CHECKING:
    from emocircuits.models.architectures import Architecture
    from emocircuits.models.loading import LoadedModel

Enter = Callable[[int, np.ndarray], torch.Tensor]
"""``enter(layer, rows) -> [len(rows), s, W]``: the residual of ``rows`` entering at
``layer`` (default: the clean one)."""
After = Callable[[int, torch.Tensor, np.ndarray], torch.Tensor]
"""``after(block, h, rows) -> h``: edit (or read) the output of ``block`` (resid layer
``block + 1``) of the rows in the batch, in that order."""
Before = Callable[[int, np.ndarray], None]
"""``before(block, rows)``: called before ``block`` runs (e.g. to tell hooks inside the
block which rows the batch holds)."""


class _Stop(Exception):
    """Raised by a hook once the last block a trace needs has run."""


@dataclass
class Trace:
    """A clean pass of one batch. ``resid[i]`` ``[B, s, W]``: resid layer ``i``
    (activation-folder numbering: the input of block ``i``; ``resid[n_layers]`` is the
    last block's output, before the final norm), for ``i <= stop``; ``calls[i]``: the
    positional and keyword arguments block ``i`` was called with, besides the hidden
    states."""

    resid: list[torch.Tensor]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    batch_size: int
    cache: Any = None

    @property
    def stop(self) -> int:
        return len(self.resid) - 1


def trace(
    lm: LoadedModel,
    inputs: dict[str, torch.Tensor],
    *,
    stop: int | None = None,
    use_cache: bool = False,
) -> Trace:
    """Run the base model on ``inputs`` (no LM head) up to resid layer ``stop`` (default:
    the last) and record what :func:`resume` needs; ``use_cache``: also keep the run's
    key-value cache (:attr:`Trace.cache`). The model is not modified."""
    arch = lm.arch
    stop = arch.n_layers if stop is None else arch.normalize_layer(stop, "resid")
    resid: list[Any] = [None] * (stop + 1)
    calls: list[Any] = [None] * stop

    def pre(i: int) -> Callable[..., None]:
        def fn(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            calls[i] = (tuple(args[1:]), kw)

        return fn

    def read(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(h: torch.Tensor) -> None:
            resid[layer] = h
            if layer == stop:
                raise _Stop

        return fn

    hooks: list[Hook] = [(arch.blocks[i], "pre", pre(i)) for i in range(stop)]
    hooks += [arch.place("resid", layer).read(read(layer)) for layer in range(stop + 1)]
    device = lm.input_device
    cache = DynamicCache(config=lm.model.config) if use_cache else None
    with hooked(hooks), torch.inference_mode(), contextlib.suppress(_Stop):
        arch.base_model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=use_cache,
                        **{cache_kwarg(arch.base_model): cache})  # fmt: skip
    if any(r is None for r in resid):
        raise RuntimeError("the trace hooks did not run")  # a bug, not input
    batch = int(resid[0].shape[0])
    return Trace(resid, calls, batch, cache)


def length_groups(
    lengths: Sequence[int] | np.ndarray, batch_size: int, spread: float = 1.25
) -> list[np.ndarray]:
    """Row indices sorted by length (stable), at most ``batch_size`` a group, and a new
    group wherever a row is more than ``spread`` times longer than its group's first: a
    long prompt does not pad a batch of short ones (every resumed copy of a row costs its
    batch's padded width).

    >>> [g.tolist() for g in length_groups([5, 30, 6, 7, 31], 2)]
    [[0, 2], [3], [1, 4]]
    """
    n = np.asarray(lengths)
    out: list[list[int]] = []
    for i in np.argsort(n, kind="stable"):
        if out and len(out[-1]) < batch_size and n[i] <= spread * n[out[-1][0]]:
            out[-1].append(int(i))
        else:
            out.append([int(i)])
    return [np.array(g, dtype=np.int64) for g in out]


def _gather(x: Any, idx: torch.Tensor, batch: int) -> Any:
    """``x`` with every per-row tensor (at least 2-d, ``batch`` rows) indexed by ``idx``;
    tuples, lists and dicts are walked; a key-value cache becomes None (a resumed row
    computes every column); anything else is passed through."""
    if isinstance(x, Cache):
        return None
    if isinstance(x, torch.Tensor):
        if x.dim() >= 2 and x.shape[0] == batch:
            return x.index_select(0, idx.to(x.device))
        return x
    if isinstance(x, tuple | list):
        return type(x)(_gather(v, idx, batch) for v in x)
    if isinstance(x, dict):
        return {k: _gather(v, idx, batch) for k, v in x.items()}
    return x


def resume(
    lm: LoadedModel,
    tr: Trace,
    src: Sequence[int] | np.ndarray,
    start: Sequence[int] | np.ndarray,
    *,
    stop: int | None = None,
    enter: Enter | None = None,
    after: After | None = None,
    before: Before | None = None,
) -> torch.Tensor:
    """Resid layer ``stop`` (default: the trace's last) ``[N, s, W]`` of ``N`` rows:
    row ``j`` is a copy of the trace's row ``src[j]`` that enters the residual stream at
    resid layer ``start[j]`` (its clean value there, or ``enter``'s) and runs the blocks
    ``start[j] .. stop - 1``. Rows that start later join the batch later; ``after`` sees
    every block's output, ``before`` is called before every block. Hooks on the model's
    modules fire as in a normal forward pass."""
    arch = lm.arch
    stop = tr.stop if stop is None else stop
    if stop > tr.stop:
        raise ValueError(f"the trace stops at layer {tr.stop}, not {stop}")
    src_t = torch.as_tensor(np.asarray(src), dtype=torch.long)
    start = np.asarray(start, dtype=np.int64)
    if len(start) != len(src_t) or not len(start):
        raise ValueError("src and start must be non-empty and of the same length")
    if start.min() < 0 or start.max() > stop:
        raise ValueError(f"start layers must lie in 0..{stop}")
    order = np.argsort(start, kind="stable")
    h: torch.Tensor | None = None
    active = np.empty(0, np.int64)
    with torch.inference_mode():
        for i in range(int(start.min()), stop + 1):
            new = order[start[order] == i]
            if len(new):
                hn = enter(i, new) if enter is not None else tr.resid[i][src_t[new]]
                h = hn if h is None else torch.cat([h, hn.to(h.device, h.dtype)])
                active = np.concatenate([active, new])
            if i == stop:
                break
            assert h is not None
            args, kwargs = tr.calls[i]
            idx = src_t[torch.from_numpy(active)]
            args, kwargs = _gather(args, idx, tr.batch_size), _gather(kwargs, idx, tr.batch_size)
            if before is not None:
                before(i, active)
            h = first_tensor(arch.blocks[i](h, *args, **kwargs))
            if after is not None:
                h = after(i, h, active)
        assert h is not None
        out = torch.empty_like(h)
        out[torch.from_numpy(active)] = h
    return out


def unembed(
    lm: LoadedModel, h: torch.Tensor, ids: Sequence[int], *, normed: bool = False
) -> torch.Tensor:
    """Next-token logits ``[..., len(ids)]`` of the vocabulary entries ``ids`` from the
    last block's output ``h [..., W]`` (``normed``: the final norm is already applied):
    the final norm, the matching unembedding rows (and bias), Gemma 2's logit soft cap.
    Computed where the unembedding lives (its weights loaded through accelerate's hook
    when offloaded)."""
    with torch.inference_mode():
        x = h if normed else lm.arch.final_norm(h)
        with materialised(lm.model.get_output_embeddings()) as emb:
            w = emb.weight
            idx = torch.as_tensor(list(ids), dtype=torch.long, device=w.device)
            out = x.to(w.device, w.dtype) @ w.index_select(0, idx).T
            bias = getattr(emb, "bias", None)
            if bias is not None:
                out = out + bias.index_select(0, idx)
        cap = getattr(lm.model.config, "final_logit_softcapping", None)
        if cap:
            out = torch.tanh(out / cap) * cap
    return out


def resid_edit_hooks(
    arch: Architecture, edits: Mapping[int, Callable[[torch.Tensor], torch.Tensor | None]]
) -> list[Hook]:
    """Hooks that pass the residual stream at each resid layer (activation-folder
    numbering, negative allowed) through ``edits[layer](h) -> new h`` (or None: unchanged);
    ``h`` is ``[batch, seq, width]``. Use with :func:`~emocircuits.capture.hooks.hooked`.

    >>> with hooked(resid_edit_hooks(lm.arch, {3: lambda h: 2 * h})):  # doctest: +SKIP
    ...     lm.model(**inputs)
    """
    return [arch.place("resid", layer).edit(fn) for layer, fn in edits.items()]


def take_rows(sel: Selection, idx: torch.Tensor) -> Selection:
    """The rows ``idx`` of a one-value-per-row selection of a traced batch (for the
    resumed copies of those rows)."""
    if sel.index is None and sel.weights is None:
        raise ValueError("a selection of every token cannot follow resumed rows")
    return Selection(
        index=None if sel.index is None else sel.index[idx],
        weights=None if sel.weights is None else sel.weights[idx],
    )

"""One pass over the prompts that records what the head and neuron analyses need."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emocircuits.capture.capture import plan_batches, token_lengths
from emocircuits.capture.hooks import Hook, first_tensor, hooked
from emocircuits.capture.positions import Selection
from emocircuits.errors import DataError
from emocircuits.interventions.forward import unembed
from emocircuits.interventions.heads.common import (
    CUE_POSITION,
    _check_position,
    _normaliser,
    _prepare,
)
from emocircuits.interventions.readout import Readout, logit_diff, readout_columns, readout_texts

if TYPE_CHECKING:
    from emocircuits.models.loading import LoadedModel


# ---------------------------------------------------------------------------- capture
@dataclass
class HeadCapture:
    """What one pass over the prompts records (rows in input order). ``z``, ``attn_scale``
    and ``resid`` are keyed by position (``"readout"``, ``"cue"``).

    - ``z[pos]`` ``[n, L, H, d]``: each head's input of the output projection, times the
      post-norm factor ``r_t`` (1 without one), reduced over the positions;
    - ``attn_scale[pos]`` ``[n, L]``: ``r_t`` reduced likewise (weights bias terms);
    - ``act`` ``[n, L, F]`` and ``mlp_scale`` ``[n, L]``: the same for MLP neurons (readout);
    - ``resid[pos]`` ``[n, L + 1, W]``: the residual stream (index 0 = embedding output);
    - ``z_mean`` ``[L, H, d]``: each head's mean ``z`` over the baseline rows, at every
      attended position but the first (what mean ablation writes);
    - ``logit_diff`` ``{emotion: [n]}``: the readout's logit difference at the cue.
    """

    z: dict[str, np.ndarray]
    attn_scale: dict[str, np.ndarray]
    act: np.ndarray
    mlp_scale: np.ndarray
    resid: dict[str, np.ndarray]
    z_mean: np.ndarray | None
    logit_diff: dict[str, np.ndarray] = field(default_factory=dict)


def capture_heads(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    position: str = "mean",
    spans: Sequence[tuple[int, int] | None] | None = None,
    baseline_rows: np.ndarray | None = None,
    readouts: dict[str, Readout] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> HeadCapture:
    """One forward pass per batch of cue-appended prompts records everything the direct
    contributions and the mean ablation need (see :class:`HeadCapture`).

    >>> cap = capture_heads(lm, ["Thank you so much.", "The bus is late."])  # doctest: +SKIP
    >>> cap.z["readout"].shape  # doctest: +SKIP
    (2, 30, 9, 64)
    """
    from tqdm.auto import tqdm

    _check_position(position)
    arch = lm.arch
    L, H, d, W = arch.n_layers, arch.n_heads, arch.head_dim, arch.width
    n = len(prompts)
    if n == 0:
        raise DataError("no prompts to analyse")
    texts = readout_texts(prompts)
    limits = [len(p.rstrip()) for p in prompts]
    spans = list(spans) if spans is not None else [None] * n
    readouts = readouts or {}
    n_neurons = arch.mlp_proj_weight(0)[0].shape[1]
    positions = ("readout", CUE_POSITION)
    z = {p: np.zeros((n, L, H, d), np.float32) for p in positions}
    a_scale = {p: np.zeros((n, L), np.float32) for p in positions}
    resid = {p: np.zeros((n, L + 1, W), np.float32) for p in positions}
    act = np.zeros((n, L, n_neurons), np.float32)
    m_scale = np.zeros((n, L), np.float32)
    base = np.zeros(n, bool) if baseline_rows is None else np.asarray(baseline_rows, bool)
    z_sum = torch.zeros(L, H * d, dtype=torch.float64)
    z_count = 0.0
    lds = {e: np.zeros(n, np.float64) for e in readouts}
    gains = {
        s: [arch.post_norm_gain(i, s) for i in range(L)] for s in ("attn", "mlp")
    }  # None without post-norms
    cur: dict[str, Any] = {}
    stash: dict[tuple[str, int], torch.Tensor] = {}

    def reduce_scaled(sel: Selection, x: torch.Tensor, r: torch.Tensor | None) -> tuple:
        """``sel.reduce(x * r)`` and ``sel.reduce(r)`` (``r [b, s]``; None: 1), as numpy."""
        r = torch.ones(x.shape[:2]) if r is None else r.float().cpu()
        rx = r.reshape(*r.shape, *([1] * (x.dim() - 2)))
        return sel.reduce(x * rx).numpy(), sel.reduce(r[..., None])[:, 0].numpy()

    def put_heads(i: int, zt: torch.Tensor, r: torch.Tensor | None) -> None:
        zh = zt.float().cpu().reshape(*zt.shape[:2], H, d)
        for p in positions:
            sel = cur["batch"].selections[p]
            z[p][cur["rows"], i], a_scale[p][cur["rows"], i] = reduce_scaled(sel, zh, r)

    def put_neurons(i: int, at: torch.Tensor, r: torch.Tensor | None) -> None:
        sel = cur["batch"].selections["readout"]
        act[cur["rows"], i], m_scale[cur["rows"], i] = reduce_scaled(sel, at.float().cpu(), r)

    def on_o_proj(i: int) -> Callable[..., None]:
        def fn(zt: torch.Tensor) -> None:
            nonlocal z_count
            keep = cur["base"]
            if keep.any():
                w = cur["batch"].where[keep].to(torch.float64)
                z_sum[i] += torch.einsum("bs,bsk->k", w, zt.cpu()[keep].double())
                if i == 0:
                    z_count += float(w.sum())
            if gains["attn"][i] is None:
                put_heads(i, zt, None)
            else:
                stash[("attn", i)] = zt

        return fn

    def on_mlp_proj(i: int) -> Callable[..., None]:
        def fn(module: Any, args: Any, output: Any) -> None:
            if gains["mlp"][i] is None:
                put_neurons(i, args[0], None)
            else:
                stash[("mlp", i)] = args[0]

        return fn

    def on_post_norm(site: str, i: int) -> Callable[..., None]:
        def fn(module: Any, args: Any, output: Any) -> None:
            g = gains[site][i]
            assert g is not None
            r = _normaliser(first_tensor(output), args[0], g)
            x = stash.pop((site, i))
            (put_heads if site == "attn" else put_neurons)(i, x, r)

        return fn

    def on_resid(layer: int) -> Callable[..., None]:
        def fn(h: torch.Tensor) -> None:
            for p in positions:
                sel = cur["batch"].selections[p]
                resid[p][cur["rows"], layer] = sel.reduce(h.float().cpu()).numpy()

        return fn

    hooks: list[Hook] = [arch.place("resid", layer).read(on_resid(layer)) for layer in range(L + 1)]
    for i in range(L):
        hooks.append(arch.place("heads", i).read(on_o_proj(i)))
        hooks.append((arch.mlp_proj(i), "forward", on_mlp_proj(i)))
        for site in ("attn", "mlp"):
            norm = arch.post_norm(i, site)
            if norm is not None:
                hooks.append((norm, "forward", on_post_norm(site, i)))
    batches = plan_batches(token_lengths(lm, texts), batch_size)
    device = lm.input_device
    cols = readout_columns(readouts.values())
    with hooked(hooks), torch.inference_mode():
        for rows in tqdm(batches, desc="heads: capture", unit="batch", disable=not progress):
            b = _prepare(lm, texts, limits, spans, rows, position)
            cur.update(batch=b, rows=rows, base=torch.from_numpy(base[rows]))
            out = arch.base_model(**{k: v.to(device) for k, v in b.inputs.items()}, use_cache=False)
            if cols:  # only the readout words' logits, at the cue's last token
                logits = unembed(lm, out.last_hidden_state[:, -1], cols, normed=True)
                for e, r in readouts.items():
                    lds[e][rows] = logit_diff(logits.float().cpu(), r, cols)
    z_mean = (z_sum / z_count).float().reshape(L, H, d).numpy() if z_count else None
    return HeadCapture(z, a_scale, act, m_scale, resid, z_mean, lds)

"""Direct contributions: what each head, bias and neuron writes along a direction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from emocircuits.models.architectures import Architecture


# ----------------------------------------------------------------------------- weights
@dataclass
class WriteWeights:
    """The weights that write into the residual stream, per block (float32 numpy):
    ``o_proj [L, W, H*d]``, ``mlp_proj [L, W, F]``, biases ``[L, W]`` (zeros if none),
    post-norm gains ``[L, W]`` (ones without a post-norm; up to a factor, see
    :meth:`~emocircuits.models.architectures.Architecture.post_norm_gain`)."""

    o_proj: np.ndarray
    o_bias: np.ndarray
    mlp_proj: np.ndarray
    mlp_bias: np.ndarray
    attn_gain: np.ndarray
    mlp_gain: np.ndarray
    n_heads: int
    head_dim: int


def write_weights(arch: Architecture) -> WriteWeights:
    """Collect :class:`WriteWeights` from a model (read only).

    >>> w = write_weights(lm.arch)  # doctest: +SKIP
    """

    def parts(fn: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]]) -> tuple:
        ws, bs = [], []
        for i in range(arch.n_layers):
            w, b = fn(i)
            ws.append(w.float().cpu().numpy())
            bs.append(np.zeros(arch.width, np.float32) if b is None else b.float().cpu().numpy())
        return np.stack(ws), np.stack(bs)

    def gains(site: str) -> np.ndarray:
        out = []
        for i in range(arch.n_layers):
            g = arch.post_norm_gain(i, site)
            out.append(np.ones(arch.width, np.float32) if g is None else g.cpu().numpy())
        return np.stack(out)

    o, ob = parts(arch.o_proj_weight)
    m, mb = parts(arch.mlp_proj_weight)
    return WriteWeights(o, ob, m, mb, gains("attn"), gains("mlp"), arch.n_heads, arch.head_dim)


def _directions(v: np.ndarray) -> tuple[np.ndarray, bool]:
    v = np.asarray(v, np.float32)
    return (v[:, None], True) if v.ndim == 1 else (v, False)


def head_contributions(z: np.ndarray, w: WriteWeights, v: np.ndarray, layer: int) -> np.ndarray:
    """Direct contribution of every head of blocks ``< layer`` to ``v``: ``[n, layer, H]``
    for ``v`` ``[W]`` (or ``[n, layer, H, K]`` for ``K`` directions ``[W, K]``; the identity
    gives the heads' whole writes). ``z``: :attr:`HeadCapture.z` at one position.

    >>> c = head_contributions(cap.z["readout"], w, v, 20)  # doctest: +SKIP
    """
    vv, flat = _directions(v)
    H, d = w.n_heads, w.head_dim
    gv = w.attn_gain[:layer, :, None] * vv[None]  # [R, W, K]
    u = np.matmul(w.o_proj[:layer].transpose(0, 2, 1), gv).reshape(layer, H, d, -1)
    out = np.matmul(z[:, :layer, :, None, :], u[None])[:, :, :, 0]  # [n, R, H, K]
    return out[..., 0] if flat else out


def bias_contributions(
    scale: np.ndarray, bias: np.ndarray, gain: np.ndarray, v: np.ndarray, layer: int
) -> np.ndarray:
    """``[n, layer]`` (or ``[n, layer, K]``): a projection's bias through the post-norm,
    weighted by the reduced normaliser ``scale`` (:attr:`HeadCapture.attn_scale`)."""
    vv, flat = _directions(v)
    out = scale[:, :layer, None] * ((bias[:layer] * gain[:layer]) @ vv)[None]
    return out[..., 0] if flat else out


def neuron_weights(w: WriteWeights, v: np.ndarray, layer: int) -> np.ndarray:
    """``[layer, F]``: what one unit of each neuron's activation writes along ``v``."""
    gv = (w.mlp_gain[:layer] * v[None])[:, None, :]  # [R, 1, W]
    return np.matmul(gv, w.mlp_proj[:layer])[:, 0]


def neuron_contributions(act: np.ndarray, w: WriteWeights, v: np.ndarray, layer: int) -> np.ndarray:
    """Direct contribution ``[n, layer, F]`` of every MLP neuron of blocks ``< layer`` to
    ``v`` [W]: reduced activation (:attr:`HeadCapture.act`) times its write along ``v``."""
    return act[:, :layer] * neuron_weights(w, v, layer)[None]

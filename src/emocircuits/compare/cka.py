"""Linear CKA between every layer of one model and every layer of another, with the
unbiased HSIC estimator (Song et al. 2012; Kornblith et al. 2019), so that corresponding
layers are found rather than assumed. Basis-free: unchanged when one model's activations
are rotated or scaled.

The unbiased estimator matters with few stimuli: the plain (biased) HSIC makes unrelated
representations look similar when the width is large compared with the number of rows.

>>> rng = np.random.default_rng(0)
>>> a = rng.normal(size=(50, 2, 8)); q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
>>> bool(np.allclose(linear_cka(a, 3 * a @ q)[[0, 1], [0, 1]], 1.0))
True
"""

from __future__ import annotations

import numpy as np

from emocircuits.errors import DataError


def _grams(x: np.ndarray) -> np.ndarray:
    """Centred linear Gram matrices ``[L, n, n]`` (float64) with zeroed diagonals."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2), dtype=np.float64))
    xt = xt - xt.mean(1, keepdim=True)
    k = xt @ xt.transpose(-1, -2)
    k.diagonal(dim1=-2, dim2=-1).zero_()
    return k.numpy()


def _combine(
    trace: np.ndarray, sa: np.ndarray, sb: np.ndarray, cross: np.ndarray, n: int
) -> np.ndarray:
    return (trace + sa * sb / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def unbiased_hsic(ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
    """Unbiased HSIC between every Gram of ``ka`` ``[La, n, n]`` and every Gram of ``kb``
    ``[Lb, n, n]`` (diagonals already zero): ``[La, Lb]``."""
    n = ka.shape[-1]
    if n < 4:
        raise DataError(f"unbiased HSIC needs at least 4 rows, got {n}")
    ra, rb = ka.sum(-1), kb.sum(-1)  # row sums [L, n]
    trace = np.einsum("aij,bij->ab", ka, kb)
    return _combine(trace, ra.sum(-1)[:, None], rb.sum(-1)[None, :], ra @ rb.T, n)


def _self_hsic(k: np.ndarray) -> np.ndarray:
    n = k.shape[-1]
    r = k.sum(-1)
    return _combine(np.einsum("aij,aij->a", k, k), r.sum(-1), r.sum(-1), (r * r).sum(-1), n)


def linear_cka(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Linear CKA ``[La, Lb]`` between activations ``[n, La, Wa]`` and ``[n, Lb, Wb]`` of
    the same ``n`` stimuli in the same order (widths may differ)."""
    if len(xa) != len(xb):
        raise DataError(f"CKA needs the same stimuli on both sides ({len(xa)} vs {len(xb)} rows)")
    ka, kb = _grams(xa), _grams(xb)
    ha, hb = _self_hsic(ka)[:, None], _self_hsic(kb)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return unbiased_hsic(ka, kb) / np.sqrt(ha * hb)

"""Linear CKA between every layer of one model and every layer of another, with the
unbiased HSIC estimator (Song et al. 2012; Kornblith et al. 2019), so that corresponding
layers are found rather than assumed. Basis-free: unchanged when one model's activations
are rotated or scaled.

The unbiased estimator matters with few stimuli: the plain (biased) HSIC makes unrelated
representations look similar when the width is large compared with the number of rows.
Its permutation null (rows of one model shuffled) is centred on 0 exactly.

>>> rng = np.random.default_rng(0)
>>> a = rng.normal(size=(50, 2, 8)); q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
>>> bool(np.allclose(linear_cka(a, 3 * a @ q)[[0, 1], [0, 1]], 1.0))
True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from emocircuits.compare.perm import permutations
from emocircuits.errors import DataError


def gram_matrices(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred linear Grams ``[L, n, n]`` (float64, diagonal zeroed) of activations
    ``[n, L, W]``, and their diagonals ``[L, n]`` (squared norms of the centred rows)."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2), dtype=np.float64))
    xt = xt - xt.mean(1, keepdim=True)
    k = xt @ xt.transpose(-1, -2)
    diag = k.diagonal(dim1=-2, dim2=-1).clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    return k.numpy(), diag.numpy()


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


def cka_from_grams(ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
    """Linear CKA ``[La, Lb]`` from :func:`gram_matrices` of both models."""
    ha, hb = _self_hsic(ka)[:, None], _self_hsic(kb)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return unbiased_hsic(ka, kb) / np.sqrt(ha * hb)


def linear_cka(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Linear CKA ``[La, Lb]`` between activations ``[n, La, Wa]`` and ``[n, Lb, Wb]`` of
    the same ``n`` stimuli in the same order (widths may differ)."""
    if len(xa) != len(xb):
        raise DataError(f"CKA needs the same stimuli on both sides ({len(xa)} vs {len(xb)} rows)")
    return cka_from_grams(gram_matrices(xa)[0], gram_matrices(xb)[0])


def cka_null(
    ka: np.ndarray,
    kb: np.ndarray,
    n_perm: int = 200,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Permutation null of linear CKA: ``[n_perm, La, Lb]``, each replicate with the rows of
    one model shuffled (the same shuffle for all its layers).

    Per replicate this costs one gather of the shuffled side's Grams (upper triangles) and
    one matrix product ``[La, n^2/2] @ [n^2/2, Lb]``; float32 (the null's spread is far
    above float32 rounding).

    >>> k, _ = gram_matrices(np.random.default_rng(0).normal(size=(30, 2, 5)))
    >>> cka_null(k, k, n_perm=50).shape
    (50, 2, 2)
    """
    import torch

    n = ka.shape[-1]
    ha, hb = _self_hsic(ka)[:, None], _self_hsic(kb)[None, :]
    swap = len(kb) > len(ka)  # shuffle the side with fewer layers: fewer elements to gather
    fixed, moved = (kb, ka) if swap else (ka, kb)
    iu = torch.triu_indices(n, n, 1)
    flat_iu = iu[0] * n + iu[1]
    f = torch.from_numpy(fixed).float().flatten(1)[:, flat_iu].contiguous()  # [Lf, m]
    m_flat = torch.from_numpy(moved).float().flatten(1)
    rf = torch.from_numpy(fixed.sum(-1))  # row sums [Lf, n] (float64)
    rm = torch.from_numpy(moved.sum(-1))
    sf, sm = rf.sum(-1)[:, None], rm.sum(-1)[None, :]
    out = np.empty((n_perm, len(fixed), len(moved)))
    for r, p in enumerate(torch.from_numpy(permutations(n, n_perm, seed))):
        trace = 2.0 * (f @ m_flat[:, p[iu[0]] * n + p[iu[1]]].T).double()
        out[r] = _combine(trace.numpy(), sf.numpy(), sm.numpy(), (rf @ rm[:, p].T).numpy(), n)
        if progress is not None:
            progress(1)
    out = out.transpose(0, 2, 1) if swap else out
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / np.sqrt(ha * hb)

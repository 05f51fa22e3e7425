"""Representational similarity analysis of emotion centroids, and mutual k-nearest-neighbour
alignment: two more basis-free views of whether two models organise the stimuli alike.

RSA compares, per layer pair, the models' emotion-centroid similarity matrices (cosine of
each class centroid minus the mean of the centroids) by their Spearman correlation; its
Mantel null relabels one model's classes (exact over all ``C!`` relabelings when that is at
most ``n_perm``). With ``C`` classes there are ``C (C - 1) / 2`` entries and ``C!``
relabelings: with 4 classes the smallest possible p-value is 1/24.

Mutual kNN (Huh et al. 2024) is the mean share of each stimulus's ``k`` nearest neighbours
(Euclidean, centred activations) that the two models agree on; its null shuffles one
model's rows; under that null its mean is exactly ``k / (n - 1)``.

>>> x = np.random.default_rng(0).normal(size=(40, 2, 6)); y = ["a", "b", "c", "d"] * 10
>>> r = rsa(x, x @ np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))[0], y)
>>> bool(np.allclose(np.diagonal(r.rho), 1.0)), r.exact
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from emocircuits.compare.perm import permutations, relabelings
from emocircuits.errors import DataError


def centroid_similarity(x: np.ndarray, labels: Sequence[str], classes: list[str]) -> np.ndarray:
    """``[L, C, C]`` cosines between class centroids of ``x`` ``[n, L, W]``, each centroid
    minus the mean of the centroids (so the shared offset does not make all of them ~1)."""
    lab = np.asarray(labels)
    cent = np.stack([x[lab == c].astype(np.float64).mean(0) for c in classes], 1)  # [L,C,W]
    cent -= cent.mean(1, keepdims=True)
    cent /= np.maximum(np.linalg.norm(cent, axis=-1, keepdims=True), 1e-300)
    return cent @ cent.transpose(0, 2, 1)


def _ranks(v: np.ndarray) -> np.ndarray:
    """Spearman ranks along the last axis, centred and scaled to unit norm (ties averaged)."""
    from scipy.stats import rankdata

    r = rankdata(v, axis=-1)
    r -= r.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return r / np.linalg.norm(r, axis=-1, keepdims=True)


@dataclass
class RSA:
    """Spearman ``rho`` ``[La, Lb]`` per layer pair, its Mantel ``null`` ``[P, La, Lb]``,
    whether the null is exact (every relabeling), and the classes compared."""

    rho: np.ndarray
    null: np.ndarray
    exact: bool
    classes: list[str]


def rsa(
    xa: np.ndarray, xb: np.ndarray, labels: Sequence[str], n_perm: int = 1000, seed: int = 0
) -> RSA:
    """RSA of emotion centroids between every layer of ``xa`` and of ``xb`` (same rows)."""
    classes = list(dict.fromkeys(labels))
    if len(classes) < 3:
        raise DataError(f"RSA needs at least 3 classes to correlate, got {classes}")
    sa = centroid_similarity(xa, labels, classes)
    sb = centroid_similarity(xb, labels, classes)
    iu = np.triu_indices(len(classes), 1)
    ra = _ranks(sa[:, iu[0], iu[1]])  # [La, m]
    perms, exact = relabelings(len(classes), n_perm, seed)
    sbp = sb[:, perms[:, :, None], perms[:, None, :]]  # [Lb, P, C, C]
    rbp = _ranks(sbp[..., iu[0], iu[1]]).transpose(1, 0, 2)  # [P, Lb, m]
    null = np.einsum("am,pbm->pab", ra, rbp)
    rho = ra @ _ranks(sb[:, iu[0], iu[1]]).T
    return RSA(rho, null, exact, classes)


def knn_indices(gram: np.ndarray, diag: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices ``[L, n, k]`` of each row's ``k`` nearest other rows (Euclidean), from the
    centred Grams and squared norms of :func:`~emocircuits.compare.cka.gram_matrices`."""
    import torch

    n = gram.shape[-1]
    if k >= n:
        raise DataError(f"mutual kNN with k={k} needs more than {k} rows, got {n}")
    out = np.empty((len(gram), n, k), dtype=np.int64)
    for layer, (g, d) in enumerate(zip(gram, diag, strict=True)):
        dist = torch.from_numpy(d[:, None] + d[None, :] - 2.0 * g)
        dist.fill_diagonal_(float("inf"))
        out[layer] = torch.topk(dist, k, dim=1, largest=False).indices.numpy()
    return out


def mutual_knn(
    na: np.ndarray,
    nb: np.ndarray,
    n_perm: int = 200,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mutual kNN alignment ``[La, Lb]`` from :func:`knn_indices` of both models, and its
    null ``[n_perm, La, Lb]`` (one model's rows shuffled)."""
    import torch

    la, n, k = na.shape
    member = torch.zeros(len(nb), n * n, dtype=torch.bool)  # is j among i's neighbours in B
    rows = torch.arange(n)[:, None]
    for b in range(len(nb)):
        member[b, (rows * n + torch.from_numpy(nb[b])).flatten()] = True
    a_idx = torch.from_numpy(na)

    def score(p: torch.Tensor | None) -> np.ndarray:
        src = rows if p is None else p[:, None]
        nbr = a_idx if p is None else p[a_idx]
        codes = (src * n + nbr).reshape(la, -1)  # [La, n*k]
        hits = member[:, codes.flatten()].reshape(len(nb), la, -1)
        if progress is not None and p is not None:
            progress(1)
        return hits.sum(-1).T.numpy() / (n * k)

    observed = score(None)
    null = np.stack([score(p) for p in torch.from_numpy(permutations(n, n_perm, seed))])
    return observed, null

"""Emotion subspaces per layer, principal angles and overlap between them, with the
analytic random-subspace null and a label-permutation null.

Two kinds of subspace (``KINDS``):

- ``between``: the span of the class-mean contrasts ``mean(emotion) - mean(baseline)``
  (dimension ``classes - 1``; the same span as the one-vs-rest contrasts): where the
  classes differ.
- ``within``: for one emotion, the top-``k`` principal directions of its prompts measured
  from the baseline mean, ``x_emotion - mean(baseline)``, *not* centred (centring would
  remove the mean direction itself); the pilot's "emotion subspace". ``k`` is given, or the
  smallest ``k`` whose explained share of the squared norm reaches ``var`` (median over
  layers). Its leading directions include the data's high-variance directions, whatever
  the emotion: that is what the label-permutation null measures.

Overlap between two orthonormal bases ``A`` (``d x ka``) and ``B`` (``d x kb``) is the mean
squared cosine of their principal angles, ``|A^T B|_F^2 / min(ka, kb)``: 1 for the same
subspace, ``max(ka, kb) / d`` on average for random subspaces (the analytic null; ``k/d``
for equal ``k``).

>>> a = np.eye(4)[:, :2]; b = np.eye(4)[:, 1:3]
>>> float(overlap(a, b)), np.degrees(principal_angles(a, b)).round(1).tolist()
(0.5, [0.0, 90.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from emocircuits.errors import DataError

if TYPE_CHECKING:
    import torch

KINDS = ("between", "within")


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of orthonormal
    ``a`` ``[..., d, ka]`` and ``b`` ``[..., d, kb]``; ``min(ka, kb)`` of them."""
    s = np.linalg.svd(np.swapaxes(a, -1, -2) @ b, compute_uv=False)
    return np.arccos(np.clip(s, -1.0, 1.0))


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared cosine of the principal angles of orthonormal bases ``[..., d, k]``."""
    k = min(a.shape[-1], b.shape[-1])
    return (np.einsum("...dk,...dj->...kj", a, b) ** 2).sum((-1, -2)) / k


def random_overlap(ka: int, kb: int, d: int) -> float:
    """Expected overlap of a uniformly random ``ka``-subspace with a ``kb``-subspace of
    ``R^d``: ``ka * kb / d`` summed squared cosines over ``min(ka, kb)`` angles.

    >>> random_overlap(3, 3, 768)
    0.00390625
    """
    return max(ka, kb) / d


@dataclass
class Subspaces:
    """Orthonormal bases per layer: ``bases[name]`` ``[L, d, k]`` (name: an emotion for
    ``within``, ``"emotions"`` for ``between``), the share of the squared norm each
    direction explains ``[L, k]``, and how they were made."""

    kind: str
    k: int
    baseline: str
    layers: list[int]
    bases: dict[str, np.ndarray]
    explained: dict[str, np.ndarray]
    provenance: dict[str, Any] = field(default_factory=dict)


def _onehot(lab: np.ndarray, classes: list[str]) -> np.ndarray:
    return np.stack([lab == c for c in classes]).astype(np.float32)


def _between(x: np.ndarray, onehot: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """Bases of the contrast span for label assignments ``onehot`` ``[P, C, n]``."""
    import torch

    w = torch.from_numpy(onehot / onehot.sum(-1, keepdims=True))
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).flatten(1)
    means = torch.einsum("pcn,nf->pcf", w, xt).unflatten(-1, x.shape[1:])  # [P, C, L, d]
    diffs = means - means[:, base : base + 1]
    diffs = torch.cat([diffs[:, :base], diffs[:, base + 1 :]], 1)  # [P, C-1, L, d]
    u, s, _ = torch.linalg.svd(diffs.permute(0, 2, 3, 1), full_matrices=False)  # [P,L,d,C-1]
    ex = s**2 / (s**2).sum(-1, keepdim=True).clamp_min(1e-30)
    return u.numpy(), ex.numpy()


def _within(
    x: np.ndarray, rows: np.ndarray, base: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` bases of ``x[rows] - mean(x[base])`` for index sets ``rows`` ``[P, m]`` and
    ``base`` ``[P, b]``, per layer: ``[P, L, d, k]`` and the explained shares ``[P, L, k]``.

    Works on the Gram matrix of the ``m`` rows (``m`` is usually smaller than ``d``)."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2), dtype=np.float32))  # L,n,d
    mu = xt[:, torch.from_numpy(base)].mean(2)  # [L, P, d]
    r = xt[:, torch.from_numpy(rows)] - mu[:, :, None]  # [L, P, m, d]
    gram = r @ r.transpose(-1, -2)  # [L, P, m, m]
    val, vec = top_eigenpairs(gram, k)
    basis = r.transpose(-1, -2) @ vec / val.sqrt().clamp_min(1e-12).float()[..., None, :]
    total = gram.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True).double().clamp_min(1e-30)
    return basis.transpose(0, 1).numpy(), (val / total).transpose(0, 1).float().numpy()


def top_eigenpairs(
    gram: torch.Tensor, k: int, iters: int = 6, extra: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of a batch of PSD matrices: exact for small ones, otherwise a
    randomized subspace iteration (Halko et al. 2011) refined by Rayleigh-Ritz; both give
    the same leading directions to float precision when the spectrum decays."""
    import torch

    m = gram.shape[-1]
    if m <= 4 * (k + extra):
        val, vec = torch.linalg.eigh(gram.double())
        return val.flip(-1)[..., :k].clamp_min(0), vec.flip(-1)[..., :k].float()
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(*gram.shape[:-1], k + extra, generator=gen)
    for _ in range(iters):
        q = torch.linalg.qr(gram @ q).Q
    val, v = torch.linalg.eigh((q.transpose(-1, -2) @ gram @ q).double())
    val, v = val.flip(-1)[..., :k].clamp_min(0), v.flip(-1)[..., :k].float()
    return val, q @ v


def _choose_k(explained: np.ndarray, var: float, max_k: int) -> int:
    cum = np.cumsum(explained, -1)  # [L, k]
    per_layer = (cum < var).sum(-1) + 1
    return int(min(max_k, np.median(per_layer)))


def _check(x: np.ndarray, labels: Sequence[str], baseline: str) -> tuple[np.ndarray, list[str]]:
    lab = np.asarray(labels)
    classes = list(dict.fromkeys(lab.tolist()))
    if baseline not in classes:
        raise DataError(f"baseline label {baseline!r} not in the labels ({', '.join(classes)})")
    if len(lab) != len(x):
        raise DataError(f"{len(lab)} labels for {len(x)} rows")
    return lab, classes


def emotion_subspaces(
    x: np.ndarray,
    labels: Sequence[str],
    *,
    kind: str = "between",
    k: int | None = 3,
    var: float = 0.5,
    max_k: int = 10,
    baseline: str = "neutral",
    layers: list[int] | None = None,
) -> Subspaces:
    """Subspaces per layer of activations ``[n, L, d]`` (see the module docstring).
    ``k``: the dimension (``within``: 3 by default, as the pilot; None: chosen by ``var``;
    ``between``: at most ``classes - 1``).

    >>> x = np.random.default_rng(0).normal(size=(40, 2, 6)); y = ["a", "b"] * 20
    >>> emotion_subspaces(x, y, baseline="b").bases["emotions"].shape
    (2, 6, 1)
    """
    if kind not in KINDS:
        raise DataError(f"unknown subspace kind {kind!r}; choose from {', '.join(KINDS)}")
    lab, classes = _check(x, labels, baseline)
    layers = layers if layers is not None else list(range(x.shape[1]))
    if kind == "between":
        u, ex = _between(x, _onehot(lab, classes)[None], classes.index(baseline))
        kk = u.shape[-1] if k is None else min(k, u.shape[-1])
        bases, explained = {"emotions": u[0, ..., :kk]}, {"emotions": ex[0, :, :kk]}
    else:
        base = np.flatnonzero(lab == baseline)[None]
        bases, explained = {}, {}
        kk = k
        for emo in classes:
            if emo == baseline:
                continue
            rows = np.flatnonzero(lab == emo)[None]
            kmax = min(max_k if k is None else k, rows.shape[1])
            b, ex = _within(x, rows, base, kmax)
            bases[emo], explained[emo] = b[0], ex[0]
        if k is None:  # one k for every emotion and layer: the median choice
            kk = max(_choose_k(e, var, max_k) for e in explained.values())
            bases = {e: b[..., :kk] for e, b in bases.items()}
            explained = {e: v[..., :kk] for e, v in explained.items()}
    return Subspaces(kind, int(kk), baseline, layers, bases, explained)


def class_projection(
    x: np.ndarray, labels: Sequence[str], *, baseline: str = "neutral"
) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``x [n, d]`` of one layer, standardised per dimension (so that a few rogue
    dimensions do not fill the picture), projected on the two leading directions of the
    between-class (emotion) subspace: ``(points [n, 2], explained share per axis)``.

    >>> x = np.random.default_rng(0).normal(size=(30, 5)); y = ["a", "b", "neutral"] * 10
    >>> class_projection(x, y)[0].shape
    (30, 2)
    """
    xl = x.astype(np.float64)
    sd = xl.std(0)
    z = (xl - xl.mean(0)) / np.where(sd > 0, sd, 1.0)
    sub = emotion_subspaces(z[:, None], labels, k=2, baseline=baseline)
    return z @ sub.bases["emotions"][0], sub.explained["emotions"][0]


@dataclass
class OverlapTest:
    """Overlap ``[La, Lb]`` between subspaces of two sets of activations at every pair of
    layers, the mean overlap under label permutation and its p-value, and the analytic
    random-subspace value ``max(ka, kb)/d``. ``angles`` ``[La, Lb, k]`` in degrees."""

    name: str
    kind: str
    k: int
    overlap: np.ndarray
    angles: np.ndarray
    null_mean: np.ndarray
    null_hi: np.ndarray
    p_value: np.ndarray
    analytic: float
    n_perm: int
    paired: bool

    def diagonal(self) -> dict[str, np.ndarray]:
        """Same-layer values (for comparisons of two sets with the same layers)."""
        return {
            "overlap": np.diagonal(self.overlap).copy(),
            "null_mean": np.diagonal(self.null_mean).copy(),
            "null_hi": np.diagonal(self.null_hi).copy(),
            "p_value": np.diagonal(self.p_value).copy(),
        }


def _permuted_bases(
    x: np.ndarray,
    perms: np.ndarray,
    lab: np.ndarray,
    classes: list[str],
    kind: str,
    name: str,
    k: int,
    baseline: str,
) -> np.ndarray:
    """Bases ``[P, L, d, k]`` for each row of ``perms`` (label arrays ``[P, n]`` indices)."""
    labs = lab[perms]  # [P, n]
    if kind == "between":
        onehot = np.stack([_onehot(row, classes) for row in labs])
        return _between(x, onehot, classes.index(baseline))[0][..., :k]
    rows = np.stack([np.flatnonzero(row == name) for row in labs])
    base = np.stack([np.flatnonzero(row == baseline) for row in labs])
    out = [_within(x, rows[i : i + 16], base[i : i + 16], k)[0] for i in range(0, len(labs), 16)]
    return np.concatenate(out)


def overlap_test(
    xa: np.ndarray,
    labels_a: Sequence[str],
    xb: np.ndarray | None = None,
    labels_b: Sequence[str] | None = None,
    *,
    kind: str = "between",
    emotion: str | None = None,
    k: int | None = 3,
    var: float = 0.5,
    baseline: str = "neutral",
    n_perm: int = 200,
    seed: int = 0,
    paired: bool | None = None,
) -> OverlapTest:
    """Subspace overlap between every layer of ``xa`` and every layer of ``xb`` (``xb``
    None: ``xa`` with itself, i.e. between layers), against a label-permutation null.

    ``paired`` (default: same number of rows and labels) applies the same permutation to
    both sides, as when they are two position rules or sites of the same prompts; otherwise
    each side is permuted independently (two presets). p-value: ``(1 + #null >= observed) /
    (1 + n_perm)``, per layer pair.
    """
    self_compare = xb is None
    xb = xa if xb is None else xb
    labels_b = labels_a if labels_b is None else labels_b
    la, classes = _check(xa, labels_a, baseline)
    lb, classes_b = _check(xb, labels_b, baseline)
    if set(classes) != set(classes_b):
        raise DataError(f"the two sets have different labels: {classes} vs {classes_b}")
    if xa.shape[-1] != xb.shape[-1]:
        raise DataError(
            f"widths differ ({xa.shape[-1]} vs {xb.shape[-1]}): subspaces of different "
            "models need a fitted map first (emocircuits compare)"
        )
    if kind == "within" and (emotion is None or emotion not in classes or emotion == baseline):
        raise DataError(f"kind 'within' needs an emotion, one of {classes}")
    name = emotion if kind == "within" else "emotions"
    sa = emotion_subspaces(xa, la, kind=kind, k=k, var=var, baseline=baseline)
    kk = sa.k
    sb = emotion_subspaces(xb, lb, kind=kind, k=kk, baseline=baseline)
    a, b = sa.bases[name], sb.bases[name]  # [L, d, k]
    obs = overlap(a[:, None], b[None])
    angles = np.degrees(principal_angles(a[:, None], b[None]))
    paired = (len(la) == len(lb) and (la == lb).all()) if paired is None else paired
    rng = np.random.default_rng(seed)
    perm_a = np.stack([rng.permutation(len(la)) for _ in range(n_perm)])
    perm_b = perm_a if paired else np.stack([rng.permutation(len(lb)) for _ in range(n_perm)])
    null = np.empty((n_perm, *obs.shape), dtype=np.float32)
    for i in range(0, n_perm, 50):
        sl = slice(i, i + 50)
        pa = _permuted_bases(xa, perm_a[sl], la, classes, kind, name, kk, baseline)
        pb = (
            pa
            if (self_compare and paired)
            else _permuted_bases(xb, perm_b[sl], lb, classes, kind, name, kk, baseline)
        )
        null[sl] = overlap(pa[:, :, None], pb[:, None])
    p = (1 + (null >= obs[None] - 1e-5).sum(0)) / (1 + n_perm)  # float32 bases
    return OverlapTest(
        name,
        kind,
        kk,
        obs,
        angles,
        null.mean(0),
        np.quantile(null, 0.95, axis=0),
        p,
        random_overlap(kk, kk, xa.shape[-1]),
        n_perm,
        bool(paired),
    )

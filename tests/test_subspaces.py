"""Emotion subspaces: principal angles and overlap of hand-built subspaces, the analytic
random-subspace null, recovery of planted subspaces (between and within, exact and
randomized eigen-solver), and the label-permutation test."""

from __future__ import annotations

import numpy as np
import pytest

from emocircuits.errors import DataError
from emocircuits.geometry.subspaces import (
    emotion_subspaces,
    overlap,
    overlap_test,
    principal_angles,
    random_overlap,
)

CLASSES = ["neutral", "gratitude", "anger", "sadness"]


def orth(rng, d, k):
    """A uniformly random orthonormal ``[d, k]`` basis (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(d, k)))
    return q * np.sign(np.diagonal(r))


def unit(d, *idx):
    return np.eye(d)[:, list(idx)]


# ---------------------------------------------------------------- angles and overlap


def test_principal_angles_of_hand_built_subspaces():
    d, t = 6, 0.7
    e = np.eye(d)
    a = e[:, [0, 1]]
    b = np.stack([e[0], np.cos(t) * e[1] + np.sin(t) * e[2]], 1)
    np.testing.assert_allclose(principal_angles(a, b), [0.0, t], atol=1e-7)
    np.testing.assert_allclose(principal_angles(b, a), [0.0, t], atol=1e-7)
    # overlap = mean squared cosine of the angles
    np.testing.assert_allclose(overlap(a, b), (1 + np.cos(t) ** 2) / 2, rtol=1e-12)
    # a random rotation applied to both spans changes nothing
    q = orth(np.random.default_rng(3), d, d)
    np.testing.assert_allclose(principal_angles(q @ a, q @ b), [0.0, t], atol=1e-7)
    np.testing.assert_allclose(overlap(q @ a, q @ b), (1 + np.cos(t) ** 2) / 2, rtol=1e-10)
    # another basis of the same span: overlap 1, angles 0
    g = orth(np.random.default_rng(4), 2, 2)
    np.testing.assert_allclose(overlap(a, a @ g), 1.0, rtol=1e-12)
    np.testing.assert_allclose(principal_angles(a, a @ g), [0.0, 0.0], atol=1e-6)
    # orthogonal subspaces: overlap 0, angles 90 degrees
    c = e[:, [3, 4]]
    assert overlap(a, c) == 0.0
    np.testing.assert_allclose(principal_angles(a, c), [np.pi / 2] * 2)


def test_overlap_of_unequal_dimensions_and_batches():
    d = 8
    a = unit(d, 0)  # a line inside a plane: overlap 1 (normalised by the smaller k)
    b = unit(d, 0, 1)
    np.testing.assert_allclose(overlap(a, b), 1.0)
    assert principal_angles(a, b).shape == (1,)
    # a line at 60 degrees from a 3-dim span: cos^2 = 0.25
    v = (np.cos(np.pi / 3) * np.eye(d)[0] + np.sin(np.pi / 3) * np.eye(d)[5])[:, None]
    np.testing.assert_allclose(overlap(v, unit(d, 0, 1, 2)), 0.25, rtol=1e-12)
    np.testing.assert_allclose(principal_angles(v, unit(d, 0, 1, 2)), [np.pi / 3], rtol=1e-7)
    # batched: [..., d, k] broadcasts like a matrix product
    stack_a = np.stack([unit(d, 0, 1), unit(d, 2, 3)])  # [2, d, 2]
    got = overlap(stack_a[:, None], stack_a[None])  # [2, 2]
    np.testing.assert_allclose(got, np.eye(2))


def test_analytic_null_matches_random_subspaces():
    rng = np.random.default_rng(0)
    k, d, n = 3, 200, 2000
    a = np.linalg.qr(rng.normal(size=(n, d, k)))[0]
    b = np.linalg.qr(rng.normal(size=(n, d, k)))[0]
    mean = float(overlap(a, b).mean())
    assert random_overlap(k, k, d) == k / d
    assert abs(mean - k / d) < 0.1 * k / d, (mean, k / d)
    # unequal dimensions: max(ka, kb) / d
    a1 = np.linalg.qr(rng.normal(size=(n, 50, 2)))[0]
    b1 = np.linalg.qr(rng.normal(size=(n, 50, 5)))[0]
    assert random_overlap(2, 5, 50) == random_overlap(5, 2, 50) == 0.1
    mean = float(overlap(a1, b1).mean())
    assert abs(mean - 0.1) < 0.01, mean


# ---------------------------------------------------------------- planted subspaces


def planted_between(rng, n=100, layers=2, d=50, scale=8.0, rogue=50.0):
    """Class means differ only inside a planted 3-dim subspace per layer (neutral at the
    origin, each emotion ``scale`` along one planted axis), plus a large shared offset and
    unit noise everywhere."""
    bases = np.stack([orth(rng, d, 3) for _ in range(layers)])  # [L, d, 3]
    labels = np.repeat(CLASSES, n)
    x = rng.normal(size=(len(labels), layers, d)) + rogue * rng.normal(size=(layers, d))
    for i, emo in enumerate(CLASSES[1:]):
        x[labels == emo] += scale * bases[:, :, i]
    return x, labels, bases


def test_between_subspace_recovers_the_planted_span():
    rng = np.random.default_rng(1)
    x, labels, planted = planted_between(rng)
    s = emotion_subspaces(x, labels, kind="between", k=3)
    b = s.bases["emotions"]
    assert s.k == 3 and b.shape == (2, 50, 3) and s.explained["emotions"].shape == (2, 3)
    np.testing.assert_allclose(
        np.swapaxes(b, 1, 2) @ b, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-4
    )
    ov = overlap(b, planted)
    assert (ov > 0.95).all(), ov
    # the two layers' subspaces are unrelated: overlap near the null 3/50
    assert overlap(b[0], planted[1]) < 0.3
    np.testing.assert_allclose(s.explained["emotions"].sum(-1), 1.0, atol=1e-5)
    # k is capped at classes - 1; k=None means classes - 1
    assert emotion_subspaces(x, labels, kind="between", k=10).k == 3
    assert emotion_subspaces(x, labels, kind="between", k=None).bases["emotions"].shape[-1] == 3
    # a rotation of the activations rotates the bases
    q = orth(rng, 50, 50)
    br = emotion_subspaces(x @ q, labels, kind="between").bases["emotions"]
    np.testing.assert_allclose(overlap(br, np.swapaxes(q, 0, 1)[None] @ b), 1.0, atol=1e-4)


def test_between_subspace_with_a_smaller_k_lies_inside_the_planted_span():
    rng = np.random.default_rng(2)
    x, labels, planted = planted_between(rng)
    # make one emotion far stronger: it should be the leading direction
    x[labels == "anger"] += 20.0 * planted[:, :, 1]
    s = emotion_subspaces(x, labels, kind="between", k=1)
    b = s.bases["emotions"]
    assert b.shape == (2, 50, 1)
    cos = np.abs(np.einsum("ld,ld->l", b[..., 0], planted[:, :, 1]))
    assert (cos > 0.99).all(), cos
    assert (s.explained["emotions"][:, 0] > 0.8).all()


def planted_within(rng, n_emo=60, n_base=60, layers=2, d=40, shift=3.0, spread=(2.0, 1.5)):
    """One emotion whose rows are the baseline mean + ``shift`` along u0 + Gaussian
    variation (sd ``spread``) along u1, u2 + small isotropic noise; other classes are noise
    around the baseline mean."""
    u = np.stack([orth(rng, d, 3) for _ in range(layers)])  # [L, d, 3]
    centre = 10.0 * rng.normal(size=(layers, d))
    labels = np.array(["neutral"] * n_base + ["gratitude"] * n_emo + ["anger"] * n_base)
    x = centre + 0.1 * rng.normal(size=(len(labels), layers, d))
    emo = labels == "gratitude"
    coef = np.concatenate(
        [np.full((n_emo, 1), shift), rng.normal(size=(n_emo, 2)) * np.array(spread)], 1
    )  # [n_emo, 3]
    x[emo] += np.einsum("nk,ldk->nld", coef, u)
    x[labels == "anger"] += rng.normal(size=(n_base, layers, d))
    return x, labels, u


def test_within_subspace_recovers_mean_shift_and_variation():
    rng = np.random.default_rng(3)
    x, labels, u = planted_within(rng)
    s = emotion_subspaces(x, labels, kind="within", k=3)
    assert set(s.bases) == {"gratitude", "anger"}
    b = s.bases["gratitude"]
    assert b.shape == (2, 40, 3)
    ov = overlap(b, u)
    assert (ov > 0.9).all(), ov
    # the leading direction is the mean shift (n*9 vs n*4 vs n*2.25 squared norm)
    lead = np.abs(np.einsum("ld,ld->l", b[..., 0], u[..., 0]))
    assert (lead > 0.95).all(), lead
    ex = s.explained["gratitude"]
    # shares of the squared norm: descending; the rest is the isotropic noise (40 * 0.01
    # per row against 9 + 4 + 2.25 planted)
    assert (np.diff(ex, axis=-1) <= 1e-6).all()
    np.testing.assert_allclose(ex.sum(-1), 15.25 / 15.65, atol=0.01)
    np.testing.assert_allclose(ex.mean(0), np.array([9, 4, 2.25]) / 15.65, atol=0.06)
    # k=None: the smallest k whose shares reach ``var`` (0.61, 0.87, 0.98 cumulated here)
    keep = labels != "anger"
    assert emotion_subspaces(x[keep], labels[keep], kind="within", k=None, var=0.5).k == 1
    assert emotion_subspaces(x[keep], labels[keep], kind="within", k=None, var=0.8).k == 2
    assert emotion_subspaces(x[keep], labels[keep], kind="within", k=None, var=0.9).k == 3
    # one k for all emotions: the largest choice, here isotropic "anger" needs many more
    assert emotion_subspaces(x, labels, kind="within", k=None, var=0.5).k > 3
    # the mean shift alone would be missed by a centred PCA: the uncentred basis keeps it
    # (checked above through ``lead``); a centred basis from numpy has it only weakly
    xe = x[labels == "gratitude", 0]
    _, _, vh = np.linalg.svd(xe - xe.mean(0), full_matrices=False)
    assert abs(vh[0] @ u[0, :, 0]) < 0.5


def test_randomized_eigen_solver_agrees_with_exact_svd():
    rng = np.random.default_rng(4)
    # 300 emotion rows > 4 * (k + 8): the randomized subspace iteration is used
    x, labels, _ = planted_within(
        rng, n_emo=300, n_base=50, layers=2, d=64, shift=2.0, spread=(4.0, 3.0)
    )
    x[labels == "gratitude"] += 0.5 * rng.normal(size=((labels == "gratitude").sum(), 2, 64))
    s = emotion_subspaces(x, labels, kind="within", k=3)
    b = s.bases["gratitude"]
    np.testing.assert_allclose(
        np.swapaxes(b, 1, 2) @ b, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-3
    )
    for layer in range(2):
        r = x[labels == "gratitude", layer] - x[labels == "neutral", layer].mean(0)
        _, sv, vh = np.linalg.svd(r, full_matrices=False)
        exact = vh[:3].T
        ov = float(overlap(b[layer], exact))
        assert ov > 1 - 1e-4, (layer, ov)
        # each direction individually, up to sign
        cos = np.abs(np.einsum("dk,dk->k", b[layer], exact))
        assert (cos > 1 - 1e-4).all(), cos
        np.testing.assert_allclose(
            s.explained["gratitude"][layer], sv[:3] ** 2 / (sv**2).sum(), atol=1e-4
        )


def test_subspace_errors():
    x = np.zeros((6, 1, 4))
    with pytest.raises(DataError):
        emotion_subspaces(x, ["a", "b"] * 3)  # no neutral
    with pytest.raises(DataError):
        emotion_subspaces(x, ["a", "neutral"] * 3, kind="sideways")
    with pytest.raises(DataError):
        emotion_subspaces(x, ["a", "neutral"] * 2)  # 4 labels for 6 rows


# ---------------------------------------------------------------- permutation test


def layered(rng, n=40, layers=6, d=30, shared=(1, 3), scale=3.0):
    """Pure noise at every layer but ``shared``, which carry the same planted between-class
    structure (the same per-row signal) in the same 3-dim subspace."""
    labels = np.repeat(CLASSES, n)
    x = rng.normal(size=(len(labels), layers, d))
    p = orth(rng, d, 3)
    for i, emo in enumerate(CLASSES[1:]):
        for layer in shared:
            x[labels == emo, layer] += scale * p[:, i]
    return x, labels, p


def test_overlap_test_finds_a_shared_subspace_between_layers():
    rng = np.random.default_rng(5)
    x, labels, _ = layered(rng)
    t = overlap_test(x, labels, kind="between", k=3, n_perm=200)
    assert t.overlap.shape == t.null_mean.shape == t.p_value.shape == (6, 6)
    assert t.angles.shape == (6, 6, 3) and t.paired and t.k == 3
    assert t.analytic == pytest.approx(3 / 30)
    assert t.overlap[1, 3] > 0.8 and t.overlap[1, 3] > t.null_hi[1, 3] > t.null_mean[1, 3]
    assert t.p_value[1, 3] < 0.05 and t.p_value[3, 1] < 0.05
    np.testing.assert_allclose(t.p_value[1, 3], 1 / 201)
    np.testing.assert_allclose(t.overlap, t.overlap.T, atol=1e-5)
    # noise layers: overlap with the planted layers near the null
    for j in (0, 2, 4, 5):
        assert t.overlap[1, j] < 0.5
    # p-values lie on the grid (1 + count) / (1 + n_perm)
    grid = t.p_value * 201
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-6)
    d = t.diagonal()
    np.testing.assert_allclose(d["overlap"], 1.0, atol=1e-5)


def test_overlap_test_same_layer_is_never_significant():
    """The diagonal of a self-comparison is overlap 1 against a null of 1: p must be 1
    (float32 rounding must not make the observed 1 exceed the permuted 1s)."""
    rng = np.random.default_rng(6)
    x, labels, _ = layered(rng)
    t = overlap_test(x, labels, kind="between", k=3, n_perm=100)
    np.testing.assert_allclose(np.diagonal(t.p_value), 1.0)


def test_overlap_test_without_signal_is_calibrated():
    rng = np.random.default_rng(7)
    n_layers, d = 6, 30
    labels = rng.permutation(np.repeat(CLASSES, 30))
    x = rng.normal(size=(len(labels), n_layers, d))
    t = overlap_test(x, labels, kind="between", k=3, n_perm=200)
    off = ~np.eye(n_layers, dtype=bool)
    p = t.p_value[off]
    assert (p < 0.05).mean() < 0.2, np.sort(p)
    assert p.max() > 0.5 and p.mean() > 0.3, np.sort(p)
    # observed and null both sit at the analytic value 3/30 for independent noise layers
    obs, null = t.overlap[off].mean(), t.null_mean[off].mean()
    assert abs(obs - null) < 0.25 * null, (obs, null)
    assert abs(null - 0.1) < 0.025, null
    assert (t.null_hi[off] >= t.null_mean[off]).all()


def test_overlap_test_two_sets_paired_and_unpaired():
    rng = np.random.default_rng(8)
    xa, labels, p = layered(rng, layers=3, shared=(0, 1, 2))
    # a second set of *different* prompts (unpaired: other rows, other count) with the same
    # planted subspace at its layers 0 and 2 only
    lb = np.repeat(CLASSES, 35)
    xb = rng.normal(size=(len(lb), 3, 30))
    for i, emo in enumerate(CLASSES[1:]):
        xb[lb == emo, 0] += 3.0 * p[:, i]
        xb[lb == emo, 2] += 3.0 * p[:, i]
    t = overlap_test(xa, labels, xb, lb, kind="between", k=3, n_perm=100)
    assert not t.paired and t.overlap.shape == (3, 3)
    assert t.p_value[0, 0] < 0.05 and t.p_value[2, 2] < 0.05 and t.p_value[1, 2] < 0.05
    assert t.overlap[0, 0] > t.null_mean[0, 0]
    assert t.overlap[0, 1] < 0.5 and t.p_value[0, 1] > 0.05  # xb's layer 1 is noise
    # the same prompts read two ways (paired): a noisy copy of xa
    xc = xa + 0.5 * rng.normal(size=xa.shape)
    tp = overlap_test(xa, labels, xc, labels, kind="between", k=3, n_perm=100)
    assert tp.paired
    assert (np.diagonal(tp.p_value) < 0.05).all() and (np.diagonal(tp.overlap) > 0.9).all()
    tu = overlap_test(xa, labels, xc, labels, kind="between", k=3, n_perm=100, paired=False)
    assert not tu.paired
    np.testing.assert_allclose(tu.overlap, tp.overlap)  # same observation, other null
    # a shared permutation keeps the noise shared: the paired null is the higher one
    assert tp.null_mean[0, 0] > tu.null_mean[0, 0]


def test_overlap_test_within_kind():
    rng = np.random.default_rng(9)
    x, labels, _ = planted_within(rng, layers=2, d=40)
    t = overlap_test(x, labels, kind="within", emotion="gratitude", k=3, n_perm=60)
    assert t.name == "gratitude" and t.kind == "within" and t.k == 3
    assert t.overlap[0, 0] == pytest.approx(1.0, abs=1e-4)
    assert t.overlap.shape == (2, 2) and t.null_mean.shape == (2, 2)


def test_overlap_test_errors():
    rng = np.random.default_rng(10)
    x, labels, _ = layered(rng, n=10, layers=2, d=12, shared=(1,))
    with pytest.raises(DataError, match="widths differ"):
        overlap_test(x, labels, x[..., :8], labels, n_perm=5)
    with pytest.raises(DataError):
        overlap_test(x, labels, kind="within", n_perm=5)  # no emotion
    with pytest.raises(DataError):
        overlap_test(x, labels, kind="within", emotion="neutral", n_perm=5)  # the baseline
    with pytest.raises(DataError):
        overlap_test(x, labels, kind="within", emotion="joy", n_perm=5)  # not a label
    other = np.where(labels == "anger", "fear", labels)
    with pytest.raises(DataError):
        overlap_test(x, labels, x, other, n_perm=5)  # different label sets

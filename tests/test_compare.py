"""The cross-model measures against computations by hand or planted answers: the CKA null
is CKA of shuffled rows, RSA is Spearman with an exact Mantel null, mutual kNN is the
set overlap, Procrustes and ridge are the textbook maps, identification and overlap are
what their definitions say, and the naive null is a random rotation."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group, spearmanr

from emocircuits.compare import (
    compare_directions,
    knn_indices,
    linear_cka,
    mutual_knn,
    naive_table,
    rsa,
    split_rows,
)
from emocircuits.compare.cka import cka_null, gram_matrices
from emocircuits.compare.maps import _dir_stats
from emocircuits.compare.naive import random_basis_cosines
from emocircuits.compare.perm import perm_p, permutations, relabelings
from emocircuits.compare.rsa import centroid_similarity
from emocircuits.geometry.subspaces import overlap


def planted(n_per=30, width=12, layers=2, classes=("a", "b", "c", "neutral"), seed=0, sep=3.0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.array(classes), n_per)
    centres = rng.normal(size=(len(classes), layers, width)) * sep
    x = rng.normal(size=(len(y), layers, width)) + centres[np.searchsorted(classes, y)]
    return x, y


def test_perm_p_and_relabelings():
    assert perm_p(0.5, np.array([0.1, 0.5, 0.7])) == pytest.approx(3 / 4)
    assert perm_p(0.5, np.array([0.1, 0.5, 0.7]), exact=True) == pytest.approx(2 / 3)
    perms, exact = relabelings(4, 1000)
    assert exact and len(perms) == 24 and (perms[0] == np.arange(4)).all()
    assert len({tuple(p) for p in perms}) == 24
    perms, exact = relabelings(8, 100)
    assert not exact and perms.shape == (100, 8)
    p = permutations(7, 50, seed=3)
    assert (np.sort(p, 1) == np.arange(7)).all()
    np.testing.assert_array_equal(p, permutations(7, 50, seed=3))


def test_cka_null_replicates_are_cka_of_shuffled_rows():
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(25, 3, 6)), rng.normal(size=(25, 2, 9))
    xb[:, 0] += 2 * xa[:, 0, :1]  # some real similarity
    ga, gb = gram_matrices(xa)[0], gram_matrices(xb)[0]
    null = cka_null(ga, gb, n_perm=5, seed=4)
    for r, p in enumerate(permutations(25, 5, seed=4)):
        np.testing.assert_allclose(null[r], linear_cka(xa, xb[p]), atol=1e-5)
    null_swapped = cka_null(gb, ga, n_perm=5, seed=4)  # the side with fewer layers moves
    assert null_swapped.shape == (5, 2, 3)
    big = cka_null(ga, gb, n_perm=400, seed=1)
    assert abs(big.mean()) < 0.02  # the unbiased estimator's null is centred on 0


def test_rsa_is_spearman_of_centroid_cosines_with_an_exact_mantel_null():
    xa, y = planted(layers=2, seed=1)
    xb, _ = planted(layers=3, seed=2)
    classes = ["a", "b", "c", "neutral"]
    r = rsa(xa, xb, y, n_perm=1000)
    assert r.exact and r.null.shape == (24, 2, 3)
    iu = np.triu_indices(4, 1)
    for la, lb in itertools.product(range(2), range(3)):
        ca = xa[:, la]
        cent = np.stack([ca[y == c].mean(0) for c in classes])
        cent -= cent.mean(0)
        cos = (cent @ cent.T) / np.outer(*(2 * [np.linalg.norm(cent, axis=1)]))
        np.testing.assert_allclose(centroid_similarity(xa, y, classes)[la], cos, atol=1e-12)
        sb = centroid_similarity(xb, y, classes)[lb]
        want = spearmanr(cos[iu], sb[iu]).statistic
        assert r.rho[la, lb] == pytest.approx(want, abs=1e-12)
        by_hand = [
            spearmanr(cos[iu], sb[np.ix_(p, p)][iu]).statistic
            for p in itertools.permutations(range(4))
        ]
        np.testing.assert_allclose(np.sort(r.null[:, la, lb]), np.sort(by_hand), atol=1e-12)
    same = rsa(xa, xa @ ortho_group.rvs(12, random_state=0) * 5, y)
    np.testing.assert_allclose(np.diagonal(same.rho), 1.0, atol=1e-12)


def test_mutual_knn_is_the_neighbour_overlap():
    rng = np.random.default_rng(0)
    n, k = 40, 5
    xa = rng.normal(size=(n, 2, 6))
    xb = np.concatenate(
        [xa[:, :1] + 0.3 * rng.normal(size=(n, 1, 6)), rng.normal(size=(n, 1, 6))], 1
    )
    na = knn_indices(*gram_matrices(xa), k)
    nb = knn_indices(*gram_matrices(xb), k)

    def brute(a, b):
        d = lambda x: ((x[:, None] - x[None]) ** 2).sum(-1) + np.diag([np.inf] * n)  # noqa: E731
        sa = [set(np.argsort(row)[:k]) for row in d(a)]
        sb = [set(np.argsort(row)[:k]) for row in d(b)]
        return np.mean([len(s & t) / k for s, t in zip(sa, sb, strict=True)])

    score, null = mutual_knn(na, nb, n_perm=300, seed=0)
    for la, lb in itertools.product(range(2), range(2)):
        assert score[la, lb] == pytest.approx(brute(xa[:, la], xb[:, lb]))
    p = permutations(n, 300, seed=0)[0]
    assert null[0, 0, 1] == pytest.approx(brute(xa[:, 0], xb[p, 1]))
    assert score[0, 0] > 0.5 and abs(null.mean() - k / (n - 1)) < 0.01


def test_maps_are_the_textbook_maps_and_find_a_planted_rotation_across_widths():
    x, y = planted(n_per=40, width=10, layers=1, seed=3)
    rng = np.random.default_rng(4)
    embed = np.linalg.qr(rng.normal(size=(14, 10)))[0].T  # [10, 14]: orthonormal rows
    xb = 2.5 * x @ embed + 0.01 * rng.normal(size=(len(x), 1, 14))
    fit, held = split_rows(y, seed=0)
    assert not set(fit) & set(held) and len(fit) + len(held) == len(y)
    res = compare_directions(x, xb, y, [(0, 0)], fit=fit, held=held, dim=10, n_perm=200,
                             n_shuffle=50)  # fmt: skip
    for m in ("procrustes", "ridge"):
        r = res[m]
        assert r.cos.min() > 0.99 and r.ident[0] == 1.0 and r.r2[0] > 0.99, m
        assert r.overlap[0] > 0.99 and r.k == 3
        assert (r.cos[0] > np.quantile(r.cos_shuffle[:, 0], 0.99, axis=0)).all()
        assert r.ident_exact and r.ident_null.shape == (6, 1)  # 3 emotions: 3! relabelings
    # Procrustes on the PCA coordinates is scipy's orthogonal Procrustes
    a = x[:, 0] - x[fit, 0].mean(0)
    b = xb[:, 0] - xb[fit, 0].mean(0)
    a, b = a / np.sqrt((a[fit] ** 2).sum(1).mean()), b / np.sqrt((b[fit] ** 2).sum(1).mean())
    va = np.linalg.svd(a[fit], full_matrices=False)[2][:10].T
    vb = np.linalg.svd(b[fit], full_matrices=False)[2][:10].T
    rot, _ = orthogonal_procrustes(a[fit] @ va, b[fit] @ vb)
    za, zb = a[held] @ va @ rot, b[held] @ vb
    scale = np.trace((a[fit] @ va @ rot).T @ (b[fit] @ vb)) / ((a[fit] @ va) ** 2).sum()
    r2 = 1 - ((scale * za - zb) ** 2).sum() / ((zb - zb.mean(0)) ** 2).sum()
    assert res["procrustes"].r2[0] == pytest.approx(r2, abs=1e-9)


def test_ridge_equals_sklearn_at_the_chosen_penalty():
    from sklearn.linear_model import Ridge

    x, y = planted(n_per=30, width=8, layers=1, seed=5)
    rng = np.random.default_rng(6)
    xb = x @ rng.normal(size=(8, 11)) + rng.normal(size=(len(x), 1, 11))
    fit, held = split_rows(y, seed=1)
    r = compare_directions(x, xb, y, [(0, 0)], fit=fit, held=held, maps=["ridge"], n_perm=20,
                           n_shuffle=5)["ridge"]  # fmt: skip

    def norm(z):
        z = z - z[fit].mean(0)
        return z / np.sqrt((z[fit] ** 2).sum(1).mean())

    a, b = norm(x[:, 0]), norm(xb[:, 0])
    model = Ridge(alpha=float(r.lam[0]), fit_intercept=False).fit(a[fit], b[fit])
    pred = model.predict(a[held])
    want = 1 - ((pred - b[held]) ** 2).sum() / ((b[held] - b[held].mean(0)) ** 2).sum()
    assert r.r2[0] == pytest.approx(want, abs=1e-8)
    # leave-one-out CV chose an interior penalty: neither end of the grid
    s2 = (np.linalg.svd(a[fit], compute_uv=False) ** 2).mean()
    assert 1e-6 * s2 < r.lam[0] < 1e3 * s2


@pytest.mark.parametrize(
    ("n_per", "wa", "wb", "seed"),
    [(30, 12, 16, 0), (8, 30, 36, 2)],  # more fit rows than dimensions; fewer (ridge interpolates)
)
def test_every_statistic_is_exact_to_float64_under_rotation_and_float32_storage(
    n_per, wa, wb, seed
):
    """Every statistic is a function of the activations' geometry computed in float64, so
    no BLAS (summation order, kernels) can move it beyond float64 rounding: rotating and
    rescaling both models in float64 changes nothing beyond 1e-8. (Float64 rounding is
    2^-53 ~ 1e-16; the worst condition measured here and on the real models leaves <= 1e-12,
    so 1e-8 is 1e4 of headroom; any float32 step (2^-24 ~ 6e-8) shows as >= 1e-7: the shuffled
    Procrustes SVDs, the label-permuted means and the leave-one-out penalty errors were
    float32, and the last picked ridge's penalty by rounding noise at the small penalties.)
    Storing the rotated copies in float32, as a saved folder does, moves each input by up
    to 2^-24 of itself; the statistics follow by a small multiple of that (measured <= 3e-7
    here, <= 2e-6 on SmolLM2/Gemma 3 activations), so 1e-6 there."""
    x, y = planted(n_per=n_per, width=wa, layers=1, seed=seed)
    rng = np.random.default_rng(seed)
    xb = x @ rng.normal(size=(wa, wb)) + planted(n_per=n_per, width=wb, layers=1, seed=seed + 9)[0]
    qb = np.linalg.qr(rng.normal(size=(wb, wb)))[0]
    qa = np.linalg.qr(rng.normal(size=(wa, wa)))[0]
    fit, held = split_rows(y, seed=0)
    kw = {"fit": fit, "held": held, "n_perm": 50, "n_shuffle": 50}
    base = compare_directions(x, xb, y, [(0, 0)], **kw)
    rotated = (3.0 * x @ qa, 0.05 * xb @ qb)
    stored = tuple(r.astype(np.float32) for r in rotated)
    for (xa2, xb2), tol in ((rotated, 1e-8), (stored, 1e-6)):
        other = compare_directions(xa2, xb2, y, [(0, 0)], **kw)
        for m, r in base.items():
            for f in dataclasses.fields(r):
                u, v = getattr(r, f.name), getattr(other[m], f.name)
                if isinstance(u, np.ndarray) and u.dtype.kind == "f":
                    err = float(np.abs(u - v).max())
                    assert err <= tol, (m, f.name, err, tol)
                else:
                    assert np.array_equal(u, v), (m, f.name, u, v)  # counts, sizes, names


def test_unrelated_models_are_not_identified_beyond_chance():
    x, y = planted(n_per=40, width=10, layers=1, seed=7)
    xb, _ = planted(n_per=40, width=10, layers=1, seed=8)  # same labels, unrelated geometry
    rng = np.random.default_rng(9)
    xb = xb[rng.permutation(len(xb))]  # and rows unrelated to A's
    fit, held = split_rows(y, seed=0)
    res = compare_directions(x, xb, y, [(0, 0)], fit=fit, held=held, dim=10, n_perm=200,
                             n_shuffle=100)  # fmt: skip
    for r in res.values():
        p_shuffle = perm_p(r.cos.mean(), r.cos_shuffle.mean((1, 2)))
        assert p_shuffle > 0.01, r.name


def test_overlap_and_identification_follow_their_definitions():
    import torch

    rng = np.random.default_rng(0)
    ma, mb = rng.normal(size=(1, 4, 9)), rng.normal(size=(1, 4, 9))
    coef = torch.eye(4)[:3] - 0.25  # one_vs_rest-like contrasts
    cos, ov = _dir_stats(torch.from_numpy(ma), torch.from_numpy(mb), coef)
    qa = np.linalg.qr((ma[0] - ma[0].mean(0)).T)[0][:, :3]
    qb = np.linalg.qr((mb[0] - mb[0].mean(0)).T)[0][:, :3]
    assert float(ov[0]) == pytest.approx(float(overlap(qa, qb)), abs=1e-10)
    da, db = coef.double().numpy() @ ma[0], coef.double().numpy() @ mb[0]
    want = (da * db).sum(1) / np.linalg.norm(da, axis=1) / np.linalg.norm(db, axis=1)
    np.testing.assert_allclose(cos[0].numpy(), want, atol=1e-12)


def test_naive_null_is_a_random_rotation_of_the_second_model():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 30)), rng.normal(size=(5, 30))
    b[1:] = b[0] + 0.1 * b[1:]  # directions correlated across layers, as in real models
    got = random_basis_cosines(a, b, n_draws=3000, seed=0)
    qs = ortho_group.rvs(30, size=3000, random_state=2)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    want = np.einsum("lw,dwv,lv->dl", an, qs, bn)
    np.testing.assert_allclose(got.std(0), want.std(0), rtol=0.08)
    assert got.mean(1).std() == pytest.approx(want.mean(1).std(), rel=0.08)
    rows = naive_table({"m1": {"x": a}, "m2": {"x": a.copy()}, "m3": {"x": a[:, :20]}})
    assert len(rows) == 1  # m3 has another width: no naive row for it
    assert rows[0]["mean"] == pytest.approx(1.0) and rows[0]["p_random"] == 0.0
    assert rows[0]["random_mean_hi"] < 0.5 and "coordinate-dependent" in rows[0]["basis"]


def test_ridge_r2_is_tested_by_a_sign_test_over_held_out_rows():
    from emocircuits.compare.headlines import _gain_p

    gain = np.array([[5.0, 1, 1, 1, 1, 1, 1, 1, -100, -1], [1.0] * 10])
    p = _gain_p(gain)
    assert p[0] == pytest.approx(56 / 1024)  # P(at least 8 heads of 10)
    assert p[1] == pytest.approx(1 / 1024)  # the -100 outlier does not matter, only signs


def test_naive_rows_carry_the_one_layer_random_vector_range():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 100)), rng.normal(size=(4, 100))
    (row,) = naive_table({"m1": {"x": a}, "m2": {"x": b}})
    half = 1.96 / np.sqrt(100)  # cos of two random vectors in R^100: sd 1/sqrt(100)
    assert row["random_vector_lo"] == pytest.approx(-half, abs=0.02)
    assert row["random_vector_hi"] == pytest.approx(half, abs=0.02)

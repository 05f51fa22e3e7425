"""Linear probes against scikit-learn and hand computations, cross-validation on planted
signals, accuracy intervals and p-values; and the similarity helpers (shared component,
agreement between two sources, bootstrap interval coverage of ``geometry``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, norm

from emocircuits.errors import DataError
from emocircuits.geometry.probes import (
    binomial_p,
    check_classes,
    cross_validated,
    fit_probe,
    stratified_folds,
    wilson_interval,
)
from emocircuits.geometry.similarity import agreement, geometry, half_to_full, shared_component

CLASSES = ["neutral", "gratitude", "anger", "sadness"]


def problem(rng, n=50, layers=3, width=10, strength=(0.6, 1.0, 1.5), rogue=30.0):
    """4 classes, class ``c`` shifted along dimension ``c`` by ``strength[layer]``, unit noise,
    plus dimensions of very different scales (standardisation must undo them)."""
    labels = np.repeat(CLASSES, n)
    x = rng.normal(size=(len(labels), layers, width))
    for c, lab in enumerate(CLASSES):
        x[labels == lab, :, c] += np.asarray(strength)
    scale = np.exp(rng.normal(size=(layers, width)))
    scale[:, -1] = rogue
    return x * scale + 5 * rng.normal(size=(layers, width)), labels


# ---------------------------------------------------------------- probes


def test_logreg_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x, labels = problem(rng)
    x_test, _ = problem(np.random.default_rng(1))
    c = 0.1
    p = fit_probe(x, labels, "logreg", c=c)
    assert p.classes == CLASSES and p.w.shape == (3, 10, 4) and p.b.shape == (3, 4)
    order = [CLASSES.index(k) for k in sorted(CLASSES)]  # sklearn sorts its classes
    for layer in range(3):
        mu, sd = x[:, layer].mean(0), x[:, layer].std(0)
        np.testing.assert_allclose(p.mu[layer], mu, rtol=1e-10)
        np.testing.assert_allclose(p.sd[layer], sd, rtol=1e-10)
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=10_000)
        ref.fit((x[:, layer] - mu) / sd, labels)
        assert list(ref.classes_) == sorted(CLASSES)
        w = p.w[layer][:, order].T  # [C, W] in sklearn's order
        b = p.b[layer][order]
        want_w = ref.coef_ - ref.coef_.mean(0)
        want_b = ref.intercept_ - ref.intercept_.mean()
        np.testing.assert_allclose(w - w.mean(0), want_w, atol=1e-2, err_msg=f"layer {layer}")
        np.testing.assert_allclose(b - b.mean(), want_b, atol=1e-2, err_msg=f"layer {layer}")
        for xs in (x, x_test):
            got = np.array(CLASSES)[p.predict(xs)[:, layer]]
            want = ref.predict((xs[:, layer] - mu) / sd)
            assert (got == want).all(), (layer, (got != want).sum())
    # the signal grows with the layer: so does the training accuracy
    acc = p.accuracy(x, labels)
    assert acc[0] < acc[2] and acc[2] > 0.6


def sk_objective(w, b, z, y, c):
    """scikit-learn's objective: ``C * sum(cross-entropy) + |W|^2 / 2`` (``w`` ``[W, C]``)."""
    from scipy.special import log_softmax

    logp = log_softmax(z @ w + b, axis=1)
    return -c * logp[np.arange(len(y)), y].sum() + 0.5 * (w**2).sum()


def test_logreg_without_standardising_on_centred_features_and_warm_start():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    x, labels = problem(rng, layers=2, strength=(1.0, 2.0), rogue=1.0)
    x = (x - x.mean(0)) / x.std(0)  # already centred and on a unit scale
    p = fit_probe(x, labels, "logreg", c=1.0, standardize=False)
    np.testing.assert_allclose(p.mu, 0, atol=1e-12)  # always centred; here already
    assert (p.sd == 1).all()
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x[:, 1], labels)
    order = [CLASSES.index(k) for k in sorted(CLASSES)]
    w = p.w[1][:, order].T
    np.testing.assert_allclose(w - w.mean(0), ref.coef_ - ref.coef_.mean(0), atol=1e-2)
    # a warm start from the solution stays at the solution
    q = fit_probe(x, labels, "logreg", c=1.0, standardize=False, init=p)
    centred = [v.w - v.w.mean(-1, keepdims=True) for v in (q, p)]
    np.testing.assert_allclose(*centred, atol=1e-2)


def test_logreg_without_standardising_reaches_the_optimum_on_raw_features():
    """Raw residual-stream features have large means (and rogue dimensions). The model is
    the same with or without centring (the unpenalised intercept absorbs a shift), so the
    fit must reach scikit-learn's optimum on the raw features too."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    x, labels = problem(rng, layers=2, strength=(1.0, 2.0), rogue=1.0)
    x = x / x.std(0)  # unit scale, but feature means of up to ~38
    y = np.array([CLASSES.index(v) for v in labels])
    p = fit_probe(x, labels, "logreg", c=1.0, standardize=False)
    # the optimum, from scikit-learn on centred features: the same weights, and the
    # intercept shifted by -mean @ W
    mu = x[:, 1].mean(0)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x[:, 1] - mu, labels)
    order = [CLASSES.index(k) for k in sorted(CLASSES)]
    w_ref, b_ref = np.zeros((10, 4)), np.zeros(4)
    w_ref[:, order], b_ref[order] = ref.coef_.T, ref.intercept_
    b_ref = b_ref - mu @ w_ref
    best = sk_objective(w_ref, b_ref, x[:, 1], y, 1.0)
    # the probe scores (x - mu) @ w + b: in raw coordinates the intercept is b - mu @ w
    got = sk_objective(p.w[1], p.b[1] - p.mu[1] @ p.w[1], x[:, 1], y, 1.0)
    assert got <= best * (1 + 1e-4), (got, best)
    w = p.w[1][:, order].T
    np.testing.assert_allclose(w - w.mean(0), ref.coef_ - ref.coef_.mean(0), atol=1e-2)


def test_ncm_is_the_nearest_standardised_class_mean():
    rng = np.random.default_rng(3)
    x, labels = problem(rng)
    x_test, _ = problem(np.random.default_rng(4))
    p = fit_probe(x, labels, "ncm")
    for layer in range(3):
        mu, sd = x[:, layer].mean(0), x[:, layer].std(0)
        z = (x[:, layer] - mu) / sd
        means = np.stack([z[labels == k].mean(0) for k in CLASSES])  # [C, W]
        np.testing.assert_allclose(p.w[layer], means.T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(p.b[layer], -0.5 * (means**2).sum(1), rtol=1e-10)
        zt = (x_test[:, layer] - mu) / sd
        dist = ((zt[:, None] - means[None]) ** 2).sum(-1)  # [n, C]
        np.testing.assert_array_equal(p.predict(x_test)[:, layer], dist.argmin(1))
    # without standardising: nearest raw class mean
    q = fit_probe(x, labels, "ncm", standardize=False)
    means = np.stack([x[labels == k, 2].mean(0) for k in CLASSES])
    dist = ((x_test[:, None, 2] - means[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(q.predict(x_test)[:, 2], dist.argmin(1))
    # standardising matters here: the rogue dimension decides raw distances
    assert (p.predict(x_test)[:, 2] != q.predict(x_test)[:, 2]).any()


def test_accuracy_counts_unknown_labels_as_wrong():
    rng = np.random.default_rng(5)
    x, labels = problem(rng, strength=(5.0, 5.0, 5.0))
    p = fit_probe(x, labels, "ncm")
    assert (p.accuracy(x, labels) > 0.95).all()
    other = np.where(labels == "anger", "fear", labels)
    np.testing.assert_allclose(p.accuracy(x, other), p.accuracy(x, labels) - 0.25, atol=0.02)


def test_probe_errors():
    x = np.zeros((6, 1, 3))
    with pytest.raises(DataError):
        fit_probe(x, ["a"] * 6)
    with pytest.raises(DataError):
        fit_probe(x, ["a", "b"] * 3, "svm")


def signal_in_layer_1(rng, n=40, width=20, strength=3.0):
    labels = np.repeat(CLASSES, n)
    x = rng.normal(size=(len(labels), 3, width))
    for c, lab in enumerate(CLASSES):
        x[labels == lab, 1, c] += strength
    return x, labels


@pytest.mark.parametrize("method", ["logreg", "ncm"])
def test_cross_validation_finds_the_planted_layer(method):
    rng = np.random.default_rng(6)
    x, labels = signal_in_layer_1(rng)
    acc = cross_validated(x, labels, method, k=5)
    assert acc.shape == (3,)
    assert acc[1] > 0.9, acc
    assert acc[0] < 0.45 and acc[2] < 0.45, acc
    # shuffled labels: chance at every layer
    shuffled = rng.permutation(labels)
    acc0 = cross_validated(x, shuffled, method, k=5)
    assert (acc0 < 0.45).all(), acc0
    # accuracies are whole counts out of the 160 rows
    np.testing.assert_allclose(acc * 160, np.round(acc * 160), atol=1e-9)


def test_cross_validation_is_held_out():
    """Each row is predicted by a probe that did not see it: on pure noise with many
    dimensions the training accuracy is high, the cross-validated one is at chance."""
    rng = np.random.default_rng(7)
    labels = np.repeat(CLASSES, 15)
    x = rng.normal(size=(60, 1, 100))
    assert fit_probe(x, labels, "logreg", c=1.0).accuracy(x, labels)[0] > 0.95
    assert cross_validated(x, labels, "logreg", c=1.0)[0] < 0.45


def test_stratified_folds_spread_each_class_evenly():
    labels = np.array(["a"] * 10 + ["b"] * 7 + ["c"] * 23 + ["d"] * 3)
    labels = np.random.default_rng(0).permutation(labels)
    fold = stratified_folds(labels, 5, seed=1)
    assert fold.shape == labels.shape and set(fold.tolist()) == set(range(5))
    for lab in "abcd":
        counts = np.bincount(fold[labels == lab], minlength=5)
        assert counts.max() - counts.min() <= 1, (lab, counts)
        assert counts.sum() == (labels == lab).sum()
    np.testing.assert_array_equal(fold, stratified_folds(labels, 5, seed=1))
    assert (fold != stratified_folds(labels, 5, seed=2)).any()


def test_wilson_interval_by_hand():
    lo, hi = wilson_interval(np.array(0.5), 100)
    assert round(float(lo), 3) == 0.404 and round(float(hi), 3) == 0.596
    # the interval is the set of p with (phat - p)^2 <= z^2 p (1 - p) / n: the quadratic's roots
    z = norm.ppf(0.975)
    for phat, n in [(0.5, 100), (0.9, 50), (0.13, 37), (0.0, 20), (1.0, 20)]:
        a, b, c = 1 + z**2 / n, -(2 * phat + z**2 / n), phat**2
        roots = np.sort(np.roots([a, b, c]).real)
        lo, hi = wilson_interval(np.array(phat), n)
        np.testing.assert_allclose([lo, hi], roots, atol=1e-9, err_msg=f"{phat} of {n}")
    # vectorised, and the level is honoured
    lo, hi = wilson_interval(np.array([0.2, 0.8]), 60, level=0.99)
    lo95, hi95 = wilson_interval(np.array([0.2, 0.8]), 60)
    assert (lo < lo95).all() and (hi > hi95).all()
    np.testing.assert_allclose(lo[0], 1 - hi[1], atol=1e-12)  # symmetric in p <-> 1 - p


def test_wilson_interval_coverage():
    rng = np.random.default_rng(8)
    n, p, reps = 100, 0.3, 2000
    acc = rng.binomial(n, p, size=reps) / n
    lo, hi = wilson_interval(acc, n)
    cover = ((lo <= p) & (p <= hi)).mean()
    assert 0.93 <= cover <= 0.97, cover
    # the exact coverage at a few (n, p): close to nominal (Wilson oscillates around it)
    for n, p in [(100, 0.3), (160, 0.25), (60, 0.8)]:
        k = np.arange(n + 1)
        lo, hi = wilson_interval(k / n, n)
        exact = binom.pmf(k, n, p)[(lo <= p) & (p <= hi)].sum()
        assert 0.93 <= exact <= 0.97, (n, p, exact)


def test_binomial_p():
    assert binomial_p(0.25, 100, 0.25) > 0.4
    assert binomial_p(0.9, 100, 0.25) < 1e-30
    np.testing.assert_allclose(binomial_p(1.0, 10, 0.5), 0.5**10)
    np.testing.assert_allclose(binomial_p(0.0, 10, 0.5), 1.0)
    # P(X >= 30) for X ~ Binomial(100, 0.25), by summing the pmf
    want = binom.pmf(np.arange(30, 101), 100, 0.25).sum()
    np.testing.assert_allclose(binomial_p(0.3, 100, 0.25), want, rtol=1e-10)
    np.testing.assert_allclose(binomial_p(np.array([0.3, 1.0]), 100, 0.25)[0], want, rtol=1e-10)


def test_check_classes():
    train = ["a"] * 5 + ["b"] * 5
    check_classes(train, ["a", "b", "a"])  # fine
    with pytest.raises(DataError, match="'c'"):
        check_classes(train, ["a", "c"])
    with pytest.raises(DataError, match="'b'"):
        check_classes(["a"] * 5 + ["b"], ["a", "b"])
    with pytest.raises(DataError):
        check_classes(train, train, min_per_class=6)
    check_classes(train, train, min_per_class=5)


# ---------------------------------------------------------------- similarity helpers


def exact_means(rng, means, counts):
    """Rows whose class means are exactly ``means`` ``[C, L, W]`` (noise re-centred)."""
    rows = []
    for m, n in zip(means, counts, strict=True):
        e = rng.normal(size=(n, *m.shape))
        rows.append(m + e - e.mean(0))
    return np.concatenate(rows)


def test_shared_component_by_hand():
    rng = np.random.default_rng(9)
    width = 16
    g = np.zeros(width)
    g[0] = 100.0  # the big shared component
    delta = np.zeros(width)
    delta[3] = 2.0  # small distinct offsets, +delta and -delta
    means = np.stack([g + delta, g - delta])[:, None]  # [2, 1, W]
    x = exact_means(rng, means, [10, 30])  # unbalanced: the global mean is class-balanced
    labels = ["a"] * 10 + ["b"] * 30
    sc = shared_component(x, labels)
    raw = float(sc.raw_cos[("a", "b")][0])
    np.testing.assert_allclose(raw, (100**2 - 2**2) / (100**2 + 2**2), rtol=1e-9)
    assert raw > 0.99
    np.testing.assert_allclose(sc.centred_cos[("a", "b")], [-1.0], atol=1e-9)
    for lab in "ab":
        np.testing.assert_allclose(sc.along_global[lab], [100 / np.sqrt(100**2 + 4)], rtol=1e-9)
    # three classes with generic offsets: centred cosines by hand
    offs = rng.normal(size=(3, width))
    means = (g + offs)[:, None]
    x = exact_means(rng, means, [12, 20, 8])
    labels = ["a"] * 12 + ["b"] * 20 + ["c"] * 8
    sc = shared_component(x, labels)
    cen = offs - offs.mean(0)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        want = cen[i] @ cen[j] / np.linalg.norm(cen[i]) / np.linalg.norm(cen[j])
        got = sc.centred_cos[("abc"[i], "abc"[j])][0]
        np.testing.assert_allclose(got, want, atol=1e-9)
        assert sc.raw_cos[("abc"[i], "abc"[j])][0] > 0.99 > abs(got)
    assert set(sc.raw_cos) == {("a", "b"), ("a", "c"), ("b", "c")}


def test_agreement_identical_sources():
    rng = np.random.default_rng(10)
    labels = list(np.repeat(CLASSES, 20))
    x = rng.normal(size=(80, 2, 12))
    x[np.array(labels) == "anger", :, 0] += 2.0
    a = agreement(x, labels, x.copy(), labels, n_boot=100)
    assert set(a.cos) == {"gratitude", "anger", "sadness"}
    for e in a.cos:  # 1, or undefined (NaN) where the direction is not above its noise
        assert np.all(np.isnan(a.cos[e]) | np.isclose(a.cos[e], 1.0, atol=1e-5))
    np.testing.assert_allclose(a.cos["anger"], 1.0, atol=1e-5)
    np.testing.assert_allclose(a.lo["anger"], 1.0, atol=1e-5)
    np.testing.assert_allclose(a.hi["anger"], 1.0, atol=1e-5)
    np.testing.assert_allclose(a.random_band, 1.96 / np.sqrt(12))


def test_agreement_of_a_known_rotation_is_unbiased_paired_and_unpaired():
    """Directions whose population cosine is cos(theta): averaged over simulated samples,
    the debiased estimate is on target, the plain cosine of the sample directions is not
    (noise in 24 dimensions shrinks it), for the same prompts and for independent ones."""
    rng = np.random.default_rng(11)
    width, theta, n = 24, 0.6, 30
    means = np.zeros((4, 1, width))
    means[1, :, 0] = 2.5  # gratitude along e1
    means[2, :, 1] = 2.5  # anger along e2
    labels = list(np.repeat(CLASSES, n))
    rot = np.eye(width)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    lab = np.array(labels)

    def sample():
        return np.repeat(means, n, axis=0) + rng.normal(size=(4 * n, 1, width))

    got = {"paired": [], "unpaired": [], "plain": []}
    for _ in range(150):
        xa = sample()
        for mode, xb in (("paired", xa @ rot), ("unpaired", sample() @ rot)):
            a = agreement(xa, labels, xb, labels, n_boot=0)
            got[mode].append(a.cos["gratitude"][0])
        da = xa[lab == "gratitude"].mean(0) - xa[lab == "neutral"].mean(0)
        xb = sample() @ rot
        db = xb[lab == "gratitude"].mean(0) - xb[lab == "neutral"].mean(0)
        got["plain"].append((da * db).sum() / np.linalg.norm(da) / np.linalg.norm(db))
    for mode in ("paired", "unpaired"):
        # a ratio of unbiased terms: close to the target, slightly above it (Jensen)
        err = np.nanmedian(got[mode]) - np.cos(theta)
        assert abs(err) < 0.04 and abs(err) < np.cos(theta) - np.median(got["plain"]), mode
    assert np.median(got["plain"]) < np.cos(theta) - 0.05  # what debiasing removes
    xa = sample()
    a = agreement(xa, labels, xa @ rot, labels, n_boot=200)
    assert (a.lo["gratitude"] <= a.hi["gratitude"]).all()
    # non-contrast method: a point estimate only (lo = hi = cos)
    p = agreement(xa, labels, xa @ rot, labels, method_b="pca", n_boot=50)
    np.testing.assert_array_equal(p.lo["gratitude"], p.cos["gratitude"])
    with pytest.raises(DataError):
        agreement(xa, labels, xa[..., :8], labels)


def test_half_to_full():
    np.testing.assert_allclose(half_to_full(np.array(0.8)), np.sqrt(1.6 / 1.8), rtol=1e-12)
    np.testing.assert_allclose(half_to_full(np.array([1.0, 0.0, -0.3])), [1.0, 0.0, 0.0])
    r = np.linspace(0.05, 0.95, 10)
    assert (half_to_full(r) > r).all()  # the full sample is more stable than a half


def test_geometry_bootstrap_intervals_cover_the_truth():
    """150 simulated datasets (4 classes x 40 rows, width 20, unit noise, 2 layers).

    Observed when this test was written (nominal 0.95): debiased norm of "anger" 0.95 / 0.97;
    cosine(gratitude, anger) 0.95 at layer 0 (true cos +0.65) but 0.40 at layer 1 (true cos
    -0.45). Both mean_diff directions share the neutral mean, whose noise adds
    ``tr(S_neutral) / n_neutral`` (= 20/40 here) to their dot product and inflates their norms:
    the estimate averages -0.31 at layer 1 (predicted -0.30), and bootstrap replicates add
    that noise again (predicted centre -0.20), so the interval misses the truth from above in
    60% of datasets. At layer 0 the two biases happen to cancel."""
    rng = np.random.default_rng(12)
    width, n, reps = 20, 40, 150
    means = np.zeros((4, 2, width))
    means[1, 0, :2] = [2.0, 0.5]  # layer 0: gratitude and anger at a moderate angle
    means[2, 0, :2] = [1.0, 2.0]
    means[1, 1, 2] = 2.5  # layer 1: other dimensions, other angle
    means[2, 1, 2:4] = [-1.0, 2.0]
    means[3, :, 5] = 2.0
    d_g, d_a = means[1] - means[0], means[2] - means[0]
    true_cos = (d_g * d_a).sum(-1) / np.linalg.norm(d_g, axis=-1) / np.linalg.norm(d_a, axis=-1)
    true_norm = np.linalg.norm(d_a, axis=-1)
    labels = list(np.repeat(CLASSES, n))
    hit_cos = np.zeros(2)
    hit_norm = np.zeros(2)
    for r in range(reps):
        x = np.repeat(means, n, axis=0) + rng.normal(size=(4 * n, 2, width))
        g = geometry(x, labels, method="mean_diff", n_boot=300, seed=r)
        pair = ("gratitude", "anger")
        hit_cos += (g.cos_lo[pair] <= true_cos) & (true_cos <= g.cos_hi[pair])
        hit_norm += (g.norm_lo["anger"] <= true_norm) & (true_norm <= g.norm_hi["anger"])
    cover_cos, cover_norm = hit_cos / reps, hit_norm / reps
    assert (cover_cos >= 0.85).all(), cover_cos
    assert (cover_norm >= 0.85).all(), cover_norm
    assert (cover_norm <= 0.99).all() and (cover_cos <= 0.99).all(), (cover_cos, cover_norm)

"""Bootstrap intervals and stability against simulated truth."""

from __future__ import annotations

import numpy as np

from emocircuits.geometry.similarity import geometry, split_half_stability
from emocircuits.geometry.stats import bootstrap_weights, class_means, split_halves

LABELS = ["gratitude", "anger", "neutral"]


def simulate(rng, mu, n=100, width=8):
    x = np.concatenate([m + rng.normal(size=(n, 1, width)) for m in mu])
    return x, [lab for lab in LABELS for _ in range(n)]


def test_bootstrap_weights_resample_within_class():
    labels = np.array(["a", "b", "a", "b", "b"])
    w = bootstrap_weights(labels, n_boot=50, seed=1, classes=["a", "b"])
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert (w[:, 0][:, labels == "b"] == 0).all() and (w[:, 1][:, labels == "a"] == 0).all()
    assert np.allclose(w[:, 0, labels == "a"] * 2, np.round(w[:, 0, labels == "a"] * 2))
    x = np.arange(10.0).reshape(5, 1, 2)
    exact = np.stack(
        [np.full((2, 5), 0.5) * (labels == "a"), np.full((2, 5), 1 / 3) * (labels == "b")], 1
    )
    np.testing.assert_allclose(
        class_means(x, exact.astype(np.float32)),
        [[x[labels == "a"].mean(0), x[labels == "b"].mean(0)]] * 2,
        rtol=1e-6,
    )


def test_intervals_cover_the_truth_at_the_stated_rate():
    rng = np.random.default_rng(0)
    width = 8
    mu_n = np.zeros((1, width))
    mu_g = np.zeros((1, width))
    mu_g[0, 0] = 3.0
    mu_a = np.zeros((1, width))
    mu_a[0, :2] = [1.5, 2.6]
    d_g, d_a = mu_g - mu_n, mu_a - mu_n
    true_cos = float((d_g * d_a).sum() / np.linalg.norm(d_g) / np.linalg.norm(d_a))
    true_dist = float(np.linalg.norm(mu_g - mu_a))
    hits_cos = hits_dist = 0
    reps = 150
    for r in range(reps):
        x, labels = simulate(rng, [mu_g, mu_a, mu_n], width=width)
        g = geometry(x, labels, n_boot=300, seed=r)
        lo, hi = g.cos_lo[("gratitude", "anger")][0], g.cos_hi[("gratitude", "anger")][0]
        hits_cos += lo <= true_cos <= hi
        lo, hi = g.dist_lo[("gratitude", "anger")][0], g.dist_hi[("gratitude", "anger")][0]
        hits_dist += lo <= true_dist <= hi
    # 95% intervals: coverage within simulation error of 0.95 (binomial sd ~0.018 at 150 reps)
    assert 0.88 <= hits_cos / reps <= 0.99, hits_cos / reps
    assert 0.88 <= hits_dist / reps <= 0.99, hits_dist / reps


def test_point_estimates_by_hand_and_rows():
    rng = np.random.default_rng(1)
    x, labels = simulate(rng, [np.ones((1, 8)), -np.ones((1, 8)), np.zeros((1, 8))], n=20)
    g = geometry(x, labels, n_boot=50)
    lab = np.array(labels)
    dg = x[lab == "gratitude"].mean(0) - x[lab == "neutral"].mean(0)
    da = x[lab == "anger"].mean(0) - x[lab == "neutral"].mean(0)
    xg, xa, xn = x[lab == "gratitude"], x[lab == "anger"], x[lab == "neutral"]
    tr = {k: v.var(0, ddof=1).sum(-1) / len(v) for k, v in (("g", xg), ("a", xa), ("n", xn))}
    # debiased by hand: both contrasts share the neutral mean's noise tr(S_n)/n_n
    dot = (dg * da).sum(-1) - tr["n"]
    ng, na = (dg**2).sum(-1) - tr["g"] - tr["n"], (da**2).sum(-1) - tr["a"] - tr["n"]
    want = dot / np.sqrt(ng * na)  # not clipped: beyond -1 here, n=20 is small
    np.testing.assert_allclose(g.cos[("gratitude", "anger")], want, rtol=1e-5)
    plain = (dg * da).sum(-1) / np.linalg.norm(dg, axis=-1) / np.linalg.norm(da, axis=-1)
    assert (g.cos[("gratitude", "anger")] < plain).all()  # the shared noise pulled it up
    noise = tr["a"] + tr["n"]
    want_norm = np.sqrt(np.maximum((da**2).sum(-1) - noise, 0))  # debiased, by hand
    np.testing.assert_allclose(g.norm["anger"], want_norm, rtol=1e-5)
    assert g.cos[("gratitude", "anger")][0] < -0.8
    rows = g.rows()
    assert len(rows) == 1 and {"cosine", "ci_low", "ci_high", "method"} <= set(rows[0])
    assert rows[0]["ci_low"] <= rows[0]["cosine"] <= rows[0]["ci_high"]


def test_split_half_stability_planted_vs_noise():
    rng = np.random.default_rng(2)
    mu = [np.r_[4.0, np.zeros(7)][None], np.r_[0, 4.0, np.zeros(6)][None], np.zeros((1, 8))]
    x, labels = simulate(rng, mu, n=60)
    s = split_half_stability(x, labels, n_splits=40)
    assert s["gratitude"].shape == (40, 1) and s["gratitude"].mean() > 0.9
    noise, _ = simulate(rng, [np.zeros((1, 64))] * 3, n=60, width=64)
    s0 = split_half_stability(noise, labels, n_splits=40)
    assert abs(s0["anger"].mean()) < 0.15  # no direction: halves disagree
    halves = split_halves(np.array(labels), 3, seed=0)
    for lab in LABELS:
        assert (halves[:, np.array(labels) == lab].sum(1) == 30).all()


def test_debiased_distance_is_zero_without_a_difference():
    rng = np.random.default_rng(5)
    x, labels = simulate(rng, [np.zeros((1, 256))] * 3, n=50, width=256)
    lab = np.array(labels)
    plain = np.linalg.norm(x[lab == "anger"].mean(0) - x[lab == "neutral"].mean(0))
    g = geometry(x, labels, n_boot=300)
    assert plain > 2.5  # sqrt(256 * 2/50) = 3.2: pure noise looks like a distance
    assert g.dist[("anger", "neutral")][0] < 1.0 and g.dist_lo[("anger", "neutral")][0] < 0.5

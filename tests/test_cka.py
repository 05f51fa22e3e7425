"""Linear CKA (issue 4, first part): the unbiased HSIC against a direct computation of its
formula, invariance to rotation and scaling on real activations, and a null near 0."""

from __future__ import annotations

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.compare.cka import gram_matrices, linear_cka, unbiased_hsic
from emocircuits.errors import DataError


def hsic_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, term by term with explicit loops over the sums."""
    n = len(x)
    x, y = x - x.mean(0), y - y.mean(0)
    k, l_ = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l_, 0)
    trace = sum(k[i, j] * l_[j, i] for i in range(n) for j in range(n))
    ones = np.ones(n)
    term2 = (ones @ k @ ones) * (ones @ l_ @ ones) / ((n - 1) * (n - 2))
    term3 = 2 / (n - 2) * (ones @ k @ l_ @ ones)
    return (trace + term2 - term3) / (n * (n - 3))


def test_unbiased_hsic_matches_the_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 1, 5)), rng.normal(size=(12, 2, 3))
    got = unbiased_hsic(gram_matrices(x)[0], gram_matrices(y)[0])
    for b in range(2):
        assert got[0, b] == pytest.approx(hsic_by_hand(x[:, 0], y[:, b]), rel=1e-10)


def test_unrelated_wide_representations_score_near_zero():
    """Where the biased estimator is fooled (width >> rows), the unbiased one is not."""
    rng = np.random.default_rng(1)
    vals = [linear_cka(rng.normal(size=(40, 1, 500)), rng.normal(size=(40, 1, 300)))[0, 0]
            for _ in range(20)]  # fmt: skip
    assert abs(np.mean(vals)) < 0.02 and np.max(np.abs(vals)) < 0.1


@pytest.mark.real
def test_invariant_to_rotation_and_scale_on_real_activations(smollm2, tmp_path):
    acts = ec.extract(
        smollm2, ec.load_dataset("baseline"), tmp_path / "a",
        ec.CaptureSpec(sites=("resid",), positions=("mean",)), progress=False,
    )  # fmt: skip
    x = acts.get("resid", "mean")[:, ::6]  # 6 layers
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(x.shape[-1],) * 2))
    same = linear_cka(x, x)
    turned = linear_cka(x, 7.5 * x @ q)
    np.testing.assert_allclose(turned, same, atol=1e-4)
    np.testing.assert_allclose(np.diagonal(turned), 1.0, atol=1e-4)
    assert (same[0, 1:] < 0.95).all()  # layers differ from the embedding
    with pytest.raises(DataError, match="same stimuli"):
        linear_cka(x, x[:-1])

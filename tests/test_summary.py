"""The demo summary's statistics, against planted cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from emocircuits.errors import DataError
from emocircuits.geometry.probes import stratified_folds
from emocircuits.geometry.summary import ncm_accuracy, summarize


def test_diff_norms_by_hand():
    # two layers, width 2; neutral mean (0,0), anger mean (3,4) at layer 0, (0,1) at layer 1
    neutral = np.zeros((5, 2, 2))
    anger = np.zeros((5, 2, 2))
    anger[:, 0] = [3.0, 4.0]
    anger[:, 1] = [0.0, 1.0]
    x = np.concatenate([neutral, anger])
    s = summarize(x, ["neutral"] * 5 + ["anger"] * 5)
    np.testing.assert_allclose(s.diff_norms["anger"], [5.0, 1.0])
    assert s.chance == 0.5 and list(s.diff_norms) == ["anger"]


def test_ncm_planted_signal_and_rogue_dimension():
    rng = np.random.default_rng(0)
    n, w = 200, 20
    y = np.repeat([0, 1, 2, 3], n // 4)
    x = rng.normal(size=(n, 1, w))
    x[:, 0, :4] += 3.0 * np.eye(4)[y]  # class signal in dims 0-3
    x[:, 0, 10] = rng.normal(scale=1000.0, size=n)  # a huge dimension with no signal
    raw = ncm_accuracy(x, y)[0]
    std = ncm_accuracy(x, y, standardize=True)[0]
    assert raw < 0.45  # the rogue dimension decides raw distances
    assert std > 0.9  # standardising recovers the planted signal
    shuffled = ncm_accuracy(x, rng.permutation(y), standardize=True)[0]
    assert abs(shuffled - 0.25) < 0.12  # no signal: chance


def test_folds_are_stratified_and_deterministic():
    y = np.repeat([0, 1], [10, 7])
    f = stratified_folds(y, 5, seed=3)
    assert (f == stratified_folds(y, 5, seed=3)).all()
    for k in range(5):
        assert (y[f == k] == 0).sum() == 2 and (y[f == k] == 1).sum() in (1, 2)


def test_summary_needs_baseline_and_enough_rows():
    x = np.zeros((6, 1, 2))
    with pytest.raises(DataError, match="baseline label 'neutral' not in"):
        summarize(x, ["a"] * 3 + ["b"] * 3)
    with pytest.raises(DataError, match="label 'a' has 3 examples; 5-fold"):
        summarize(x, ["a"] * 3 + ["neutral"] * 3)

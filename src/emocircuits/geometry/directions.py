"""Emotion directions per layer: one function, the method as a parameter.

Methods (``METHODS``), each returning a raw (unnormalised) direction per layer. The three
contrasts are linear in the class means (:func:`contrast_coefficients`), which is how the
bootstrap in :mod:`emocircuits.geometry.similarity` recomputes them per replicate:

- ``mean_diff``: mean(emotion) - mean(baseline class) (baseline ``neutral`` by default);
- ``one_vs_rest``: mean(emotion) - mean(every other row);
- ``raw_mean``: mean(emotion), uncontrasted. **The pilot's method**, kept only to reproduce
  its tables: raw means share a large common component (the "all 0.99" artefact);
- ``pca``: leading right-singular vector of the *uncentred* differences
  ``x_emotion - mean(baseline)`` (centring them would remove the mean direction itself),
  sign fixed toward the emotion;
- ``probe``: logistic-regression weights (emotion vs baseline, L2 with ``C=0.1``), fitted on
  features standardised by the pooled within-class std and mapped back to activation space
  (``w / std``: the probe's readout vector), sign toward the emotion. The strong L2 is
  deliberate: with about as many rows as dimensions the classes are separable and weakly
  regularised weights fit noise (planted test: cosine to the truth 0.96 / 0.93 / 0.87 at
  ``C`` = 0.01 / 0.1 / 1).

>>> x = np.random.default_rng(0).normal(size=(40, 2, 8)); y = ["a"] * 20 + ["neutral"] * 20
>>> sorted(emotion_directions(x, y).keys())
['a']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emocircuits.errors import DataError

CONTRASTS = ("mean_diff", "one_vs_rest", "raw_mean")


def contrast_coefficients(
    classes: list[str], counts: np.ndarray, baseline: str, method: str
) -> dict[str, np.ndarray]:
    """Each emotion's direction as coefficients over the class means: ``d = sum_c a_c m_c``.

    >>> contrast_coefficients(["a", "b", "neutral"], np.ones(3), "neutral", "mean_diff")["a"]
    array([ 1.,  0., -1.])
    """
    if method not in CONTRASTS:
        raise DataError(f"unknown contrast {method!r}; choose from {', '.join(CONTRASTS)}")
    out = {}
    for c, emo in enumerate(classes):
        if emo == baseline:
            continue
        a = np.zeros(len(classes))
        a[c] = 1.0
        if method == "mean_diff":
            a[classes.index(baseline)] = -1.0
        elif method == "one_vs_rest":
            others = [k for k in range(len(classes)) if k != c]
            a[others] = -counts[others] / counts[others].sum()
        out[emo] = a
    return out


def pca(xe: np.ndarray, xb: np.ndarray) -> np.ndarray:
    import torch

    from emocircuits.geometry.subspaces import top_eigenpairs

    d = (xe - xb.mean(0)).transpose(1, 0, 2)  # [L, n_e, W], deliberately not centred
    dt = torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32))
    _, u = top_eigenpairs(dt @ dt.transpose(-1, -2), 1)  # leading eigenvector of the Gram
    v = (dt.transpose(-1, -2) @ u)[..., 0].double().numpy()  # [L, W]
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-30)
    proj = np.einsum("lw,lw->l", v, d.mean(1))
    sign = np.where(proj < 0, -1.0, 1.0)
    # scale by the mean projection so norms are comparable to mean_diff's
    return v * (sign * np.abs(proj))[:, None]


def probe(xe: np.ndarray, xb: np.ndarray, c: float = 0.1) -> np.ndarray:
    from emocircuits.geometry.probes import fit_probe

    x = np.concatenate([xe, xb])
    y = ["emotion"] * len(xe) + ["baseline"] * len(xb)
    # Standardise by the pooled *within-class* std: the L2 penalty is then isotropic with
    # respect to the noise. (The total std would inflate exactly the emotion dimensions and
    # bias the weights away from them.)
    within = np.concatenate([xe - xe.mean(0), xb - xb.mean(0)]).astype(np.float64)
    sd = np.sqrt((within**2).sum(0) / max(1, len(x) - 2))  # [L, W]
    sd = np.where(sd > 0, sd, 1.0)
    z = (x - x.mean(0)) / sd
    # two-class multinomial with C/2 is binary logistic regression with C (all layers at once)
    p = fit_probe(z, y, "logreg", c=c / 2, standardize=False)
    return (p.w[..., 0] - p.w[..., 1]) / sd  # the readout vector in activation space


PAIRWISE = {"pca": pca, "probe": probe}
"""Direction methods from an emotion's rows ``xe`` and the baseline's ``xb`` (each
``[n, L, W]`` -> ``[L, W]``): a new method is one such function and its name here."""

METHODS = (*CONTRASTS, *PAIRWISE)
"""Direction methods, by name (the CLI's choices)."""


def emotion_directions(
    x: np.ndarray,
    labels: Sequence[str],
    *,
    method: str = "mean_diff",
    baseline: str = "neutral",
    emotions: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Raw direction ``[L, W]`` per emotion (every label but the baseline by default).

    ``x`` is ``[n, L, W]`` (e.g. ``ActivationStore.get("resid", "mean")``).
    """
    if method not in METHODS:
        raise DataError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    lab = np.asarray(labels)
    present = list(dict.fromkeys(labels))
    if baseline not in present:
        raise DataError(f"baseline label {baseline!r} not in the labels ({', '.join(present)})")
    wanted = [e for e in present if e != baseline] if emotions is None else list(emotions)
    for emo in wanted:
        if emo not in present:
            raise DataError(f"emotion {emo!r} not in the labels ({', '.join(present)})")
    if method in CONTRASTS:
        counts = np.array([(lab == c).sum() for c in present], dtype=float)
        means = np.stack([x[lab == c].mean(0) for c in present])  # [C, L, W]
        coef = contrast_coefficients(present, counts, baseline, method)
        return {e: np.einsum("c,clw->lw", coef[e], means).astype(np.float32) for e in wanted}
    fn = PAIRWISE[method]
    xb = x[lab == baseline]
    out = {}
    for emo in wanted:
        xe = x[lab == emo]
        if len(xe) < 2 or len(xb) < 2:
            raise DataError(f"method {method!r} needs at least 2 rows of {emo!r} and {baseline!r}")
        out[emo] = np.asarray(fn(xe, xb), dtype=np.float32)
    return out

"""Linear probes per layer: logistic regression and the nearest-class-mean classifier,
k-fold within one activation folder or trained on one and tested on another (transfer).

Both probes are one :class:`LinearProbe` (``scores = z @ w + b`` on standardised features
``z = (x - mu) / sd``, fitted on the training rows only), so predicting is the same code:

- ``logreg``: multinomial logistic regression with an L2 penalty, the objective of
  scikit-learn's ``LogisticRegression(C=c)`` (``C * sum(cross-entropy) + |W|^2 / 2``,
  intercept not penalised). All layers are fitted at once (L-BFGS on the sum of the
  independent per-layer objectives, in torch), which is what keeps a 30-layer, 5-fold run
  around a second.
- ``ncm``: nearest class mean (the "mass-mean" probe of Marks & Tegmark 2023):
  ``argmin_c |z - m_c|^2``, i.e. ``w = m_c``, ``b = -|m_c|^2 / 2``.

Standardising (on by default) z-scores each dimension with the training rows, so that the
few huge "rogue" dimensions of the residual stream do not decide every distance.

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(60, 2, 5)); y = np.repeat(["a", "b", "c"], 20)
>>> x[y == "a", 1, 0] += 5                      # layer 1 separates "a"
>>> cross_validated(x, y, "ncm", k=5).round(2).tolist()[1] > 0.5
True
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from emocircuits.capture.store import ActivationStore, as_store, atomic_write_json
from emocircuits.errors import DataError
from emocircuits.results import Result

PROBES = ("logreg", "ncm")
"""Probe methods, by name (the CLI's choices)."""


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold number per row, each class spread evenly over the ``k`` folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % k
    return fold


@dataclass
class LinearProbe:
    """A fitted classifier per layer: ``scores = ((x - mu) / sd) @ w + b``.

    ``mu``, ``sd``: ``[L, W]``; ``w``: ``[L, W, C]``; ``b``: ``[L, C]``; ``classes[c]`` names
    column ``c``."""

    method: str
    classes: list[str]
    mu: np.ndarray
    sd: np.ndarray
    w: np.ndarray
    b: np.ndarray

    def scores(self, x: np.ndarray) -> np.ndarray:
        """``[n, L, C]`` class scores for activations ``[n, L, W]``."""
        z = (x - self.mu) / self.sd
        return np.einsum("nlw,lwc->nlc", z, self.w) + self.b

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``[n, L]`` predicted class index per row and layer."""
        return self.scores(x).argmax(-1)

    def accuracy(self, x: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """``[L]`` accuracy on labelled rows (labels unknown to the probe count as wrong)."""
        index = {c: i for i, c in enumerate(self.classes)}
        y = np.array([index.get(lab, -1) for lab in labels])
        return (self.predict(x) == y[:, None]).mean(0)


def _logreg(
    z: np.ndarray, y: np.ndarray, n_classes: int, c: float, max_iter: int, init: tuple | None
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial L2 logistic regression on every layer of ``z`` ``[L, n, W]`` at once.

    The gradient is written out (no autograd) with both layouts of ``z`` kept, so each
    evaluation is two skinny matrix products that stream ``z`` once each."""
    import torch

    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))  # [L, n, W]
    zT = zt.transpose(1, 2).contiguous()  # [L, W, n]
    n_layers, n, width = zt.shape
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y).long(), n_classes).T.float()
    # parameters as [L, C, W + 1]: weights transposed, then the intercept
    theta = torch.zeros(n_layers, n_classes, width + 1)
    if init is not None:
        theta[:, :, :width] = torch.from_numpy(np.ascontiguousarray(init[0].transpose(0, 2, 1)))
        theta[:, :, width] = torch.from_numpy(np.asarray(init[1], dtype=np.float32))
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-5 * n_layers,
        line_search_fn="strong_wolfe",
    )
    lam = 1.0 / (c * n)  # sklearn's objective divided by C*n

    @torch.no_grad()
    def closure() -> torch.Tensor:
        w, b = theta[:, :, :width], theta[:, :, width:]
        logits = torch.baddbmm(b, w, zT)  # [L, C, n]
        logp = torch.log_softmax(logits, dim=1)
        loss = -(logp * onehot).sum() / n + 0.5 * lam * (w**2).sum()
        g = (logp.exp() - onehot) / n  # [L, C, n]
        theta.grad = torch.cat([torch.baddbmm(w, g, zt, beta=lam), g.sum(-1, keepdim=True)], -1)
        return loss

    opt.step(closure)
    t = theta.detach()
    return t[:, :, :width].transpose(1, 2).numpy(), t[:, :, width].numpy()


def fit_probe(
    x: np.ndarray,
    labels: Sequence[str],
    method: str = "logreg",
    *,
    c: float = 0.1,
    standardize: bool = True,
    max_iter: int = 100,
    init: LinearProbe | None = None,
) -> LinearProbe:
    """Fit one probe per layer on activations ``[n, L, W]``.

    >>> x = np.random.default_rng(1).normal(size=(40, 3, 8)); y = ["a"] * 20 + ["b"] * 20
    >>> fit_probe(x, y, "ncm").w.shape
    (3, 8, 2)
    """
    if method not in PROBES:
        raise DataError(f"unknown probe {method!r}; choose from {', '.join(PROBES)}")
    lab = np.asarray(labels)
    classes = list(dict.fromkeys(lab.tolist()))
    if len(classes) < 2:
        raise DataError("a probe needs at least two labels")
    y = np.array([classes.index(v) for v in lab])
    x = np.asarray(x, dtype=np.float64)
    # always centred (the intercept absorbs it; L-BFGS stalls on uncentred features)
    mu = x.mean(0)
    sd = x.std(0) if standardize else np.ones(x.shape[1:])
    sd = np.where(sd > 0, sd, 1.0)
    z = (x - mu) / sd
    if method == "ncm":
        m = np.stack([z[y == k].mean(0) for k in range(len(classes))], -1)  # [L, W, C]
        w, b = m, -0.5 * (m**2).sum(1)
    else:
        start = (init.w, init.b) if init is not None and init.classes == classes else None
        w, b = _logreg(z.transpose(1, 0, 2), y, len(classes), c, max_iter, start)
    return LinearProbe(method, classes, mu, sd, w, b)


def cross_validated(
    x: np.ndarray,
    labels: Sequence[str],
    method: str = "logreg",
    *,
    k: int = 5,
    seed: int = 0,
    c: float = 0.1,
    standardize: bool = True,
) -> np.ndarray:
    """``[L]`` stratified k-fold accuracy of a probe at every layer.

    Within one prompt style this saturates quickly; transfer to a differently written set
    (:func:`fit_probe` + :meth:`LinearProbe.accuracy`) is the honest estimate.
    """
    lab = np.asarray(labels)
    fold = stratified_folds(lab, k, seed)
    correct = np.zeros(x.shape[1])
    p = None
    for f in range(k):
        test = fold == f
        # each fold starts from the previous fold's solution (80% the same rows)
        p = fit_probe(x[~test], lab[~test], method, c=c, standardize=standardize, init=p)
        correct += p.accuracy(x[test], lab[test]) * test.sum()
    return correct / len(lab)


def wilson_interval(acc: np.ndarray, n: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for an accuracy measured on ``n`` independent rows.

    >>> [round(float(v), 3) for v in wilson_interval(np.array(0.5), 100)]
    [0.404, 0.596]
    """
    from scipy.stats import norm

    z = norm.ppf(0.5 + level / 2)
    centre = (acc + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(acc * (1 - acc) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def binomial_p(acc: np.ndarray, n: int, chance: float) -> np.ndarray:
    """One-sided p-value of ``round(acc * n)`` or more correct out of ``n`` at ``chance``."""
    from scipy.stats import binom

    k = np.rint(np.asarray(acc) * n)
    return binom.sf(k - 1, n, chance)


def check_classes(train: Sequence[str], test: Sequence[str], *, min_per_class: int = 2) -> None:
    """Transfer needs every test label among the training labels, and enough of each."""
    known = set(train)
    unknown = sorted(set(test) - known)
    if unknown:
        raise DataError(
            f"test label {unknown[0]!r} does not occur in the training data "
            f"(training labels: {', '.join(sorted(known))})"
        )
    lab = np.asarray(train)
    for c in dict.fromkeys(train):
        if (lab == c).sum() < min_per_class:
            raise DataError(
                f"label {c!r} has {(lab == c).sum()} training rows; a probe needs "
                f"at least {min_per_class}"
            )


@dataclass(repr=False)
class ProbeResult(Result):
    """Accuracy per layer of each probe method, with its interval and p-value against
    chance; either k-fold within one store (``mode="cross_validation"``) or trained on one
    store and tested on another (``mode="transfer"``). :meth:`to_json` is the file
    ``emocircuits probe`` writes (documented in docs/FORMAT.md); ``rows()`` the accuracy
    of each method per layer."""

    command: ClassVar[str] = "probe"

    mode: str
    site: str
    position: str
    layers: list[int]
    classes: list[str]
    chance: float
    level: float
    n_test: int
    results: dict[str, dict[str, Any]]
    lexical: dict[str, Any] | None
    settings: dict[str, Any]
    provenance: dict[str, Any]

    def best(self, method: str) -> tuple[int, float]:
        """``(layer, accuracy)`` of the best layer of a method."""
        acc = np.asarray(self.results[method]["accuracy"])
        i = int(acc.argmax())
        return self.layers[i], float(acc[i])

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"layer": layer, **{m: r["accuracy"][i] for m, r in self.results.items()}}
            for i, layer in enumerate(self.layers)
        ]

    def title(self) -> str:
        how = "transfer" if self.mode == "transfer" else f"{self.settings['folds']}-fold"
        best = ", ".join(f"{m} best {self.best(m)[1]:.2f} at layer {self.best(m)[0]}"
                         for m in self.results)  # fmt: skip
        return f"ProbeResult: {self.site}/{self.position}, {how}, chance {self.chance:.2f}; {best}"

    def figure(self) -> Any:
        """Accuracy by layer with intervals, chance and the lexical baseline."""
        from emocircuits.plots.analysis import probe_figure

        return probe_figure(self.to_json())

    def save(self, path: str | Path) -> Path:
        """Write the JSON file ``emocircuits probe --out path`` writes; returns the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, self.to_json())
        return out

    @classmethod
    def load(cls, path: str | Path) -> ProbeResult:
        """Read a file written by :meth:`save` (or ``emocircuits probe``)."""
        path = Path(path)
        try:
            pj = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read probe file ({e})", where=str(path)) from None
        if not isinstance(pj, dict) or pj.get("format") != "emocircuits.probe":
            raise DataError("not an emocircuits probe file", where=str(path))
        return cls(
            pj["mode"], pj["site"], pj["position"], pj["layers"], pj["classes"], pj["chance"],
            pj["ci_level"], pj["n_test"], pj["methods"], pj["lexical_baseline"],
            pj["settings"], pj["provenance"],
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The content of the file :meth:`save` writes."""
        return {
            "format": "emocircuits.probe",
            "version": 1,
            "mode": self.mode,
            "site": self.site,
            "position": self.position,
            "layers": self.layers,
            "classes": self.classes,
            "chance": self.chance,
            "ci_level": self.level,
            "n_test": self.n_test,
            "methods": self.results,
            "lexical_baseline": self.lexical,
            "settings": self.settings,
            "provenance": self.provenance,
        }


def _method_result(
    acc: np.ndarray,
    n: int,
    chance: float,
    level: float,
    layers: list[int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    lo, hi = wilson_interval(acc, n, level)
    p = binomial_p(acc, n, chance)
    i = int(acc.argmax())
    return {
        "accuracy": [round(float(v), 6) for v in acc],
        "ci_low": [round(float(v), 6) for v in lo],
        "ci_high": [round(float(v), 6) for v in hi],
        "p_value": [float(v) for v in p],
        "best_layer": layers[i],
        "best_accuracy": float(acc[i]),
        # the best of many layers is optimistic: Bonferroni over the layers tried
        "best_p_value_bonferroni": float(min(1.0, p[i] * len(layers))),
        "layer0_accuracy": float(acc[layers.index(0)]) if 0 in layers else None,
        **extra,
    }


def probe(
    train: ActivationStore | str | Path,
    test: ActivationStore | str | Path | None = None,
    *,
    site: str = "resid",
    position: str | None = None,
    methods: Sequence[str] = PROBES,
    folds: int = 5,
    c: float = 0.1,
    standardize: bool = True,
    level: float = 0.95,
    seed: int = 0,
) -> ProbeResult:
    """Probe accuracy at every layer: trained on ``train`` and tested on ``test`` (stores
    or folders), or k-fold within ``train`` when ``test`` is None. ``c``: the inverse L2
    strength of ``logreg``; ``standardize``: z-score each dimension on the training rows.
    ``.save(path)`` writes what ``emocircuits probe --out path`` writes.

    Also reported: the training folder's own k-fold accuracy per layer and the layer it
    would pick (an honest choice: the test set's best layer is an optimistic one), the
    confusion matrix at that layer, and the lexical baseline (layer 0, mean-pooled, when
    the folders have the ``mean`` rule).

    >>> probe("runs/ext", "runs/nat").best("logreg")  # doctest: +SKIP
    (15, 0.86)
    """
    train = as_store(train)
    test = None if test is None else as_store(test)
    if position is None:  # mean if both folders have it, else the first rule they share
        common = [p for p in train.positions if test is None or p in test.positions]
        if not common:
            raise DataError(
                f"{train.where} and {test.where} share no position rule "
                f"({', '.join(train.positions)} vs {', '.join(test.positions)})"
            )
        position = "mean" if "mean" in common else common[0]
    for m in methods:
        if m not in PROBES:
            raise DataError(f"unknown probe {m!r}; choose from {', '.join(PROBES)}")
    if test is not None:
        check_same_model(train, test, site, position)
        check_classes(train.labels, test.labels)
    else:
        check_classes(train.labels, train.labels, min_per_class=folds)
    layers = train.layers(site)
    ref = test if test is not None else train
    y_ref = np.asarray(ref.labels)
    classes = list(dict.fromkeys(train.labels))
    # chance: the majority share of the evaluated labels (= 1/C when balanced)
    chance = max((y_ref == k).mean() for k in classes)
    n = len(y_ref)

    def evaluate(pos: str, method: str) -> tuple[np.ndarray, np.ndarray, LinearProbe | None]:
        xtr = train.get(site, pos)
        cv = cross_validated(
            xtr, train.labels, method, k=folds, seed=seed, c=c, standardize=standardize
        )
        if test is None:
            return cv, cv, None
        p = fit_probe(xtr, train.labels, method, c=c, standardize=standardize)
        return p.accuracy(test.get(site, pos), test.labels), cv, p

    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        acc, cv, p = evaluate(position, method)
        pick = int(cv.argmax())
        extra: dict[str, Any] = {"selected_layer": layers[pick]}
        if p is not None:
            extra["train_cv_accuracy"] = [round(float(v), 6) for v in cv]
            extra["selected_accuracy"] = float(acc[pick])
            pred = p.predict(test.get(site, position))[:, pick]
            truth = np.array([classes.index(v) for v in test.labels])
            cm = np.zeros((len(classes), len(classes)), dtype=int)
            np.add.at(cm, (truth, pred), 1)
            extra["confusion_at_selected"] = cm.tolist()
        results[method] = _method_result(acc, n, chance, level, layers, extra)
    lexical = None
    if "mean" in train.positions and (test is None or "mean" in test.positions) and 0 in layers:
        lexical = {"position": "mean", "layer": 0}
        for method in methods:
            acc = results[method]["accuracy"] if position == "mean" else None
            if acc is None:
                acc = evaluate("mean", method)[0]
            lexical[method] = float(acc[layers.index(0)])
    settings = {"folds": folds, "C": c, "standardize": standardize, "seed": seed}
    prov = {"train": _provenance(train), "test": _provenance(test) if test is not None else None}
    mode = "transfer" if test is not None else "cross_validation"
    return ProbeResult(
        mode,
        site,
        position,
        layers,
        classes,
        float(chance),
        level,
        n,
        results,
        lexical,
        settings,
        prov,
    )


def _provenance(acts: ActivationStore) -> dict[str, Any]:
    m = acts.manifest
    return {
        "activations": None if acts.path is None else str(acts.path),
        "model": m.get("model", {}),
        "dtype": m.get("dtype"),
        "dataset": m.get("dataset", {}),
        "n_per_label": dict(Counter(acts.labels)),
    }


def check_same_model(a: ActivationStore, b: ActivationStore, site: str, position: str) -> None:
    """Two folders are comparable direction by direction only for the same model, site and
    layers (a probe, a direction or a subspace from one applies to the other)."""
    for acts in (a, b):
        acts.get(site, position)  # names the missing site or rule, and where
    ma, mb = a.manifest, b.manifest
    ida = (ma.get("model", {}).get("name"), ma.get("model", {}).get("revision"), ma["width"])
    idb = (mb.get("model", {}).get("name"), mb.get("model", {}).get("revision"), mb["width"])
    if ida != idb or a.layers(site) != b.layers(site):
        raise DataError(
            f"{b.where} was captured from another model or layers ({idb[0]} "
            f"{b.layers(site)[:3]}...) than {a.where} ({ida[0]} {a.layers(site)[:3]}...); "
            "only folders of the same model compare here (across models: emocircuits compare)"
        )

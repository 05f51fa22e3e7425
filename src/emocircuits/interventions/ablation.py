"""Direction ablation: project an emotion direction out of the residual stream at every
layer from ``L`` on, and measure what the model and a probe lose.

**Ablation** (:func:`ablating`): at each resid layer ``l >= L`` (activation-folder
numbering: the output of block ``l - 1``; 0 = embedding output) every position's residual
becomes ``h - Q Q^T h``, with ``Q`` an orthonormal basis of the ablated directions. Each
layer's output is projected again, so the component removed at ``L`` cannot come back
through a later block's write. Direction ``mode``:

- ``fixed`` (default, as Tigges et al. 2023): the direction found at layer ``L``, removed
  at ``L`` and every later layer;
- ``per_layer``: at each layer ``l`` the direction found at ``l``.

**Targets**: one emotion's direction (``k = 1``) or ``all``, the span of every emotion's
direction (``k`` = number of emotions; a 4-way probe needs all of them gone to fall to
chance). **Null**: ``n_random`` random ``k``-dimensional subspaces (uniform, one per draw;
in ``per_layer`` mode a new one at every layer), ablated the same way. A projection
removes whatever component the residual has along a unit direction, so its size is set by
the data, not by a scale: random unit directions are the norm-matched control. The
empirical p-value of an effect is ``(1 + #{null >= observed}) / (1 + n_random)``
(:mod:`~emocircuits.interventions.effects`).

**What is measured** on held-out prompts (each emotion's and the baseline's), clean and
under every ablation (the clean run once per batch; every ablated condition as rows of one
batch that resume the clean run at layer ``L``, each row with its own subspace, see
:func:`~emocircuits.interventions.forward.resume`):

- the **logit-difference gap** of each emotion (:mod:`~emocircuits.interventions.readout`):
  ``gap = mean LD_e(emotion prompts) - mean LD_e(neutral prompts)``; the fraction removed
  is ``1 - gap_ablated / gap_clean`` (bootstrap over prompts, paired);
- **probe accuracy** (4-way, :mod:`~emocircuits.geometry.probes`, ``logreg`` and ``ncm``)
  on the residual at ``position`` (default ``mean`` over the prompt and cue tokens):
  ``fixed``: probes fitted on clean activations of separate training prompts read the
  ablated activations at every layer (what a reader trained on the intact model loses);
  ``refit``: k-fold probes refitted on the ablated held-out activations at the probe layer
  (whether the information is still linearly there). The fraction of above-chance accuracy
  removed is ``(acc_clean - acc_ablated) / (acc_clean - chance)``; Tigges et al. report
  76% for one sentiment direction (their accuracy is the model's own zero-shot
  classification; ours is a probe's, and the model's own readout is the LD gap).

The directions come from a vectors file that may have been computed from the same prompts;
the probes' training prompts and the held-out prompts are disjoint (:func:`split_rows`).

>>> with ablating(lm, {l: v for l in range(15, 31)}):  # doctest: +SKIP
...     out = lm.model(**inputs)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emocircuits.capture.hooks import hooked
from emocircuits.errors import DataError
from emocircuits.interventions.budgets import ABLATE_BUDGETS  # noqa: F401  (re-exported)
from emocircuits.interventions.effects import (
    gap,
    gap_weights,
    null_summary,
    removed_fraction,
    rounded,
)
from emocircuits.interventions.forward import (
    Trace,
    length_groups,
    resid_edit_hooks,
    resume,
    take_rows,
    trace,
    unembed,
)
from emocircuits.interventions.readout import (
    Readout,
    logit_diff,
    readout_columns,
    readout_texts,
)
from emocircuits.models.batching import Batches, BatchSize

if TYPE_CHECKING:
    from emocircuits.capture.positions import Selection
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel

MODES = ("fixed", "per_layer")
ALL = "all"


# ------------------------------------------------------------------------------ ablation
def orthonormal(rows: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """An orthonormal basis ``[k, W]`` of the span of ``rows`` ``[m, W]`` (k = its rank).

    >>> orthonormal(np.array([[3.0, 0, 0], [1.0, 1.0, 0], [2.0, 2.0, 0]])).shape
    (2, 3)
    """
    a = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    q, r = np.linalg.qr(a.T)
    d = np.abs(np.diag(r))
    keep = d > tol * max(float(d.max(initial=0.0)), 1e-300)
    if not keep.any():
        raise DataError("the direction to ablate is zero")
    return q[:, keep].T


@contextmanager
def ablating(lm: LoadedModel, bases: Mapping[int, Any]) -> Iterator[None]:
    """Project the span of ``bases[layer]`` (``[W]`` or ``[k, W]``, any scale) out of the
    residual stream at each resid layer for the duration of the block; hooks removed on
    exit, also after an exception; the model is never modified."""
    import torch

    edits = {}
    for layer, b in bases.items():
        q = torch.as_tensor(orthonormal(np.asarray(b)), dtype=torch.float32)
        if q.shape[1] != lm.arch.width:
            raise DataError(
                f"ablation direction has {q.shape[1]} values, the model {lm.arch.width}"
            )

        def fn(h: torch.Tensor, q: torch.Tensor = q) -> torch.Tensor:
            qd = q.to(dtype=h.dtype, device=h.device)
            return h - (h @ qd.T) @ qd

        edits[layer] = fn
    with hooked(resid_edit_hooks(lm.arch, edits)):
        yield


def direction_bases(
    vectors: EmotionVectors,
    emotions: Sequence[str],
    layers: Sequence[int],
    *,
    from_layer: int,
    mode: str = "fixed",
) -> dict[int, np.ndarray]:
    """``{layer: [k, W]}``: the emotions' directions to remove at each of ``layers``."""
    if mode not in MODES:
        raise DataError(f"unknown ablation mode {mode!r}; choose from {', '.join(MODES)}")

    def at(layer: int) -> np.ndarray:
        if layer not in vectors.layers:
            raise DataError(f"layer {layer} is not in the vectors (layers {vectors.layers})")
        i = vectors.layers.index(layer)
        return np.stack([vectors.directions[e][i] for e in emotions])

    if mode == "fixed":
        b = at(from_layer)
        return {layer: b for layer in layers}
    return {layer: at(layer) for layer in layers}


def random_bases(
    width: int, layers: Sequence[int], dim: int, *, mode: str = "fixed", seed: int = 0
) -> dict[int, np.ndarray]:
    """A uniformly random ``dim``-dimensional subspace (``[dim, W]`` Gaussian rows), the
    same at every layer (``fixed``) or a new one per layer (``per_layer``)."""
    rng = np.random.default_rng(seed)
    if mode == "fixed":
        b = rng.normal(size=(dim, width))
        return {layer: b for layer in layers}
    return {layer: rng.normal(size=(dim, width)) for layer in layers}


# ---------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """One pass over prompts: LD per emotion ``{emotion: [n]}`` and the residual at the
    position rule, ``acts [n, n_layers + 1, W]``."""

    ld: dict[str, np.ndarray]
    acts: np.ndarray


def _held_batches(
    lm: LoadedModel, texts: Sequence[str], position: str, batch_size: int
) -> Iterator[tuple[np.ndarray, Selection, dict[str, torch.Tensor]]]:
    """Left-padded batches of ``texts`` of similar token lengths
    (:func:`~emocircuits.interventions.forward.length_groups`): rows, the position rule's
    selection, the model inputs."""
    from emocircuits.capture.capture import token_lengths, tokenize
    from emocircuits.capture.positions import get_rule

    if position == "all":
        raise DataError("the ablation reads one value per prompt: a position rule other than 'all'")
    rule = get_rule(position)
    for rows in length_groups(token_lengths(lm, texts), batch_size):
        batch, inputs = tokenize(lm, [texts[i] for i in rows], [None] * len(rows),
                                 padding_side="left")  # fmt: skip
        yield rows, rule(batch), inputs


def evaluate(
    lm: LoadedModel,
    texts: Sequence[str],
    readouts: Mapping[str, Readout],
    *,
    position: str = "mean",
    batch_size: int = 16,
) -> Evaluation:
    """LD of every readout and the residual at every layer, for ``texts`` with the cue
    appended; one forward pass per batch (left padding, position ids from the mask, only
    the readout words' logits at the last position). Runs under whatever hooks are active
    (an ablation).

    >>> rs = {"gratitude": readout(lm.tokenizer, "gratitude")}  # doctest: +SKIP
    >>> ev = evaluate(lm, ["Thank you!"], rs)  # doctest: +SKIP
    """
    cues = {r.cue for r in readouts.values()}
    if len(cues) != 1:
        raise DataError(f"the readouts use different cues {sorted(cues)}")
    full = readout_texts(texts, cues.pop())
    cols = readout_columns(readouts.values())
    n, L = len(full), lm.arch.n_layers
    ld = {e: np.zeros(n) for e in readouts}
    acts = np.zeros((n, L + 1, lm.arch.width), dtype=np.float32)
    for rows, sel, inputs in _held_batches(lm, full, position, batch_size):
        tr = trace(lm, inputs)
        acts[rows] = torch.stack([sel.reduce(h.float().cpu()) for h in tr.resid], 1).numpy()
        logits = unembed(lm, tr.resid[L][:, -1], cols).float().cpu()
        for e, r in readouts.items():
            ld[e][rows] = logit_diff(logits, r, cols)
    return Evaluation(ld, acts)


def split_rows(
    labels: Sequence[str], n_train: int, n_eval: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, stratified row indices: ``n_train`` and ``n_eval`` per label (shuffled
    with ``seed``), the probes' training rows and the held-out rows.

    >>> tr, ev = split_rows(["a", "b"] * 4, 2, 1)
    >>> len(tr), len(ev), set(tr) & set(ev)
    (4, 2, set())
    """
    lab = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in dict.fromkeys(lab.tolist()):
        idx = rng.permutation(np.flatnonzero(lab == c))
        if len(idx) < n_train + n_eval:
            raise DataError(
                f"label {c!r} has {len(idx)} prompts; the ablation needs {n_train} for the "
                f"probes plus {n_eval} held out (lower --n-train / --n-eval)"
            )
        held += idx[:n_eval].tolist()
        train += idx[n_eval : n_eval + n_train].tolist()
    return np.array(sorted(train)), np.array(sorted(held))


# -------------------------------------------------------------------------------- results
@dataclass
class Condition:
    """One ablation: ``kind`` none / direction / random; ``target`` an emotion or ``all``;
    ``dim`` directions removed; ``draw`` the random draw."""

    name: str
    kind: str
    target: str
    dim: int
    draw: int | None = None


@dataclass
class AblationRun:
    """Raw per-prompt results of every condition; tables and headline numbers on demand.
    ``ld[name][emotion]``: ``[n]``; ``correct[name][method]``: ``[n, layers]`` (fixed
    probe right or wrong); ``refit[name][method]``: k-fold accuracy at the probe layer."""

    conditions: list[Condition]
    labels: list[str]
    emotions: list[str]
    baseline: str
    layers: list[int]
    from_layer: int
    probe_layer: int
    mode: str
    chance: float
    ld: dict[str, dict[str, np.ndarray]]
    correct: dict[str, dict[str, np.ndarray]]
    refit: dict[str, dict[str, float]]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.correct["none"])

    def _ld_removed(self, name: str, emotion: str, n_boot: int, level: float, seed: int):
        lab = np.asarray(self.labels)
        c, a = self.ld["none"][emotion], self.ld[name][emotion]
        value = removed_fraction(gap(c, lab, emotion, self.baseline),
                                 gap(a, lab, emotion, self.baseline))  # fmt: skip
        if n_boot == 0:
            return value, float("nan"), float("nan")
        w = gap_weights(lab, emotion, self.baseline, n_boot, seed)
        gc = w[:, 0] @ c - w[:, 1] @ c
        ga = w[:, 0] @ a - w[:, 1] @ a
        boots = removed_fraction(gc, ga)
        q = (1 - level) / 2
        lo, hi = np.nanquantile(boots, [q, 1 - q]) if np.isfinite(boots).any() else (np.nan,) * 2
        return value, float(lo), float(hi)

    def _accuracy(self, name: str, method: str) -> np.ndarray:
        return self.correct[name][method].mean(0)

    def ld_table(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict]:
        """Rows ``condition, kind, target, dim, draw, emotion, gap, gap_clean, removed,
        ci_low, ci_high`` (the file ``ablation_ld.csv``)."""
        lab = np.asarray(self.labels)
        out = []
        for cond in self.conditions:
            for e in self.emotions:
                g = gap(self.ld[cond.name][e], lab, e, self.baseline)
                g0 = gap(self.ld["none"][e], lab, e, self.baseline)
                if cond.kind == "none":
                    v, lo, hi = 0.0, None, None
                else:
                    v, lo, hi = self._ld_removed(cond.name, e, n_boot, level, seed)
                out.append({**_cond_cols(cond), "emotion": e, "gap": rounded(g),
                            "gap_clean": rounded(g0), "removed": rounded(v),
                            "ci_low": rounded(lo), "ci_high": rounded(hi)})  # fmt: skip
        return out

    def probe_table(self) -> list[dict]:
        """Rows ``condition, kind, target, dim, draw, method, probe, layer, accuracy,
        removed, recall_{emotion}...`` (the file ``ablation_probe.csv``): the fixed probe at
        every layer, the refitted one at the probe layer."""
        lab = np.asarray(self.labels)
        out = []
        for cond in self.conditions:
            for m in self.methods:
                acc0 = self._accuracy("none", m)
                acc = self._accuracy(cond.name, m)
                ok = self.correct[cond.name][m]
                for i, layer in enumerate(self.layers):
                    recall = {f"recall_{e}": rounded(ok[lab == e, i].mean()) for e in self.emotions}
                    out.append({**_cond_cols(cond), "method": m, "probe": "fixed", "layer": layer,
                                "accuracy": rounded(acc[i]),
                                "removed": rounded(removed_fraction(acc0[i], acc[i], self.chance)),
                                **recall})  # fmt: skip
                r0, r = self.refit["none"][m], self.refit[cond.name][m]
                out.append({**_cond_cols(cond), "method": m, "probe": "refit",
                            "layer": self.probe_layer, "accuracy": rounded(r),
                            "removed": rounded(removed_fraction(r0, r, self.chance)),
                            **{f"recall_{e}": None for e in self.emotions}})  # fmt: skip
        return out

    def headline(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
        """Per target: the LD gap removed per emotion and the probe accuracy removed at the
        probe layer, each against its random null (mean, 95% range, empirical p)."""
        pi = self.layers.index(self.probe_layer)
        out: dict[str, Any] = {}
        for cond in self.conditions:
            if cond.kind != "direction":
                continue
            null = [c for c in self.conditions if c.kind == "random" and c.dim == cond.dim]
            h: dict[str, Any] = {"dim": cond.dim, "n_random": len(null), "ld_gap": {},
                                 "probe": {}}  # fmt: skip
            emos = self.emotions if cond.target == ALL else [cond.target]
            for e in emos:
                v, lo, hi = self._ld_removed(cond.name, e, n_boot, level, seed)
                nv = np.array([self._ld_removed(c.name, e, 0, level, seed)[0] for c in null])
                h["ld_gap"][e] = {
                    "gap_clean": rounded(gap(self.ld["none"][e], self.labels, e, self.baseline)),
                    "gap_ablated": rounded(gap(self.ld[cond.name][e], self.labels, e,
                                               self.baseline)),
                    "removed": rounded(v), "ci_low": rounded(lo), "ci_high": rounded(hi),
                    **null_summary(v, nv),
                }  # fmt: skip
            for m in self.methods:
                acc0, acc = self._accuracy("none", m)[pi], self._accuracy(cond.name, m)[pi]
                v = removed_fraction(acc0, acc, self.chance)
                nv = np.array([removed_fraction(acc0, self._accuracy(c.name, m)[pi], self.chance)
                               for c in null])  # fmt: skip
                r0, r = self.refit["none"][m], self.refit[cond.name][m]
                rv = removed_fraction(r0, r, self.chance)
                rn = np.array([removed_fraction(r0, self.refit[c.name][m], self.chance)
                               for c in null])  # fmt: skip
                h["probe"][m] = {
                    "fixed": {"accuracy_clean": rounded(acc0), "accuracy_ablated": rounded(acc),
                              "removed": rounded(v), **null_summary(v, nv)},
                    "refit": {"accuracy_clean": rounded(r0), "accuracy_ablated": rounded(r),
                              "removed": rounded(rv), **null_summary(rv, rn)},
                }  # fmt: skip
            out[cond.target] = h
        return out


def _cond_cols(c: Condition) -> dict[str, Any]:
    return {"condition": c.name, "kind": c.kind, "target": c.target, "dim": c.dim,
            "draw": "" if c.draw is None else c.draw}  # fmt: skip


# -------------------------------------------------------------------------------- running
def _projection(
    tr: Trace,
    q_all: torch.Tensor,
    cid: torch.Tensor,
    src: torch.Tensor,
    sel: Selection,
    rec: torch.Tensor,
    from_layer: int,
) -> tuple[Callable[[int, np.ndarray], torch.Tensor], Callable[..., torch.Tensor]]:
    """:func:`~emocircuits.interventions.forward.resume` callbacks (``enter``, ``after``)
    for rows that copy the trace's rows ``src``: each row projects its condition's subspace
    (``q_all[cid[row], layer - from_layer]``: orthonormal rows, zero padding) out of the
    residual at every layer from ``from_layer`` on, and records the position rule's value
    there into ``rec [rows, layers, W]``."""

    def project(layer: int, h: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        q = q_all[cid[idx], layer - from_layer].to(device=h.device, dtype=h.dtype)
        h = h - torch.einsum("nsk,nkw->nsw", torch.einsum("nsw,nkw->nsk", h, q), q)
        rec[idx, layer - from_layer] = take_rows(sel, src[idx]).reduce(h.float().cpu())
        return h

    def enter(layer: int, rows: np.ndarray) -> torch.Tensor:
        return project(layer, tr.resid[layer][src[torch.from_numpy(rows)]], rows)

    def after(block: int, h: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        return project(block + 1, h, rows)

    return enter, after


def run_ablation(
    lm: LoadedModel,
    vectors: EmotionVectors,
    readouts: Mapping[str, Readout],
    train: tuple[Sequence[str], Sequence[str]],
    held_out: tuple[Sequence[str], Sequence[str]],
    *,
    targets: Sequence[str] | None = None,
    from_layer: int | None = None,
    mode: str = "fixed",
    n_random: int = 20,
    probe_layer: int | None = None,
    methods: Sequence[str] = ("logreg", "ncm"),
    position: str = "mean",
    baseline: str = "neutral",
    folds: int = 5,
    batch_size: BatchSize = 16,
    rows_per_pass: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> AblationRun:
    """Every condition (clean, each target, ``n_random`` random subspaces per dimension
    used) on the held-out prompts ``(texts, labels)``; probes fitted on the clean
    ``train`` prompts. ``from_layer`` default: the middle layer (``n_layers // 2``);
    ``probe_layer`` default: the last resid layer; ``targets``: emotions and/or ``all``
    (default: every emotion with a readout, and ``all``).

    >>> res = run_ablation(lm, vecs, rs, (tr_x, tr_y), (ev_x, ev_y))  # doctest: +SKIP
    >>> res.headline()["anger"]["ld_gap"]["anger"]["removed"]  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from emocircuits.geometry.probes import PROBES, cross_validated, fit_probe

    arch = lm.arch
    emotions = [e for e in vectors.emotions if e in readouts]
    if not emotions:
        raise DataError("no emotion has both a direction and a readout")
    if vectors.site != "resid":
        raise DataError(f"the vectors are for site {vectors.site!r}; ablation needs resid")
    width = next(iter(vectors.directions.values())).shape[-1]
    if width != arch.width:
        raise DataError(f"the vectors are {width} wide, the model {arch.width}")
    if mode not in MODES:
        raise DataError(f"unknown ablation mode {mode!r}; choose from {', '.join(MODES)}")
    for m in methods:
        if m not in PROBES:
            raise DataError(f"unknown probe {m!r}; choose from {', '.join(PROBES)}")
    targets = (
        list(targets) if targets is not None else emotions + ([ALL] if len(emotions) > 1 else [])
    )
    for t in targets:
        if t != ALL and t not in emotions:
            raise DataError(f"cannot ablate {t!r}: no direction with a readout (have {emotions})")
    last = arch.n_layers
    from_layer = arch.normalize_layer(last // 2 if from_layer is None else from_layer, "resid")
    probe_layer = arch.normalize_layer(last if probe_layer is None else probe_layer, "resid")
    if probe_layer < from_layer:
        raise DataError(f"the probe layer ({probe_layer}) comes before the ablation ({from_layer})")
    if from_layer not in vectors.layers:
        raise DataError(f"layer {from_layer} is not in the vectors (layers {vectors.layers})")
    n_random = int(n_random)
    if n_random < 1:
        raise DataError("the null needs at least one random draw (n_random >= 1)")
    ev_texts, ev_labels = list(held_out[0]), list(held_out[1])
    tr_texts, tr_labels = list(train[0]), list(train[1])
    for name, lab in (("held-out", ev_labels), ("training", tr_labels)):
        for e in [*emotions, baseline]:
            if e not in lab:
                raise DataError(f"the {name} prompts have no {e!r} prompt")
    layers = list(range(from_layer, last + 1))
    all_layers = list(range(last + 1))
    batches = Batches(batch_size, "ablate")  # "auto": one size for every pass, no back-off
    batch_size = batches.fixed("rows", lm, tr_texts + ev_texts, kept=last + 1, extra_tokens=8)

    conds: list[tuple[Condition, dict[int, np.ndarray]]] = [(Condition("none", "none", "", 0), {})]
    for t in targets:
        emos = emotions if t == ALL else [t]
        b = direction_bases(vectors, emos, layers, from_layer=from_layer, mode=mode)
        conds.append((Condition(f"direction:{t}", "direction", t, len(emos)), b))
    dims = sorted({len(emotions) if t == ALL else 1 for t in targets})
    for dim in dims:
        for k in range(n_random):
            b = random_bases(width, layers, dim, mode=mode, seed=hash((seed, dim, k)) % 2**32)
            conds.append((Condition(f"random{dim}:{k}", "random", f"random{dim}", dim, k), b))

    full_ev = readout_texts(ev_texts, next(iter(readouts.values())).cue)
    cols = readout_columns(readouts.values())
    n, W = len(ev_texts), width
    # per condition and ablated layer: an orthonormal basis, zero-padded to the largest dim
    kmax = max((max(len(b) for b in bases.values()) if bases else 1) for _, bases in conds)
    q_all = torch.zeros(len(conds), len(layers), kmax, W)
    for c, (_, bases) in enumerate(conds):
        for j, layer in enumerate(layers if bases else ()):
            q = orthonormal(np.asarray(bases[layer]))
            q_all[c, j, : len(q)] = torch.as_tensor(q, dtype=torch.float32)

    bar = tqdm(total=len(conds) + 1, desc="ablate", unit="condition", disable=not progress)
    try:
        clean_train = evaluate(lm, tr_texts, readouts, position=position, batch_size=batch_size)
        probes = {m: fit_probe(clean_train.acts, tr_labels, m) for m in methods}
        classes = list(dict.fromkeys(tr_labels))
        lab = np.asarray(ev_labels)
        y = np.array([classes.index(v) if v in classes else -1 for v in ev_labels])
        ld: dict[str, dict[str, np.ndarray]] = {}
        correct: dict[str, dict[str, np.ndarray]] = {}
        refit: dict[str, dict[str, float]] = {}
        pi = all_layers.index(probe_layer)

        def score(name: str, logits: np.ndarray, acts: np.ndarray) -> None:
            ld[name] = {e: logit_diff(logits, r, cols) for e, r in readouts.items()}
            correct[name] = {m: p.predict(acts) == y[:, None] for m, p in probes.items()}
            refit[name] = {
                m: float(cross_validated(acts[:, [pi]], lab, m, k=folds, seed=seed)[0])
                for m in methods
            }

        # the clean held-out run; each batch's trace is kept from the first ablated layer
        clean_logits = np.zeros((n, len(cols)))
        clean_acts = np.zeros((n, last + 1, W), dtype=np.float32)
        held = []
        for rows, sel, inputs in _held_batches(lm, full_ev, position, batch_size):
            tr = trace(lm, inputs)
            clean_acts[rows] = torch.stack(
                [sel.reduce(h.float().cpu()) for h in tr.resid], 1
            ).numpy()
            clean_logits[rows] = unembed(lm, tr.resid[last][:, -1], cols).float().cpu().numpy()
            tr.resid = [h if i == from_layer else None for i, h in enumerate(tr.resid)]  # type: ignore[misc]
            held.append((rows, sel, tr))
        score("none", clean_logits, clean_acts)
        bar.update(2)
        # every ablated condition: rows = (condition, prompt) resumed from the first
        # ablated layer, each row projecting its own subspace out at every later layer
        per_cond = n * len(layers) * W * 4
        group = max(1, int(2**27 // max(1, per_cond)))  # conditions whose activations fit
        todo = list(range(1, len(conds)))
        for g0 in range(0, len(todo), group):
            part_conds = todo[g0 : g0 + group]
            logits = {c: np.zeros((n, len(cols))) for c in part_conds}
            acts = {c: clean_acts.copy() for c in part_conds}
            for rows, sel, tr in held:
                jobs = [(c, j) for c in part_conds for j in range(len(rows))]
                for s0 in range(0, len(jobs), rows_per_pass):
                    chunk = jobs[s0 : s0 + rows_per_pass]
                    src = torch.tensor([j for _, j in chunk])
                    cid = torch.tensor([c for c, _ in chunk])
                    rec = torch.zeros(len(chunk), len(layers), W)
                    enter, after = _projection(tr, q_all, cid, src, sel, rec, from_layer)
                    h = resume(lm, tr, src.numpy(), [from_layer] * len(chunk), enter=enter,
                               after=after)  # fmt: skip
                    lg = unembed(lm, h[:, -1], cols).float().cpu().numpy()
                    for q, (c, j) in enumerate(chunk):
                        logits[c][rows[j]] = lg[q]
                        acts[c][rows[j], from_layer:] = rec[q].numpy()
            for c in part_conds:
                score(conds[c][0].name, logits.pop(c), acts.pop(c))
                bar.update(1)
    finally:
        bar.close()
    batches.report(progress)
    chance = max(float((lab == c).mean()) for c in set(ev_labels))
    settings = {
        "from_layer": from_layer, "probe_layer": probe_layer, "mode": mode,
        "targets": targets, "n_random": n_random, "methods": list(methods),
        "position": position, "baseline": baseline, "folds": folds, "seed": seed,
        **batches.provenance, "rows_per_pass": rows_per_pass,
        "n_train": len(tr_texts), "n_held_out": len(ev_texts),
        "ablated_layers": [layers[0], layers[-1]],
    }  # fmt: skip
    return AblationRun(
        [c for c, _ in conds], ev_labels, emotions, baseline, all_layers, from_layer,
        probe_layer, mode, chance, ld, correct, refit, settings,
    )  # fmt: skip

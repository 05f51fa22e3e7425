"""Activation patching: how much of an emotion prompt's effect on the next token passes
through one residual-stream site, or through the emotion direction there.

**Metric.** The logit difference ``LD`` of :mod:`~emocircuits.interventions.readout`
(feeling words minus reference words, read after the cue ``" I feel"``), with each pair's
emotion's readout. An emotion prompt gives ``LD_e``, its matched neutral prompt ``LD_n``;
the neutral run with emotion-run activations patched in gives ``LD_p``. The **recovered
fraction** is

    R = mean over pairs (LD_p - LD_n) / mean over pairs (LD_e - LD_n)

(a ratio of means, robust where single pairs have a gap near 0), with a percentile
bootstrap interval over pairs. ``R = 1``: the site carries everything that makes the
emotion prompt's LD larger; ``R = 0``: nothing.

**Matched pairs** (:func:`match_pairs`). The presets have no matched pairs, so each emotion
prompt is paired with a neutral prompt of the **same token length** (after the cue is
appended, special tokens included): position ``t`` of one is position ``t`` of the other,
and the cue tokens line up at the end. Within each length the emotion and neutral prompts
are shuffled (``seed``) and zipped, so a neutral prompt is used at most once per emotion;
then ``n_pairs`` of the candidates are drawn at random. The number of candidates per
emotion is reported (SmolLM2 on ``extended``: 266 to 283 per emotion; on ``baseline``
36 to 44). No right-aligned fallback is needed for the presets; fewer than ``min_pairs``
candidates is an error.

**Positions** are counted from the end, where the pairs line up: ``-1`` is the cue's last
token (the readout position), ``-2`` the cue's first, ``-3`` usually the prompt's final
punctuation, and so on up to ``-n_positions``; ``body`` patches all earlier positions at
once (the prompt body, whose tokens differ in number and meaning between pairs). A pair
shorter than an offset does not count in that cell (``n_pairs`` per cell is reported).

**Kinds** of patch at resid layer ``l`` (activation-folder numbering: 0 = embedding
output, ``l >= 1`` = output of block ``l - 1``):

- ``full``: the neutral run's residual at the patched positions is replaced by the emotion
  run's, ``h_n <- h_e``;
- ``directional``: only its component along the unit emotion direction ``v_l`` (from the
  vectors file) is replaced, ``h_n <- h_n + ((h_e - h_n) . v_l) v_l``;
- per layer at **all** positions at once (``position = "all"``), where per-position
  directional effects are small: ``directional`` and ``random``, the same with a random
  unit direction per layer (the control: what replacing one arbitrary coordinate of the
  residual does).

Patching every position at one layer with ``full`` would recover exactly 1 (everything
downstream is a function of that layer), as does ``full`` at the last layer and position
``-1``; patching a position whose token is the same in both prompts at layer 0 (the cue)
recovers exactly 0. The tests check these.

**Cost.** The pairs of all emotions run together in left-padded batches of similar token
lengths (position ids from the mask), so that a position counted from the end is one
column of the batch. Each batch runs clean once per side
(:func:`~emocircuits.interventions.forward.trace`, keeping the key-value cache). A patch at
resid layer ``l`` leaves everything before ``l`` as in the clean run, and a patch at
position ``t`` leaves the columns before ``t`` unchanged (causal attention), so:

- directional and random patches of the body or of every position resume the neutral run
  at layer ``l`` (:func:`~emocircuits.interventions.forward.resume`; rows = pairs x layers
  x kinds in one staircase batch);
- a single-position patch runs only the columns from ``t`` on, over the neutral run's
  cached prefix (rows = pairs x layers, each row with its own patched layer);
- the full body patch runs only the last ``n_positions`` columns over a cache that holds
  the emotion run's keys and values of the body from layer ``l`` on (exact: from ``l`` on
  the body is the emotion run's) and the neutral run's before.

Only the readout words' logits are computed. On SmolLM2-135M and `extended` the default
(24 pairs per emotion, 6 positions, all 31 layers) and the whole-study budget ``fast``
(:data:`~emocircuits.interventions.budgets.PATCH_BUDGETS`) cost what docs/BENCHMARKS.md
lists ("Causal analyses"), in plain forward passes of one prompt. The model is never
modified: every edit is a hook (:func:`~emocircuits.capture.hooks.hooked`) or an edit of a
resumed row's residual.

>>> pairs, found = match_pairs(["anger", "neutral", "anger", "neutral"], [5, 5, 6, 7],
...                            ["anger"], min_pairs=1)
>>> [(p.emotion_row, p.neutral_row, p.n_tokens) for p in pairs], found
([(0, 1, 5)], {'anger': 1})
>>> res = run_patching(lm, texts, labels, vecs, readouts, n_pairs=24)  # doctest: +SKIP
>>> rows = res.table()  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from emocircuits.capture.hooks import Hook, hooked
from emocircuits.errors import DataError
from emocircuits.geometry.stats import bootstrap_counts, bootstrap_mean_ci
from emocircuits.interventions.budgets import PATCH_BUDGETS  # noqa: F401  (re-exported)
from emocircuits.interventions.forward import Trace, length_groups, resume, trace, unembed
from emocircuits.interventions.readout import (
    Readout,
    logit_diff,
    readout_columns,
    readout_texts,
)

if TYPE_CHECKING:
    import torch

    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.architectures import Architecture
    from emocircuits.models.loading import LoadedModel

BODY = "body"
"""Column of all positions before the last ``n_positions`` (patched together)."""
ALL = "all"
"""Column of every position (per-layer directional and random patches)."""
KINDS = ("full", "directional", "random")


# ------------------------------------------------------------------------- residual hooks
def resid_edit_hooks(
    arch: Architecture, edits: Mapping[int, Callable[[torch.Tensor], torch.Tensor | None]]
) -> list[Hook]:
    """Hooks that pass the residual stream at each resid layer (activation-folder
    numbering, negative allowed) through ``edits[layer](h) -> new h`` (or None: unchanged);
    ``h`` is ``[batch, seq, width]``. Use with :func:`~emocircuits.capture.hooks.hooked`.

    >>> with hooked(resid_edit_hooks(lm.arch, {3: lambda h: 2 * h})):  # doctest: +SKIP
    ...     lm.model(**inputs)
    """
    return [arch.place("resid", layer).edit(fn) for layer, fn in edits.items()]


# ---------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """An emotion prompt and a neutral prompt of the same token length (row indices into
    the texts given to :func:`run_patching`)."""

    emotion: str
    emotion_row: int
    neutral_row: int
    n_tokens: int


def match_pairs(
    labels: Sequence[str],
    lengths: Sequence[int],
    emotions: Sequence[str],
    *,
    baseline: str = "neutral",
    n_pairs: int | None = None,
    min_pairs: int = 5,
    seed: int = 0,
) -> tuple[list[Pair], dict[str, int]]:
    """Pairs of equal token length per emotion (rule in the module docstring) and the
    number of candidates found per emotion; at most ``n_pairs`` per emotion (None: all)."""
    lab = np.asarray(labels)
    n = np.asarray(lengths)
    if lab.shape != n.shape:
        raise ValueError("labels and lengths differ in length")
    if not (lab == baseline).any():
        raise DataError(f"no {baseline!r} prompts to pair the emotion prompts with")
    rng = np.random.default_rng(seed)
    pairs: list[Pair] = []
    found: dict[str, int] = {}
    for emo in emotions:
        if not (lab == emo).any():
            raise DataError(f"no {emo!r} prompts in the data (labels: {sorted(set(labels))})")
        cand: list[Pair] = []
        for t in sorted(set(n[lab == emo].tolist()) & set(n[lab == baseline].tolist())):
            er = rng.permutation(np.flatnonzero((lab == emo) & (n == t)))
            nr = rng.permutation(np.flatnonzero((lab == baseline) & (n == t)))
            cand += [Pair(emo, int(a), int(b), int(t)) for a, b in zip(er, nr, strict=False)]
        found[emo] = len(cand)
        if len(cand) < min_pairs:
            raise DataError(
                f"only {len(cand)} {emo!r} prompts have a {baseline!r} prompt of the same "
                f"token length; patching needs at least {min_pairs} pairs (use more prompts)"
            )
        if n_pairs is not None and len(cand) > n_pairs:
            cand = [cand[i] for i in sorted(rng.choice(len(cand), n_pairs, replace=False))]
        pairs += cand
    return pairs, found


# ------------------------------------------------------------------------------- results
@dataclass
class PatchRun:
    """LD of every pair under every patch. ``full``/``directional``: ``[layer, column,
    pair]`` over ``columns`` (``body``, ``-K`` ... ``-1``); ``directional_all`` /
    ``random_all``: ``[layer, pair]`` (every position patched); NaN = the pair has no such
    position. ``found``: candidate pairs per emotion; ``column_tokens``: the token at an
    offset when it is the same in every prompt (the cue), else ``""``."""

    pairs: list[Pair]
    layers: list[int]
    columns: list[str]
    ld_emotion: np.ndarray
    ld_neutral: np.ndarray
    full: np.ndarray
    directional: np.ndarray
    directional_all: np.ndarray
    random_all: np.ndarray
    found: dict[str, int]
    column_tokens: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def emotions(self) -> list[str]:
        return list(dict.fromkeys(p.emotion for p in self.pairs))

    def _rows(self, emotion: str) -> np.ndarray:
        return np.array([p.emotion == emotion for p in self.pairs])

    def gaps(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict]:
        """Per emotion: pairs found and used, mean ``LD_e``, ``LD_n`` and their gap (the
        denominator of every recovered fraction) with a bootstrap interval over pairs."""
        out = []
        for emo in self.emotions:
            m = self._rows(emo)
            d = self.ld_emotion[m] - self.ld_neutral[m]
            lo, hi = bootstrap_mean_ci(d, n_boot, level, seed)
            out.append(
                {
                    "emotion": emo,
                    "pairs_found": self.found.get(emo),
                    "pairs_used": int(m.sum()),
                    "ld_emotion": _r(self.ld_emotion[m].mean()),
                    "ld_neutral": _r(self.ld_neutral[m].mean()),
                    "gap": _r(d.mean()),
                    "gap_ci_low": _r(lo),
                    "gap_ci_high": _r(hi),
                    "gap_sd": _r(d.std(ddof=1)) if len(d) > 1 else None,
                }
            )
        return out

    def table(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict]:
        """Tidy rows ``emotion, kind, layer, position, offset, n_pairs, recovered, ci_low,
        ci_high, ld_patched`` (the file ``patching.csv``)."""
        out = []
        for emo in self.emotions:
            m = self._rows(emo)
            e, n = self.ld_emotion[m], self.ld_neutral[m]
            blocks = [
                ("full", self.full[..., m], self.columns),
                ("directional", self.directional[..., m], self.columns),
                ("directional", self.directional_all[:, None][..., m], [ALL]),
                ("random", self.random_all[:, None][..., m], [ALL]),
            ]
            for kind, ld, columns in blocks:
                val, lo, hi = recovered_fraction(ld, e, n, n_boot=n_boot, level=level, seed=seed)
                count = np.isfinite(ld).sum(-1)
                mean_ld = np.where(count > 0, np.nansum(ld, -1) / np.maximum(count, 1), np.nan)
                for i, layer in enumerate(self.layers):
                    for c, col in enumerate(columns):
                        out.append(
                            {
                                "emotion": emo,
                                "kind": kind,
                                "layer": layer,
                                "position": col,
                                "offset": int(col) if col not in (BODY, ALL) else "",
                                "token": self.column_tokens.get(col, ""),
                                "n_pairs": int(count[i, c]),
                                "recovered": _r(val[i, c]),
                                "ci_low": _r(lo[i, c]),
                                "ci_high": _r(hi[i, c]),
                                "ld_patched": _r(mean_ld[i, c]),
                            }
                        )
        return out

    def pair_rows(self, ids: Sequence[str] | None = None) -> list[dict]:
        """One row per pair (the file ``pairs.csv``): rows, ids, length, clean LDs."""
        out = []
        for k, p in enumerate(self.pairs):
            out.append(
                {
                    "pair": k,
                    "emotion": p.emotion,
                    "emotion_row": p.emotion_row,
                    "neutral_row": p.neutral_row,
                    "emotion_id": ids[p.emotion_row] if ids is not None else "",
                    "neutral_id": ids[p.neutral_row] if ids is not None else "",
                    "n_tokens": p.n_tokens,
                    "ld_emotion": _r(self.ld_emotion[k]),
                    "ld_neutral": _r(self.ld_neutral[k]),
                }
            )
        return out


def _r(v: Any, nd: int = 6) -> float | None:
    v = float(v)
    return None if not np.isfinite(v) else round(v, nd)


def recovered_fraction(
    patched: np.ndarray,
    emotion: np.ndarray,
    neutral: np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recovered fraction ``sum(LD_p - LD_n) / sum(LD_e - LD_n)`` over the pairs (last
    axis) where ``patched`` is finite, with a percentile bootstrap interval over pairs
    (the same resampled pairs for every cell). ``patched``: ``[..., P]``; ``emotion``,
    ``neutral``: ``[P]``. Returns ``(value, lo, hi)`` of shape ``patched.shape[:-1]``.

    >>> v, lo, hi = recovered_fraction(np.array([1.0, 3.0]), np.array([2.0, 4.0]),
    ...                                np.array([0.0, 0.0]), n_boot=50)
    >>> float(v)   # (1 + 3) / (2 + 4)
    0.6666666666666666
    """
    p = np.asarray(patched, dtype=np.float64)
    e, n = np.asarray(emotion, dtype=np.float64), np.asarray(neutral, dtype=np.float64)
    mask = np.isfinite(p)
    num = np.where(mask, p - n, 0.0)
    den = np.where(mask, e - n, 0.0)
    w = bootstrap_counts(p.shape[-1], n_boot, seed)  # times each pair is drawn
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells without pairs stay NaN
        value = np.where(mask.any(-1), num.sum(-1) / den.sum(-1), np.nan)
        boots = (num @ w.T) / (den @ w.T)  # [..., n_boot]
        boots[~np.isfinite(boots)] = np.nan
        if n_boot == 0:
            return value, np.full(value.shape, np.nan), np.full(value.shape, np.nan)
        return value, np.nanquantile(boots, a, axis=-1), np.nanquantile(boots, 1 - a, axis=-1)


# --------------------------------------------------------------------------------- running
def _patch_fn(
    source: torch.Tensor, index: slice, direction: torch.Tensor | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h[:, index] <- source`` (full) or ``h[:, index] += ((source - h) . v) v`` with
    ``direction`` ``[batch, width]`` or ``[width]`` (unit rows)."""

    def fn(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        src = source.to(device=h.device, dtype=h.dtype)
        if direction is None:
            h[:, index] = src
        else:
            v = direction.to(device=h.device, dtype=h.dtype)
            v = v.expand(h.shape[0], -1)[:, None]  # [batch, 1, width]
            cur = h[:, index]
            h[:, index] = cur + ((src - cur) * v).sum(-1, keepdim=True) * v
        return h

    return fn


class _Runner:
    """Forward passes of one model on a left-padded batch of pairs, reading only the
    readout words' logits at the last position: clean traces
    (:func:`~emocircuits.interventions.forward.trace`), KV-cached passes over the last
    columns (rows = pairs x layers, each row with its own patched layer) and resumed
    staircases (:func:`~emocircuits.interventions.forward.resume`)."""

    def __init__(self, lm: LoadedModel, readouts: Mapping[str, Readout]) -> None:
        self.lm, self.readouts = lm, readouts
        self.cols = readout_columns(readouts.values())
        self.device = lm.arch.base_model.device
        self.passes = 0

    def trace(self, batch: _Batch, neutral: bool) -> Trace:
        """The clean run of every pair, with its key-value cache."""
        self.passes += 1
        ids = batch.ids_n if neutral else batch.ids_e
        inputs = {"input_ids": ids, "attention_mask": batch.mask, "position_ids": batch.pos}
        return trace(self.lm, inputs, use_cache=True)

    def final(self, h: torch.Tensor, normed: bool = False) -> torch.Tensor:
        """Readout-word logits ``[n, len(cols)]`` from the last position's ``h [n, W]``."""
        return unembed(self.lm, h, self.cols, normed=normed).float().cpu()

    def prefix(self, batch: _Batch, end: int, tr: Trace, neutral: bool = True) -> Any:
        """KV cache of the neutral (or emotion) run's columns ``:end``: the trace's
        cache ``tr.cache`` cropped, or (where a sliding-window layer has already dropped
        columns) a pass over them."""
        import torch

        cache = copy.deepcopy(tr.cache)
        try:
            cache.crop(end - batch.width)
            return cache
        except RuntimeError:  # a sliding-window layer kept only its window
            pass
        ids = batch.ids_n if neutral else batch.ids_e
        with torch.inference_mode():
            out = self.lm.arch.base_model(
                input_ids=ids[:, :end].to(self.device),
                attention_mask=batch.mask[:, :end].to(self.device),
                position_ids=batch.pos[:, :end].to(self.device),
                use_cache=True,
            )
        self.passes += 1
        return out.past_key_values

    def cached(
        self,
        batch: _Batch,
        rows: np.ndarray,
        start: int,
        past: Any,
        edits: Mapping[int, Callable],
        mix: tuple[Any, np.ndarray] | None = None,
    ) -> torch.Tensor:
        """Readout logits of the neutral run's columns ``start:`` for the batch rows
        ``rows`` (repeated as needed), the columns before coming from ``past`` (None: no
        prefix); ``mix = (emotion_past, use [n_rows, n_layers])``: block i of row j reads
        the emotion run's prefix where ``use[j, i]``."""
        import torch

        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        kw: dict[str, Any] = {"use_cache": past is not None}
        if past is not None:
            kw["past_key_values"] = _select(past, idx, mix)
        with torch.inference_mode(), hooked(resid_edit_hooks(self.lm.arch, edits)):
            out = self.lm.arch.base_model(
                input_ids=batch.ids_n[idx, start:].to(self.device),
                attention_mask=batch.mask[idx].to(self.device),
                position_ids=batch.pos[idx, start:].to(self.device),
                **kw,
            )
        self.passes += 1
        return self.final(out.last_hidden_state[:, -1], normed=True)

    def ld(self, logits: torch.Tensor, emotions: Sequence[str]) -> np.ndarray:
        out = np.empty(len(emotions))
        for emo in set(emotions):
            m = np.array([e == emo for e in emotions])
            out[m] = logit_diff(logits[_index(m)], self.readouts[emo], self.cols)
        return out


def _select(past: Any, idx: torch.Tensor, mix: tuple[Any, np.ndarray] | None) -> Any:
    """A new cache holding the rows ``idx`` of ``past`` (and, per ``mix``, per layer and
    row, of the emotion run's cache instead)."""
    import torch

    out = copy.deepcopy(past)
    out.batch_select_indices(idx)
    if mix is not None:
        other, use = mix
        for i, layer in enumerate(out.layers):
            src = other.layers[i]
            if layer.keys is None or not layer.keys.numel():
                continue
            m = torch.from_numpy(use[:, i]).view(-1, 1, 1, 1).to(layer.keys.device)
            layer.keys = torch.where(m, src.keys[idx], layer.keys)
            layer.values = torch.where(m, src.values[idx], layer.values)
    return out


def _rows_patch(
    rows: np.ndarray, source: torch.Tensor, index: slice, direction: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`_patch_fn` applied to the batch rows ``rows`` only (``source`` and
    ``direction`` one row per entry of ``rows``)."""
    import torch

    idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    fn = _patch_fn(source, index, direction)

    def edit(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[idx] = fn(h[idx])
        return h

    return edit


def _entering(
    tr_e: Trace,
    tr_n: Trace,
    part: Sequence[tuple[int, int, int]],
    kinds: Sequence[tuple],
    body: int,
    rnd: torch.Tensor,
) -> Callable[[int, np.ndarray], torch.Tensor]:
    """For :func:`~emocircuits.interventions.forward.resume`: the neutral residual of the
    jobs ``part[q] = (layer index, kind, pair row)`` at their layer, patched along the
    kind's direction (``kinds[kind] = (name, [n_layers, rows, W] or None: random)``) at
    the body's columns (``name == "body"``) or at all of them."""
    import torch

    def enter(i: int, new: np.ndarray) -> torch.Tensor:
        hs = []
        for q in new:
            li, kind, j = part[q]
            name, vv = kinds[kind]
            d = rnd[li] if vv is None else vv[li, j]
            cols = slice(0, body) if name == "body" else slice(None)
            src = tr_e.resid[i][j : j + 1, cols]
            hs.append(_patch_fn(src, cols, d)(tr_n.resid[i][j : j + 1]))
        return torch.cat(hs)

    return enter


def _index(mask: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.flatnonzero(mask))


def _columns(n_positions: int) -> list[str]:
    return [BODY, *(str(-k) for k in range(n_positions, 0, -1))]


def spaced(layers: Sequence[int], n: int | None) -> list[int]:
    """``n`` evenly spaced entries of ``layers``, the first and the last included (None
    or ``n >= len(layers)``: all of them).

    >>> spaced(list(range(31)), 8)
    [0, 4, 9, 13, 17, 21, 26, 30]
    """
    layers = list(layers)
    if n is None or n >= len(layers):
        return layers
    if n < 2:
        raise DataError(f"patching needs at least 2 layers, got n_layers={n}")
    return [layers[i] for i in np.unique(np.round(np.linspace(0, len(layers) - 1, n)).astype(int))]


def random_directions(width: int, layers: Sequence[int], seed: int) -> np.ndarray:
    """``[len(layers), width]`` random unit directions (one per layer, from ``seed``)."""
    rng = np.random.default_rng([seed, 7919])
    v = rng.normal(size=(len(layers), width))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run_patching(
    lm: LoadedModel,
    texts: Sequence[str],
    labels: Sequence[str],
    vectors: EmotionVectors,
    readouts: Mapping[str, Readout],
    *,
    emotions: Sequence[str] | None = None,
    baseline: str = "neutral",
    n_pairs: int | None = 24,
    min_pairs: int = 5,
    n_positions: int = 6,
    layers: Sequence[int] | None = None,
    n_layers: int | None = None,
    batch_size: int = 32,
    rows_per_pass: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> PatchRun:
    """Match pairs, run them clean, and patch at every layer and position (module
    docstring). ``texts``/``labels``: the prompts without the cue (it is appended);
    ``readouts``: a :class:`~emocircuits.interventions.readout.Readout` per emotion;
    ``layers``: resid layers to patch (default: all of ``vectors.layers``), of which
    ``n_layers`` evenly spaced ones are kept (the first and the last included; None: all);
    ``rows_per_pass``: edited rows run together.

    >>> res = run_patching(lm, ds.texts, ds.labels, vecs, {e: readout(lm.tokenizer, e)
    ...             for e in ("gratitude", "anger")})  # doctest: +SKIP
    """
    import torch
    from tqdm.auto import tqdm

    arch = lm.arch
    emotions = list(emotions) if emotions is not None else [
        e for e in vectors.emotions if e in readouts and e in set(labels)
    ]  # fmt: skip
    _check(lm, vectors, readouts, emotions)
    layers = list(vectors.layers if layers is None else layers)
    for layer in layers:
        if layer not in vectors.layers:
            raise DataError(f"layer {layer} is not in the vectors (layers {vectors.layers})")
        arch.normalize_layer(layer, "resid")
    layers = spaced(layers, n_layers)
    if n_positions < 1:
        raise DataError(f"n_positions must be >= 1, got {n_positions}")
    cues = {r.cue for r in readouts.values()}
    if len(cues) != 1:
        raise DataError(f"the readouts use different cues {sorted(cues)}")
    full_texts = readout_texts(texts, cues.pop())
    token_ids = [list(t) for t in lm.tokenizer(full_texts)["input_ids"]]
    pairs, found = match_pairs(
        labels, [len(t) for t in token_ids], emotions, baseline=baseline, n_pairs=n_pairs,
        min_pairs=min_pairs, seed=seed,
    )  # fmt: skip

    columns = _columns(n_positions)
    n_l, n_c, n_p = len(layers), len(columns), len(pairs)
    full = np.full((n_l, n_c, n_p), np.nan)
    directional = np.full((n_l, n_c, n_p), np.nan)
    dir_all = np.full((n_l, n_p), np.nan)
    rnd_all = np.full((n_l, n_p), np.nan)
    ld_e, ld_n = np.zeros(n_p), np.zeros(n_p)
    vec_idx = [vectors.layers.index(layer) for layer in layers]
    dirs = {
        e: torch.as_tensor(vectors.directions[e][vec_idx], dtype=torch.float32) for e in emotions
    }
    rnd = torch.as_tensor(random_directions(arch.width, layers, seed), dtype=torch.float32)
    resid = [arch.normalize_layer(x, "resid") for x in layers]
    L = arch.n_layers

    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else (lm.tokenizer.eos_token_id or 0)
    groups = length_groups([q.n_tokens for q in pairs], batch_size)  # little padding
    batches = [_Batch.make(pairs, g.tolist(), token_ids, pad) for g in groups]
    runner = _Runner(lm, readouts)
    per_chunk = max(1, 4 * rows_per_pass // max(1, batch_size))  # layers per cached pass
    bar = tqdm(total=len(batches) * n_l, desc="patch", unit="layer", disable=not progress)
    try:
        for b in batches:
            g, s, t = b.rows, b.width, b.lengths
            n_b = len(g)
            emos = [pairs[i].emotion for i in g]
            tr_e, tr_n = runner.trace(b, neutral=False), runner.trace(b, neutral=True)
            ld_e[g] = runner.ld(runner.final(tr_e.resid[L][:, -1]), emos)
            ld_n[g] = runner.ld(runner.final(tr_n.resid[L][:, -1]), emos)
            v = torch.stack([dirs[e] for e in emos], 1)  # [n_layers, n_b, W]
            body = s - n_positions  # columns :body patched together
            # 1. single columns -k (full and directional) and the full body patch: KV-cached
            # passes over the last columns, rows = pairs x a chunk of layers
            caches = {
                k: runner.prefix(b, s - k, tr_n) for k in range(1, min(n_positions, s - 1) + 1)
            }
            emo_body = runner.prefix(b, body, tr_e, neutral=False) if body >= 1 else None
            for c0 in range(0, n_l, per_chunk):
                chunk = list(range(c0, min(n_l, c0 + per_chunk)))
                rows = np.tile(np.arange(n_b), len(chunk))  # layer-major
                which = np.repeat(np.arange(len(chunk)), n_b)
                for c, col in enumerate(columns):
                    if col == BODY:
                        if emo_body is None:
                            continue
                        use = np.array([[i >= resid[chunk[w]] for i in range(L)] for w in which])
                        # body columns read the emotion run's keys and values from the
                        # patched layer on; the last columns are the neutral run's
                        lg = runner.cached(b, rows, body, caches[n_positions], {},
                                           mix=(emo_body, use))  # fmt: skip
                        ld = runner.ld(lg, [emos[r] for r in rows]).reshape(len(chunk), n_b)
                        full[np.ix_(chunk, [c], g)] = np.where(t - n_positions >= 1, ld,
                                                               np.nan)[:, None]  # fmt: skip
                        continue
                    k = -int(col)
                    if k > s:
                        continue
                    start, past = (s - k, caches[k]) if k in caches else (0, None)
                    for out, direction in ((full, None), (directional, v)):
                        edits = {}
                        for w, li in enumerate(chunk):
                            sel = np.flatnonzero(which == w)
                            source = tr_e.resid[resid[li]][:, s - k : s - k + 1]
                            d = None if direction is None else direction[li]
                            edits[layers[li]] = _rows_patch(sel, source, slice(0, 1), d)
                        lg = runner.cached(b, rows, start, past, edits)
                        ld = runner.ld(lg, [emos[r] for r in rows]).reshape(len(chunk), n_b)
                        out[np.ix_(chunk, [c], g)] = np.where(t >= k, ld, np.nan)[:, None]
            # 2. directional body, directional and random at every position: each row
            # resumes the neutral run from its patched layer with the edit on entry
            kinds = [("all", v), ("random", None)] + ([("body", v)] if body >= 1 else [])
            jobs = [(li, kind, j) for li in range(n_l) for kind in range(len(kinds))
                    for j in range(n_b)]  # fmt: skip
            jobs.sort(key=lambda x: (resid[x[0]], x[1], x[2]))
            for s0 in range(0, len(jobs), rows_per_pass):
                part = jobs[s0 : s0 + rows_per_pass]
                enter = _entering(tr_e, tr_n, part, kinds, body, rnd)
                h = resume(lm, tr_n, [j for _, _, j in part], [resid[li] for li, _, _ in part],
                           enter=enter)  # fmt: skip
                runner.passes += 1
                lg = runner.final(h[:, -1])
                ld = runner.ld(lg, [emos[j] for _, _, j in part])
                for q, (li, kind, j) in enumerate(part):
                    name = kinds[kind][0]
                    if name == "all":
                        dir_all[li, g[j]] = ld[q]
                    elif name == "random":
                        rnd_all[li, g[j]] = ld[q]
                    elif t[j] - n_positions >= 1:
                        directional[li, 0, g[j]] = ld[q]
            bar.update(n_l)
    finally:
        bar.close()
    settings = {
        "emotions": emotions,
        "baseline": baseline,
        "n_pairs_requested": n_pairs,
        "min_pairs": min_pairs,
        "n_positions": n_positions,
        "n_layers": n_layers,
        "batch_size": batch_size,
        "rows_per_pass": rows_per_pass,
        "seed": seed,
        "forward_passes": runner.passes,
        "pairing": "equal token length after the cue; shuffled within each length, zipped, "
        "then n_pairs drawn at random per emotion",
    }
    return PatchRun(
        pairs, layers, columns, ld_e, ld_n, full, directional, dir_all, rnd_all, found,
        _column_tokens(lm, pairs, token_ids, n_positions), settings,
    )  # fmt: skip


def _check(
    lm: LoadedModel,
    vectors: EmotionVectors,
    readouts: Mapping[str, Readout],
    emotions: Sequence[str],
) -> None:
    if vectors.site != "resid":
        raise DataError(f"the vectors are for site {vectors.site!r}; patching needs resid")
    width = next(iter(vectors.directions.values())).shape[-1]
    if width != lm.arch.width:
        raise DataError(f"the vectors are {width} wide, the model {lm.arch.width}")
    if not emotions:
        raise DataError("no emotion to patch (none has both a direction and a readout)")
    for e in emotions:
        if e not in vectors.directions:
            raise DataError(
                f"no {e!r} direction in the vectors (has {', '.join(vectors.emotions)})"
            )
        if e not in readouts:
            raise DataError(f"no readout for {e!r}")


@dataclass
class _Batch:
    """Pairs run together, left-padded to a common width so that the positions counted
    from the end share a column; position ids from the mask (as in capture)."""

    rows: np.ndarray  # pair indices
    ids_e: torch.Tensor
    ids_n: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    lengths: np.ndarray

    @property
    def width(self) -> int:
        return int(self.ids_n.shape[1])

    @classmethod
    def make(
        cls, pairs: Sequence[Pair], rows: list[int], token_ids: Sequence[list[int]], pad: int
    ) -> _Batch:
        import torch

        t = np.array([pairs[i].n_tokens for i in rows])
        s = int(t.max())

        def padded(key: str) -> torch.Tensor:
            seqs = [token_ids[getattr(pairs[i], key)] for i in rows]
            return torch.tensor([[pad] * (s - len(q)) + list(q) for q in seqs])

        mask = torch.tensor([[0] * (s - n) + [1] * n for n in t])
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return cls(np.array(rows), padded("emotion_row"), padded("neutral_row"), mask, pos, t)


def _column_tokens(
    lm: LoadedModel, pairs: Sequence[Pair], token_ids: Sequence[list[int]], n_positions: int
) -> dict[str, str]:
    """The token at each offset from the end, where every prompt has the same one."""
    out = {}
    for k in range(1, n_positions + 1):
        seen = {
            token_ids[r][-k]
            for p in pairs
            for r in (p.emotion_row, p.neutral_row)
            if len(token_ids[r]) >= k
        }
        if len(seen) == 1:
            out[str(-k)] = lm.tokenizer.decode([seen.pop()])
    return out


def headline(rows: Sequence[dict], gaps: Sequence[dict]) -> dict[str, Any]:
    """Per emotion, from :meth:`PatchRun.table` rows and :meth:`PatchRun.gaps`: the
    gap; the layer where directional patching of every position recovers most (with its
    interval and the random direction there); the first layer from which the full patch at
    the readout position (``-1``) recovers at least half, and the last layer at which the
    prompt body alone still does (where the information moves to the final positions)."""
    out: dict[str, Any] = {}
    for g in gaps:
        emo = g["emotion"]
        mine = [r for r in rows if r["emotion"] == emo]

        def sel(kind: str, position: str, mine=mine) -> list[dict]:
            return [r for r in mine if r["kind"] == kind and r["position"] == position
                    and r["recovered"] is not None]  # fmt: skip

        d = sel("directional", ALL)
        rnd = {r["layer"]: r["recovered"] for r in sel("random", ALL)}
        best = max(d, key=lambda r: r["recovered"]) if d else None
        last = sel("full", "-1")
        body = sel("full", BODY)
        cells = [r for r in mine if r["kind"] == "directional" and r["position"] != ALL
                 and r["recovered"] is not None]  # fmt: skip
        top = max(cells, key=lambda r: r["recovered"]) if cells else None
        out[emo] = {
            **{k: g[k] for k in ("gap", "gap_ci_low", "gap_ci_high", "pairs_found", "pairs_used")},
            "directional_all_positions": None if best is None else {
                "best_layer": best["layer"], "recovered": best["recovered"],
                "ci_low": best["ci_low"], "ci_high": best["ci_high"],
                "random_at_best_layer": rnd.get(best["layer"]),
                "random_max_abs": max((abs(v) for v in rnd.values()), default=None),
            },
            "full_readout_position_first_layer_ge_half": next(
                (r["layer"] for r in sorted(last, key=lambda r: r["layer"])
                 if r["recovered"] >= 0.5), None),
            "full_body_last_layer_ge_half": max(
                (r["layer"] for r in body if r["recovered"] >= 0.5), default=None),
            "directional_best_cell": None if top is None else {
                k: top[k] for k in ("layer", "position", "recovered", "ci_low", "ci_high")},
        }  # fmt: skip
    return out

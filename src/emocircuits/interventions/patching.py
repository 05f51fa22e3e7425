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

**Cost.** The pairs of all emotions are run together, sorted by length in left-padded
batches (position ids from the mask), so that a position counted from the end is one
column of the batch. Per batch, layer and kind: one pass per single position and one for
the body. A patch at position ``t`` leaves the positions before ``t`` unchanged (causal
attention), so the neutral prefix is run once into a KV cache and each single-position
pass computes only the columns from ``t`` on; only the last position's logits are
computed. SmolLM2-135M, 24 pairs per emotion, 6 positions, 31 layers: about 3,500 passes.
The model is never modified: every edit is a hook
(:func:`~emocircuits.capture.hooks.hooked`), removed on exit.

>>> pairs, found = match_pairs(["anger", "neutral", "anger", "neutral"], [5, 5, 6, 7],
...                            ["anger"], min_pairs=1)
>>> [(p.emotion_row, p.neutral_row, p.n_tokens) for p in pairs], found
([(0, 1, 5)], {'anger': 1})
>>> res = patch(lm, texts, labels, vecs, readouts, n_pairs=24)  # doctest: +SKIP
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
from emocircuits.interventions.readout import Readout, logit_diff, readout_texts

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
    hooks: list[Hook] = []
    for layer, fn in edits.items():
        i = arch.normalize_layer(layer, "resid")

        def forward(module: Any, args: Any, output: Any, fn=fn) -> Any:
            h = output[0] if isinstance(output, tuple | list) else output
            new = fn(h)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple | list) else new

        def pre(module: Any, args: Any, kwargs: dict[str, Any], fn=fn) -> Any:
            h = args[0] if args else kwargs["hidden_states"]
            new = fn(h)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        if i == 0:
            hooks.append((arch.blocks[0], "pre", pre))
        else:
            hooks.append((arch.blocks[i - 1], "forward", forward))
    return hooks


# ---------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """An emotion prompt and a neutral prompt of the same token length (row indices into
    the texts given to :func:`patch`)."""

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
class PatchResult:
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
            boots = d[np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))]
            lo, hi = np.quantile(boots.mean(1), [(1 - level) / 2, (1 + level) / 2])
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
    n_pairs = p.shape[-1]
    idx = np.random.default_rng(seed).integers(0, n_pairs, (n_boot, n_pairs))
    w = np.zeros((n_boot, n_pairs))
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)  # times each pair is drawn
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
        src = source.to(h.dtype)
        if direction is None:
            h[:, index] = src
        else:
            v = direction.to(h.dtype)
            v = v.expand(h.shape[0], -1)[:, None]  # [batch, 1, width]
            cur = h[:, index]
            h[:, index] = cur + ((src - cur) * v).sum(-1, keepdim=True) * v
        return h

    return fn


def _record_fn(store: dict[int, torch.Tensor], layer: int) -> Callable:
    def fn(h: torch.Tensor) -> None:
        store[layer] = h.detach().clone()

    return fn


class _Runner:
    """Forward passes of one model on a left-padded batch: last-position logits, with
    residual edits and an optional KV cache of the first columns (copied, so the cached
    prefix can be reused)."""

    def __init__(self, lm: LoadedModel, readouts: Mapping[str, Readout]) -> None:
        self.lm, self.readouts = lm, readouts
        self.device = lm.arch.base_model.device
        self.passes = 0

    def logits(
        self,
        batch: _Batch,
        edits: Mapping[int, Callable] | None = None,
        *,
        neutral: bool = True,
        start: int = 0,
        past: Any = None,
    ) -> torch.Tensor:
        """Run columns ``start:`` (the cache holds the columns before)."""
        import torch

        ids = batch.ids_n if neutral else batch.ids_e
        kw: dict[str, Any] = {"use_cache": past is not None, "logits_to_keep": 1}
        if past is not None:
            kw["past_key_values"] = copy.deepcopy(past)
        with torch.no_grad(), hooked(resid_edit_hooks(self.lm.arch, edits or {})):
            out = self.lm.model(
                input_ids=ids[:, start:].to(self.device),
                attention_mask=batch.mask.to(self.device),
                position_ids=batch.pos[:, start:].to(self.device),
                **kw,
            )
        self.passes += 1
        return out.logits[:, -1]

    def prefix(self, batch: _Batch, end: int) -> Any:
        """KV cache of the neutral run's columns ``:end``."""
        import torch

        with torch.no_grad():
            out = self.lm.model(
                input_ids=batch.ids_n[:, :end].to(self.device),
                attention_mask=batch.mask[:, :end].to(self.device),
                position_ids=batch.pos[:, :end].to(self.device),
                use_cache=True,
                logits_to_keep=1,
            )
        self.passes += 1
        return out.past_key_values

    def ld(self, logits: torch.Tensor, emotions: Sequence[str]) -> np.ndarray:
        out = np.empty(len(emotions))
        for emo in set(emotions):
            m = np.array([e == emo for e in emotions])
            out[m] = logit_diff(logits[_index(m)], self.readouts[emo])
        return out


def _index(mask: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.flatnonzero(mask))


def _columns(n_positions: int) -> list[str]:
    return [BODY, *(str(-k) for k in range(n_positions, 0, -1))]


def random_directions(width: int, layers: Sequence[int], seed: int) -> np.ndarray:
    """``[len(layers), width]`` random unit directions (one per layer, from ``seed``)."""
    rng = np.random.default_rng([seed, 7919])
    v = rng.normal(size=(len(layers), width))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def patch(
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
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> PatchResult:
    """Match pairs, run them clean, and patch at every layer and position (module
    docstring). ``texts``/``labels``: the prompts without the cue (it is appended);
    ``readouts``: a :class:`~emocircuits.interventions.readout.Readout` per emotion;
    ``layers``: resid layers to patch (default: all of ``vectors.layers``).

    >>> res = patch(lm, ds.texts, ds.labels, vecs, {e: readout(lm.tokenizer, e)
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

    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else (lm.tokenizer.eos_token_id or 0)
    batches = [_Batch.make(pairs, g, token_ids, pad) for g in _groups(pairs, batch_size)]
    total = sum(_n_passes(b.width, n_positions, n_l) for b in batches)
    resid_layers = sorted({arch.normalize_layer(x, "resid") for x in layers})
    runner = _Runner(lm, readouts)
    bar = tqdm(total=total, desc="patch", unit="pass", disable=not progress)
    try:
        for b in batches:
            g, s, t = b.rows, b.width, b.lengths
            emos = [pairs[i].emotion for i in g]
            store: dict[int, torch.Tensor] = {}
            rec = {x: _record_fn(store, x) for x in resid_layers}
            ld_e[g] = runner.ld(runner.logits(b, rec, neutral=False), emos)
            ld_n[g] = runner.ld(runner.logits(b), emos)
            # KV caches of the neutral run before each single patched column
            caches = {k: runner.prefix(b, s - k) for k in range(1, min(n_positions, s - 1) + 1)}
            bar.update(2 + len(caches))
            for li, layer in enumerate(layers):
                src = store[arch.normalize_layer(layer, "resid")]  # [n, s, W]
                v = torch.stack([dirs[e][li] for e in emos])  # [n, W]
                for c, col in enumerate(columns):
                    if col == BODY:  # every column before the last n_positions
                        if s - n_positions < 1:
                            continue
                        idx, start, past = slice(0, s - n_positions), 0, None
                        source, valid = src[:, idx], t - n_positions >= 1
                    else:
                        k = -int(col)
                        if k > s:
                            continue
                        source, valid = src[:, s - k : s - k + 1], t >= k
                        if k in caches:
                            idx, start, past = slice(0, 1), s - k, caches[k]
                        else:  # the first column: no prefix
                            idx, start, past = slice(0, 1), 0, None
                    for out, direction in ((full, None), (directional, v)):
                        edit = {layer: _patch_fn(source, idx, direction)}
                        ld = runner.ld(runner.logits(b, edit, start=start, past=past), emos)
                        out[li, c, g] = np.where(valid, ld, np.nan)
                        bar.update(1)
                for out, direction in ((dir_all, v), (rnd_all, rnd[li])):
                    edit = {layer: _patch_fn(src, slice(0, s), direction)}
                    out[li, g] = runner.ld(runner.logits(b, edit), emos)
                    bar.update(1)
    finally:
        bar.close()
    settings = {
        "emotions": emotions,
        "baseline": baseline,
        "n_pairs_requested": n_pairs,
        "min_pairs": min_pairs,
        "n_positions": n_positions,
        "batch_size": batch_size,
        "seed": seed,
        "forward_passes": runner.passes,
        "pairing": "equal token length after the cue; shuffled within each length, zipped, "
        "then n_pairs drawn at random per emotion",
    }
    return PatchResult(
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


def _groups(pairs: Sequence[Pair], batch_size: int, spread: float = 1.25) -> list[list[int]]:
    """Pair indices sorted by token length, at most ``batch_size`` a batch, and a new batch
    wherever a pair is more than ``spread`` times longer than the batch's first (little
    padding: a long prompt does not widen a batch of short ones)."""
    order = sorted(range(len(pairs)), key=lambda i: (pairs[i].n_tokens, i))
    out: list[list[int]] = []
    for i in order:
        if (
            out
            and len(out[-1]) < batch_size
            and (pairs[i].n_tokens <= spread * pairs[out[-1][0]].n_tokens)
        ):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _n_passes(t: int, n_positions: int, n_layers: int) -> int:
    cells = (t - n_positions >= 1) + min(n_positions, t)
    return 2 + min(n_positions, t - 1) + n_layers * (2 * cells + 2)


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
    """Per emotion, from :meth:`PatchResult.table` rows and :meth:`PatchResult.gaps`: the
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

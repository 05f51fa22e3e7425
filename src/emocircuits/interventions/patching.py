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

**Matched pairs** (:func:`~emocircuits.interventions.patch_pairs.match_pairs`). The presets
have no matched pairs, so each emotion prompt is paired with a neutral prompt of the **same
token length** (after the cue is appended, special tokens included): position ``t`` of one
is position ``t`` of the other, and the cue tokens line up at the end. Within each length
the emotion and neutral prompts are shuffled (``seed``) and zipped, so a neutral prompt is
used at most once per emotion; then ``n_pairs`` of the candidates are drawn at random. The
number of candidates per emotion is reported (SmolLM2 on ``extended``: 266 to 283 per
emotion; on ``baseline`` 36 to 44). No right-aligned fallback is needed for the presets;
fewer than ``min_pairs`` candidates is an error.

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

Here: :func:`run_patching`, the method. Beside it: :mod:`~.patch_pairs` (the pairing),
:mod:`~.patch_passes` (the batches and forward passes above), :mod:`~.patch_results`
(:class:`~.patch_results.PatchRun`: the tables and the headline) and
:func:`~emocircuits.interventions.effects.recovered_fraction` (the statistic).

>>> pairs, found = match_pairs(["anger", "neutral", "anger", "neutral"], [5, 5, 6, 7],
...                            ["anger"], min_pairs=1)
>>> [(p.emotion_row, p.neutral_row, p.n_tokens) for p in pairs], found
([(0, 1, 5)], {'anger': 1})
>>> res = run_patching(lm, texts, labels, vecs, readouts, n_pairs=24)  # doctest: +SKIP
>>> rows = res.table()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from emocircuits.errors import DataError
from emocircuits.interventions.budgets import PATCH_BUDGETS  # noqa: F401  (re-exported)
from emocircuits.interventions.forward import length_groups, resume
from emocircuits.interventions.patch_pairs import Pair, match_pairs
from emocircuits.interventions.patch_passes import PairBatch, PatchRunner, enter_patched, rows_patch
from emocircuits.interventions.patch_results import BODY, PatchRun
from emocircuits.interventions.readout import Readout, readout_texts
from emocircuits.models.batching import Batches, BatchSize, row_bytes

if TYPE_CHECKING:
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel


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
    batch_size: BatchSize | Batches = 32,
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
    # a batch of pairs: its rows of every array below are written whole (a batch that
    # runs out of memory is halved and run again: ``batches.run``)
    batches = Batches.of(batch_size, "patch")
    longest = max((q.n_tokens for q in pairs), default=1)
    per_pair = row_bytes(lm, longest, cache_tokens=longest * (n_positions + 3), kept=2 * (L + 1))
    size = batches.size("pairs", lm, per_pair, len(pairs))
    groups = length_groups([q.n_tokens for q in pairs], size)  # little padding
    runner = PatchRunner(lm, readouts)
    per_chunk = max(1, 4 * rows_per_pass // size)  # layers per cached pass
    bar = tqdm(total=len(pairs) * n_l, desc="patch", unit="pair-layer", disable=not progress)

    def one(rows: np.ndarray) -> None:
        b = PairBatch.make(pairs, rows.tolist(), token_ids, pad)
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
        caches = {k: runner.prefix(b, s - k, tr_n) for k in range(1, min(n_positions, s - 1) + 1)}
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
                        edits[layers[li]] = rows_patch(sel, source, slice(0, 1), d)
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
            enter = enter_patched(tr_e, tr_n, part, kinds, body, rnd)
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

    try:
        for rows, _ in batches.run("pairs", groups, one):
            bar.update(len(rows) * n_l)
    finally:
        bar.close()
    batches.report(progress)
    settings = {
        "emotions": emotions,
        "baseline": baseline,
        "n_pairs_requested": n_pairs,
        "min_pairs": min_pairs,
        "n_positions": n_positions,
        "n_layers": n_layers,
        **batches.provenance,
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

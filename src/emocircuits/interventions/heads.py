"""Heads and neurons (RQ4): which attention heads and MLP neurons write an emotion direction,
and what mean-ablating the top heads does, against random heads.

**Direct contributions.** Head h of block i writes ``z_h @ W_h.T`` into the residual stream
(``z_h``: its slice of the input of the attention output projection, ``W_h``: its columns of
that projection, :meth:`~emocircuits.models.architectures.Architecture.o_proj_weight`).
Neuron j of block i writes ``a_j * W[:, j]`` (``a``: the input of the MLP's down projection,
:meth:`~emocircuits.models.architectures.Architecture.mlp_proj_weight`). The direct
contribution is that write projected on the unit direction ``v`` of the emotion at the
readout layer ``R`` (activation-folder numbering: resid layer R is the output of block R-1,
so blocks ``i < R`` contribute directly; heads and neurons are named by their block, e.g.
``L12H3``). Through the residual stream the sum is exact::

    resid_R . v = embedding . v + sum_{i<R} (sum_h head_ih + attn bias_i
                                             + sum_j neuron_ij + mlp bias_i) . v

- **Positions.** Every prompt runs once with the readout cue appended
  (:func:`~emocircuits.interventions.readout.readout_texts`). Writes are read (a) at the
  positions the vectors were built with (``vectors.position``, e.g. ``mean``: the mean over
  the prompt's content tokens without the first), restricted to the prompt's own tokens: in
  a causal model they do not see the cue, so they equal a run of the prompt alone; and (b)
  at the cue's last token (``cue``), where the logit difference is read. Neurons: (a) only.
- **Gemma 2/3** normalise the attention (MLP) output ``o`` before adding it:
  ``y_t = g * o_t * r_t`` (gain ``g``, per-position normaliser ``r_t = 1 / rms(o_t)``). This is
  linearised with each position's **actual** normaliser, measured in the run as
  ``r_t = |y_t| / |g * o_t|``: head h contributes ``g * (z_ht @ W_h.T) * r_t``, and heads
  (plus bias) sum exactly to what the block adds. Other families: ``r_t = 1``.
- **Contrast.** Per emotion: mean contribution over the emotion's prompts minus the mean over
  the baseline (neutral) prompts, with a stratified bootstrap percentile interval over
  prompts (:func:`contrast`). What a head writes on every prompt alike (its bias, a constant
  write) cancels. Positive: the head pushes the emotion's prompts further along ``v``.
- **Readout layer.** ``layer``, else the vectors' layer (>= 1) whose projections separate
  the emotions from the baseline best: the largest mean over emotions of Cohen's d
  (:func:`separation`) on the prompts analysed.

**Ablation.** A head is **mean-ablated**: its ``z`` is replaced by its mean over the baseline
prompts (every token of the cue-appended texts except each text's first, the attention sink)
at every position except the first (:func:`ablating_heads`, a forward pre-hook on the output
projection, always removed). Zero-ablation would take the model far off its distribution;
the mean removes what is specific to the prompt and keeps the head's average write. The
top-k heads by contrast (k = 1, 2, 4, 8; ranked at the readout positions and, separately,
at the cue) are compared with ``n_random`` draws of k heads from the same candidates
(every head of blocks < R, shared by emotions and rankings), on a sample of each emotion's
prompts. Two measures, both as **drops** (unablated minus ablated, per prompt, averaged):
(a) the logit difference at the cue's last token (what the model says, see
:func:`~emocircuits.interventions.readout.logit_diff`), (b) the projection on ``v`` at layer
R at the readout positions (the direction itself). ``p = (1 + #draws with a drop >= the
top-k drop) / (1 + n_random)``, one-sided. ``share_of_gap``: the drop as a fraction of the
unablated emotion-minus-neutral gap of the measure. Cost: the clean run of each batch of
prompts is recorded once; each (draw, prompt) then runs only the blocks from its first
ablated head on, many draws in one batch (:mod:`~emocircuits.interventions.forward`), and
only the readout words' logits are computed. A whole-study run uses the budget ``fast``
of :data:`HEADS_BUDGETS`.

Why two rankings: the direction lives at the prompt's positions, the logit difference at
the cue's last token, and a head can write the direction at one and not the other. Heads
ranked at the readout positions test the direction itself (measure b) and whether it
matters for the output (a); heads ranked at the cue are the ones whose direct write could
move the logit difference, so their effect on (a) is the fair comparison for the logits.

>>> res = analyze_heads(lm, load_dataset("extended"), vecs)        # doctest: +SKIP
>>> write_heads(res, "runs/heads-smollm2")                          # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emocircuits.capture.capture import plan_batches, token_lengths, tokenize
from emocircuits.capture.hooks import Hook, first_tensor, hooked
from emocircuits.capture.positions import Selection, TokenBatch, get_rule, last
from emocircuits.errors import DataError
from emocircuits.geometry.stats import (
    bootstrap_mean_ci,
    bootstrap_weights,
    class_means,
    percentile_ci,
)
from emocircuits.interventions.forward import (
    length_groups,
    resume,
    take_rows,
    trace,
    unembed,
)
from emocircuits.interventions.readout import (
    Readout,
    logit_diff,
    readout,
    readout_columns,
    readout_texts,
)

if TYPE_CHECKING:
    from pathlib import Path

    from emocircuits.data.dataset import Dataset
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.architectures import Architecture
    from emocircuits.models.loading import LoadedModel

FORMAT = "emocircuits.heads"
CUE_POSITION = "cue"
METRICS = ("logit_diff", "projection")


def head_name(block: int, head: int) -> str:
    """``L{block}H{head}``: block numbering (block i adds to resid layer i + 1).

    >>> head_name(12, 3)
    'L12H3'
    """
    return f"L{block}H{head}"


# ---------------------------------------------------------------------------- batches
@dataclass
class _Batch:
    """One tokenised batch (left padding: the cue's last token is the last position)."""

    rows: np.ndarray
    inputs: dict[str, torch.Tensor]
    selections: dict[str, Selection]  # "readout" (prompt's tokens, vectors' rule), "cue"
    where: torch.Tensor  # [b, s] positions an ablation touches: attended, not the first


def _prepare(
    lm: LoadedModel,
    texts: Sequence[str],
    limits: Sequence[int],
    spans: Sequence[tuple[int, int] | None],
    rows: Sequence[int],
    position: str,
) -> _Batch:
    batch, inputs = tokenize(
        lm, [texts[i] for i in rows], [spans[i] for i in rows], padding_side="left"
    )
    mask = batch.attention_mask.bool()
    lim = torch.tensor([limits[i] for i in rows]).unsqueeze(1)
    in_prompt = mask & (batch.offsets[..., 1] <= lim)  # the cue's tokens end after the prompt
    prompt_only = TokenBatch(
        batch.input_ids, in_prompt.long(), batch.special, batch.offsets, batch.spans
    )
    first = mask.long().argmax(1)
    where = mask.clone()
    where[torch.arange(len(rows)), first] = False
    return _Batch(
        np.asarray(rows),
        inputs,
        {"readout": get_rule(position)(prompt_only), CUE_POSITION: last(batch)},
        where,
    )


def _check_position(position: str) -> None:
    get_rule(position)
    if position == "all":
        raise DataError("heads need a position rule that reads one value per prompt, not 'all'")


def _normaliser(y: torch.Tensor, o: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` per-position factor ``r`` with ``y = gain * o * r`` (an RMSNorm's output
    ``y`` of ``o``), measured from the run; 0 where ``o`` is 0."""
    num = y.float().norm(dim=-1)
    den = (o.float() * gain).norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


# ---------------------------------------------------------------------------- capture
@dataclass
class HeadCapture:
    """What one pass over the prompts records (rows in input order). ``z``, ``attn_scale``
    and ``resid`` are keyed by position (``"readout"``, ``"cue"``).

    - ``z[pos]`` ``[n, L, H, d]``: each head's input of the output projection, times the
      post-norm factor ``r_t`` (1 without one), reduced over the positions;
    - ``attn_scale[pos]`` ``[n, L]``: ``r_t`` reduced likewise (weights bias terms);
    - ``act`` ``[n, L, F]`` and ``mlp_scale`` ``[n, L]``: the same for MLP neurons (readout);
    - ``resid[pos]`` ``[n, L + 1, W]``: the residual stream (index 0 = embedding output);
    - ``z_mean`` ``[L, H, d]``: each head's mean ``z`` over the baseline rows, at every
      attended position but the first (what mean ablation writes);
    - ``logit_diff`` ``{emotion: [n]}``: the readout's logit difference at the cue.
    """

    z: dict[str, np.ndarray]
    attn_scale: dict[str, np.ndarray]
    act: np.ndarray
    mlp_scale: np.ndarray
    resid: dict[str, np.ndarray]
    z_mean: np.ndarray | None
    logit_diff: dict[str, np.ndarray] = field(default_factory=dict)


def capture_heads(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    position: str = "mean",
    spans: Sequence[tuple[int, int] | None] | None = None,
    baseline_rows: np.ndarray | None = None,
    readouts: dict[str, Readout] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> HeadCapture:
    """One forward pass per batch of cue-appended prompts records everything the direct
    contributions and the mean ablation need (see :class:`HeadCapture`).

    >>> cap = capture_heads(lm, ["Thank you so much.", "The bus is late."])  # doctest: +SKIP
    >>> cap.z["readout"].shape  # doctest: +SKIP
    (2, 30, 9, 64)
    """
    from tqdm.auto import tqdm

    _check_position(position)
    arch = lm.arch
    L, H, d, W = arch.n_layers, arch.n_heads, arch.head_dim, arch.width
    n = len(prompts)
    if n == 0:
        raise DataError("no prompts to analyse")
    texts = readout_texts(prompts)
    limits = [len(p.rstrip()) for p in prompts]
    spans = list(spans) if spans is not None else [None] * n
    readouts = readouts or {}
    n_neurons = arch.mlp_proj_weight(0)[0].shape[1]
    positions = ("readout", CUE_POSITION)
    z = {p: np.zeros((n, L, H, d), np.float32) for p in positions}
    a_scale = {p: np.zeros((n, L), np.float32) for p in positions}
    resid = {p: np.zeros((n, L + 1, W), np.float32) for p in positions}
    act = np.zeros((n, L, n_neurons), np.float32)
    m_scale = np.zeros((n, L), np.float32)
    base = np.zeros(n, bool) if baseline_rows is None else np.asarray(baseline_rows, bool)
    z_sum = torch.zeros(L, H * d, dtype=torch.float64)
    z_count = 0.0
    lds = {e: np.zeros(n, np.float64) for e in readouts}
    gains = {
        s: [arch.post_norm_gain(i, s) for i in range(L)] for s in ("attn", "mlp")
    }  # None without post-norms
    cur: dict[str, Any] = {}
    stash: dict[tuple[str, int], torch.Tensor] = {}

    def reduce_scaled(sel: Selection, x: torch.Tensor, r: torch.Tensor | None) -> tuple:
        """``sel.reduce(x * r)`` and ``sel.reduce(r)`` (``r [b, s]``; None: 1), as numpy."""
        r = torch.ones(x.shape[:2]) if r is None else r.float().cpu()
        rx = r.reshape(*r.shape, *([1] * (x.dim() - 2)))
        return sel.reduce(x * rx).numpy(), sel.reduce(r[..., None])[:, 0].numpy()

    def put_heads(i: int, zt: torch.Tensor, r: torch.Tensor | None) -> None:
        zh = zt.float().cpu().reshape(*zt.shape[:2], H, d)
        for p in positions:
            sel = cur["batch"].selections[p]
            z[p][cur["rows"], i], a_scale[p][cur["rows"], i] = reduce_scaled(sel, zh, r)

    def put_neurons(i: int, at: torch.Tensor, r: torch.Tensor | None) -> None:
        sel = cur["batch"].selections["readout"]
        act[cur["rows"], i], m_scale[cur["rows"], i] = reduce_scaled(sel, at.float().cpu(), r)

    def on_o_proj(i: int) -> Callable[..., None]:
        def fn(zt: torch.Tensor) -> None:
            nonlocal z_count
            keep = cur["base"]
            if keep.any():
                w = cur["batch"].where[keep].to(torch.float64)
                z_sum[i] += torch.einsum("bs,bsk->k", w, zt.cpu()[keep].double())
                if i == 0:
                    z_count += float(w.sum())
            if gains["attn"][i] is None:
                put_heads(i, zt, None)
            else:
                stash[("attn", i)] = zt

        return fn

    def on_mlp_proj(i: int) -> Callable[..., None]:
        def fn(module: Any, args: Any, output: Any) -> None:
            if gains["mlp"][i] is None:
                put_neurons(i, args[0], None)
            else:
                stash[("mlp", i)] = args[0]

        return fn

    def on_post_norm(site: str, i: int) -> Callable[..., None]:
        def fn(module: Any, args: Any, output: Any) -> None:
            g = gains[site][i]
            assert g is not None
            r = _normaliser(first_tensor(output), args[0], g)
            x = stash.pop((site, i))
            (put_heads if site == "attn" else put_neurons)(i, x, r)

        return fn

    def on_resid(layer: int) -> Callable[..., None]:
        def fn(h: torch.Tensor) -> None:
            for p in positions:
                sel = cur["batch"].selections[p]
                resid[p][cur["rows"], layer] = sel.reduce(h.float().cpu()).numpy()

        return fn

    hooks: list[Hook] = [arch.place("resid", layer).read(on_resid(layer)) for layer in range(L + 1)]
    for i in range(L):
        hooks.append(arch.place("heads", i).read(on_o_proj(i)))
        hooks.append((arch.mlp_proj(i), "forward", on_mlp_proj(i)))
        for site in ("attn", "mlp"):
            norm = arch.post_norm(i, site)
            if norm is not None:
                hooks.append((norm, "forward", on_post_norm(site, i)))
    batches = plan_batches(token_lengths(lm, texts), batch_size)
    device = arch.base_model.device
    cols = readout_columns(readouts.values())
    with hooked(hooks), torch.inference_mode():
        for rows in tqdm(batches, desc="heads: capture", unit="batch", disable=not progress):
            b = _prepare(lm, texts, limits, spans, rows, position)
            cur.update(batch=b, rows=rows, base=torch.from_numpy(base[rows]))
            out = arch.base_model(**{k: v.to(device) for k, v in b.inputs.items()}, use_cache=False)
            if cols:  # only the readout words' logits, at the cue's last token
                logits = unembed(lm, out.last_hidden_state[:, -1], cols, normed=True)
                for e, r in readouts.items():
                    lds[e][rows] = logit_diff(logits.float().cpu(), r, cols)
    z_mean = (z_sum / z_count).float().reshape(L, H, d).numpy() if z_count else None
    return HeadCapture(z, a_scale, act, m_scale, resid, z_mean, lds)


# ----------------------------------------------------------------------------- weights
@dataclass
class WriteWeights:
    """The weights that write into the residual stream, per block (float32 numpy):
    ``o_proj [L, W, H*d]``, ``mlp_proj [L, W, F]``, biases ``[L, W]`` (zeros if none),
    post-norm gains ``[L, W]`` (ones without a post-norm; up to a factor, see
    :meth:`~emocircuits.models.architectures.Architecture.post_norm_gain`)."""

    o_proj: np.ndarray
    o_bias: np.ndarray
    mlp_proj: np.ndarray
    mlp_bias: np.ndarray
    attn_gain: np.ndarray
    mlp_gain: np.ndarray
    n_heads: int
    head_dim: int


def write_weights(arch: Architecture) -> WriteWeights:
    """Collect :class:`WriteWeights` from a model (read only).

    >>> w = write_weights(lm.arch)  # doctest: +SKIP
    """

    def parts(fn: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]]) -> tuple:
        ws, bs = [], []
        for i in range(arch.n_layers):
            w, b = fn(i)
            ws.append(w.float().cpu().numpy())
            bs.append(np.zeros(arch.width, np.float32) if b is None else b.float().cpu().numpy())
        return np.stack(ws), np.stack(bs)

    def gains(site: str) -> np.ndarray:
        out = []
        for i in range(arch.n_layers):
            g = arch.post_norm_gain(i, site)
            out.append(np.ones(arch.width, np.float32) if g is None else g.cpu().numpy())
        return np.stack(out)

    o, ob = parts(arch.o_proj_weight)
    m, mb = parts(arch.mlp_proj_weight)
    return WriteWeights(o, ob, m, mb, gains("attn"), gains("mlp"), arch.n_heads, arch.head_dim)


def _directions(v: np.ndarray) -> tuple[np.ndarray, bool]:
    v = np.asarray(v, np.float32)
    return (v[:, None], True) if v.ndim == 1 else (v, False)


def head_contributions(z: np.ndarray, w: WriteWeights, v: np.ndarray, layer: int) -> np.ndarray:
    """Direct contribution of every head of blocks ``< layer`` to ``v``: ``[n, layer, H]``
    for ``v`` ``[W]`` (or ``[n, layer, H, K]`` for ``K`` directions ``[W, K]``; the identity
    gives the heads' whole writes). ``z``: :attr:`HeadCapture.z` at one position.

    >>> c = head_contributions(cap.z["readout"], w, v, 20)  # doctest: +SKIP
    """
    vv, flat = _directions(v)
    H, d = w.n_heads, w.head_dim
    gv = w.attn_gain[:layer, :, None] * vv[None]  # [R, W, K]
    u = np.matmul(w.o_proj[:layer].transpose(0, 2, 1), gv).reshape(layer, H, d, -1)
    out = np.matmul(z[:, :layer, :, None, :], u[None])[:, :, :, 0]  # [n, R, H, K]
    return out[..., 0] if flat else out


def bias_contributions(
    scale: np.ndarray, bias: np.ndarray, gain: np.ndarray, v: np.ndarray, layer: int
) -> np.ndarray:
    """``[n, layer]`` (or ``[n, layer, K]``): a projection's bias through the post-norm,
    weighted by the reduced normaliser ``scale`` (:attr:`HeadCapture.attn_scale`)."""
    vv, flat = _directions(v)
    out = scale[:, :layer, None] * ((bias[:layer] * gain[:layer]) @ vv)[None]
    return out[..., 0] if flat else out


def neuron_weights(w: WriteWeights, v: np.ndarray, layer: int) -> np.ndarray:
    """``[layer, F]``: what one unit of each neuron's activation writes along ``v``."""
    gv = (w.mlp_gain[:layer] * v[None])[:, None, :]  # [R, 1, W]
    return np.matmul(gv, w.mlp_proj[:layer])[:, 0]


def neuron_contributions(act: np.ndarray, w: WriteWeights, v: np.ndarray, layer: int) -> np.ndarray:
    """Direct contribution ``[n, layer, F]`` of every MLP neuron of blocks ``< layer`` to
    ``v`` [W]: reduced activation (:attr:`HeadCapture.act`) times its write along ``v``."""
    return act[:, :layer] * neuron_weights(w, v, layer)[None]


# --------------------------------------------------------------------------- statistics
@dataclass
class Contrast:
    """``value = emotion_mean - baseline_mean`` (any trailing shape) with a bootstrap
    percentile interval ``[lo, hi]`` over prompts (resampled within each class)."""

    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    emotion_mean: np.ndarray
    baseline_mean: np.ndarray
    n_emotion: int
    n_baseline: int


def contrast(
    values: np.ndarray,
    labels: Sequence[str],
    emotion: str,
    baseline: str = "neutral",
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Contrast:
    """Mean over ``emotion`` rows minus mean over ``baseline`` rows of ``values [n, ...]``.

    >>> c = contrast(np.array([3.0, 5.0, 1.0, 1.0]), ["a", "a", "neutral", "neutral"], "a")
    >>> float(c.value), float(c.lo) <= 3.0 <= float(c.hi)
    (3.0, True)
    """
    lab = np.asarray(labels)
    keep = (lab == emotion) | (lab == baseline)
    if not (lab == emotion).any() or not (lab == baseline).any():
        raise DataError(f"a contrast needs rows of both {emotion!r} and {baseline!r}")
    x, lab = np.asarray(values, np.float64)[keep], lab[keep]
    em, bm = x[lab == emotion].mean(0), x[lab == baseline].mean(0)
    wts = bootstrap_weights(lab, n_boot, seed, classes=[emotion, baseline])
    boot = class_means(x, wts)
    lo, hi = percentile_ci((boot[:, 0] - boot[:, 1]).astype(np.float64), level)
    return Contrast(
        em - bm, lo, hi, em, bm, int((lab == emotion).sum()), int((lab == baseline).sum())
    )


def separation(proj: np.ndarray, labels: Sequence[str], emotion: str, baseline: str) -> np.ndarray:
    """Cohen's d of ``proj [n, ...]`` between the emotion's and the baseline's rows: the
    difference of means over the pooled standard deviation (``ddof=1``).

    >>> round(float(separation(np.array([2.0, 4.0, 0.0, 2.0]), list("aann"), "a", "n")), 4)
    1.4142
    """
    lab = np.asarray(labels)
    a, b = proj[lab == emotion], proj[lab == baseline]
    pooled = np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2)
    return (a.mean(0) - b.mean(0)) / np.where(pooled > 0, pooled, np.nan)


@dataclass
class AblationStat:
    """Drops (unablated minus ablated, mean over prompts) of one measure."""

    top_drop: float
    top_lo: float
    top_hi: float
    random_mean: float
    random_lo: float
    random_hi: float
    p: float
    n_random: int


def ablation_stat(
    base: np.ndarray,
    top: np.ndarray,
    random: np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> AblationStat:
    """``base``, ``top`` ``[n]`` per-prompt values unablated and with the top-k heads
    ablated; ``random`` ``[draws, n]`` with random heads. The top-k interval resamples the
    prompts' paired drops; the random band is the percentile range over draws; ``p`` is
    one-sided: ``(1 + #draws with drop >= top drop) / (1 + draws)``.

    >>> s = ablation_stat(np.ones(3), np.zeros(3), np.ones((4, 3)))
    >>> s.top_drop, s.random_mean, s.p
    (1.0, 0.0, 0.2)
    """
    base, top, random = (np.asarray(a, np.float64) for a in (base, top, random))
    drops = base - top
    lo, hi = bootstrap_mean_ci(drops, n_boot, level, seed)
    rd = (base[None] - random).mean(1) if random.size else np.array([])
    top_drop = float(drops.mean())
    if rd.size:
        rlo, rhi = percentile_ci(rd, level)
        p = (1 + int((rd >= top_drop - 1e-12).sum())) / (1 + rd.size)
        rmean = float(rd.mean())
    else:
        rlo = rhi = rmean = p = float("nan")
    return AblationStat(top_drop, float(lo), float(hi), rmean, float(rlo), float(rhi), p, rd.size)


# ----------------------------------------------------------------------------- ablation
@contextmanager
def ablating_heads(
    lm: LoadedModel,
    heads: np.ndarray | Sequence[tuple[int, int]],
    values: np.ndarray | None = None,
    where: torch.Tensor | None = None,
    rows: Callable[[], np.ndarray] | None = None,
) -> Iterator[None]:
    """Replace heads' ``z`` (input of the attention output projection) for the duration of
    the block: by ``values [L, H, d]`` (e.g. :attr:`HeadCapture.z_mean`; None: zero) at the
    positions ``where [b, s]`` (None: every position). ``heads``: ``(block, head)`` pairs,
    a ``[L, H]`` boolean mask, or ``[b, L, H]`` (its own heads for each row of the batch).
    ``rows``: when the batch a block sees holds only some of the ``b`` rows (a
    :func:`~emocircuits.interventions.forward.resume` staircase), a function that returns
    their indices.

    >>> with ablating_heads(lm, [(3, 1)], cap.z_mean, where):  # doctest: +SKIP
    ...     lm.model(**inputs)
    """
    arch = lm.arch
    L, H, d = arch.n_layers, arch.n_heads, arch.head_dim
    if isinstance(heads, np.ndarray) and heads.dtype == bool:
        mask = torch.from_numpy(heads)
    else:
        mask = torch.zeros(L, H, dtype=torch.bool)
        for i, h in heads:
            mask[arch.normalize_layer(i, "heads"), h] = True
    if mask.shape[-2:] != (L, H):
        raise DataError(f"head mask has shape {tuple(mask.shape)}; the model has {L} x {H}")
    rep = None if values is None else torch.as_tensor(np.asarray(values), dtype=torch.float32)

    def hook(i: int) -> Callable[..., Any]:
        m_all = mask[..., i, :]  # [H] or [b, H]

        def fn(zt: torch.Tensor) -> torch.Tensor:
            b, s = zt.shape[:2]
            m, w = m_all, where
            if rows is not None:
                idx = torch.from_numpy(np.asarray(rows()))
                m = m if m.dim() == 1 else m[idx]
                w = None if w is None else w[idx.to(w.device)]
            sel = m.reshape(-1, 1, H, 1).to(zt.device)  # one row of heads, or one per row
            if w is not None:
                sel = sel & w.to(zt.device).view(b, s, 1, 1)
            new = torch.zeros((), dtype=zt.dtype) if rep is None else rep[i].to(zt.dtype)
            return torch.where(sel, new.to(zt.device), zt.view(b, s, H, d)).reshape(zt.shape)

        return fn

    layers = [i for i in range(L) if bool(mask[..., i, :].any())]
    with hooked([arch.place("heads", i).edit(hook(i)) for i in layers]):
        yield


@dataclass(frozen=True)
class Condition:
    """One ablation run: the heads ``(block, head)`` to ablate (empty: none) on ``rows``."""

    heads: tuple[tuple[int, int], ...]
    rows: tuple[int, ...]


def run_conditions(
    lm: LoadedModel,
    prompts: Sequence[str],
    conditions: Sequence[Condition],
    *,
    position: str,
    layer: int,
    directions: np.ndarray,
    readouts: Sequence[Readout | None],
    values: np.ndarray | None,
    spans: Sequence[tuple[int, int] | None] | None = None,
    batch_size: int = 16,
    rows_per_pass: int = 64,
    progress: bool = False,
) -> list[dict[str, np.ndarray]]:
    """For each condition, per row: the logit difference of each readout at the cue's last
    token (``"logit_diff" [rows, E]``; NaN for a None readout) and the projection of
    resid layer ``layer`` at the readout positions on each direction (``"projection"
    [rows, E]``, ``directions [W, E]``), with the condition's heads ablated (mean values
    ``values``; None: zero).

    Cost: each batch of ``batch_size`` prompts runs once clean
    (:func:`~emocircuits.interventions.forward.trace`, which also gives every condition
    without heads); each (condition, prompt) then runs only the blocks from its first
    ablated head on, ``rows_per_pass`` of them in one batch
    (:func:`~emocircuits.interventions.forward.resume`), and only up to ``layer`` when no
    readout needs the logits. Only the readout words' logits are computed."""
    from tqdm.auto import tqdm

    _check_position(position)
    arch = lm.arch
    L, H = arch.n_layers, arch.n_heads
    layer = arch.normalize_layer(layer, "resid")
    if layer < 1:
        raise DataError("the readout layer must be >= 1 (layer 0 is the embedding)")
    texts = readout_texts(prompts)
    limits = [len(p.rstrip()) for p in prompts]
    spans = list(spans) if spans is not None else [None] * len(prompts)
    vecs = torch.as_tensor(np.asarray(directions, np.float32))
    n_e = vecs.shape[1]
    cols = readout_columns(readouts)
    stop = L if cols else layer
    masks = np.zeros((len(conditions), L, H), bool)
    for c, cond in enumerate(conditions):
        for i, h in cond.heads:
            masks[c, arch.normalize_layer(i, "heads"), h] = True
    first = [int(np.flatnonzero(m.any(1))[0]) if m.any() else stop for m in masks]
    out = [{m: np.full((len(c.rows), n_e), np.nan) for m in METRICS} for c in conditions]
    slot = {(c, r): k for c, cond in enumerate(conditions) for k, r in enumerate(cond.rows)}
    by_row: dict[int, list[int]] = {}
    for c, cond in enumerate(conditions):
        for r in cond.rows:
            by_row.setdefault(int(r), []).append(c)
    needed = np.array(sorted(by_row), dtype=np.int64)
    lengths = token_lengths(lm, [texts[i] for i in needed])
    batches = [needed[b] for b in length_groups(lengths, batch_size)]  # little padding
    n_jobs = sum(len(v) for v in by_row.values())
    bar = tqdm(total=n_jobs, desc="heads: ablation", unit="run", disable=not progress)

    def put(c: int, r: int, proj: torch.Tensor, ld: torch.Tensor | None) -> None:
        k = slot[(c, r)]
        out[c]["projection"][k] = proj.numpy()
        if ld is not None:
            for e, rd in enumerate(readouts):
                if rd is not None:
                    out[c]["logit_diff"][k, e] = logit_diff(ld, rd, cols)

    try:
        for rows in batches:
            b = _prepare(lm, texts, limits, spans, rows, position)
            tr = trace(lm, b.inputs, stop=stop)
            sel = b.selections["readout"]
            clean_proj = sel.reduce(tr.resid[layer].float().cpu()) @ vecs  # [B, E]
            clean_ld = unembed(lm, tr.resid[L][:, -1], cols).float().cpu() if cols else None
            jobs = []
            for j, r in enumerate(rows):
                for c in by_row[int(r)]:
                    if first[c] >= stop:  # nothing to ablate before the last layer needed
                        put(c, int(r), clean_proj[j], None if clean_ld is None else clean_ld[j])
                    else:
                        jobs.append((first[c], c, j))
            bar.update(sum(len(by_row[int(r)]) for r in rows) - len(jobs))
            jobs.sort()
            for s0 in range(0, len(jobs), rows_per_pass):
                part = jobs[s0 : s0 + rows_per_pass]
                src = torch.tensor([j for _, _, j in part])
                proj = clean_proj[src].clone()
                state: dict[str, np.ndarray] = {}

                def before(i: int, active: np.ndarray, state=state) -> None:
                    state["rows"] = active

                def after(
                    i: int, h: torch.Tensor, active: np.ndarray, src=src, proj=proj, sel=sel
                ) -> Any:
                    if i == layer - 1:
                        rs = torch.from_numpy(active)
                        proj[rs] = take_rows(sel, src[rs]).reduce(h.float().cpu()) @ vecs
                    return h

                with ablating_heads(
                    lm, masks[[c for _, c, _ in part]], values, b.where[src],
                    rows=lambda state=state: state["rows"],
                ):  # fmt: skip
                    h = resume(lm, tr, src.numpy(), [f for f, _, _ in part], stop=stop,
                               before=before, after=after)  # fmt: skip
                ld = unembed(lm, h[:, -1], cols).float().cpu() if cols else None
                for q, (_, c, j) in enumerate(part):
                    put(c, int(rows[j]), proj[q], None if ld is None else ld[q])
                bar.update(len(part))
    finally:
        bar.close()
    return out


# -------------------------------------------------------------------------- the analysis
@dataclass
class HeadsResult:
    """Tidy tables (lists of flat dicts) and the summary of :func:`analyze_heads`."""

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def check_request(
    dataset: Dataset,
    vectors: EmotionVectors,
    *,
    emotions: Sequence[str] | None = None,
    baseline: str = "neutral",
    layer: int | None = None,
    top_k: Sequence[int] = (1, 2, 4, 8),
) -> list[str]:
    """Validate everything that does not need the model; return the emotions to analyse."""
    if vectors.site != "resid":
        raise DataError(
            f"the vectors were built at site {vectors.site!r}; heads write into the residual "
            "stream: build them at resid (`emocircuits vectors --site resid`)"
        )
    _check_position(vectors.position)
    labels = set(dataset.labels)
    if baseline not in labels:
        raise DataError(f"baseline label {baseline!r} is not in the data ({sorted(labels)})")
    chosen = list(emotions) if emotions else [e for e in vectors.emotions if e != baseline]
    for e in chosen:
        if e not in vectors.directions:
            raise DataError(f"no {e!r} direction in the vectors (has {vectors.emotions})")
        if e not in labels:
            raise DataError(f"no {e!r} prompts in the data (labels {sorted(labels)})")
        if e == baseline:
            raise DataError(f"{e!r} is the baseline label, not an emotion to analyse")
    if not chosen:
        raise DataError("no emotion to analyse")
    if layer is not None and (layer < 1 or layer not in vectors.layers):
        raise DataError(
            f"readout layer {layer} must be >= 1 and one of the vectors' layers "
            f"({vectors.layers[0]}..{vectors.layers[-1]})"
        )
    if not any(ly >= 1 for ly in vectors.layers):
        raise DataError("the vectors have no layer >= 1 (layer 0 is the embedding)")
    if not top_k or min(top_k) < 1:
        raise DataError(f"top-k values must be >= 1, got {list(top_k)}")
    return chosen


def _sample(labels: np.ndarray, label: str, n: int | None, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(labels == label)
    if n is None or n >= len(idx):
        return idx
    return np.sort(rng.choice(idx, n, replace=False))


def _r(x: Any, nd: int = 5) -> float:
    return round(float(x), nd)


def choose_layer(
    resid: np.ndarray,
    labels: np.ndarray,
    vectors: EmotionVectors,
    emotions: Sequence[str],
    baseline: str,
    layer: int | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """The readout layer (``layer`` if given, else the vectors' layer >= 1 with the largest
    mean Cohen's d over emotions) and the ``separation`` table. ``resid [n, L + 1, W]`` at
    the readout positions."""
    vlayers = list(vectors.layers)
    rows, mean_d = [], np.zeros(len(vlayers))
    for e in emotions:
        proj = np.einsum("nlw,lw->nl", resid[:, vlayers], vectors.directions[e])
        d = separation(proj, labels, e, baseline)
        mean_d += d / len(emotions)
        rows += [
            {"emotion": e, "layer": ly, "cohens_d": _r(x)} for ly, x in zip(vlayers, d, strict=True)
        ]
    if layer is None:
        ok = np.array([ly >= 1 for ly in vlayers])
        layer = vlayers[int(np.nanargmax(np.where(ok, mean_d, np.nan)))]
    return int(layer), rows


def _head_tables(
    cap: HeadCapture,
    w: WriteWeights,
    v: dict[str, np.ndarray],
    labels: np.ndarray,
    baseline: str,
    layer: int,
    names: dict[str, str],
    boot: dict[str, Any],
) -> tuple[list[dict], list[dict], dict[tuple[str, str], list[tuple[int, int]]], float]:
    """``heads`` and ``components`` tables, the heads ranked by contrast per (emotion,
    position), and the largest relative error of neurons + bias against the MLP part."""
    R, H = layer, w.n_heads
    head_rows, comp_rows, ranking, err = [], [], {}, 0.0
    for e, ve in v.items():
        for p, pname in names.items():
            hc = head_contributions(cap.z[p], w, ve, R)  # [n, R, H]
            attn = hc.sum(-1) + bias_contributions(cap.attn_scale[p], w.o_bias, w.attn_gain, ve, R)
            res = cap.resid[p][:, : R + 1] @ ve  # [n, R + 1]
            mlp = np.diff(res, axis=1) - attn  # resid[i + 1] = resid[i] + attn[i] + mlp[i]
            parts = np.column_stack([hc.reshape(len(hc), -1), res[:, 0], attn, mlp, res[:, R]])
            c = contrast(parts, labels, e, baseline, **boot)
            tot = float(c.value[-1])
            share = c.value / tot if tot else np.full_like(c.value, np.nan)
            order = np.argsort(-c.value[: R * H], kind="stable")
            ranking[(e, p)] = [(int(k // H), int(k % H)) for k in order]
            rank = np.empty(R * H, int)
            rank[order] = np.arange(1, R * H + 1)
            for k in range(R * H):
                head_rows.append({
                    "emotion": e, "position": pname, "layer": k // H, "head": k % H,
                    "name": head_name(k // H, k % H), "contrast": _r(c.value[k]),
                    "lo": _r(c.lo[k]), "hi": _r(c.hi[k]),
                    "emotion_mean": _r(c.emotion_mean[k]),
                    "baseline_mean": _r(c.baseline_mean[k]),
                    "share": _r(share[k]), "rank": int(rank[k]),
                })  # fmt: skip
            comps = [("embedding", -1)] + [(k, i) for k in ("attn", "mlp") for i in range(R)]
            for q, (comp, blk) in enumerate([*comps, ("total", R)], start=R * H):
                comp_rows.append({
                    "emotion": e, "position": pname, "component": comp, "layer": blk,
                    "contrast": _r(c.value[q]), "lo": _r(c.lo[q]), "hi": _r(c.hi[q]),
                    "share": _r(share[q]),
                })  # fmt: skip
            if p == "readout":  # neurons + biases rebuild the MLP part
                nc = neuron_contributions(cap.act, w, ve, R).sum(-1)
                nc += bias_contributions(cap.mlp_scale, w.mlp_bias, w.mlp_gain, ve, R)
                err = max(err, float(np.abs(nc - mlp).max()) / max(1.0, float(np.abs(res).max())))
    return head_rows, comp_rows, ranking, err


def _neuron_tables(
    cap: HeadCapture,
    w: WriteWeights,
    v: dict[str, np.ndarray],
    labels: np.ndarray,
    prompts: Sequence[str],
    baseline: str,
    layer: int,
    top_neurons: int,
    top_prompts: int,
    boot: dict[str, Any],
) -> tuple[list[dict], list[dict]]:
    """``neurons`` (top neurons per emotion by contrast) and ``neuron_prompts`` (for each,
    the prompts of any class that activate it most, and those where it contributes most).
    A neuron's contribution is linear in its activation, so the contrasts of all neurons
    come from class means; intervals only for the top ones."""
    R = layer
    neuron_rows, prompt_rows = [], []
    for e, ve in v.items():
        u = neuron_weights(w, ve, R)  # [R, F]
        F = u.shape[1]
        diff = cap.act[labels == e, :R].mean(0) - cap.act[labels == baseline, :R].mean(0)
        top = np.argsort(-(diff * u).ravel(), kind="stable")[:top_neurons]
        acts = cap.act[:, top // F, top % F]  # [n, top]
        cols = acts * u.ravel()[top]
        c = contrast(cols, labels, e, baseline, **boot)
        for rank, k in enumerate(top):
            i, j = int(k // F), int(k % F)
            ranked = {
                "activation": np.argsort(-acts[:, rank], kind="stable")[:top_prompts],
                "contribution": np.argsort(-cols[:, rank], kind="stable")[:top_prompts],
            }
            by_act = ranked["activation"]
            neuron_rows.append({
                "emotion": e, "rank": rank + 1, "layer": i, "neuron": j,
                "contrast": _r(c.value[rank]), "lo": _r(c.lo[rank]), "hi": _r(c.hi[rank]),
                "emotion_mean": _r(c.emotion_mean[rank]),
                "baseline_mean": _r(c.baseline_mean[rank]), "write_on_v": _r(u[i, j]),
                "act_emotion_mean": _r(acts[labels == e, rank].mean()),
                "act_baseline_mean": _r(acts[labels == baseline, rank].mean()),
                "top_labels": " ".join(labels[by_act]),
                "top_prompts": " | ".join(prompts[b] for b in by_act),
                "top_contribution_labels": " ".join(labels[ranked["contribution"]]),
            })  # fmt: skip
            for how, best in ranked.items():
                for q, b in enumerate(best):
                    prompt_rows.append({
                        "emotion": e, "rank": rank + 1, "layer": i, "neuron": j,
                        "ranked_by": how, "prompt_rank": q + 1, "label": labels[b],
                        "activation": _r(acts[b, rank]), "contribution": _r(cols[b, rank]),
                        "text": prompts[b],
                    })  # fmt: skip
    return neuron_rows, prompt_rows


def _ld_table(lds: dict[str, np.ndarray], labels: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for e, vals in lds.items():
        for lab in dict.fromkeys(labels.tolist()):
            x = vals[labels == lab]
            sd = x.std(ddof=1) if len(x) > 1 else float("nan")
            rows.append({"readout": e, "label": lab, "mean": _r(x.mean()), "sd": _r(sd),
                         "n": len(x)})  # fmt: skip
    return rows


def _ablation_table(
    lm: LoadedModel,
    prompts: Sequence[str],
    spans: Sequence[tuple[int, int] | None],
    labels: np.ndarray,
    cap: HeadCapture,
    v: dict[str, np.ndarray],
    readouts: dict[str, Readout | None],
    ranking: dict[tuple[str, str], list[tuple[int, int]]],
    *,
    baseline: str,
    position: str,
    names: dict[str, str],
    layer: int,
    ks: list[int],
    n_random: int,
    n_ablate: int,
    seed: int,
    boot: dict[str, Any],
    batch_size: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Top-k heads (per emotion and ranking) vs random draws of k heads: the ``ablation``
    table and its settings for the summary."""
    H, emos = lm.arch.n_heads, list(v)
    n_cand = layer * H
    if ks[-1] > n_cand:
        raise DataError(f"top-k {ks[-1]} is more than the {n_cand} heads of blocks < {layer}")
    rng = np.random.default_rng(seed + 1)
    sample = {c: _sample(labels, c, n_ablate, rng) for c in [*emos, baseline]}
    emo_rows = tuple(int(r) for e in emos for r in sample[e])
    everything = tuple(int(r) for r in np.sort(np.concatenate(list(sample.values()))))
    conds: list[Condition] = [Condition((), everything)]
    index = {conds[0]: 0}

    def add(cond: Condition) -> int:
        if cond not in index:
            index[cond] = len(conds)
            conds.append(cond)
        return index[cond]

    top = {
        (e, p, k): add(Condition(tuple(sorted(ranking[(e, p)][:k])), tuple(map(int, sample[e]))))
        for e in emos
        for p in names
        for k in ks
    }
    draws = {k: [] for k in ks}
    for k in ks:
        for _ in range(n_random):
            pick = rng.choice(n_cand, k, replace=False)
            heads = tuple(sorted((int(q // H), int(q % H)) for q in pick))
            draws[k].append(add(Condition(heads, emo_rows)))
    results = run_conditions(
        lm, prompts, conds, position=position, layer=layer,
        directions=np.stack([v[e] for e in emos], 1), readouts=[readouts[e] for e in emos],
        values=cap.z_mean, spans=spans, batch_size=batch_size, progress=progress,
    )  # fmt: skip

    def vals(ci: int, e: str, metric: str, rows: np.ndarray) -> np.ndarray:
        at = {r: j for j, r in enumerate(conds[ci].rows)}
        return np.array([results[ci][metric][at[int(r)], emos.index(e)] for r in rows])

    out = []
    for e in emos:
        for metric in METRICS:
            if metric == "logit_diff" and readouts[e] is None:
                continue
            base = vals(0, e, metric, sample[e])
            neutral = vals(0, e, metric, sample[baseline])
            gap = float(base.mean() - neutral.mean())
            for p, pname in names.items():
                for k in ks:
                    rand = [vals(ci, e, metric, sample[e]) for ci in draws[k]]
                    st = ablation_stat(
                        base, vals(top[(e, p, k)], e, metric, sample[e]),
                        np.stack(rand) if rand else np.zeros((0, len(base))), **boot,
                    )  # fmt: skip
                    out.append({
                        "emotion": e, "ranked_at": pname, "metric": metric, "k": k,
                        "heads": " ".join(head_name(*hh) for hh in ranking[(e, p)][:k]),
                        "top_drop": _r(st.top_drop), "top_lo": _r(st.top_lo),
                        "top_hi": _r(st.top_hi), "random_mean": _r(st.random_mean),
                        "random_lo": _r(st.random_lo), "random_hi": _r(st.random_hi),
                        "p": _r(st.p, 4), "unablated": _r(base.mean()),
                        "neutral": _r(neutral.mean()), "gap": _r(gap),
                        "share_of_gap": _r(st.top_drop / gap) if gap else float("nan"),
                        "n_prompts": len(base), "n_random": st.n_random,
                    })  # fmt: skip
    meta = {
        "method": "mean ablation: each ablated head's z is replaced by its mean over the "
        "baseline prompts (every token of the cue-appended texts but each text's first) at "
        "every position but the first",
        "candidates": f"all {n_cand} heads of blocks 0..{layer - 1}",
        "random_draws": "the same draws of k heads for every emotion and ranking",
        "n_prompts_per_class": {c: len(x) for c, x in sample.items()},
        "n_conditions": len(conds),
    }
    return out, meta


HEADS_BUDGETS: dict[str, dict[str, Any]] = {
    "default": {"top_k": (1, 2, 4, 8), "n_random": 50, "n_ablate": 12, "n_per_class": None},
    "fast": {"top_k": (2, 8), "n_random": 39, "n_ablate": 4, "n_per_class": 32},
}
"""Named settings of :func:`analyze_heads` (``emocircuits heads --budget``). ``default``:
contributions over every prompt, k = 1, 2, 4, 8 against 50 random head sets (smallest
attainable p = 1/51) on 12 prompts per class. ``fast`` (for a whole-study run): 32 prompts
per class, k = 2 and 8 against 39 random sets (smallest attainable p = 1/40 = 0.025) on 4
prompts per class."""


def analyze_heads(
    lm: LoadedModel,
    dataset: Dataset,
    vectors: EmotionVectors,
    *,
    emotions: Sequence[str] | None = None,
    baseline: str = "neutral",
    layer: int | None = None,
    top_k: Sequence[int] = (1, 2, 4, 8),
    n_random: int = 50,
    n_ablate: int = 12,
    n_per_class: int | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    top_neurons: int = 20,
    top_prompts: int = 5,
    batch_size: int = 16,
    seed: int = 0,
    ablation: bool = True,
    progress: bool = False,
) -> HeadsResult:
    """Direct contributions of heads and neurons, and the top-k vs random head ablation
    (module docstring). Tables: ``heads``, ``components``, ``neurons``, ``neuron_prompts``,
    ``separation``, ``logit_diff``, ``ablation``. ``n_per_class``: prompts per class for
    the contributions (None: all); ``n_ablate``: per class for the ablation.

    >>> res = analyze_heads(lm, load_dataset("extended"), vecs, n_random=50)  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    emos = check_request(
        dataset, vectors, emotions=emotions, baseline=baseline, layer=layer, top_k=top_k
    )
    arch = lm.arch
    width = vectors.directions[emos[0]].shape[-1]
    if width != arch.width:
        raise DataError(f"the vectors are {width} wide, the model {arch.width}")
    if max(vectors.layers) > arch.n_layers:
        raise DataError(f"the vectors have layer {max(vectors.layers)}; the model {arch.n_layers}")
    rng = np.random.default_rng(seed)
    all_labels = np.array(dataset.labels)
    picked = [_sample(all_labels, c, n_per_class, rng) for c in [*emos, baseline]]
    ex = [dataset.examples[i] for i in np.sort(np.concatenate(picked))]
    prompts, labels = [e.text for e in ex], np.array([e.emotion for e in ex])
    spans = [e.emotion_span for e in ex]
    readouts: dict[str, Readout | None] = {}
    for e in emos:
        try:
            readouts[e] = readout(lm.tokenizer, e)
        except DataError:
            readouts[e] = None  # no feeling words: the projection only
    position = vectors.position
    boot = {"n_boot": n_boot, "level": level, "seed": seed}
    cap = capture_heads(
        lm, prompts, position=position, spans=spans, baseline_rows=labels == baseline,
        readouts={e: r for e, r in readouts.items() if r is not None},
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    seconds = {"capture": time.perf_counter() - t0}
    R, sep_rows = choose_layer(cap.resid["readout"], labels, vectors, emos, baseline, layer)
    v = {e: vectors.directions[e][vectors.layers.index(R)].astype(np.float32) for e in emos}
    w = write_weights(arch)
    names = {"readout": position, CUE_POSITION: CUE_POSITION}
    head_rows, comp_rows, ranking, err = _head_tables(cap, w, v, labels, baseline, R, names, boot)
    neuron_rows, prompt_rows = _neuron_tables(
        cap, w, v, labels, prompts, baseline, R, top_neurons, top_prompts, boot
    )
    ks = sorted({int(k) for k in top_k})
    seconds["contributions"] = time.perf_counter() - t0 - seconds["capture"]
    abl_rows: list[dict[str, Any]] = []
    abl_meta: dict[str, Any] = {}
    if ablation:
        abl_rows, abl_meta = _ablation_table(
            lm, prompts, spans, labels, cap, v, readouts, ranking, baseline=baseline,
            position=position, names=names, layer=R, ks=ks, n_random=n_random,
            n_ablate=n_ablate, seed=seed, boot=boot, batch_size=batch_size, progress=progress,
        )  # fmt: skip
    seconds["ablation"] = time.perf_counter() - t0 - sum(seconds.values())
    seconds["total"] = time.perf_counter() - t0
    tables = {
        "heads": head_rows,
        "components": comp_rows,
        "neurons": neuron_rows,
        "neuron_prompts": prompt_rows,
        "separation": sep_rows,
        "logit_diff": _ld_table(cap.logit_diff, labels),
        "ablation": abl_rows,
    }
    settings = {
        "layer": R,
        "layer_choice": "given"
        if layer is not None
        else "best separation: largest mean "
        "Cohen's d over emotions of the projections on v (separation.csv)",
        "position": position,
        "positions": {
            position: f"the vectors' rule '{position}' over the prompt's own tokens",
            CUE_POSITION: f"the last token of the cue {readout_texts([''])[0]!r}",
        },
        "emotions": emos,
        "baseline": baseline,
        "top_k": ks,
        "n_random": n_random,
        "n_ablate": n_ablate,
        "n_per_class": n_per_class,
        "n_boot": n_boot,
        "level": level,
        "top_neurons": top_neurons,
        "top_prompts": top_prompts,
        "batch_size": batch_size,
        "seed": seed,
        "ablation": abl_meta or None,
    }
    summary = {
        "format": FORMAT,
        "version": 1,
        "model": lm.provenance,
        "vectors": vectors.meta(),
        "readout": {e: (r.meta() if r else None) for e, r in readouts.items()},
        "data": {
            **dataset.provenance(),
            "n_per_label": {c: int((labels == c).sum()) for c in dict.fromkeys(labels.tolist())},
        },
        "settings": settings,
        "checks": {
            "neurons_plus_bias_vs_mlp_max_rel_error": err,
            "post_norm_linearised": bool(arch.spec.post_norm),
        },
        "headline": _headline(tables, emos, position, ks),
        "seconds": {k: round(x, 1) for k, x in seconds.items()},
    }
    return HeadsResult(tables, summary)


def _headline(
    tables: dict[str, list[dict[str, Any]]], emos: Sequence[str], position: str, ks: list[int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in emos:
        top = sorted(
            (r for r in tables["heads"] if r["emotion"] == e and r["position"] == position),
            key=lambda r: r["rank"],
        )[:5]
        neurons = [r for r in tables["neurons"] if r["emotion"] == e][:3]
        h: dict[str, Any] = {
            "top_heads": [
                {k: r[k] for k in ("name", "contrast", "lo", "hi", "share")} for r in top
            ],
            "top_neurons": [
                {k: r[k] for k in ("layer", "neuron", "contrast", "lo", "hi", "top_labels")}
                for r in neurons
            ],
        }
        keys = ("metric", "ranked_at", "k", "top_drop", "random_mean", "random_hi", "p",
                "share_of_gap")  # fmt: skip
        h["ablation"] = [
            {k: r[k] for k in keys}
            for r in tables["ablation"]
            if r["emotion"] == e and r["k"] == ks[-1]
        ]
        out[e] = h
    return out


def write_heads(result: HeadsResult, out: str | Path) -> Path:
    """Write ``{table}.csv`` and ``summary.json`` (last) into ``out``, each atomically."""
    from emocircuits.geometry.analysis import write_tables

    return write_tables(out, result.tables, {"summary.json": result.summary})

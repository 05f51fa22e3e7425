"""What the analysis reports: request checks, the readout layer, and its tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from emocircuits.errors import DataError
from emocircuits.interventions.heads.ablation import Condition, run_conditions
from emocircuits.interventions.heads.attribution import (
    WriteWeights,
    bias_contributions,
    head_contributions,
    neuron_contributions,
    neuron_weights,
)
from emocircuits.interventions.heads.capture import HeadCapture
from emocircuits.interventions.heads.common import METRICS, _check_position, head_name
from emocircuits.interventions.heads.stats import ablation_stat, contrast, separation
from emocircuits.interventions.readout import Readout

if TYPE_CHECKING:
    from emocircuits.data.dataset import Dataset
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel


def check_request(
    dataset: Dataset,
    vectors: EmotionVectors,
    *,
    emotions: Sequence[str] | None,
    baseline: str,
    layer: int | None,
    top_k: Sequence[int],
) -> list[str]:
    """Validate everything that does not need the model; return the emotions to analyse.
    The options are :func:`~emocircuits.interventions.heads.analysis.analyze_heads`'s
    (their defaults are defined there)."""
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

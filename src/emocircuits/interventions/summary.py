"""Steering rows summarised per setting, and the summaries as text.

A setting is a (condition, emotion, layer, alpha); :func:`summarize` gives each its mean
scores with bootstrap intervals over prompts (a prompt's rows, one per seed or random
draw, are resampled together: a cluster bootstrap), the VADER and TextBlob changes from
``none`` (paired by prompt and seed), and the fluency ratios to ``none`` (perplexity,
distinct-2). :func:`judge_agreement` says how far the two judges of tone agree.
:func:`headline` picks the columns worth a glance and :func:`steer_table` prints them.

>>> summary = summarize(rows)  # doctest: +SKIP
>>> print(steer_table(summary))  # doctest: +SKIP
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from emocircuits.errors import DataError
from emocircuits.interventions.scorers import MARKERS, NRC_CATEGORIES, distinct_n

SUMMARY_KEYS = ("vader", "textblob", *[f"marker_{e}" for e in MARKERS],
                *[f"nrc_{c}" for c in NRC_CATEGORIES])  # fmt: skip
"""The scores :func:`summarize` averages per setting, each with its bootstrap interval."""


JUDGES = ("vader", "textblob")
"""The scores of tone whose change from ``none`` :func:`summarize` reports
(``<judge>_change``). VADER alone chooses steering settings; TextBlob only judges."""


def _interval(boots: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return round(float(lo), 4), round(float(hi), 4)


def cluster_means(values: np.ndarray, clusters: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Bootstrap means of ``values`` when whole clusters are resampled: ``idx`` ``[n_boot,
    k]`` picks cluster numbers (``clusters``: each value's cluster, 0..k-1); each draw is the
    mean over every value of the picked clusters (a cluster picked twice counts twice).

    >>> v, c = np.array([1.0, 1.0, 3.0]), np.array([0, 0, 1])
    >>> cluster_means(v, c, np.array([[0, 0], [1, 1], [0, 1]])).tolist()
    [1.0, 3.0, 1.6666666666666667]
    """
    k = int(clusters.max()) + 1
    sums = np.bincount(clusters, weights=values, minlength=k)
    counts = np.bincount(clusters, minlength=k).astype(float)
    return sums[idx].sum(1) / counts[idx].sum(1)


def _pair(r: dict[str, Any]) -> tuple[Any, Any]:
    """What pairs a row with its ``none`` row: the prompt and the seed (None: greedy)."""
    return r["prompt_index"], r.get("seed")


def summarize(
    rows: Sequence[dict[str, Any]], n_boot: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """Per condition, emotion, layer and alpha: mean scores with bootstrap intervals over
    prompts (clusters: a prompt's rows, all its seeds and random draws, are resampled
    together, so extra seeds of the same prompts do not narrow an interval as if they were
    new prompts); the change in VADER and in TextBlob polarity from ``none`` (paired by
    prompt and seed); the perplexity ratio to ``none`` (median of per-row ratios, and ratio
    of means); distinct-2 and its ratio to ``none``. ``n``: rows, ``n_prompts``: clusters.
    Each group's bootstrap draws come from its own key, so adding rows of one setting (e.g.
    more random draws) leaves every other setting's interval as it was. With one row per
    prompt the intervals are those of a plain bootstrap over rows."""
    base = {_pair(r): r for r in rows if r["condition"] == "none"}
    if not base:
        raise DataError("no `none` rows to compare against")
    missing = {_pair(r) for r in rows} - set(base)
    if missing:
        i, s = sorted(missing, key=repr)[0]
        raise DataError(f"no `none` row for prompt {i}" + ("" if s is None else f", seed {s}"))
    base_d2 = distinct_n([r["continuation"] for r in base.values()], 2)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["condition"], r.get("emotion"), r["layer"], r["alpha"])
        groups.setdefault(key, []).append(r)
    out = []
    for (condition, emotion, layer, alpha), rs in groups.items():
        n = len(rs)
        # clusters numbered by first appearance: one row per prompt draws as before
        number: dict[Any, int] = {}
        clusters = np.array([number.setdefault(r["prompt_index"], len(number)) for r in rs])
        k = len(number)
        key_seed = zlib.crc32(repr((condition, emotion, layer, alpha)).encode())
        idx = np.random.default_rng([seed, key_seed]).integers(0, k, size=(n_boot, k))
        row: dict[str, Any] = {"condition": condition, "emotion": emotion, "layer": layer,
                               "alpha": alpha, "n": n, "n_prompts": k}  # fmt: skip
        for key in [k for k in (*SUMMARY_KEYS, "repetition") if k in rs[0]]:
            v = np.array([r[key] for r in rs], dtype=float)
            row[key] = round(float(v.mean()), 4)
            row[f"{key}_lo"], row[f"{key}_hi"] = _interval(cluster_means(v, clusters, idx))
        for judge in [j for j in JUDGES if j in rs[0]]:
            dv = np.array([r[judge] - base[_pair(r)][judge] for r in rs], dtype=float)
            row[f"{judge}_change"] = round(float(dv.mean()), 4)
            lo_hi = _interval(cluster_means(dv, clusters, idx))
            row[f"{judge}_change_lo"], row[f"{judge}_change_hi"] = lo_hi
        p = np.array([r["perplexity"] for r in rs])
        p0 = np.array([base[_pair(r)]["perplexity"] for r in rs])
        ok = np.isfinite(p) & np.isfinite(p0)
        row["perplexity"] = round(float(np.mean(p[ok])), 4) if ok.any() else float("nan")
        row["perplexity_ratio_median"] = round(float(np.nanmedian(p / p0)), 4)
        row["perplexity_ratio_mean"] = (
            round(float(p[ok].mean() / p0[ok].mean()), 4) if ok.any() else float("nan")
        )
        d2 = distinct_n([r["continuation"] for r in rs], 2)
        row["distinct_2"] = round(float(d2), 4)
        row["distinct_2_ratio"] = round(float(d2 / base_d2), 4) if base_d2 else float("nan")
        out.append(row)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (ties averaged); None with fewer than 3 pairs or a
    constant side."""
    from scipy.stats import rankdata

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return round(float(np.corrcoef(rankdata(a), rankdata(b))[0, 1]), 4)


def judge_agreement(rows: Sequence[dict[str, Any]], emotion: str | None = None) -> dict[str, Any]:
    """How far the two judges of tone (VADER, TextBlob polarity) agree on steering rows.
    Over settings (every condition, layer and alpha but ``none``; with ``emotion``, that
    emotion's settings and the random controls): Spearman correlation of the two judges'
    mean changes from ``none`` (paired by prompt and seed) and the share of settings where
    the two changes have the same sign. Over rows (with ``emotion``, the rows of those
    settings and ``none``): Spearman correlation of the two scores. Each with its ``n``;
    a correlation is None below 3 pairs. Neither judge's agreement chooses anything.

    >>> rows = [{"prompt_index": 0, "condition": c, "emotion": e, "layer": l, "alpha": 1.0,
    ...          "vader": v, "textblob": t}
    ...         for c, e, l, v, t in [("none", None, None, 0.0, 0.0),
    ...                               ("direction", "anger", 1, -0.5, -0.4),
    ...                               ("direction", "anger", 2, -0.2, -0.1),
    ...                               ("random", None, 1, 0.1, 0.05)]]
    >>> judge_agreement(rows, "anger")["settings"]
    {'n': 3, 'spearman': 1.0, 'sign_agreement': 1.0}
    """
    keep = [r for r in rows if emotion is None or r.get("emotion") in (emotion, None)]
    if not keep or not all("textblob" in r and "vader" in r for r in keep):
        raise DataError("judge_agreement needs rows with `vader` and `textblob` scores")
    base = {_pair(r): r for r in keep if r["condition"] == "none"}
    changes: dict[tuple, list[tuple[float, float]]] = {}
    for r in keep:
        if r["condition"] != "none" and _pair(r) in base:
            b = base[_pair(r)]
            key = (r["condition"], r.get("emotion"), r["layer"], r["alpha"])
            changes.setdefault(key, []).append((r["vader"] - b["vader"],
                                                r["textblob"] - b["textblob"]))  # fmt: skip
    mean = np.array([np.mean(v, axis=0) for v in changes.values()]).reshape(-1, 2)
    same = np.sign(mean[:, 0]) == np.sign(mean[:, 1])
    v = np.array([r["vader"] for r in keep], dtype=float)
    t = np.array([r["textblob"] for r in keep], dtype=float)
    return {
        "judges": list(JUDGES),
        "emotion": emotion,
        "settings": {"n": len(mean), "spearman": _spearman(mean[:, 0], mean[:, 1]),
                     "sign_agreement": round(float(same.mean()), 4) if len(mean) else None},
        "rows": {"n": len(keep), "spearman": _spearman(v, t)},
    }  # fmt: skip


def headline(r: dict[str, Any]) -> dict[str, Any]:
    """The columns of a summary row worth a glance (the rest stay in ``summary``)."""
    out = {k: r.get(k) for k in ("condition", "emotion", "layer", "alpha", "n", "vader_change",
                                  "vader_change_lo", "vader_change_hi")}  # fmt: skip
    if "textblob_change" in r:
        out["textblob_change"] = r["textblob_change"]
    out["marker"] = r.get(f"marker_{r['emotion']}") if r.get("emotion") else None
    out["perplexity_ratio"] = r.get("perplexity_ratio_median")
    out["distinct_2_ratio"] = r.get("distinct_2_ratio")
    if "kl" in r:
        out["kl"] = r["kl"]
    return out


def steer_table(summary: Sequence[dict[str, Any]]) -> str:
    """A summary as the text table the steering commands print."""
    lines = [f"{'condition':10s} {'emotion':10s} {'layer':>5s} {'alpha':>6s}  "
             f"{'VADER change [95%]':24s} {'TextBlob':>8s} {'marker':>6s}  ppl ratio  "
             "distinct-2"]  # fmt: skip
    for r in summary:
        layer = "-" if r["layer"] is None else str(r["layer"])
        ch = f"{r['vader_change']:+.3f} [{r['vader_change_lo']:+.3f}, {r['vader_change_hi']:+.3f}]"
        mk = r.get(f"marker_{r['emotion']}", float("nan")) if r["emotion"] else float("nan")
        tb = r.get("textblob_change", float("nan"))
        lines.append(f"{r['condition']:10s} {r['emotion'] or '-':10s} {layer:>5s} "
                     f"{r['alpha']:6.3f}  {ch:24s} {tb:+8.3f} {mk:6.2f}  "
                     f"{r['perplexity_ratio_median']:9.2f}  "
                     f"{r['distinct_2_ratio']:.2f}")  # fmt: skip
    return "\n".join(lines)

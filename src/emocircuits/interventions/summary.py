"""Steering rows summarised per setting, and the summaries as text.

A setting is a (condition, emotion, layer, alpha); :func:`summarize` gives each its mean
scores over prompts with bootstrap intervals, the VADER change from ``none`` (paired by
prompt), and the fluency ratios to ``none`` (perplexity, distinct-2). :func:`headline`
picks the columns worth a glance and :func:`steer_table` prints them.

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

SUMMARY_KEYS = ("vader", *[f"marker_{e}" for e in MARKERS], *[f"nrc_{c}" for c in NRC_CATEGORIES])
"""The scores :func:`summarize` averages per setting, each with its bootstrap interval."""


def _interval(boots: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return round(float(lo), 4), round(float(hi), 4)


def summarize(
    rows: Sequence[dict[str, Any]], n_boot: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """Per condition, emotion, layer and alpha: mean scores with bootstrap intervals over
    prompts; the change in VADER from ``none`` (paired by prompt); the perplexity ratio to
    ``none`` (median of per-prompt ratios, and ratio of means); distinct-2 and its ratio to
    ``none``. Each group's bootstrap draws come from its own key, so adding rows of one
    setting (e.g. more random draws) leaves every other setting's interval as it was."""
    base = {r["prompt_index"]: r for r in rows if r["condition"] == "none"}
    if not base:
        raise DataError("no `none` rows to compare against")
    base_d2 = distinct_n([r["continuation"] for r in base.values()], 2)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["condition"], r.get("emotion"), r["layer"], r["alpha"])
        groups.setdefault(key, []).append(r)
    out = []
    for (condition, emotion, layer, alpha), rs in groups.items():
        n = len(rs)
        key_seed = zlib.crc32(repr((condition, emotion, layer, alpha)).encode())
        idx = np.random.default_rng([seed, key_seed]).integers(0, n, size=(n_boot, n))
        row: dict[str, Any] = {"condition": condition, "emotion": emotion, "layer": layer,
                               "alpha": alpha, "n": n}  # fmt: skip
        for key in [k for k in (*SUMMARY_KEYS, "repetition") if k in rs[0]]:
            v = np.array([r[key] for r in rs])
            row[key] = round(float(v.mean()), 4)
            row[f"{key}_lo"], row[f"{key}_hi"] = _interval(v[idx].mean(1))
        dv = np.array([r["vader"] - base[r["prompt_index"]]["vader"] for r in rs])
        row["vader_change"] = round(float(dv.mean()), 4)
        row["vader_change_lo"], row["vader_change_hi"] = _interval(dv[idx].mean(1))
        p = np.array([r["perplexity"] for r in rs])
        p0 = np.array([base[r["prompt_index"]]["perplexity"] for r in rs])
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


def headline(r: dict[str, Any]) -> dict[str, Any]:
    """The columns of a summary row worth a glance (the rest stay in ``summary``)."""
    out = {k: r.get(k) for k in ("condition", "emotion", "layer", "alpha", "n", "vader_change",
                                  "vader_change_lo", "vader_change_hi")}  # fmt: skip
    out["marker"] = r.get(f"marker_{r['emotion']}") if r.get("emotion") else None
    out["perplexity_ratio"] = r.get("perplexity_ratio_median")
    out["distinct_2_ratio"] = r.get("distinct_2_ratio")
    if "kl" in r:
        out["kl"] = r["kl"]
    return out


def steer_table(summary: Sequence[dict[str, Any]]) -> str:
    """A summary as the text table the steering commands print."""
    lines = [f"{'condition':10s} {'emotion':10s} {'layer':>5s} {'alpha':>6s}  "
             f"{'VADER change [95%]':24s} {'marker':>6s}  ppl ratio  distinct-2"]  # fmt: skip
    for r in summary:
        layer = "-" if r["layer"] is None else str(r["layer"])
        ch = f"{r['vader_change']:+.3f} [{r['vader_change_lo']:+.3f}, {r['vader_change_hi']:+.3f}]"
        mk = r.get(f"marker_{r['emotion']}", float("nan")) if r["emotion"] else float("nan")
        lines.append(f"{r['condition']:10s} {r['emotion'] or '-':10s} {layer:>5s} "
                     f"{r['alpha']:6.3f}  {ch:24s} {mk:6.2f}  "
                     f"{r['perplexity_ratio_median']:9.2f}  "
                     f"{r['distinct_2_ratio']:.2f}")  # fmt: skip
    return "\n".join(lines)

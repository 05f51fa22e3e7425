"""Which steering setting to recommend, from a sweep's summary table: the effect of a
setting, the limits it must pass, the screen of successive halving, the tune / held-out
split of the prompts, and the recommendation itself (or an explicit none).

**The recommended setting** of an emotion (:func:`recommend`) is the (layer, alpha) whose
effect has the largest lower 95% bound on the *tune* prompts, among the settings that pass
every limit of :data:`LIMITS`:

- the effect (:func:`effect`): the VADER change from ``none`` for gratitude (up) and anger
  (down, so its negative), the share of continuations with one of the emotion's marker
  words for apology (and any emotion :data:`~.scorers.MARKERS` has words for), else the
  absolute VADER change; its lower 95% bound must be above ``effect_lo`` (a setting that
  does nothing is not recommended);
- perplexity of the continuations under the unsteered model at most ``perplexity_ratio``
  x that of ``none`` (both the median of per-prompt ratios and the ratio of means);
- distinct-2 at least ``distinct_2_ratio`` x that of ``none`` (perplexity alone lets
  loops like "pleasepleaseplease" through);
- the random direction at the same (layer, alpha) moves VADER by less than
  ``random_vader_change``: a setting where any push changes the tone is not specific.

If no setting passes, the recommendation is an explicit none (``layer`` and ``alpha``
None, ``status="none"``) with the reasons per candidate: ``steer`` then refuses to use it
and names what to widen.

>>> split_prompts(6, seed=0)
([0, 4, 5], [1, 2, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emocircuits.errors import DataError
from emocircuits.interventions.scorers import MARKERS

LIMITS = {
    "perplexity_ratio": 1.35,
    "distinct_2_ratio": 0.75,
    "random_vader_change": 0.15,
    "effect_lo": 0.0,
}
"""What a recommended setting must pass on the tune prompts (see the module docstring). The
perplexity limit has a margin below the 1.5x users ask for, because the setting is chosen
on these prompts and used on others."""

WIDEN = (
    "widen the sweep (--layer or --n-layers, --alpha or --n-alphas), give more --prompts, "
    "or steer with an explicit --layer and --alpha"
)
"""What a user can do when no setting passed (printed by ``steer-sweep`` and ``steer``)."""


def effect(row: dict[str, Any], emotion: str) -> tuple[str, float, float, float]:
    """``(name, value, lo, hi)`` of the emotion's effect in a summary row (larger = more).

    >>> effect({"vader_change": -0.4, "vader_change_lo": -0.6, "vader_change_hi": -0.2},
    ...        "anger")
    ('-vader_change', 0.4, 0.2, 0.6)
    """
    if emotion == "gratitude":
        return "vader_change", row["vader_change"], row["vader_change_lo"], row["vader_change_hi"]
    if emotion == "anger":
        return (
            "-vader_change",
            -row["vader_change"],
            -row["vader_change_hi"],
            -row["vader_change_lo"],
        )
    if emotion in MARKERS:
        k = f"marker_{emotion}"
        return k, row[k], row[f"{k}_lo"], row[f"{k}_hi"]
    v = abs(row["vader_change"])
    lo, hi = sorted(abs(x) for x in (row["vader_change_lo"], row["vader_change_hi"]))
    if row["vader_change_lo"] < 0 < row["vader_change_hi"]:
        lo = 0.0
    return "|vader_change|", v, lo, hi


@dataclass
class Recommendation:
    """The chosen setting of one emotion, with the evidence it was chosen on (the tune
    prompts) and its effect on the held-out prompts (``held_out``). ``status`` is
    ``"recommended"``, or ``"none"`` when no setting passed the limits: then ``layer`` and
    ``alpha`` are None and ``candidates`` says why each setting tried failed."""

    emotion: str
    layer: int | None
    alpha: float | None
    where: str
    effect: str
    value: float | None
    lo: float | None
    hi: float | None
    perplexity_ratio_median: float | None
    perplexity_ratio_mean: float | None
    distinct_2_ratio: float | None
    kl: float | None
    random_vader_change: float | None
    random_draws: int
    meets_limits: bool
    reason: str = ""
    limits: dict[str, float] = field(default_factory=lambda: dict(LIMITS))
    steer_tokens: int | None = None  # push only while the first N new tokens are written
    status: str = "recommended"
    method: str | None = None  # the direction method that steered (e.g. one_vs_rest)
    chosen_on: str = "tune"
    candidates: list[dict[str, Any]] = field(default_factory=list)
    held_out: dict[str, Any] | None = None

    @property
    def found(self) -> bool:
        """Whether a setting passed the limits (False: an explicit none)."""
        return self.layer is not None and self.alpha is not None


def fluency_fails(row: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """The fluency limits a summary row fails (perplexity, distinct-2)."""
    fails = []
    if (
        max(row["perplexity_ratio_median"], row["perplexity_ratio_mean"])
        > limits["perplexity_ratio"]
    ):
        fails.append("perplexity")
    if row["distinct_2_ratio"] < limits["distinct_2_ratio"]:
        fails.append("distinct-2")
    return fails


def fails(
    row: dict[str, Any], rand: dict[str, Any] | None, emotion: str, limits: dict[str, float]
) -> list[str]:
    """Every limit a direction row fails, given the random row at its setting (None: no
    random control was run there, which fails too)."""
    out = []
    if effect(row, emotion)[2] <= limits["effect_lo"]:
        out.append("effect's lower bound not above " + f"{limits['effect_lo']:g}")
    out += fluency_fails(row, limits)
    if rand is None:
        out.append("no random control")
    elif abs(rand["vader_change"]) >= limits["random_vader_change"]:
        out.append("random direction moves VADER")
    return out


def rank(row: dict[str, Any], emotion: str) -> tuple[float, float, float]:
    """Best first when sorted descending: the effect's lower bound, the effect, a weaker push."""
    _, v, lo, _ = effect(row, emotion)
    return (lo, v, -row["alpha"])


def screen(
    summary: Sequence[dict[str, Any]],
    emotion: str,
    n_keep: int,
    limits: dict[str, float] | None = None,
) -> list[tuple[int, float]]:
    """Successive halving's first cut: the ``n_keep`` settings of ``emotion`` worth a
    full-length look, from a summary of short continuations: those within the fluency
    limits first, each group by :func:`rank`.

    >>> rows = [{"condition": "direction", "emotion": "anger", "layer": 3, "alpha": a,
    ...          "vader_change": v, "vader_change_lo": v - 0.1, "vader_change_hi": v + 0.1,
    ...          "perplexity_ratio_median": 1.0, "perplexity_ratio_mean": 1.0,
    ...          "distinct_2_ratio": 1.0} for a, v in ((0.1, -0.1), (0.2, -0.5), (0.4, 0.2))]
    >>> screen(rows, "anger", 2)
    [(3, 0.2), (3, 0.1)]
    """
    limits = {**LIMITS, **(limits or {})}
    rows = [r for r in summary if r["condition"] == "direction" and r["emotion"] == emotion]
    rows.sort(key=lambda r: (not fluency_fails(r, limits), rank(r, emotion)), reverse=True)
    return [(int(r["layer"]), float(r["alpha"])) for r in rows[:n_keep]]


def split_prompts(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic split of ``n`` prompts into tune (the first half of a seeded
    permutation, ``n // 2`` of them) and held-out (the rest), each in prompt order; the two
    are disjoint and cover every prompt. Fewer than 2 prompts cannot be split.

    >>> split_prompts(4, seed=1)
    ([0, 2], [1, 3])
    """
    if n < 2:
        raise DataError(f"a sweep needs at least 2 prompts (one to choose on, one to check "
                        f"on); got {n}")  # fmt: skip
    perm = np.random.default_rng([seed, 16]).permutation(n)
    return sorted(int(i) for i in perm[: n // 2]), sorted(int(i) for i in perm[n // 2 :])


def recommend(
    summary: Sequence[dict[str, Any]],
    emotion: str,
    *,
    kl: dict[tuple[int, float], float] | None = None,
    where: str = "all",
    steer_tokens: int | None = None,
    limits: dict[str, float] | None = None,
    method: str | None = None,
) -> Recommendation:
    """The recommended (layer, alpha) of ``emotion`` from a summary table of the tune
    prompts (see the module docstring for the rule), or an explicit none with the reason
    per setting tried (``candidates``)."""
    limits = {**LIMITS, **(limits or {})}
    rand = {(r["layer"], r["alpha"]): r for r in summary if r["condition"] == "random"}
    cands = [r for r in summary if r["condition"] == "direction" and r["emotion"] == emotion]
    if not cands:
        raise DataError(f"no direction rows for {emotion!r} in the sweep")
    scored = []
    for r in cands:
        ra = rand.get((r["layer"], r["alpha"]))
        scored.append((r, ra, fails(r, ra, emotion, limits)))
    tried = []
    for r, _, why in sorted(scored, key=lambda s: rank(s[0], emotion), reverse=True):
        name, v, lo, hi = effect(r, emotion)
        tried.append({"layer": int(r["layer"]), "alpha": float(r["alpha"]),
                      "value": round(float(v), 4), "lo": round(float(lo), 4),
                      "fails": why})  # fmt: skip
    ok = [s for s in scored if not s[2]]
    name = effect(cands[0], emotion)[0]
    if not ok:
        return Recommendation(
            emotion=emotion, layer=None, alpha=None, where=where, effect=name, value=None,
            lo=None, hi=None, perplexity_ratio_median=None, perplexity_ratio_mean=None,
            distinct_2_ratio=None, kl=None, random_vader_change=None, random_draws=0,
            meets_limits=False, reason=f"no setting passed the limits ({len(tried)} tried)",
            limits=limits, steer_tokens=steer_tokens, status="none", method=method,
            candidates=tried,
        )  # fmt: skip
    r, ra, _ = max(ok, key=lambda s: rank(s[0], emotion))
    _, v, lo, hi = effect(r, emotion)
    return Recommendation(
        emotion=emotion,
        layer=int(r["layer"]),
        alpha=float(r["alpha"]),
        where=where,
        effect=name,
        value=round(float(v), 4),
        lo=round(float(lo), 4),
        hi=round(float(hi), 4),
        perplexity_ratio_median=r["perplexity_ratio_median"],
        perplexity_ratio_mean=r["perplexity_ratio_mean"],
        distinct_2_ratio=r["distinct_2_ratio"],
        kl=round(float((kl or {}).get((r["layer"], r["alpha"]), float("nan"))), 4),
        random_vader_change=ra["vader_change"],
        random_draws=max(1, int(ra.get("n", 0)) // max(1, int(r.get("n", 1)))),
        meets_limits=True,
        limits=limits,
        steer_tokens=steer_tokens,
        method=method,
        candidates=tried,
    )


def none_line(rec: Recommendation) -> str:
    """One line on an explicit none: why each setting tried failed (the first three), and
    what to widen."""
    why = "; ".join(
        f"L{c['layer']} alpha {c['alpha']:g}: {', '.join(c['fails'])}" for c in rec.candidates[:3]
    )
    more = f" (+{len(rec.candidates) - 3} more)" if len(rec.candidates) > 3 else ""
    return f"no setting passed the limits ({why}{more}); {WIDEN}"

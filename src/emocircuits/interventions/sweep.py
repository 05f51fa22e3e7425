"""Dose-response sweep over layers x alphas, and the recommended steering setting.

``sweep`` steers every prompt with every emotion's direction at every (layer, alpha), plus
a norm-matched random direction at each (layer, alpha) (shared by the emotions) and the
unsteered ``none``, all in one batched generation; it adds the KL divergence of next-token
distributions on neutral text (the baseline preset's neutral sentences) for each setting.

**The recommended setting** of an emotion (:func:`recommend`) is the (layer, alpha) whose
effect has the largest lower 95% bound, among the settings that pass the fluency and
specificity limits (:data:`LIMITS`):

- the effect: the VADER change from ``none`` for gratitude (up) and anger (down, so its
  negative), the share of continuations with an apology marker for apology; for other
  emotions the share with one of their marker words if :data:`~.scorers.MARKERS` has them,
  else the absolute VADER change;
- perplexity of the continuations under the unsteered model at most
  ``perplexity_ratio`` x that of ``none`` (both the median of per-prompt ratios and the
  ratio of means); a margin below the 1.5x that users ask for, because the setting is
  chosen on these prompts and used on others;
- distinct-2 at least ``distinct_2_ratio`` x that of ``none`` (docs/METHODS.md: pitfall 10;
  perplexity alone lets loops like "pleasepleaseplease" through);
- the random direction at the same (layer, alpha) moves VADER by less than
  ``random_vader_change``: a setting where any push changes the tone is not specific.

If no setting passes, the one with the smallest perplexity ratio among those with a positive
effect is returned with ``meets_limits = False``, and the reason. Settings are saved next to
the vectors (:mod:`~emocircuits.interventions.settings`: ``v.safetensors`` ->
``v.steer.json``), keyed by the model's revision and dtype, and ``emocircuits steer`` uses
them when no ``--layer`` / ``--alpha`` is given.

>>> default_layers(30)
[9, 12, 15, 18]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from emocircuits.capture.chat import chat_format
from emocircuits.errors import DataError
from emocircuits.interventions.generation import has_chat_template, next_token_kl
from emocircuits.interventions.inputs import (
    as_list,
    check_request,
    check_vectors,
    resolve_prompts,
    resolve_vectors,
)
from emocircuits.interventions.run import (
    SteerCondition,
    chat_settings,
    conditions,
    random_conditions,
    run_conditions,
)
from emocircuits.interventions.scorers import MARKERS
from emocircuits.interventions.settings import save_recommendations
from emocircuits.interventions.steering import describe_push
from emocircuits.interventions.summary import headline, summarize
from emocircuits.models.batching import Batches, BatchSize
from emocircuits.results import Result

if TYPE_CHECKING:
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel

KL_RANGE = (0.03, 0.5)
"""The alpha grid chosen from the data (:func:`calibrate_alphas`) spans the strengths at which
the emotion directions cost this much KL (nats per token) on neutral text: below, the text
barely changes; above, it stops being fluent."""

SWEEP_STEER_TOKENS = 3
"""The sweep's default push: held while the prompt and the first 3 new tokens are written
(``steering(steer_tokens=3)``), then released. The push starts the text in the emotion's tone and
the model carries on in its own words, which costs less fluency than pushing every token
(on SmolLM2, apology: 55% of held-out continuations with a marker at perplexity x1.25,
where no setting pushing every token got past 25% within the limits; docs/BENCHMARKS.md)."""

KL_RANGE_WINDOW = (0.06, 2.0)
"""The KL range of the alpha grid for a push held only for the first few tokens: such a
push can be stronger, because the model writes the rest without it (on SmolLM2 a 3-token
push at KL ~1 nat/token kept the continuation within x1.35 perplexity)."""

DEPTHS = (0.3, 0.6)
"""Default layers lie evenly in this range of fractions of the depth: steering works best
in the middle."""

LIMITS = {"perplexity_ratio": 1.35, "distinct_2_ratio": 0.75, "random_vader_change": 0.15}


def default_layers(n_layers: int, n: int = 4) -> list[int]:
    """``n`` residual layers evenly spaced in :data:`DEPTHS` of the model's depth (one: the
    middle of that range).

    >>> default_layers(30), default_layers(30, 2), default_layers(30, 1)
    ([9, 12, 15, 18], [9, 18], [13])
    """
    fr = np.linspace(*DEPTHS, n) if n > 1 else [sum(DEPTHS) / 2]
    return sorted({max(1, round(float(f) * n_layers)) for f in fr})


def effect(row: dict[str, Any], emotion: str) -> tuple[str, float, float, float]:
    """``(name, value, lo, hi)`` of the emotion's effect in a summary row (larger = more)."""
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


def calibrate_alphas(
    lm: LoadedModel,
    vectors: EmotionVectors,
    emotions: Sequence[str],
    *,
    layer: int,
    scales: np.ndarray,
    kl_texts: Sequence[str],
    n: int = 5,
    kl_range: tuple[float, float] | None = None,
    steer_tokens: int | None = SWEEP_STEER_TOKENS,
    chat: str | None = None,
    system: str | None = None,
) -> tuple[list[float], dict[float, float]]:
    """``n`` geometrically spaced alphas between those where the mean KL of the emotions'
    directions at ``layer`` on ``kl_texts`` reaches ``kl_range`` (log-log interpolation
    on a doubling grid from 1/128 to 2), and the measured KL per probed alpha. Cheap: one
    forward pass over ``kl_texts`` per probe, no generation. ``kl_range`` defaults to
    :data:`KL_RANGE_WINDOW` for a push held for ``steer_tokens`` tokens, :data:`KL_RANGE`
    for a push on every token (``steer_tokens=None``). ``chat``/``system``: the KL texts
    go through the chat template (:func:`~.generation.next_token_kl`).

    >>> alphas, kl = calibrate_alphas(lm, vecs, ["anger"], layer=15, scales=s,
    ...                               kl_texts=texts)  # doctest: +SKIP
    """
    from emocircuits.interventions.steering import Steer

    if kl_range is None:
        kl_range = KL_RANGE if steer_tokens is None else KL_RANGE_WINDOW
    probe = [2.0**k for k in range(-7, 2)]
    sets = []
    for e in emotions:
        v = vectors.directions[e][vectors.layers.index(layer)]
        sets += [[Steer(layer, v, a, float(scales[layer]))] for a in probe]
    kl = next_token_kl(lm, kl_texts, sets, chat=chat, system=system)
    kl = kl.reshape(len(emotions), len(probe)).mean(0)
    logk = np.log(np.maximum.accumulate(np.maximum(kl, 1e-12)))  # monotone for interpolation
    loga = np.log(probe)
    lo, hi = (float(np.exp(np.interp(np.log(t), logk, loga))) for t in kl_range)
    grid = np.geomspace(lo, max(hi, lo * 1.01), n)
    return [float(f"{a:.3g}") for a in grid], dict(zip(probe, map(float, kl), strict=True))


@dataclass
class Recommendation:
    """The chosen setting of one emotion, with the evidence it was chosen on."""

    emotion: str
    layer: int
    alpha: float
    where: str
    effect: str
    value: float
    lo: float
    hi: float
    perplexity_ratio_median: float
    perplexity_ratio_mean: float
    distinct_2_ratio: float
    kl: float
    random_vader_change: float
    random_draws: int
    meets_limits: bool
    reason: str = ""
    limits: dict[str, float] = field(default_factory=lambda: dict(LIMITS))
    steer_tokens: int | None = None  # push only while the first N new tokens are written


def _fluency_fails(row: dict[str, Any], limits: dict[str, float]) -> list[str]:
    fails = []
    if (
        max(row["perplexity_ratio_median"], row["perplexity_ratio_mean"])
        > limits["perplexity_ratio"]
    ):
        fails.append("perplexity")
    if row["distinct_2_ratio"] < limits["distinct_2_ratio"]:
        fails.append("distinct-2")
    return fails


def _passes(row: dict[str, Any], rand: dict[str, Any], limits: dict[str, float]) -> list[str]:
    fails = _fluency_fails(row, limits)
    if abs(rand["vader_change"]) >= limits["random_vader_change"]:
        fails.append("random direction moves VADER")
    return fails


def _rank(row: dict[str, Any], emotion: str) -> tuple[float, float, float]:
    """Best first when sorted descending: the effect's lower bound, the effect, a weaker push."""
    _, v, lo, _ = effect(row, emotion)
    return (lo, v, -row["alpha"])


def recommend(
    summary: Sequence[dict[str, Any]],
    emotion: str,
    *,
    kl: dict[tuple[int, float], float] | None = None,
    where: str = "all",
    steer_tokens: int | None = None,
    limits: dict[str, float] | None = None,
) -> Recommendation:
    """The recommended (layer, alpha) of ``emotion`` from a :func:`summarize` table (see the
    module docstring for the rule)."""
    limits = {**LIMITS, **(limits or {})}
    rand = {(r["layer"], r["alpha"]): r for r in summary if r["condition"] == "random"}
    cands = [r for r in summary if r["condition"] == "direction" and r["emotion"] == emotion]
    if not cands:
        raise DataError(f"no direction rows for {emotion!r} in the sweep")
    scored = []
    for r in cands:
        name, v, lo, hi = effect(r, emotion)
        ra = rand.get((r["layer"], r["alpha"]), {"vader_change": 0.0})
        scored.append((r, name, v, lo, hi, ra, _passes(r, ra, limits)))
    ok = [s for s in scored if not s[6]]
    if ok:
        best = max(ok, key=lambda s: _rank(s[0], emotion))
        reason = ""
    else:
        pos = [s for s in scored if s[2] > 0] or scored
        best = min(pos, key=lambda s: s[0]["perplexity_ratio_median"])
        reason = "no setting passed the limits; this one failed on " + ", ".join(best[6])
    r, name, v, lo, hi, ra, _ = best
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
        meets_limits=bool(ok),
        reason=reason,
        limits=limits,
        steer_tokens=steer_tokens,
    )


def sweep(
    lm: LoadedModel,
    prompts: Sequence[str],
    vectors: EmotionVectors,
    emotions: Sequence[str],
    *,
    layers: Sequence[int],
    alphas: Sequence[float],
    scales: np.ndarray,
    batch_size: BatchSize | Batches,
    kl_texts: Sequence[str] = (),
    max_new_tokens: int = 30,
    where: str = "all",
    steer_tokens: int | None = SWEEP_STEER_TOKENS,
    seed: int = 0,
    prompt: bool | None = None,
    n_verify: int = 4,
    max_checks: int = 3,
    progress: Callable[[int], object] | None = None,
    chat: str | None = None,
    system: str | None = None,
) -> SweepResult:
    """Steer ``prompts`` with each emotion at each (layer, alpha), the push held while the
    first ``steer_tokens`` new tokens are written (``None``: all), and recommend a setting per
    emotion. ``progress`` gets the number of generations finished after each slice. The
    engine of :func:`steer_sweep`, which also chooses the layers, alphas and scales, and
    holds the defaults.

    Every setting gets one random direction; before a setting is recommended, the random
    control there is raised to ``n_verify`` draws (pooled), because one draw swings VADER
    by about as much as the 0.15 limit (docs/METHODS.md: pitfall 11). Per emotion, up to
    ``max_checks`` settings are checked this way, best first among those within the
    fluency limits. ``chat``/``system``: the prompts (and the KL texts) go through the
    chat template (:func:`~emocircuits.interventions.run.run_conditions`).

    >>> res = sweep(lm, prompts, vecs, ["gratitude"], layers=[15], alphas=[0.1, 0.2],
    ...             scales=s, batch_size=64)  # doctest: +SKIP
    >>> res.recommendations["gratitude"].alpha  # doctest: +SKIP
    0.25
    """
    for e in emotions:
        check_vectors(lm, vectors, e, layers)
    batch_size = Batches.of(batch_size, "steer-sweep")  # one back-off for every pass below
    use_prompt = has_chat_template(lm) if prompt is None else prompt
    conds: list[SteerCondition] = []
    for k, e in enumerate(emotions):
        conds += conditions(vectors, e, layers=layers, alphas=alphas, scales=scales, seed=seed,
                            random=k == 0, none=k == 0, prompt=use_prompt)  # fmt: skip
    rows = run_conditions(lm, prompts, conds, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, where=where, steer_tokens=steer_tokens,
                          progress=progress, chat=chat, system=system)  # fmt: skip
    kl: dict[tuple, float] = {}
    if kl_texts:
        steered = [c for c in conds if c.steers]
        values = next_token_kl(lm, kl_texts, [c.steers for c in steered], batch_size=batch_size,
                               chat=chat, system=system)  # fmt: skip
        kl = {c.key(): float(v) for c, v in zip(steered, values, strict=True)}

    def summary_with_kl() -> list[dict[str, Any]]:
        out = summarize(rows)
        for r in out:
            key = (r["condition"], r["emotion"], r["layer"], r["alpha"])
            r["kl"] = round(kl.get(key, 0.0), 5)
        return out

    summary = summary_with_kl()
    width = vectors.directions[emotions[0]].shape[-1]
    checked: set[tuple[int, float]] = set()
    rejected: set[tuple[int, float]] = set()  # the pooled random control moves VADER too much
    for e in emotions:
        n_checks = 0
        while n_verify > 1:  # until the best fluent setting has passed a pooled check
            fluent = [r for r in summary if r["condition"] == "direction" and r["emotion"] == e
                      and (r["layer"], r["alpha"]) not in rejected
                      and not _fluency_fails(r, LIMITS)]  # fmt: skip
            if not fluent:
                break
            best = max(fluent, key=lambda r: _rank(r, e))
            key = (best["layer"], best["alpha"])
            if key not in checked:
                if n_checks == max_checks:
                    break
                extra = random_conditions(width, key[0], key[1], float(scales[key[0]]),
                                          range(1, n_verify), seed=seed)  # fmt: skip
                rows += run_conditions(lm, prompts, extra, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, where=where,
                                       steer_tokens=steer_tokens, progress=progress,
                                       chat=chat, system=system)  # fmt: skip
                checked.add(key)
                n_checks += 1
                summary = summary_with_kl()
            rand = next(r for r in summary if r["condition"] == "random"
                        and (r["layer"], r["alpha"]) == key)  # fmt: skip
            if abs(rand["vader_change"]) < LIMITS["random_vader_change"]:
                break
            rejected.add(key)
    recs = {}
    for e in emotions:
        by_setting = {
            (r["layer"], r["alpha"]): r["kl"]
            for r in summary
            if r["condition"] == "direction" and r["emotion"] == e
        }
        recs[e] = recommend(summary, e, kl=by_setting, where=where, steer_tokens=steer_tokens)
    settings = {"emotions": list(emotions), "layers": list(layers), "alphas": list(alphas),
                "where": where, "steer_tokens": steer_tokens, "max_new_tokens": max_new_tokens,
                "seed": seed,
                "n_prompts": len(prompts), "prompting_baseline": use_prompt,
                "kl_texts": len(kl_texts), "decoding": "greedy", "n_verify": n_verify,
                "random_checked": sorted(map(list, checked)),
                **batch_size.provenance}  # fmt: skip
    settings.update(chat_settings(chat_format(lm, chat, system)))
    return SweepResult(rows, summary, recs, settings)


def neutral_kl_texts() -> list[str]:
    """The neutral text the KL costs are measured on: the ``baseline`` preset's first 16
    neutral sentences."""
    from emocircuits.data import load_dataset

    return [e.text for e in load_dataset("baseline").examples if e.emotion == "neutral"][:16]


def default_sweep_dir(vectors_path: str | os.PathLike[str], model_name: str) -> Path:
    """Where ``steer-sweep`` writes without ``--out``: ``v.safetensors`` ->
    ``v-sweep-MODEL/``.

    >>> default_sweep_dir("runs/v.safetensors", "smollm2-135m").as_posix()
    'runs/v-sweep-smollm2-135m'
    """
    from emocircuits.geometry.vectors import safetensors_path

    p = safetensors_path(vectors_path).with_suffix("")
    return p.with_name(p.name + f"-sweep-{model_name}")


@dataclass(repr=False)
class SweepResult(Result):
    """What :func:`steer_sweep` (and :func:`sweep`) return: ``generations`` (one row per prompt
    and condition), ``summary`` (per setting, with KL), ``recommendations`` (per emotion),
    ``settings`` (what was swept, and how the alphas were chosen) and ``meta`` (model,
    vectors). ``save(folder)`` writes rows.jsonl, summary.csv, sweep.json and a
    dose-response figure per emotion; :meth:`save_recommendations` the settings file next
    to the vectors that ``steer`` reads."""

    command: ClassVar[str] = "steer-sweep"
    generations: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    recommendations: dict[str, Recommendation]
    settings: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per emotion: the recommended setting and the evidence for it."""
        out = []
        for e, r in self.recommendations.items():
            out.append({"emotion": e, "layer": r.layer, "alpha": r.alpha, "effect": r.effect,
                        "value": r.value, "lo": r.lo, "hi": r.hi,
                        "perplexity_ratio": r.perplexity_ratio_median,
                        "distinct_2_ratio": r.distinct_2_ratio, "kl": r.kl,
                        "random_vader_change": r.random_vader_change,
                        "meets_limits": r.meets_limits})  # fmt: skip
        return out

    def table(self) -> list[dict[str, Any]]:
        """Every setting of the summary, the columns worth a glance."""
        return [headline(r) for r in self.summary]

    def title(self) -> str:
        s = self.settings
        return (f"SweepResult: {len(s.get('emotions', []))} emotions x {len(s.get('layers', []))}"
                f" layers x {len(s.get('alphas', []))} alphas, {len(self.generations)} "
                f"continuations, pushed at {self.push()}")  # fmt: skip

    def push(self) -> str:
        """Where the sweep's push was held, in words."""
        return describe_push(self.settings.get("steer_tokens"), self.settings.get("where", "all"))

    def figure(self, emotion: str | None = None) -> Any:
        """The dose-response figure of ``emotion`` (default: the first swept)."""
        from emocircuits.plots.steering import dose_response

        e = emotion or next(iter(self.recommendations))
        title = f"steering with the {e} direction (pushed at {self.push()}): dose-response"
        return dose_response(self.summary, e, recommended=asdict(self.recommendations[e]),
                             title=title)  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> Path:
        """The sweep folder ``path``: rows.jsonl, summary.csv, sweep.json and
        dose-response-EMOTION.png/.svg; ``settings["sweep"]`` becomes ``path``."""
        from emocircuits.capture.store import atomic_write_bytes, atomic_write_json
        from emocircuits.plots import save_figure
        from emocircuits.tables import csv_bytes, write_jsonl

        out = Path(path)
        self.settings = {"sweep": str(out), **{k: v for k, v in self.settings.items()
                                               if k != "sweep"}}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "rows.jsonl", self.generations)
        atomic_write_bytes(out / "summary.csv", csv_bytes(self.summary))
        for e in self.recommendations:
            save_figure(self.figure(e), out / f"dose-response-{e}")
        meta = {"format": "emocircuits.steer-sweep", "version": 1,
                "model": self.meta.get("model"), "vectors": self.meta.get("vectors"),
                "settings": self.settings,
                "recommended": {e: asdict(r) for e, r in self.recommendations.items()},
                "summary": self.summary}  # fmt: skip
        atomic_write_json(out / "sweep.json", meta)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SweepResult:
        """Read a folder written by :meth:`save` (or ``emocircuits steer-sweep --out``)."""
        from emocircuits.tables import read_json, read_jsonl

        out = Path(path)
        for name in ("sweep.json", "rows.jsonl"):
            if not (out / name).is_file():
                raise DataError(f"no {name} in {out} (not a steer-sweep folder)")
        meta = read_json(out / "sweep.json")
        if meta.get("format") != "emocircuits.steer-sweep":
            raise DataError("not a steer-sweep result", where=str(out / "sweep.json"))
        recs = {e: Recommendation(**r) for e, r in meta["recommended"].items()}
        return cls(read_jsonl(out / "rows.jsonl"), meta["summary"], recs, meta["settings"],
                   {"model": meta["model"], "vectors": meta["vectors"]})  # fmt: skip

    def save_recommendations(self, vectors_path: str | os.PathLike[str] | None = None) -> Path:
        """Merge the recommendations into the settings file next to the vectors (default: the
        vectors file the sweep read), where ``steer`` without layer/alpha finds them."""
        vectors_path = vectors_path or (self.meta.get("vectors") or {}).get("file")
        if not vectors_path:
            raise DataError("the vectors were not read from a file; give vectors_path")
        return save_recommendations(vectors_path, self.meta["model"], self.recommendations,
                                    self.settings)  # fmt: skip

    def recommendation_lines(self) -> str:
        """The recommended settings as the lines ``emocircuits steer-sweep`` prints."""
        lines = [f"recommended settings (pushed at {self.push()}):"]
        for e, r in self.recommendations.items():
            flag = "" if r.meets_limits else f"  (!) {r.reason}"
            lines.append(f"  {e:10s} layer {r.layer:3d} alpha {r.alpha:<6g} {r.effect} "
                         f"{r.value:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}], ppl ratio "
                         f"{r.perplexity_ratio_median:.2f}, distinct-2 ratio "
                         f"{r.distinct_2_ratio:.2f}, KL {r.kl:.3f}, random "
                         f"{r.random_vader_change:+.3f} ({r.random_draws} draws)"
                         + flag)  # fmt: skip
        return "\n".join(lines)


def steer_sweep(
    lm: LoadedModel,
    prompts: str | os.PathLike[str] | Sequence[str] | None,
    vectors: EmotionVectors | str | os.PathLike[str],
    *,
    emotion: str | Sequence[str] | None = None,
    layer: int | Sequence[int] | None = None,
    alpha: float | Sequence[float] | None = None,
    n_layers: int = 4,
    n_alphas: int = 5,
    n_prompts: int | None = None,
    n_verify: int = 4,
    max_new_tokens: int = 30,
    batch_size: BatchSize = 64,
    where: str = "all",
    steer_tokens: int | None = SWEEP_STEER_TOKENS,
    seed: int = 0,
    prompt_baseline: bool = True,
    chat: str | None = None,
    system: str | None = None,
    scales: np.ndarray | None = None,
    progress: bool = True,
) -> SweepResult:
    """Dose-response of steering over layers x alphas and the recommended setting per emotion
    (what ``emocircuits steer-sweep`` does). ``prompts``: None (the shipped neutral ``tune``
    prompts), a .txt/.jsonl path or a list (the first ``n_prompts``). ``emotion``: default
    every one of the vectors but neutral. ``layer``: default ``n_layers`` layers evenly at
    30-60% of the depth (:func:`default_layers`). ``alpha``: default ``n_alphas`` strengths
    chosen from the data (:func:`calibrate_alphas` at the middle layer; recorded in
    ``settings["alpha_calibration"]``). Scales as in
    :func:`~emocircuits.interventions.steering.steering_scales`. ``batch_size``: rows per
    pass, or ``"auto"`` (from free memory); halved on out-of-memory, the size settled on
    printed (``progress``) and recorded in ``settings``. ``chat`` / ``system``: as
    in :func:`~emocircuits.interventions.run.steer`; the KL on neutral text that calibrates
    the alphas is then measured with the neutral sentences in the same chat role, over their
    own tokens; the recommended settings are saved under that chat mode.

    >>> res = steer_sweep(lm, None, "v.safetensors", emotion="gratitude")  # doctest: +SKIP
    >>> res.save("runs/sweep"); res.save_recommendations()  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from emocircuits.interventions.steering import steering_scales

    chat_format(lm, chat, system)  # a bad chat value or no template: refused first
    prompt_list, prompt_desc = resolve_prompts(prompts)
    vecs, vfile = resolve_vectors(vectors)
    name = vfile or "the vectors"
    emotions, layers = as_list(emotion), as_list(layer)
    check_request(vecs, emotions, layers, name)
    emotions = emotions or [e for e in vecs.emotions if e != "neutral"]
    layers = layers or [x for x in default_layers(lm.arch.n_layers, n_layers) if x in vecs.layers]
    prompt_list = prompt_list[:n_prompts]
    if not layers:
        raise DataError(f"none of the default layers is in {name}; give --layer")
    scales = steering_scales(lm) if scales is None else np.asarray(scales)
    kl_texts = neutral_kl_texts()
    alphas, calibration = as_list(alpha), None
    if not alphas:
        mid = layers[len(layers) // 2]
        alphas, calibration = calibrate_alphas(lm, vecs, emotions, layer=mid, scales=scales,
                                               kl_texts=kl_texts, n=n_alphas,
                                               steer_tokens=steer_tokens, chat=chat,
                                               system=system)  # fmt: skip
    baseline = has_chat_template(lm) and prompt_baseline
    n = len(prompt_list) * (1 + len(layers) * len(alphas) * (len(emotions) + 1)
                            + baseline * len(emotions))  # fmt: skip
    batches = Batches(batch_size, "steer-sweep")
    with tqdm(total=n, desc="steer-sweep", unit="text", disable=not progress) as bar:
        res = sweep(
            lm, prompt_list, vecs, emotions, layers=layers, alphas=alphas, scales=scales,
            kl_texts=kl_texts, max_new_tokens=max_new_tokens, batch_size=batches,
            where=where, steer_tokens=steer_tokens, seed=seed,
            prompt=None if prompt_baseline else False, n_verify=n_verify,
            progress=bar.update, chat=chat, system=system,
        )  # fmt: skip
        bar.total = bar.n  # the random-control checks add a number of rows known only now
        bar.refresh()
    batches.report(progress)
    res.settings = {"sweep": None, **res.settings, "alpha_calibration": calibration,
                    "prompts": prompt_desc}  # fmt: skip
    res.meta = {"model": lm.provenance, "vectors": {"file": vfile, **vecs.meta()}}
    return res


def calibration_line(res: SweepResult) -> str | None:
    """``steer-sweep``'s line on the alphas chosen from the data (None if they were given)."""
    if res.settings.get("alpha_calibration") is None:
        return None
    layers = res.settings["layers"]
    return (f"alphas from the data (KL on neutral text at layer {layers[len(layers) // 2]}): "
            f"{res.settings['alphas']}")  # fmt: skip

"""Dose-response sweep over layers x alphas, and the recommended steering setting.

The sweep splits its prompts in two (:func:`~.recommend.split_prompts`, seeded, recorded):
it **chooses on the tune half and reports on the held-out half**. It runs in three stages
(successive halving; :data:`~.sweep_result.STAGES`):

1. ``screen``: every emotion's direction at every (layer, alpha) on the tune prompts, with
   short continuations (``screen_tokens``, default 10: the push is held for the first 3
   tokens, so the tone shows early); the ``n_keep`` best settings per emotion go on
   (:func:`~.recommend.screen`);
2. ``tune``: those settings at full length on the tune prompts; before a setting is
   recommended, ``n_verify`` norm-matched random directions (pooled) are run at it, best
   setting first, until one passes (random controls only where a recommendation is about
   to be made); the KL of next-token distributions on neutral text (the ``baseline``
   preset's neutral sentences) is measured at these settings; the recommendation
   (:func:`~.recommend.recommend`: the largest lower 95% bound within the limits, or an
   explicit none) is made here;
3. ``held_out``: the recommended settings, their random controls and the prompting
   baseline on the held-out prompts (:func:`evaluate_setting`); these are the numbers to
   quote (``Recommendation.held_out``).

Directions: ``steer_sweep`` steers with ``one_vs_rest`` directions (:data:`STEER_METHOD`,
which steer far better than ``mean_diff``: docs/BENCHMARKS.md); vectors of another method
are rebuilt from the activation folder they record
(:func:`~emocircuits.geometry.vectors.steering_vectors`), and the method is recorded in the
recommendation. Settings are saved next to the vectors
(:mod:`~emocircuits.interventions.settings`: ``v.safetensors`` -> ``v.steer.json``), keyed by
the model's revision and dtype, and ``emocircuits steer`` uses them when no ``--layer`` /
``--alpha`` is given (and refuses an explicit none, naming what to widen).

>>> default_layers(30)
[9, 12, 15, 18]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emocircuits.capture.chat import chat_format
from emocircuits.errors import DataError
from emocircuits.geometry.vectors import STEER_METHOD
from emocircuits.interventions.generation import has_chat_template, next_token_kl
from emocircuits.interventions.inputs import (
    as_list,
    check_request,
    check_vectors,
    resolve_prompts,
    resolve_vectors,
)
from emocircuits.interventions.recommend import (
    LIMITS,
    Recommendation,
    effect,
    fails,
    rank,
    recommend,
    screen,
    split_prompts,
)
from emocircuits.interventions.run import (
    INSTRUCTION,
    SteerCondition,
    chat_settings,
    random_conditions,
    run_conditions,
)
from emocircuits.interventions.steering import Steer
from emocircuits.interventions.summary import summarize
from emocircuits.interventions.sweep_result import SweepResult
from emocircuits.models.batching import Batches, BatchSize

if TYPE_CHECKING:
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel

__all__ = [
    "LIMITS",
    "Recommendation",
    "SweepResult",
    "calibrate_alphas",
    "default_layers",
    "effect",
    "evaluate_setting",
    "recommend",
    "steer_sweep",
    "sweep",
]

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

SCREEN_TOKENS = 10
"""New tokens per continuation in the sweep's screen (successive halving's first stage)."""

N_KEEP = 2
"""Settings per emotion that go on from the screen to full-length continuations."""


def default_layers(n_layers: int, n: int = 4) -> list[int]:
    """``n`` residual layers evenly spaced in :data:`DEPTHS` of the model's depth (one: the
    middle of that range).

    >>> default_layers(30), default_layers(30, 2), default_layers(30, 1)
    ([9, 12, 15, 18], [9, 18], [13])
    """
    fr = np.linspace(*DEPTHS, n) if n > 1 else [sum(DEPTHS) / 2]
    return sorted({max(1, round(float(f) * n_layers)) for f in fr})


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


def _setting_conditions(
    vectors: EmotionVectors, emotion: str, settings: Sequence[tuple[int, float]], scales: np.ndarray
) -> list[SteerCondition]:
    """The ``direction`` conditions of ``emotion`` at the given (layer, alpha) settings."""
    out = []
    for layer, a in settings:
        v = vectors.directions[emotion][vectors.layers.index(layer)]
        out.append(SteerCondition("direction", emotion, layer, a,
                                  [Steer(layer, v, a, float(scales[layer]))]))  # fmt: skip
    return out


def _run_on(
    lm: LoadedModel,
    prompts: Sequence[str],
    which: Sequence[int],
    conds: Sequence[SteerCondition],
    stage: str,
    **kw: Any,
) -> list[dict[str, Any]]:
    """:func:`run_conditions` on the prompts ``which``; rows keep the prompt's index in the
    whole list and say their ``stage`` and ``split``."""
    rows = run_conditions(lm, [prompts[i] for i in which], conds, **kw)
    split = "held_out" if stage == "held_out" else "tune"
    for r in rows:
        r["prompt_index"] = int(which[r["prompt_index"]])
        r["stage"], r["split"] = stage, split
    return rows


def _summary(rows: Sequence[dict[str, Any]], stage: str, kl: Mapping[tuple, float]) -> list[dict]:
    """:func:`summarize` of one stage's rows, each row tagged with the stage and its KL on
    neutral text where it was measured (NaN elsewhere)."""
    out = summarize([r for r in rows if r["stage"] == stage])
    for r in out:
        r["stage"] = stage
        r["kl"] = round(kl.get((r["condition"], r["emotion"], r["layer"], r["alpha"]),
                               float("nan")), 5)  # fmt: skip
    return out


def evaluate_setting(
    lm: LoadedModel,
    prompts: Sequence[str],
    vectors: EmotionVectors,
    recommendations: Mapping[str, Recommendation],
    *,
    scales: np.ndarray,
    max_new_tokens: int = 30,
    batch_size: BatchSize | Batches = 64,
    n_random: int = 4,
    seed: int = 0,
    prompt: bool = False,
    where: str = "all",
    steer_tokens: int | None = SWEEP_STEER_TOKENS,
    progress: Callable[[int], object] | None = None,
    chat: str | None = None,
    system: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of the recommended settings on ``prompts`` (the held-out half of a sweep): the
    unsteered ``none``, each emotion's direction at its recommended (layer, alpha) (none
    for an explicit none), ``n_random`` random directions at each setting (the same draws
    as the sweep's, pooled) and, with ``prompt``, the prompting baseline per emotion; one
    :func:`~.run.run_conditions` call. :func:`held_out` reads the numbers from them.

    >>> rows = evaluate_setting(lm, held, vecs, res.recommendations, scales=s)  # doctest: +SKIP
    """
    conds = [SteerCondition("none")]
    width = next(iter(vectors.directions.values())).shape[-1]
    seen: set[tuple[int, float]] = set()
    for e, r in recommendations.items():
        if prompt:
            conds.append(SteerCondition("prompt", e, instruction=INSTRUCTION))
        if r.layer is None or r.alpha is None:
            continue
        conds += _setting_conditions(vectors, e, [(r.layer, r.alpha)], scales)
        if (r.layer, r.alpha) not in seen:
            seen.add((r.layer, r.alpha))
            conds += random_conditions(width, r.layer, r.alpha, float(scales[r.layer]),
                                       range(n_random), seed=seed)  # fmt: skip
    return run_conditions(lm, prompts, conds, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, where=where, steer_tokens=steer_tokens,
                          progress=progress, chat=chat, system=system)  # fmt: skip


def held_out(summary: Sequence[dict[str, Any]], rec: Recommendation) -> dict[str, Any] | None:
    """The held-out numbers of a recommendation from the summary of
    :func:`evaluate_setting`'s rows: its effect with the 95% interval, the fluency ratios,
    the pooled random direction's VADER change and the prompting baseline's effect."""
    n_prompts = next((r["n"] for r in summary if r["condition"] == "none"), 0)
    out: dict[str, Any] = {"n_prompts": n_prompts}
    p = [r for r in summary if r["condition"] == "prompt" and r["emotion"] == rec.emotion]
    if p:
        out["prompt_value"] = round(float(effect(p[0], rec.emotion)[1]), 4)
    if not rec.found:
        return out
    d = next(r for r in summary if r["condition"] == "direction" and r["emotion"] == rec.emotion
             and (r["layer"], r["alpha"]) == (rec.layer, rec.alpha))  # fmt: skip
    ra = next(r for r in summary if r["condition"] == "random"
              and (r["layer"], r["alpha"]) == (rec.layer, rec.alpha))  # fmt: skip
    _, v, lo, hi = effect(d, rec.emotion)
    out.update({"value": round(float(v), 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4),
                "vader_change": d["vader_change"],
                "perplexity_ratio_median": d["perplexity_ratio_median"],
                "perplexity_ratio_mean": d["perplexity_ratio_mean"],
                "distinct_2_ratio": d["distinct_2_ratio"],
                "random_vader_change": ra["vader_change"],
                "random_draws": max(1, ra["n"] // max(1, d["n"]))})  # fmt: skip
    return out


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
    screen_tokens: int | None = SCREEN_TOKENS,
    n_keep: int = N_KEEP,
    where: str = "all",
    steer_tokens: int | None = SWEEP_STEER_TOKENS,
    seed: int = 0,
    prompt: bool | None = None,
    n_verify: int = 4,
    max_checks: int = 3,
    limits: dict[str, float] | None = None,
    progress: Callable[[int], object] | None = None,
    chat: str | None = None,
    system: str | None = None,
) -> SweepResult:
    """Steer ``prompts`` with each emotion at each (layer, alpha), the push held while the
    first ``steer_tokens`` new tokens are written (``None``: all), choose a setting per
    emotion on the tune half of the prompts and evaluate it on the held-out half (the
    stages of the module docstring). ``screen_tokens=None`` turns the screen off (every
    setting at full length). ``progress`` gets the number of generations finished after
    each slice. The engine of :func:`steer_sweep`, which also chooses the layers, alphas
    and scales, and holds the defaults.

    Per emotion, up to ``max_checks`` settings get the pooled random check (``n_verify``
    draws), best first among those within the other limits: one draw swings VADER by
    about as much as the 0.15 limit (docs/METHODS.md: pitfall 11). ``chat``/``system``:
    the prompts (and the KL texts) go through the chat template.

    >>> res = sweep(lm, prompts, vecs, ["gratitude"], layers=[15], alphas=[0.1, 0.2],
    ...             scales=s, batch_size=64)  # doctest: +SKIP
    >>> res.recommendations["gratitude"].held_out["value"]  # doctest: +SKIP
    0.41
    """
    for e in emotions:
        check_vectors(lm, vectors, e, layers)
    limits = {**LIMITS, **(limits or {})}
    tune, held = split_prompts(len(prompts), seed)
    batch_size = Batches.of(batch_size, "steer-sweep")  # one back-off for every pass below
    use_prompt = has_chat_template(lm) if prompt is None else prompt
    kw = {"batch_size": batch_size, "where": where, "steer_tokens": steer_tokens,
          "progress": progress, "chat": chat, "system": system}  # fmt: skip
    grid = [(la, a) for la in layers for a in alphas]
    halving = screen_tokens is not None and screen_tokens < max_new_tokens
    rows: list[dict[str, Any]] = []
    keep = {e: grid for e in emotions}
    if halving:
        conds = [SteerCondition("none")]
        for e in emotions:
            conds += _setting_conditions(vectors, e, grid, scales)
        rows += _run_on(lm, prompts, tune, conds, "screen", max_new_tokens=screen_tokens, **kw)
        short = _summary(rows, "screen", {})
        keep = {e: screen(short, e, n_keep, limits) for e in emotions}
    conds = [SteerCondition("none")]
    for e in emotions:
        conds += _setting_conditions(vectors, e, keep[e], scales)
    rows += _run_on(lm, prompts, tune, conds, "tune", max_new_tokens=max_new_tokens, **kw)
    kl: dict[tuple, float] = {}
    if kl_texts:
        steered = [c for c in conds if c.steers]
        values = next_token_kl(lm, kl_texts, [c.steers for c in steered], batch_size=batch_size,
                               chat=chat, system=system)  # fmt: skip
        kl = {c.key(): float(v) for c, v in zip(steered, values, strict=True)}
    summary = _summary(rows, "tune", kl)
    width = vectors.directions[emotions[0]].shape[-1]
    checked: set[tuple[int, float]] = set()
    rejected: set[tuple[int, float]] = set()  # the pooled random control moves VADER too much
    for e in emotions:
        n_checks = 0
        while True:  # until the best setting within the other limits passes a pooled check
            good = [r for r in summary if r["condition"] == "direction" and r["emotion"] == e
                    and (r["layer"], r["alpha"]) not in rejected
                    and fails(r, {"vader_change": 0.0}, e, limits) == []]  # fmt: skip
            if not good:
                break
            best = max(good, key=lambda r: rank(r, e))
            key = (best["layer"], best["alpha"])
            if key not in checked:
                if n_checks == max_checks:
                    break
                extra = random_conditions(width, key[0], key[1], float(scales[key[0]]),
                                          range(n_verify), seed=seed)  # fmt: skip
                rows += _run_on(lm, prompts, tune, extra, "tune",
                                max_new_tokens=max_new_tokens, **kw)  # fmt: skip
                checked.add(key)
                n_checks += 1
                summary = _summary(rows, "tune", kl)
            rand = next(r for r in summary if r["condition"] == "random"
                        and (r["layer"], r["alpha"]) == key)  # fmt: skip
            if abs(rand["vader_change"]) < limits["random_vader_change"]:
                break
            rejected.add(key)
    method = vectors.method
    recs = {}
    for e in emotions:
        by_setting = {(r["layer"], r["alpha"]): r["kl"] for r in summary
                      if r["condition"] == "direction" and r["emotion"] == e}  # fmt: skip
        recs[e] = recommend(summary, e, kl=by_setting, where=where, steer_tokens=steer_tokens,
                            limits=limits, method=method)  # fmt: skip
    evaluated = evaluate_setting(lm, [prompts[i] for i in held], vectors, recs, scales=scales,
                                 max_new_tokens=max_new_tokens, n_random=n_verify, seed=seed,
                                 prompt=use_prompt, **kw)  # fmt: skip
    for r in evaluated:
        r["prompt_index"] = int(held[r["prompt_index"]])
        r["stage"], r["split"] = "held_out", "held_out"
    rows += evaluated
    held_summary = _summary(rows, "held_out", {})
    for rec in recs.values():
        rec.held_out = held_out(held_summary, rec)
    # KL on neutral text does not depend on the continuation's length: the screen's rows
    # show it where it was measured (the settings kept)
    full = (_summary(rows, "screen", kl) if halving else []) + summary + held_summary
    settings = {"emotions": list(emotions), "layers": list(layers), "alphas": list(alphas),
                "where": where, "steer_tokens": steer_tokens, "max_new_tokens": max_new_tokens,
                "screen_tokens": screen_tokens if halving else None,
                "n_keep": n_keep if halving else None,
                "kept": {e: [list(k) for k in keep[e]] for e in emotions},
                "seed": seed, "method": method,
                "split": {"tune": tune, "held_out": held,
                          "rule": "seeded permutation (numpy default_rng([seed, 16])): first "
                                  "half tune, the rest held out"},
                "n_prompts": len(prompts), "prompting_baseline": use_prompt,
                "kl_texts": len(kl_texts), "decoding": "greedy", "n_verify": n_verify,
                "limits": limits, "random_checked": sorted(map(list, checked)),
                **batch_size.provenance}  # fmt: skip
    settings.update(chat_settings(chat_format(lm, chat, system)))
    return SweepResult(rows, full, recs, settings)


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
    screen_tokens: int | None = SCREEN_TOKENS,
    n_keep: int = N_KEEP,
    method: str | None = STEER_METHOD,
    batch_size: BatchSize = 64,
    where: str = "all",
    steer_tokens: int | None = SWEEP_STEER_TOKENS,
    seed: int = 0,
    prompt_baseline: bool = True,
    chat: str | None = None,
    system: str | None = None,
    scales: np.ndarray | None = None,
    limits: dict[str, float] | None = None,
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

    The prompts are split into tune and held-out halves (``seed``); ``screen_tokens`` /
    ``n_keep``: the successive halving of :func:`sweep` (``screen_tokens=None``: every
    setting at full length). ``method``: the direction method to steer with (default
    ``one_vs_rest``); vectors of another method are rebuilt from the activation folder
    they record, or refused if it is gone (``None``: steer with the vectors as they are).
    ``limits``: overrides of :data:`~.recommend.LIMITS`.

    >>> res = steer_sweep(lm, None, "v.safetensors", emotion="gratitude")  # doctest: +SKIP
    >>> res.save("runs/sweep"); res.save_recommendations()  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from emocircuits.geometry.vectors import steering_vectors
    from emocircuits.interventions.steering import steering_scales

    chat_format(lm, chat, system)  # a bad chat value or no template: refused first
    prompt_list, prompt_desc = resolve_prompts(prompts)
    vecs, vfile = resolve_vectors(vectors)
    name = vfile or "the vectors"
    vecs, rebuilt = steering_vectors(vecs, name, method)
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
    n_t = len(prompt_list) // 2
    n_h = len(prompt_list) - n_t
    e = len(emotions)
    halving = screen_tokens is not None and screen_tokens < max_new_tokens
    full = min(n_keep, len(layers) * len(alphas)) if halving else len(layers) * len(alphas)
    n = (halving * n_t * (1 + e * len(layers) * len(alphas)) + n_t * (1 + e * full)
         + n_h * (1 + e * (1 + n_verify + baseline)))  # fmt: skip
    batches = Batches(batch_size, "steer-sweep")
    with tqdm(total=n, desc="steer-sweep", unit="text", disable=not progress) as bar:
        res = sweep(
            lm, prompt_list, vecs, emotions, layers=layers, alphas=alphas, scales=scales,
            kl_texts=kl_texts, max_new_tokens=max_new_tokens, batch_size=batches,
            where=where, steer_tokens=steer_tokens, seed=seed,
            prompt=None if prompt_baseline else False, n_verify=n_verify,
            screen_tokens=screen_tokens, n_keep=n_keep, limits=limits,
            progress=bar.update, chat=chat, system=system,
        )  # fmt: skip
        bar.total = bar.n  # the random-control checks add a number of rows known only now
        bar.refresh()
    batches.report(progress)
    res.settings = {"sweep": None, **res.settings, "alpha_calibration": calibration,
                    "prompts": prompt_desc, "directions": rebuilt}  # fmt: skip
    res.meta = {"model": lm.provenance, "vectors": {"file": vfile, **vecs.meta()}}
    return res


def calibration_line(res: SweepResult) -> str | None:
    """``steer-sweep``'s line on the alphas chosen from the data (None if they were given)."""
    if res.settings.get("alpha_calibration") is None:
        return None
    layers = res.settings["layers"]
    return (f"alphas from the data (KL on neutral text at layer {layers[len(layers) // 2]}): "
            f"{res.settings['alphas']}")  # fmt: skip

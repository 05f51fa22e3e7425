"""Steering runs: continue prompts under several conditions, and score the text.

Conditions (each row of the result has ``condition``, ``emotion``, ``layer``, ``alpha``):

- ``none``: the unsteered continuation (once per prompt);
- ``direction``: the emotion direction, at each layer and alpha;
- ``random``: a random unit direction (one per layer, from ``seed``) at the same layers
  and alphas: the same push, no emotion; what steering does by pushing at all;
- ``prompt`` (chat models, i.e. tokenizers with a chat template): no steering, but the
  prompt wrapped in a user turn that asks for the emotion (:data:`INSTRUCTION`), the
  prompting baseline that AxBench found hard to beat;
- ``transfer``: another model's direction mapped into this model (see ``emocircuits
  compare``), at the same layers and alphas.

All conditions of a run are generated together: every (condition, prompt) pair is one row
of a batched greedy ``generate`` with its own steering (``steering(per_row=...)``), rows
sorted by length so that padding stays small. Every continuation is scored by the
model-independent scorers (:mod:`~emocircuits.interventions.scorers`) and by its
perplexity under the **unsteered** model given the input it was generated from.

>>> conds = conditions(vecs, "anger", layers=[15], alphas=[0.25], scales=s)  # doctest: +SKIP
>>> rows = run_conditions(lm, prompts, conds)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from emocircuits.errors import DataError
from emocircuits.interventions.scorers import (
    MARKERS,
    NRC_CATEGORIES,
    distinct_n,
    repetition,
    score_texts,
)
from emocircuits.interventions.steering import Steer, describe_push, steering
from emocircuits.results import Result

if TYPE_CHECKING:
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel

INSTRUCTION = "Continue this text, and make the continuation express {feeling}:\n\n{prompt}"
"""The prompting baseline's user turn (chat models only)."""

FEELINGS = {"gratitude": "gratitude", "apology": "an apology", "anger": "anger"}


@dataclass
class SteerCondition:
    """One way of continuing every prompt: what to steer with, or how to prompt."""

    condition: str  # none | direction | random | prompt | transfer
    emotion: str | None = None
    layer: int | None = None
    alpha: float = 0.0
    steers: list[Steer] = field(default_factory=list)
    instruction: str | None = None  # with {prompt} and {feeling}; chat template applied
    draw: int | None = None  # which random direction (random condition only)

    def key(self) -> tuple:
        return (self.condition, self.emotion, self.layer, self.alpha)


def has_chat_template(lm: LoadedModel) -> bool:
    return bool(getattr(lm.tokenizer, "chat_template", None))


def encode(lm: LoadedModel, prompt: str, cond: SteerCondition | None = None) -> list[int]:
    """Token ids the model continues: the prompt, or the chat-formatted instruction."""
    tok = lm.tokenizer
    if cond is None or cond.instruction is None:
        return tok(prompt)["input_ids"]
    feeling = FEELINGS.get(cond.emotion or "", cond.emotion or "")
    msg = cond.instruction.format(prompt=prompt, feeling=feeling)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": msg}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def _left_pad(batch: Sequence[list[int]], pad: int) -> tuple[Any, Any]:
    import torch

    n = max(len(x) for x in batch)
    ids = torch.full((len(batch), n), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, n - len(x) :] = torch.tensor(x)
        mask[i, n - len(x) :] = 1
    return ids, mask


def _pad_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def generate(
    lm: LoadedModel,
    prompts: Sequence[str] | Sequence[list[int]],
    *,
    steers: Sequence[Steer] = (),
    per_row: Sequence[Sequence[Steer]] | None = None,
    where: str = "all",
    steer_tokens: int | None = None,
    max_new_tokens: int = 30,
    batch_size: int = 8,
) -> list[list[int]]:
    """Greedy continuations (new token ids, up to the end-of-text token) of ``prompts``
    (texts or token ids), with the same ``steers`` for all or each prompt's own
    (``per_row``). Prompts are batched by length (left padding); order is kept."""
    import torch

    ids = [lm.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]
    if per_row is not None and len(per_row) != len(ids):
        raise DataError(f"{len(per_row)} steer lists for {len(ids)} prompts")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[int]] = [[] for _ in ids]
    eos, pad = lm.tokenizer.eos_token_id, _pad_id(lm)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            x, mask = _left_pad([ids[i] for i in chunk], pad)
            rows = None if per_row is None else [per_row[i] for i in chunk]
            with steering(lm, steers, where=where, per_row=rows, steer_tokens=steer_tokens):
                new = lm.model.generate(
                    input_ids=x,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )[:, x.shape[1] :]
            for i, row in zip(chunk, new.tolist(), strict=True):
                out[i] = row[: row.index(eos)] if eos in row else row
    return out


def perplexity(
    lm: LoadedModel,
    prompts: Sequence[str] | Sequence[list[int]],
    continuations: Sequence[list[int]],
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """Perplexity of each continuation (token ids) after its prompt (text or ids) under the
    model as it is (call outside any steering): ``exp`` of the mean next-token loss over the
    new tokens; NaN for an empty continuation. Batched with left padding and explicit
    positions (equal to scoring one at a time: tested)."""
    import torch

    seqs = []
    for p, c in zip(prompts, continuations, strict=True):
        pi = lm.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p)
        seqs.append((pi, list(c)))
    out = np.full(len(seqs), np.nan)
    todo = sorted((i for i, (_, c) in enumerate(seqs) if c), key=lambda i: sum(map(len, seqs[i])))
    pad = _pad_id(lm)
    with torch.no_grad():
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            # left padding: every continuation ends at the last position, so the LM head
            # and the softmax run only over the last max(len(c)) + 1 positions
            x, mask = _left_pad([seqs[i][0] + seqs[i][1] for i in chunk], pad)
            keep = max(len(seqs[i][1]) for i in chunk) + 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = lm.model(input_ids=x, attention_mask=mask, position_ids=pos,
                              logits_to_keep=keep).logits  # fmt: skip
            for j, i in enumerate(chunk):
                c = seqs[i][1]
                pred = torch.log_softmax(logits[j, keep - 1 - len(c) : keep - 1].float(), -1)
                nll = -pred.gather(1, torch.tensor(c)[:, None]).mean()
                out[i] = float(torch.exp(nll))
    return out


def next_token_kl(
    lm: LoadedModel,
    texts: Sequence[str],
    steer_sets: Sequence[Sequence[Steer]],
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """``[len(steer_sets)]`` mean KL(unsteered || steered) of the next-token distributions
    over every position of ``texts`` (neutral text: the fluency cost of each steer set on
    text it did not write). All positions are steered."""
    import torch

    ids = [lm.tokenizer(t)["input_ids"] for t in texts]
    n = max(map(len, ids))
    pad = _pad_id(lm)
    x = torch.full((len(ids), n), pad, dtype=torch.long)
    mask = torch.zeros_like(x)
    for j, t in enumerate(ids):
        x[j, : len(t)] = torch.tensor(t)
        mask[j, : len(t)] = 1
    keep = mask.bool()
    with torch.no_grad():
        base = torch.log_softmax(lm.model(input_ids=x, attention_mask=mask).logits.float(), -1)
        base = base[keep]  # [tokens, vocab]
        p_base = base.exp()
        out = np.zeros(len(steer_sets))
        per = max(1, batch_size // len(ids))  # steer sets per forward pass
        for start in range(0, len(steer_sets), per):
            sets = steer_sets[start : start + per]
            rows = [list(s) for s in sets for _ in ids]
            with steering(lm, per_row=rows):
                logits = lm.model(
                    input_ids=x.repeat(len(sets), 1), attention_mask=mask.repeat(len(sets), 1)
                ).logits.float()
            logq = torch.log_softmax(logits, -1).view(len(sets), len(ids), n, -1)
            for k in range(len(sets)):
                kl = (p_base * (base - logq[k][keep])).sum(-1)
                out[start + k] = float(kl.mean())
    return out


def random_direction(width: int, seed: int) -> np.ndarray:
    """A uniformly random unit vector (the norm-matched control: steering rescales it)."""
    v = np.random.default_rng(seed).normal(size=width)
    return v / np.linalg.norm(v)


def random_conditions(
    width: int, layer: int, alpha: float, scale: float, draws: Iterable[int], *, seed: int = 0
) -> list[SteerCondition]:
    """The ``random`` conditions of the given draws at one setting. Draw ``d`` at ``layer``
    is the same direction whatever the alpha and whichever run asks for it, so extra draws
    can be added later and pooled with the first.

    >>> [c.draw for c in random_conditions(8, 3, 0.1, 2.0, range(2))]
    [0, 1]
    """
    return [
        SteerCondition(
            "random",
            None,
            layer,
            alpha,
            [Steer(layer, random_direction(width, seed + layer + 7919 * d), alpha, scale)],
            draw=d,
        )
        for d in draws
    ]


def check_vectors(lm: LoadedModel, vectors: EmotionVectors, emotion: str, layers) -> None:
    """Refuse an emotion, width or layer the vectors do not have, with one clear line."""
    if emotion not in vectors.directions:
        raise DataError(f"no direction for {emotion!r} in the vectors (has {vectors.emotions})")
    width = vectors.directions[emotion].shape[-1]
    if width != lm.arch.width:
        raise DataError(f"the vectors are {width} wide, the model {lm.arch.width}")
    for layer in layers:
        if layer not in vectors.layers:
            raise DataError(f"layer {layer} is not in the vectors (layers {vectors.layers})")


def conditions(
    vectors: EmotionVectors,
    emotion: str,
    *,
    layers: Sequence[int],
    alphas: Sequence[float],
    scales: np.ndarray,
    seed: int = 0,
    random: bool = True,
    none: bool = True,
    prompt: bool = False,
    transfer: EmotionVectors | None = None,
    n_random: int = 1,
) -> list[SteerCondition]:
    """The conditions of one steering run (see the module docstring). ``scales``: the
    typical residual norm per layer (:func:`~emocircuits.interventions.typical_norms`);
    ``layers`` use the activation-folder numbering, as ``vectors.layers``. ``n_random``
    random directions per setting (their rows are pooled in the summary: one draw is a
    noisy estimate of what an arbitrary push of that size does to the text)."""
    out = [SteerCondition("none")] if none else []
    if prompt:
        out.append(SteerCondition("prompt", emotion, instruction=INSTRUCTION))
    width = vectors.directions[emotion].shape[-1]
    for layer in layers:
        s = float(scales[layer])
        v = vectors.directions[emotion][vectors.layers.index(layer)]
        for a in alphas:
            out.append(SteerCondition("direction", emotion, layer, a, [Steer(layer, v, a, s)]))
            if random:
                out += random_conditions(width, layer, a, s, range(n_random), seed=seed)
            if transfer is not None:
                t = transfer.directions[emotion][transfer.layers.index(layer)]
                out.append(SteerCondition("transfer", emotion, layer, a, [Steer(layer, t, a, s)]))
    return out


def run_conditions(
    lm: LoadedModel,
    prompts: Sequence[str],
    conds: Sequence[SteerCondition],
    *,
    max_new_tokens: int = 30,
    batch_size: int = 32,
    where: str = "all",
    steer_tokens: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[dict[str, Any]]:
    """One row per (condition, prompt): the continuation and its scores. ``where`` and
    ``steer_tokens`` as in :func:`~emocircuits.interventions.steering.steering`. ``progress`` is
    called with the number of rows finished after each batch of generations."""
    jobs = [(c, i, encode(lm, p, c)) for c in conds for i, p in enumerate(prompts)]
    chunk = max(batch_size, 1) * 4  # generate in slices so that progress can be reported
    ids: list[list[int]] = []
    order = sorted(range(len(jobs)), key=lambda k: len(jobs[k][2]))
    done: dict[int, list[int]] = {}
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        got = generate(
            lm,
            [jobs[k][2] for k in part],
            per_row=[jobs[k][0].steers for k in part],
            where=where,
            steer_tokens=steer_tokens,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        done.update(zip(part, got, strict=True))
        if progress is not None:
            progress(len(part))
    ids = [done[k] for k in range(len(jobs))]
    ppl = perplexity(lm, [j[2] for j in jobs], ids, batch_size=batch_size)
    texts = [lm.tokenizer.decode(c, skip_special_tokens=True) for c in ids]
    scores = score_texts(texts)
    rows = []
    for k, (c, i, _) in enumerate(jobs):
        rows.append(
            {
                "prompt_index": i,
                "prompt": prompts[i],
                "condition": c.condition,
                "emotion": c.emotion,
                "layer": c.layer,
                "alpha": c.alpha,
                "draw": c.draw,
                "where": where,
                "steer_tokens": steer_tokens,
                "continuation": texts[k],
                "n_new_tokens": len(ids[k]),
                **{key: float(v[k]) for key, v in scores.items()},
                "repetition": repetition(texts[k]),
                "perplexity": float(ppl[k]),
            }
        )
    return rows


def steer_prompts(
    lm: LoadedModel,
    prompts: Sequence[str],
    vectors: EmotionVectors,
    emotion: str,
    *,
    layers: Sequence[int],
    alphas: Sequence[float],
    scales: np.ndarray,
    max_new_tokens: int,
    batch_size: int,
    n_random: int,
    where: str = "all",
    steer_tokens: int | None = None,
    seed: int = 0,
    prompt: bool | None = None,
    transfer: EmotionVectors | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[dict[str, Any]]:
    """Rows for every prompt and condition of one emotion (the engine of :func:`steer`, which
    also chooses the scales and the setting, and holds the defaults). ``prompt`` (the
    prompting baseline) defaults to on for chat models; ``n_random`` random directions per
    setting; ``steer_tokens``: push only while the first ``steer_tokens`` new tokens are
    written."""
    check_vectors(lm, vectors, emotion, layers)
    if transfer is not None:
        check_vectors(lm, transfer, emotion, layers)
    conds = conditions(vectors, emotion, layers=layers, alphas=alphas, scales=scales,
                       seed=seed, prompt=has_chat_template(lm) if prompt is None else prompt,
                       transfer=transfer, n_random=n_random)  # fmt: skip
    return run_conditions(lm, prompts, conds, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, where=where,
                          steer_tokens=steer_tokens, progress=progress)  # fmt: skip


SUMMARY_KEYS = ("vader", *[f"marker_{e}" for e in MARKERS], *[f"nrc_{c}" for c in NRC_CATEGORIES])


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


# ------------------------------------------------------------------ text in, text out
def generate_text(
    lm: LoadedModel,
    prompts: str | Sequence[str],
    *,
    max_new_tokens: int = 30,
    batch_size: int = 8,
) -> str | list[str]:
    """Greedy continuation (new text only) of one prompt, or of each of a list; any steering
    that is active (:func:`~emocircuits.interventions.steering.steering`) applies.

    >>> with ec.steering(lm, vecs, "gratitude", layer=15, alpha=0.2):  # doctest: +SKIP
    ...     print(generate_text(lm, "The meeting moved to Thursday.", max_new_tokens=20))
    """
    one = isinstance(prompts, str)
    ids = generate(lm, [prompts] if one else list(prompts), max_new_tokens=max_new_tokens,
                   batch_size=batch_size)  # fmt: skip
    texts = [lm.tokenizer.decode(x, skip_special_tokens=True) for x in ids]
    return texts[0] if one else texts


# --------------------------------------------------------- inputs of steer / steer-sweep
SHIPPED_PROMPTS = "shipped neutral prompts (tune split)"


def resolve_prompts(
    prompts: str | os.PathLike[str] | Sequence[str] | None,
) -> tuple[list[str], str]:
    """The prompts to continue and how the outputs name them: ``None`` the shipped neutral
    ``tune`` prompts, a ``.txt`` / ``.jsonl`` path, or a list of strings.

    >>> resolve_prompts(["Hello there."])
    (['Hello there.'], 'a list of 1 prompts')
    """
    from emocircuits.data.dataset import load_prompts, neutral_prompts

    if prompts is None:
        return neutral_prompts("tune"), SHIPPED_PROMPTS
    if isinstance(prompts, str | os.PathLike):
        return load_prompts(prompts), str(prompts)
    out = list(prompts)
    if not out or not all(isinstance(p, str) and p.strip() for p in out):
        raise DataError("prompts must be a non-empty list of non-empty strings")
    return out, f"a list of {len(out)} prompts"


def resolve_vectors(
    vectors: EmotionVectors | str | os.PathLike[str],
) -> tuple[EmotionVectors, str | None]:
    """The vectors and their file (None for vectors given as an object)."""
    from emocircuits.geometry.vectors import EmotionVectors, safetensors_path

    if isinstance(vectors, str | os.PathLike):
        return EmotionVectors.load(vectors), str(safetensors_path(vectors))
    return vectors, None


def direction_note(vectors: EmotionVectors, name: str) -> str | None:
    """A note for directions that are not ``one_vs_rest`` (they steer less specifically)."""
    if vectors.method == "one_vs_rest":
        return None
    return (f"note: {name} holds {vectors.method} directions; one_vs_rest directions "
            "(`vectors --method one_vs_rest`) leave out what all emotions share and "
            "steer more specifically (docs/BENCHMARKS.md)")  # fmt: skip


def check_request(
    vectors: EmotionVectors, emotions: Sequence[str], layers: Sequence[int], name: str
) -> None:
    """Refuse an emotion or layer ``vectors`` (called ``name`` in the message) lacks; needs
    no model, so a command calls it before loading one."""
    for e in emotions:
        if e not in vectors.directions:
            raise DataError(f"no {e!r} direction in {name} (has {', '.join(vectors.emotions)})")
    for layer in layers:
        if layer not in vectors.layers:
            raise DataError(
                f"layer {layer} is not in {name} (layers {vectors.layers[0]}-{vectors.layers[-1]})"
            )


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return [x] if isinstance(x, int | float | str) else list(x)


# ------------------------------------------------ the recommended settings next to vectors
def settings_path(vectors_path: str | os.PathLike[str]) -> Path:
    """Where a vectors file's recommended settings live: ``v.safetensors`` -> ``v.steer.json``."""
    from emocircuits.geometry.vectors import safetensors_path

    p = safetensors_path(vectors_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".steer.json")


def model_key(provenance: dict[str, Any]) -> str:
    """Settings are per model weights and dtype (greedy text depends on both)."""
    rev = provenance.get("revision") or provenance.get("name")
    return f"{rev}|{provenance.get('dtype', 'float32')}"


def require_setting(
    vectors_path: str | os.PathLike[str], layer: Any = None, alpha: Any = None
) -> None:
    """Without ``layer`` and ``alpha`` a steer needs the settings file of ``steer-sweep``;
    refuse early (before a model loads) if there is none."""
    if (not _as_list(layer) or not _as_list(alpha)) and not settings_path(vectors_path).is_file():
        raise DataError(
            f"no --layer/--alpha given and no recommended settings "
            f"({settings_path(vectors_path)}); run `emocircuits steer-sweep --vectors "
            f"{vectors_path}` first, or give --layer and --alpha"
        )


def load_recommendation(
    vectors_path: str | os.PathLike[str], provenance: dict[str, Any], emotion: str
) -> dict[str, Any]:
    """The saved recommended setting of ``emotion`` for this model, or a clear error."""
    path = settings_path(vectors_path)
    hint = f"run `emocircuits steer-sweep --model ... --vectors {vectors_path}` first"
    if not path.is_file():
        raise DataError(f"no --layer/--alpha given and no recommended settings ({path}); {hint}")
    try:
        data = json.loads(path.read_text("utf-8"))
        entry = data["models"][model_key(provenance)]
    except json.JSONDecodeError:
        raise DataError("not a steer-settings JSON file", where=str(path)) from None
    except KeyError:
        raise DataError(
            f"{path} has no settings for this model ({model_key(provenance)}); {hint}"
        ) from None
    if emotion not in entry["emotions"]:
        raise DataError(f"{path} has no setting for {emotion!r} on this model; {hint}")
    return entry["emotions"][emotion]


def _setting_of(setting: Any, emotion: str) -> dict[str, Any]:
    """A recommendation as a dict, from a sweep result, a recommendation or a dict."""
    if hasattr(setting, "recommendations"):  # a SweepResult
        if emotion not in setting.recommendations:
            raise DataError(f"the sweep has no setting for {emotion!r}")
        setting = setting.recommendations[emotion]
    if is_dataclass(setting):
        setting = asdict(setting)  # type: ignore[arg-type]
    if not isinstance(setting, dict) or not {"layer", "alpha"} <= set(setting):
        raise DataError("setting= must be a SweepResult, a Recommendation or a dict with "
                        "layer and alpha")  # fmt: skip
    return setting


# ------------------------------------------------------------------------------ steer
@dataclass(repr=False)
class SteerResult(Result):
    """What :func:`steer` returns: ``generations`` (one row per prompt and condition: the
    continuation and its scores), ``summary`` (per condition: means with bootstrap
    intervals) and ``meta`` (model, vectors, emotion, scales and settings).
    ``save(path)`` writes the rows as JSONL at ``path`` and ``path.summary.json``."""

    command: ClassVar[str] = "steer"
    generations: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    meta: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        """Per condition: VADER change [95%], the emotion's marker rate, fluency ratios."""
        return [headline(r) for r in self.summary]

    def title(self) -> str:
        st = self.meta.get("settings", {})
        push = describe_push(st.get("steer_tokens"), st.get("where", "all"))
        model = (self.meta.get("model") or {}).get("name", "?")
        return (f"SteerResult: {self.meta.get('emotion')} on {model}, "
                f"{len(self.generations)} continuations, pushed at {push}")  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``path`` (JSONL, one row per continuation) and ``path.summary.json``."""
        from emocircuits.capture.store import atomic_write_json

        out = Path(path)
        write_jsonl(out, self.generations)
        atomic_write_json(out.with_suffix(".summary.json"), {**self.meta, "summary": self.summary})
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteerResult:
        """Read what :meth:`save` (or ``emocircuits steer --out``) wrote."""
        out = Path(path)
        side = out.with_suffix(".summary.json")
        for p in (out, side):
            if not p.is_file():
                raise DataError(f"no {p} (written by `emocircuits steer --out {out}`)")
        meta = _read_json(side)
        if meta.get("format") != "emocircuits.steer":
            raise DataError("not a steer summary", where=str(side))
        summary = meta.pop("summary")
        return cls(read_jsonl(out), summary, meta)

    def table(self) -> str:
        """The summary as the text table ``emocircuits steer`` prints."""
        return steer_table(self.summary)


def steer(
    lm: LoadedModel,
    prompts: str | os.PathLike[str] | Sequence[str] | None,
    vectors: EmotionVectors | str | os.PathLike[str],
    emotion: str,
    *,
    layer: int | Sequence[int] | None = None,
    alpha: float | Sequence[float] | None = None,
    setting: Any = None,
    transfer: EmotionVectors | str | os.PathLike[str] | None = None,
    max_new_tokens: int = 30,
    batch_size: int = 64,
    where: str = "all",
    steer_tokens: int | None = None,
    seed: int = 0,
    n_random: int = 4,
    prompt_baseline: bool = True,
    scales: np.ndarray | None = None,
    progress: bool = True,
) -> SteerResult:
    """Continue ``prompts`` (None: the shipped neutral ``tune`` prompts; a .txt/.jsonl path;
    a list of strings) with ``emotion``'s direction added, next to the controls (unsteered,
    ``n_random`` random directions, the prompting baseline on chat models, ``transfer``
    directions), and score the text (what ``emocircuits steer`` does).

    The push at each ``layer`` x ``alpha`` is ``alpha * s_l * v`` (``s_l``: ``scales``, by
    default :func:`~emocircuits.interventions.steering.steering_scales`). Without ``layer``
    or ``alpha`` the recommended setting is used: ``setting=`` (a ``SweepResult``, a
    ``Recommendation`` or its dict), else the one ``steer-sweep`` saved next to the vectors
    file for this model (its ``where``, and its ``steer_tokens`` unless one is given).

    >>> res = steer(lm, None, "v.safetensors", "gratitude", layer=15, alpha=0.2)  # doctest: +SKIP
    >>> res.save("runs/gratitude.jsonl")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from emocircuits.interventions.steering import SCALES_WHAT, steering_scales

    prompt_list, prompt_desc = resolve_prompts(prompts)
    vecs, vfile = resolve_vectors(vectors)
    tvecs = None if transfer is None else resolve_vectors(transfer)[0]
    tfile = str(transfer) if isinstance(transfer, str | os.PathLike) else None
    layers, alphas = _as_list(layer), _as_list(alpha)
    check_request(vecs, [emotion], layers, vfile or "the vectors")
    source = "given"
    if not layers or not alphas:
        if setting is not None:
            rec = _setting_of(setting, emotion)
        elif vfile is not None:
            rec = load_recommendation(vfile, lm.provenance, emotion)
        else:
            raise DataError("no layer/alpha given and no setting= (a steer_sweep result)")
        layers = layers or [rec["layer"]]
        alphas = alphas or [rec["alpha"]]
        where = rec.get("where", where)
        if steer_tokens is None:  # given: that wins
            steer_tokens = rec.get("steer_tokens")
        source = "recommended by steer-sweep"
        if "effect" in rec and "value" in rec:
            source += f" ({rec['effect']} {rec['value']:+.3f})"
        check_request(vecs, [], layers, vfile or "the vectors")
    scales = steering_scales(lm) if scales is None else np.asarray(scales)
    chat = has_chat_template(lm) and prompt_baseline
    per = 1 + n_random + (tvecs is not None)
    n = len(prompt_list) * (1 + chat + len(layers) * len(alphas) * per)
    with tqdm(total=n, desc="steer", unit="text", disable=not progress) as bar:
        rows = steer_prompts(
            lm, prompt_list, vecs, emotion, layers=layers, alphas=alphas, scales=scales,
            max_new_tokens=max_new_tokens, batch_size=batch_size, where=where,
            steer_tokens=steer_tokens, seed=seed, prompt=None if prompt_baseline else False,
            transfer=tvecs, n_random=n_random, progress=bar.update,
        )  # fmt: skip
    meta = {
        "format": "emocircuits.steer",
        "version": 1,
        "model": lm.provenance,
        "vectors": {"file": vfile, **vecs.meta()},
        "transfer": None if tvecs is None else {"file": tfile, **tvecs.meta()},
        "emotion": emotion,
        "scales": {"what": SCALES_WHAT, "values": [round(float(v), 4) for v in scales]},
        "settings": {"layers": list(layers), "alphas": list(alphas), "where": where,
                     "steer_tokens": steer_tokens, "source": source,
                     "max_new_tokens": max_new_tokens, "seed": seed,
                     "n_random": n_random, "decoding": "greedy", "dtype": str(lm.dtype),
                     "prompts": prompt_desc, "n_prompts": len(prompt_list)},
    }  # fmt: skip
    return SteerResult(rows, summarize(rows), meta)


# ------------------------------------------------------------------ tables and files
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


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object a line, atomically (the folder is made)."""
    from emocircuits.capture.store import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise DataError(f"not JSONL ({e.msg})", where=f"{path}:{e.lineno}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError:
        raise DataError("not a JSON file", where=str(path)) from None

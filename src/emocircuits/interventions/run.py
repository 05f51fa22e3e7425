"""Steering runs: continue prompts under several conditions, and score the text.

Conditions (each row of the result has ``condition``, ``emotion``, ``layer``, ``alpha``):

- ``none``: the unsteered continuation (once per prompt);
- ``direction``: the emotion direction, at each layer and alpha;
- ``random``: a random unit direction (one per layer, from ``seed``) at the same layers
  and alphas: the same push, no emotion; what steering does by pushing at all;
- ``prompt`` (chat models, i.e. tokenizers with a chat template): no steering, but the
  prompt wrapped in a user turn that asks for the emotion (:data:`INSTRUCTION`; with a chat
  mode, :data:`CHAT_INSTRUCTION`), the prompting baseline that AxBench found hard to beat;
- ``transfer``: another model's direction mapped into this model (see ``emocircuits
  compare``), at the same layers and alphas.

With ``chat`` (``"user"`` / ``"assistant"``, :mod:`~emocircuits.capture.chat`) every
prompt goes through the model's chat template: ``"user"``: the prompt is the user's message
and the continuation is the assistant's whole reply; ``"assistant"``: the prompt is the
start of the assistant's reply (after an empty user turn) and the continuation goes on with
it. Scoring reads only the new tokens, never the prompt or the template.

All conditions of a run are generated together: every (condition, prompt) pair is one row
of a batched :func:`~emocircuits.interventions.generation.generate` with its own steering
(``steering(per_row=...)``), rows sorted by length so that padding stays small. Decoding is
greedy, or sampled (:class:`~emocircuits.interventions.generation.Decoding`): then every
(condition, prompt) pair is one row per seed, each row's draw independent of the batch it
ran in, and every row records its ``decoding`` and ``seed`` (None when greedy).
Every continuation is scored by the model-independent scorers
(:mod:`~emocircuits.interventions.scorers`) and by its perplexity under the **unsteered**
model given the input it was generated from; :func:`steer` summarises the rows per setting
(:mod:`~emocircuits.interventions.summary`).

>>> conds = conditions(vecs, "anger", layers=[15], alphas=[0.25], scales=s)  # doctest: +SKIP
>>> rows = run_conditions(lm, prompts, conds)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from emocircuits.capture.chat import chat_format
from emocircuits.errors import DataError
from emocircuits.interventions.generation import (
    Decoding,
    generate,
    generation_bytes,
    has_chat_template,
    perplexity,
    prompt_ids,
)
from emocircuits.interventions.inputs import (
    as_list,
    check_request,
    check_vectors,
    resolve_prompts,
    resolve_vectors,
)
from emocircuits.interventions.scorers import repetition, score_texts
from emocircuits.interventions.settings import load_recommendation, setting_of
from emocircuits.interventions.steering import Steer, describe_push
from emocircuits.interventions.summary import headline, judge_agreement, steer_table, summarize
from emocircuits.models.batching import Batches, BatchSize
from emocircuits.results import Result

if TYPE_CHECKING:
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel

INSTRUCTION = "Continue this text, and make the continuation express {feeling}:\n\n{prompt}"
"""The prompting baseline's user turn on raw-text runs (chat models only): the reply is a
fresh text."""

CHAT_INSTRUCTION = "In your reply, express {feeling}."
"""The prompting baseline's request in a chat-mode run: with ``chat="user"`` it follows the
user's message (``prompt + "\n\n" + request``); with ``chat="assistant"`` it is the user
turn, and the reply starts with the prompt, as in the steered conditions."""

FEELINGS = {"gratitude": "gratitude", "apology": "an apology", "anger": "anger"}


@dataclass
class SteerCondition:
    """One way of continuing every prompt: what to steer with, or how to prompt."""

    condition: str  # none | direction | random | prompt | transfer
    emotion: str | None = None
    layer: int | None = None
    alpha: float = 0.0
    steers: list[Steer] = field(default_factory=list)
    instruction: str | None = None  # raw-text runs: the user turn, with {prompt} and {feeling}
    # (chat-mode runs ask with CHAT_INSTRUCTION instead)
    draw: int | None = None  # which random direction (random condition only)

    def key(self) -> tuple:
        return (self.condition, self.emotion, self.layer, self.alpha)


def encode(
    lm: LoadedModel,
    prompt: str,
    cond: SteerCondition | None = None,
    chat: str | None = None,
    system: str | None = None,
) -> list[int]:
    """Token ids the model continues: the prompt (raw, or through the chat template with
    ``chat``/``system``), or for the prompting baseline the prompt with the request for the
    emotion (:data:`INSTRUCTION`, :data:`CHAT_INSTRUCTION`)."""
    if cond is None or cond.instruction is None:
        return prompt_ids(lm, [prompt], chat, system)[0]
    feeling = FEELINGS.get(cond.emotion or "", cond.emotion or "")
    if chat is None:
        return prompt_ids(lm, [cond.instruction.format(prompt=prompt, feeling=feeling)], "user")[0]
    ask = CHAT_INSTRUCTION.format(feeling=feeling)
    if chat == "user":
        return prompt_ids(lm, [f"{prompt}\n\n{ask}"], "user", system)[0]
    return prompt_ids(lm, [prompt], chat_format(lm, "assistant", system, user=ask))[0]


def chat_settings(fmt: Any) -> dict[str, Any]:
    """What a steering output records of its chat template: nothing on raw text (so outputs
    of raw runs stay as they were), else the mode, system prompt and template hash."""
    if fmt is None:
        return {}
    p = fmt.provenance()
    return {"chat": p["chat"], "system": p["system"], "chat_template": p}


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
    batch_size: BatchSize | Batches = 32,
    where: str = "all",
    steer_tokens: int | None = None,
    progress: Callable[[int], object] | None = None,
    chat: str | None = None,
    system: str | None = None,
    decoding: Decoding | str | None = None,
    seeds: Sequence[int] = (0,),
) -> list[dict[str, Any]]:
    """One row per (condition, prompt), and per seed of ``seeds`` when ``decoding`` samples
    (:class:`~emocircuits.interventions.generation.Decoding`; default greedy): the
    continuation, its scores, its ``decoding`` and ``seed`` (None when greedy). ``where`` and
    ``steer_tokens`` as in :func:`~emocircuits.interventions.steering.steering`. ``progress`` is
    called with the number of rows finished after each batch of generations. ``chat`` and
    ``system``: the prompts go through the chat template (:func:`encode`).
    ``batch_size``: a number, ``"auto"`` or the caller's
    :class:`~emocircuits.models.batching.Batches` (halved on out-of-memory)."""
    fmt = chat_format(lm, chat, system)  # once, and a clear error before any work
    dec = Decoding.of(decoding)
    row_seeds = [int(x) for x in seeds] if dec.sampled else [None]
    if not row_seeds or len(set(row_seeds)) != len(row_seeds):
        raise DataError(f"seeds must be distinct whole numbers, at least one; got {list(seeds)}")
    plain = [prompt_ids(lm, [p], fmt)[0] for p in prompts]
    jobs = [(c, i, plain[i] if c.instruction is None else encode(lm, p, c, chat, system), s)
            for c in conds for i, p in enumerate(prompts) for s in row_seeds]  # fmt: skip
    batch_size = Batches.of(batch_size, "steer")
    longest = max((len(j[2]) for j in jobs), default=1)
    size = batch_size.size("generate", lm, generation_bytes(lm, longest, max_new_tokens), len(jobs))
    chunk = 4 * size  # generate in slices so that progress can be reported
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
            decoding=dec,
            seeds=[jobs[k][3] or 0 for k in part],
        )
        done.update(zip(part, got, strict=True))
        if progress is not None:
            progress(len(part))
    ids = [done[k] for k in range(len(jobs))]
    ppl = perplexity(lm, [j[2] for j in jobs], ids, batch_size=batch_size)
    texts = [lm.tokenizer.decode(c, skip_special_tokens=True) for c in ids]
    scores = score_texts(texts)
    rows = []
    recorded = dec.record()
    for k, (c, i, _, s) in enumerate(jobs):
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
                "decoding": recorded,
                "seed": s,
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
    batch_size: BatchSize | Batches,
    n_random: int,
    where: str = "all",
    steer_tokens: int | None = None,
    seed: int = 0,
    prompt: bool | None = None,
    transfer: EmotionVectors | None = None,
    progress: Callable[[int], object] | None = None,
    chat: str | None = None,
    system: str | None = None,
    decoding: Decoding | str | None = None,
    seeds: Sequence[int] = (0,),
) -> list[dict[str, Any]]:
    """Rows for every prompt and condition of one emotion (the engine of :func:`steer`, which
    also chooses the scales and the setting, and holds the defaults). ``prompt`` (the
    prompting baseline) defaults to on for chat models; ``n_random`` random directions per
    setting; ``steer_tokens``: push only while the first ``steer_tokens`` new tokens are
    written; ``chat``/``system``: the prompts go through the chat template; ``decoding``
    and ``seeds`` as in :func:`run_conditions`."""
    check_vectors(lm, vectors, emotion, layers)
    if transfer is not None:
        check_vectors(lm, transfer, emotion, layers)
    conds = conditions(vectors, emotion, layers=layers, alphas=alphas, scales=scales,
                       seed=seed, prompt=has_chat_template(lm) if prompt is None else prompt,
                       transfer=transfer, n_random=n_random)  # fmt: skip
    return run_conditions(lm, prompts, conds, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, where=where, steer_tokens=steer_tokens,
                          progress=progress, chat=chat, system=system,
                          decoding=decoding, seeds=seeds)  # fmt: skip


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
        from emocircuits.tables import write_jsonl

        out = Path(path)
        write_jsonl(out, self.generations)
        atomic_write_json(out.with_suffix(".summary.json"), {**self.meta, "summary": self.summary})
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteerResult:
        """Read what :meth:`save` (or ``emocircuits steer --out``) wrote."""
        from emocircuits.tables import read_json, read_jsonl

        out = Path(path)
        side = out.with_suffix(".summary.json")
        for p in (out, side):
            if not p.is_file():
                raise DataError(f"no {p} (written by `emocircuits steer --out {out}`)")
        meta = read_json(side)
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
    batch_size: BatchSize = 64,
    where: str = "all",
    steer_tokens: int | None = None,
    seed: int = 0,
    n_random: int = 4,
    prompt_baseline: bool = True,
    chat: str | None = None,
    system: str | None = None,
    scales: np.ndarray | None = None,
    progress: bool = True,
    decoding: Decoding | str = "sample",
    temperature: float = 0.7,
    top_p: float = 0.9,
    seeds: Sequence[int] = (0, 1, 2),
) -> SteerResult:
    """Continue ``prompts`` (None: the shipped neutral ``tune`` prompts; a .txt/.jsonl path;
    a list of strings) with ``emotion``'s direction added, next to the controls (unsteered,
    ``n_random`` random directions, the prompting baseline on chat models, ``transfer``
    directions), and score the text (what ``emocircuits steer`` does). ``batch_size``: rows
    per generation pass, or ``"auto"`` (from free memory); halved on out-of-memory, the
    size settled on printed (``progress``) and recorded in ``meta["settings"]``.

    The push at each ``layer`` x ``alpha`` is ``alpha * s_l * v`` (``s_l``: ``scales``, by
    default :func:`~emocircuits.interventions.steering.steering_scales`). Without ``layer``
    or ``alpha`` the recommended setting is used: ``setting=`` (a ``SweepResult``, a
    ``Recommendation`` or its dict), else the one ``steer-sweep`` saved next to the vectors
    file for this model (its ``where``, and its ``steer_tokens`` unless one is given).

    ``chat``: ``None`` (the model continues the raw prompt), ``"user"`` (the prompt is the
    user's message; the continuation is the assistant's reply) or ``"assistant"`` (the
    prompt starts the assistant's reply; the continuation goes on with it), with an optional
    ``system`` prompt. The push covers the whole templated input with ``where="all"``.
    A setting saved by ``steer-sweep`` is looked up for the same chat mode and system prompt.

    ``decoding``: ``"sample"`` (default: each (condition, prompt) continued once per seed of
    ``seeds``, at ``temperature`` with nucleus ``top_p``; intervals resample prompts with
    all their seeds) or ``"greedy"`` (one continuation per (condition, prompt); ``seeds``,
    ``temperature`` and ``top_p`` unused). A single greedy run over a few dozen prompts
    swings by about 0.1-0.15 VADER, so the default samples. ``meta["judge_agreement"]``:
    how far VADER and the second judge (TextBlob polarity) agree
    (:func:`~emocircuits.interventions.summary.judge_agreement`).

    >>> res = steer(lm, None, "v.safetensors", "gratitude", layer=15, alpha=0.2)  # doctest: +SKIP
    >>> res.save("runs/gratitude.jsonl")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from emocircuits.interventions.steering import SCALES_WHAT, steering_scales

    fmt = chat_format(lm, chat, system)  # a bad chat value or no template: refused first
    dec = Decoding.of(decoding, temperature=temperature, top_p=top_p)
    seed_list = [int(x) for x in seeds] if dec.sampled else []
    if dec.sampled and (not seed_list or len(set(seed_list)) != len(seed_list)):
        raise DataError(f"seeds must be distinct whole numbers, at least one; got {list(seeds)}")
    prompt_list, prompt_desc = resolve_prompts(prompts)
    vecs, vfile = resolve_vectors(vectors)
    tvecs = None if transfer is None else resolve_vectors(transfer)[0]
    tfile = str(transfer) if isinstance(transfer, str | os.PathLike) else None
    layers, alphas = as_list(layer), as_list(alpha)
    check_request(vecs, [emotion], layers, vfile or "the vectors")
    source = "given"
    if not layers or not alphas:
        if setting is not None:
            rec = setting_of(setting, emotion)
        elif vfile is not None:
            rec = load_recommendation(vfile, lm.provenance, emotion, chat=chat, system=system)
        else:
            raise DataError("no layer/alpha given and no setting= (a steer_sweep result)")
        if rec.get("layer") is None or rec.get("alpha") is None:  # an explicit none
            from emocircuits.interventions.recommend import WIDEN

            tried = len(rec.get("candidates") or [])
            raise DataError(f"steer-sweep found no {emotion} setting within its limits for this "
                            f"model ({tried} tried at full length); {WIDEN}")  # fmt: skip
        if rec.get("method") and rec["method"] != vecs.method:  # the sweep rebuilt them
            from emocircuits.geometry.vectors import steering_vectors

            vecs = steering_vectors(vecs, vfile or "the vectors", rec["method"])[0]
        layers = layers or [rec["layer"]]
        alphas = alphas or [rec["alpha"]]
        where = rec.get("where", where)
        if steer_tokens is None:  # given: that wins
            steer_tokens = rec.get("steer_tokens")
        source = "recommended by steer-sweep"
        if "effect" in rec and "value" in rec:
            source += f" ({rec['effect']} {rec['value']:+.3f}"
            held = rec.get("held_out") or {}
            if held.get("value") is not None:
                source += f" on tune prompts, {held['value']:+.3f} held out"
            source += f", {vecs.method} directions)"
        check_request(vecs, [], layers, vfile or "the vectors")
    scales = steering_scales(lm) if scales is None else np.asarray(scales)
    baseline = has_chat_template(lm) and prompt_baseline
    per = 1 + n_random + (tvecs is not None)
    n = len(prompt_list) * (1 + baseline + len(layers) * len(alphas) * per)
    n *= max(1, len(seed_list))
    batches = Batches(batch_size, "steer")
    with tqdm(total=n, desc="steer", unit="text", disable=not progress) as bar:
        rows = steer_prompts(
            lm, prompt_list, vecs, emotion, layers=layers, alphas=alphas, scales=scales,
            max_new_tokens=max_new_tokens, batch_size=batches, where=where,
            steer_tokens=steer_tokens, seed=seed, prompt=None if prompt_baseline else False,
            transfer=tvecs, n_random=n_random, progress=bar.update, chat=chat, system=system,
            decoding=dec, seeds=seed_list or (0,),
        )  # fmt: skip
    batches.report(progress)
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
                     "n_random": n_random, "decoding": dec.record(),
                     "seeds": seed_list or None, "dtype": str(lm.dtype),
                     "prompts": prompt_desc, "n_prompts": len(prompt_list),
                     **batches.provenance, **chat_settings(fmt)},
        "judge_agreement": judge_agreement(rows, emotion),
    }  # fmt: skip
    return SteerResult(rows, summarize(rows), meta)

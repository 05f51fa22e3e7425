"""One steering run: continue prompts with and without a direction, and score the text.

Conditions (each row of the result has ``condition``, ``layer``, ``alpha``):

- ``none``: the unsteered continuation (once per prompt);
- ``direction``: the emotion direction, at each layer and alpha;
- ``random``: a random unit direction (one per layer, from ``seed``) at the same layers
  and alphas: the same push, no emotion; what steering does by pushing at all.

Generation is greedy and batched (left padding). Every continuation is scored by the
model-independent scorers (:mod:`~emocircuits.interventions.scorers`) and by its
perplexity under the **unsteered** model (the fluency cost).

>>> rows = steer_prompts(lm, prompts, vecs, "anger", layers=[15], alphas=[0.25])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from emocircuits.errors import DataError
from emocircuits.interventions.scorers import MARKERS, marker_rate, repetition, vader
from emocircuits.interventions.steering import Steer, steering

if TYPE_CHECKING:
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel


def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    steers: Sequence[Steer] = (),
    where: str = "all",
    max_new_tokens: int = 30,
    batch_size: int = 8,
) -> list[list[int]]:
    """Greedy continuations (new token ids, up to the end-of-text token) of ``prompts``."""
    import torch

    tok = lm.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    out: list[list[int]] = []
    eos = tok.eos_token_id
    try:
        with torch.no_grad(), steering(lm, steers, where=where):
            for i in range(0, len(prompts), batch_size):
                enc = tok(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True)
                ids = lm.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )[:, enc["input_ids"].shape[1] :]
                for row in ids.tolist():
                    out.append(row[: row.index(eos)] if eos in row else row)
    finally:
        tok.padding_side = side
    return out


def perplexity(
    lm: LoadedModel, prompts: Sequence[str], continuations: Sequence[list[int]]
) -> np.ndarray:
    """Perplexity of each continuation (token ids) after its prompt under the model as it
    is (call outside any steering): ``exp`` of the mean next-token loss over the new
    tokens; NaN for an empty continuation."""
    import torch

    out = []
    with torch.no_grad():
        for prompt, cont in zip(prompts, continuations, strict=True):
            if not cont:
                out.append(float("nan"))
                continue
            p = lm.tokenizer(prompt, return_tensors="pt")["input_ids"][0].tolist()
            ids = torch.tensor([p + list(cont)])
            logits = lm.model(input_ids=ids).logits[0, len(p) - 1 : -1]
            nll = torch.nn.functional.cross_entropy(logits.float(), ids[0, len(p) :])
            out.append(float(torch.exp(nll)))
    return np.array(out)


def random_direction(width: int, seed: int) -> np.ndarray:
    """A uniformly random unit vector (the norm-matched control: steering rescales it)."""
    v = np.random.default_rng(seed).normal(size=width)
    return v / np.linalg.norm(v)


def steer_prompts(
    lm: LoadedModel,
    prompts: Sequence[str],
    vectors: EmotionVectors,
    emotion: str,
    *,
    layers: Sequence[int],
    alphas: Sequence[float],
    scales: np.ndarray,
    max_new_tokens: int = 30,
    batch_size: int = 8,
    where: str = "all",
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> list[dict[str, Any]]:
    """Rows for every prompt and condition (see the module docstring). ``scales``: the
    typical residual norm per layer (:func:`~emocircuits.interventions.typical_norms`);
    ``layers`` use the activation-folder numbering, as ``vectors.layers``."""
    if emotion not in vectors.directions:
        raise DataError(f"no direction for {emotion!r} in the vectors (has {vectors.emotions})")
    width = vectors.directions[emotion].shape[-1]
    if width != lm.arch.width:
        raise DataError(f"the vectors are {width} wide, the model {lm.arch.width}")
    runs: list[tuple[str, int | None, float, list[Steer]]] = [("none", None, 0.0, [])]
    for layer in layers:
        if layer not in vectors.layers:
            raise DataError(f"layer {layer} is not in the vectors (layers {vectors.layers})")
        v = vectors.directions[emotion][vectors.layers.index(layer)]
        r = random_direction(width, seed + layer)
        for a in alphas:
            s = float(scales[layer])
            runs.append(("direction", layer, a, [Steer(layer, v, a, s)]))
            runs.append(("random", layer, a, [Steer(layer, r, a, s)]))
    rows: list[dict[str, Any]] = []
    for k, (condition, layer, alpha, steers) in enumerate(runs):
        ids = generate(lm, prompts, steers=steers, where=where, max_new_tokens=max_new_tokens,
                       batch_size=batch_size)  # fmt: skip
        texts = [lm.tokenizer.decode(c, skip_special_tokens=True) for c in ids]
        ppl = perplexity(lm, prompts, ids)
        scores = {"vader": vader(texts)}
        for e in MARKERS:
            scores[f"marker_{e}"] = marker_rate(texts, e)
        for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
            rows.append(
                {
                    "prompt_index": i,
                    "prompt": prompt,
                    "condition": condition,
                    "emotion": emotion,
                    "layer": layer,
                    "alpha": alpha,
                    "where": where,
                    "continuation": text,
                    "n_new_tokens": len(ids[i]),
                    **{key: float(v[i]) for key, v in scores.items()},
                    "repetition": repetition(text),
                    "perplexity": float(ppl[i]),
                }
            )
        if progress is not None:
            progress(k)
    return rows


def summarize(
    rows: Sequence[dict[str, Any]], n_boot: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """Per condition, layer and alpha: mean VADER and marker rates with bootstrap intervals
    over prompts, the change in VADER from ``none`` (paired by prompt), and the median
    perplexity ratio to ``none``."""
    from emocircuits.interventions.scorers import distinct_n

    rng = np.random.default_rng(seed)
    base = {r["prompt_index"]: r for r in rows if r["condition"] == "none"}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["condition"], r["layer"], r["alpha"]), []).append(r)
    out = []
    for (condition, layer, alpha), rs in groups.items():
        n = len(rs)
        idx = rng.integers(0, n, size=(n_boot, n))
        row: dict[str, Any] = {"condition": condition, "layer": layer, "alpha": alpha, "n": n}
        for key in ["vader", *[f"marker_{e}" for e in MARKERS], "repetition"]:
            v = np.array([r[key] for r in rs])
            boots = v[idx].mean(1)
            row[key] = round(float(v.mean()), 4)
            row[f"{key}_lo"], row[f"{key}_hi"] = (
                round(float(q), 4) for q in np.quantile(boots, [0.025, 0.975])
            )
        dv = np.array([r["vader"] - base[r["prompt_index"]]["vader"] for r in rs])
        row["vader_change"] = round(float(dv.mean()), 4)
        row["vader_change_lo"], row["vader_change_hi"] = (
            round(float(q), 4) for q in np.quantile(dv[idx].mean(1), [0.025, 0.975])
        )
        ratio = np.array([r["perplexity"] / base[r["prompt_index"]]["perplexity"] for r in rs])
        row["perplexity_ratio_median"] = round(float(np.nanmedian(ratio)), 4)
        row["distinct_2"] = round(float(distinct_n([r["continuation"] for r in rs], 2)), 4)
        out.append(row)
    return out

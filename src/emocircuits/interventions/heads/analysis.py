"""The whole heads analysis: contributions, contrasts and top-k ablation, as tables."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emocircuits.errors import DataError
from emocircuits.interventions.heads.attribution import write_weights
from emocircuits.interventions.heads.capture import capture_heads
from emocircuits.interventions.heads.common import CUE_POSITION, FORMAT
from emocircuits.interventions.heads.result import HeadsResult
from emocircuits.interventions.heads.tables import (
    _ablation_table,
    _head_tables,
    _headline,
    _ld_table,
    _neuron_tables,
    _sample,
    check_request,
    choose_layer,
)
from emocircuits.interventions.readout import Readout, readout, readout_texts
from emocircuits.models.batching import Batches, BatchSize

if TYPE_CHECKING:
    from emocircuits.data.dataset import Dataset
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel


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
    batch_size: BatchSize = 16,
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
    batches = Batches(batch_size, "heads")  # "auto": one size for every pass, no back-off
    batch_size = batches.fixed("rows", lm, prompts, kept=arch.n_layers + 1, extra_tokens=8)
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
    batches.report(progress)
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
        **batches.provenance,
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


def write_heads(result: HeadsResult, out: str | Path) -> Path:
    """Write ``{table}.csv`` and ``summary.json`` (last) into ``out``, each atomically."""
    from emocircuits.tables import write_tables

    return write_tables(out, result.tables, {"summary.json": result.summary})


def heads(
    lm: LoadedModel | str,
    data: Dataset | str | Path | None,
    vecs: EmotionVectors | str | Path,
    *,
    emotion: Sequence[str] | None = None,
    baseline: str | None = None,
    layer: int | None = None,
    budget: str = "default",
    top_k: Sequence[int] | None = None,
    n_random: int | None = None,
    n_ablate: int | None = None,
    n_per_class: int | None = None,
    n_boot: int = 1000,
    top_neurons: int = 20,
    top_prompts: int = 5,
    batch_size: BatchSize = 16,
    seed: int = 0,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
    quantization: str | None = None,
    ablation: bool = True,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> HeadsResult:
    """Heads and neurons that write each emotion's direction, and the top-k head ablation
    (the package docstring), as ``emocircuits heads`` computes them. ``lm``: a loaded model
    or a name to load (with ``dtype`` and the placement keywords of
    :func:`~emocircuits.models.load_model`, after every input check); ``data``: a Dataset, preset
    or JSONL (None: the data the vectors came from); ``vecs``: vectors or their file;
    ``baseline``: None for the vectors' own; ``top_k``, ``n_random``, ``n_ablate``,
    ``n_per_class``: None takes the value of ``budget``
    (:data:`~emocircuits.interventions.budgets.HEADS_BUDGETS`).

    >>> res = heads("smollm2-135m", None, "runs/vectors.safetensors")  # doctest: +SKIP
    >>> res.save("runs/heads")  # doctest: +SKIP
    """
    from emocircuits.interventions.budgets import resolve_budget
    from emocircuits.interventions.causal import as_dataset, as_model, as_vectors

    given = {"top_k": top_k, "n_random": n_random, "n_ablate": n_ablate,
             "n_per_class": n_per_class}  # fmt: skip
    b = resolve_budget("heads", budget, given)
    vectors, vectors_file = as_vectors(vecs)
    if data is None:
        data = (vectors.provenance.get("dataset") or {}).get("source")
        if not data:
            raise DataError(f"{vecs_name(vecs)} does not say which data built it: give --data")
    ds = as_dataset(data)
    baseline = baseline or vectors.baseline
    emotions = check_request(ds, vectors, emotions=emotion, baseline=baseline, layer=layer,
                             top_k=b["top_k"])  # fmt: skip
    lm = as_model(lm, trust_remote_code=trust_remote_code, progress=progress, dtype=dtype,
                  device=device, device_map=device_map, max_memory=max_memory,
                  offload_folder=offload_folder, quantization=quantization)  # fmt: skip
    res = analyze_heads(
        lm, ds, vectors, emotions=emotions, baseline=baseline, layer=layer, top_k=b["top_k"],
        n_random=b["n_random"], n_ablate=b["n_ablate"], n_per_class=b["n_per_class"],
        n_boot=n_boot, top_neurons=top_neurons, top_prompts=top_prompts,
        batch_size=batch_size, seed=seed, ablation=ablation, progress=progress,
    )  # fmt: skip
    res.summary["vectors"] = {"file": vectors_file, **vectors.meta()}
    res.summary["settings"]["budget"] = budget
    return res


def vecs_name(vecs: Any) -> str:
    """How errors name the vectors: their file, or "the vectors"."""
    return "the vectors" if hasattr(vecs, "directions") else str(vecs)

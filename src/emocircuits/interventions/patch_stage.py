"""``emocircuits patch`` as one library call: :func:`patch` resolves the budget, checks the
inputs, loads the model, runs :func:`~emocircuits.interventions.patching.run_patching`
over the matched pairs and keeps the tables and the summary in a :class:`PatchResult`.

>>> res = patch("smollm2-135m", "extended", "runs/vectors.safetensors")  # doctest: +SKIP
>>> res.save("runs/patch")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from emocircuits.interventions.causal import TablesResult, as_model, causal_inputs, causal_summary
from emocircuits.models.batching import BatchSize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from emocircuits.data.dataset import Dataset
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel


@dataclass(repr=False)
class PatchResult(TablesResult):
    """Tables ``pairs``, ``gaps``, ``patching`` and the summary of :func:`patch`; ``run``:
    the :class:`~emocircuits.interventions.patch_results.PatchRun` (None after ``load``).

    >>> res = PatchResult.load("runs/patch")  # doctest: +SKIP
    >>> res.rows()[0]["best_layer"]  # doctest: +SKIP
    """

    command: ClassVar[str] = "patch"
    format: ClassVar[str] = "emocircuits.patch"
    table_names: ClassVar[tuple[str, ...]] = ("pairs", "gaps", "patching")

    def rows(self) -> list[dict[str, Any]]:
        """Per emotion: the LD gap and its interval, the pairs used, and where directional
        patching of every position recovers most."""
        out = []
        for e, h in self.summary.get("headline", {}).items():
            d = h.get("directional_all_positions") or {}
            out.append({
                "emotion": e, "gap": h["gap"], "gap_ci_low": h["gap_ci_low"],
                "gap_ci_high": h["gap_ci_high"], "pairs_used": h["pairs_used"],
                "best_layer": d.get("best_layer"), "recovered": d.get("recovered"),
                "random_at_best_layer": d.get("random_at_best_layer"),
            })  # fmt: skip
        return out

    def _figures(self) -> Iterator[tuple[str, Figure]]:
        from emocircuits.plots.patching import patch_figures

        return patch_figures(self.summary, self.tables.get("patching", []))

    def _plot_folder(self, folder: Path) -> list[Path]:
        from emocircuits.plots.patching import plot_patch_folder

        return plot_patch_folder(folder)


def patch(
    lm: LoadedModel | str,
    data: Dataset | str | Path | None,
    vecs: EmotionVectors | str | Path,
    *,
    emotion: Sequence[str] | None = None,
    baseline: str = "neutral",
    budget: str = "default",
    n_pairs: int | None = None,
    min_pairs: int = 5,
    n_positions: int | None = None,
    layers: Sequence[int] | None = None,
    n_layers: int | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    batch_size: BatchSize = 32,
    seed: int = 0,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
    quantization: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> PatchResult:
    """Activation and directional patching of matched emotion/neutral pairs at every
    layer and position (:mod:`~emocircuits.interventions.patching`), as ``emocircuits
    patch`` runs it. ``lm``: a loaded model or a name to load (with ``dtype`` and the
    placement keywords of :func:`~emocircuits.models.load_model`, after every input
    check); ``data``: a Dataset, preset or JSONL (None: ``extended``); ``vecs``: vectors
    or their file (resid); ``emotion``: emotions to patch (None: every one with a
    readout and prompts); ``layers``: resid layers (negative counts from the end; None:
    all); ``n_pairs``, ``n_positions``, ``n_layers``: None takes the value of ``budget``
    (:data:`~emocircuits.interventions.budgets.PATCH_BUDGETS`).

    >>> res = patch(lm, "baseline", vecs, budget="fast")  # doctest: +SKIP
    >>> res.rows()  # doctest: +SKIP
    """
    from emocircuits.interventions.budgets import resolve_budget
    from emocircuits.interventions.patch_results import headline
    from emocircuits.interventions.patching import run_patching
    from emocircuits.interventions.readout import readout

    start = time.time()
    b = resolve_budget(
        "patch", budget, {"n_pairs": n_pairs, "n_positions": n_positions, "n_layers": n_layers}
    )
    inputs = causal_inputs(data, vecs, baseline=baseline, emotion=emotion)
    ds, emotions = inputs.dataset, inputs.emotions
    lm = as_model(lm, trust_remote_code=trust_remote_code, progress=progress, dtype=dtype,
                  device=device, device_map=device_map, max_memory=max_memory,
                  offload_folder=offload_folder, quantization=quantization)  # fmt: skip
    if layers:
        layers = sorted({lm.arch.normalize_layer(x, "resid") for x in layers})
    readouts = {e: readout(lm.tokenizer, e) for e in emotions}
    run = run_patching(
        lm, ds.texts, ds.labels, inputs.vectors, readouts, emotions=emotions, baseline=baseline,
        n_pairs=b["n_pairs"], min_pairs=min_pairs, n_positions=b["n_positions"],
        layers=layers or None, n_layers=b["n_layers"], batch_size=batch_size, seed=seed,
        progress=progress,
    )  # fmt: skip
    rows = run.table(n_boot=n_boot, level=level, seed=seed)
    gaps = run.gaps(n_boot=n_boot, level=level, seed=seed)
    settings = {**run.settings, "layers": run.layers, "columns": run.columns, "n_boot": n_boot,
                "ci_level": level, "budget": budget}  # fmt: skip
    summary = causal_summary(PatchResult.format, lm, inputs, readouts, settings, start,
                             gaps=gaps, headline=headline(rows, gaps))  # fmt: skip
    tables = {"pairs": run.pair_rows(ds.ids), "gaps": gaps, "patching": rows}
    return PatchResult(tables, summary, run)

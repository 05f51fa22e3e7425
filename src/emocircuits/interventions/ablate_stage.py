"""The direction-ablation stage, as ``emocircuits ablate`` runs it. :func:`ablate` splits
the prompts into the probes' training rows and held-out rows
(:func:`~emocircuits.interventions.ablation.split_rows`), ablates on the held-out ones
(:func:`~emocircuits.interventions.ablation.run_ablation`) and returns an
:class:`AblationResult`.

>>> res = ablate("smollm2-135m", "extended", "runs/vectors.safetensors")  # doctest: +SKIP
>>> res.save("runs/ablate")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from emocircuits.errors import EmocircuitsError
from emocircuits.interventions.causal import TablesResult, as_model, causal_inputs, causal_summary
from emocircuits.models.batching import BatchSize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from emocircuits.data.dataset import Dataset
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel


@dataclass(repr=False)
class AblationResult(TablesResult):
    """What :func:`ablate` found: the LD gap under every condition (``ablation_ld``), the
    probes' accuracy (``ablation_probe``) and, in ``summary``, each target against the
    random null; ``run``: the :class:`~emocircuits.interventions.ablation.AblationRun` it
    came from (None after ``load``).

    >>> AblationResult.load("runs/ablate").rows()[0]["removed"]  # doctest: +SKIP
    """

    command: ClassVar[str] = "ablate"
    format: ClassVar[str] = "emocircuits.ablate"
    table_names: ClassVar[tuple[str, ...]] = ("ablation_ld", "ablation_probe")

    def rows(self) -> list[dict[str, Any]]:
        """Per target and emotion: the fraction of the LD gap removed, its interval, the
        random null's mean and p."""
        out = []
        for t, h in self.summary.get("headline", {}).items():
            for e, g in h.get("ld_gap", {}).items():
                out.append({
                    "target": t, "dim": h.get("dim"), "emotion": e,
                    "gap_clean": g.get("gap_clean"), "gap_ablated": g.get("gap_ablated"),
                    "removed": g.get("removed"), "ci_low": g.get("ci_low"),
                    "ci_high": g.get("ci_high"), "null_mean": g.get("null_mean"),
                    "p": g.get("p"),
                })  # fmt: skip
        return out

    def _figures(self) -> Iterator[tuple[str, Figure]]:
        from emocircuits.plots.patching import ablation_figures

        return ablation_figures(
            self.summary, self.tables.get("ablation_ld", []), self.tables.get("ablation_probe", [])
        )

    def _plot_folder(self, folder: Path) -> list[Path]:
        from emocircuits.plots.patching import plot_ablation_folder

        return plot_ablation_folder(folder)


def ablate(
    lm: LoadedModel | str,
    data: Dataset | str | Path | None,
    vecs: EmotionVectors | str | Path,
    *,
    baseline: str = "neutral",
    budget: str = "default",
    targets: Sequence[str] | None = None,
    from_layer: int | None = None,
    mode: str = "fixed",
    n_random: int | None = None,
    probe_layer: int | None = None,
    methods: Sequence[str] = ("logreg", "ncm"),
    position: str = "mean",
    n_train: int | None = None,
    n_eval: int | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    batch_size: BatchSize = 16,
    seed: int = 0,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
    quantization: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> AblationResult:
    """Project emotion directions out of the residual stream from ``from_layer`` on and
    measure what is lost against random subspaces
    (:mod:`~emocircuits.interventions.ablation`), as ``emocircuits ablate`` runs it.
    ``lm``: a loaded model or a name to load (with ``dtype`` and the placement keywords
    of :func:`~emocircuits.models.load_model`, after every input check);
    ``data``: a Dataset, preset or JSONL (None: ``extended``); ``vecs``: vectors or their
    file (resid); ``targets``: emotions and/or ``all``; ``targets``, ``n_random``,
    ``n_train``, ``n_eval``: None takes the value of ``budget``
    (:data:`~emocircuits.interventions.budgets.ABLATE_BUDGETS`).

    >>> res = ablate(lm, "baseline", vecs, budget="fast")  # doctest: +SKIP
    >>> res.rows()  # doctest: +SKIP
    """
    from emocircuits.interventions.ablation import ALL, run_ablation, split_rows
    from emocircuits.interventions.budgets import resolve_budget
    from emocircuits.interventions.readout import readout

    start = time.time()
    given = {"targets": targets, "n_random": n_random, "n_train": n_train, "n_eval": n_eval}
    b = resolve_budget("ablate", budget, given)
    inputs = causal_inputs(data, vecs, baseline=baseline, emotion=None)
    ds, emotions = inputs.dataset, inputs.emotions
    for t in b["targets"] or ():
        if t != ALL and t not in emotions:
            raise EmocircuitsError(f"cannot ablate {t!r}: no direction with a readout "
                                   f"(have {', '.join(emotions)})")  # fmt: skip
    tr, ev = split_rows(ds.labels, b["n_train"], b["n_eval"], seed=seed)
    lm = as_model(lm, trust_remote_code=trust_remote_code, progress=progress, dtype=dtype,
                  device=device, device_map=device_map, max_memory=max_memory,
                  offload_folder=offload_folder, quantization=quantization)  # fmt: skip
    readouts = {e: readout(lm.tokenizer, e) for e in emotions}

    def pick(rows: Sequence[int]) -> tuple[list[str], list[str]]:
        return [ds.texts[i] for i in rows], [ds.labels[i] for i in rows]

    run = run_ablation(
        lm, inputs.vectors, readouts, pick(tr), pick(ev), targets=b["targets"],
        from_layer=from_layer, mode=mode, n_random=b["n_random"], probe_layer=probe_layer,
        methods=methods, position=position, baseline=baseline, batch_size=batch_size,
        seed=seed, progress=progress,
    )  # fmt: skip
    settings = {**run.settings, "n_boot": n_boot, "ci_level": level, "budget": budget}
    summary = causal_summary(
        AblationResult.format, lm, inputs, readouts, settings, start, chance=run.chance,
        held_out_ids=[ds.ids[i] for i in ev],
        headline=run.headline(n_boot=n_boot, level=level, seed=seed),
    )  # fmt: skip
    tables = {"ablation_ld": run.ld_table(n_boot=n_boot, level=level, seed=seed),
              "ablation_probe": run.probe_table()}  # fmt: skip
    return AblationResult(tables, summary, run)

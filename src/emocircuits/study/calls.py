"""The one place where the study meets the library: for every stage, the function whose
keyword options its config table sets (:data:`OPTIONS`) and one small adapter that runs the
stage into its folder (``result.save(folder)`` writes what the matching command writes).

The study reads a stage's options with :func:`inspect.signature` from ``OPTIONS[table]``:
its keyword parameters with a default, less the ones the runner fills in itself
(:data:`RUNNER_SET`).

>>> sorted(options("vectors"))
['baseline', 'method', 'position', 'site']
>>> options("geometry")["n_boot"].default
1000
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from emocircuits.capture.capture import DEFAULT_POSITIONS, DEFAULT_SITES
from emocircuits.geometry.directions import CONTRASTS, METHODS
from emocircuits.geometry.subspaces import KINDS
from emocircuits.interventions.sweep import SWEEP_STEER_TOKENS

#: an int option that must be >= 1 (the config refuses 0 and negatives before any model work)
Positive = Annotated[int, ">= 1"]
Layers = Sequence[int]  # a list, or a string such as "0,10-20,-1"
Names = Sequence[str]  # a list, or a comma-separated string
Dtype = Literal["float32", "bfloat16", "float16"]

# keywords the runner sets from the study itself: never read from a stage table
RUNNER_SET = frozenset(
    ("model", "data", "out", "output", "activations", "vectors", "compare", "names",
     "vectors_dir", "models", "output_table", "quiet", "overwrite", "trust_remote_code",
     "revision", "dtype", "help", "progress", "other", "lm", "acts")
)  # fmt: skip


# ------------------------------------------------------------------- the tables' options
# A config table's keys are its command's option names (``no_plots`` for ``--no-plots``),
# so that configs and stage hashes stay what they were. These declarations give their
# types; every default shared with the library function is checked equal to the library's
# by tests/test_study.py::test_config_defaults_are_the_librarys.
def _extract(
    *,
    sites: Names = DEFAULT_SITES,
    heads: bool = False,
    positions: Names = DEFAULT_POSITIONS,
    layers: Layers | None = None,
    batch_size: Positive = 16,
    shard_size: Positive = 256,
    padding_side: Literal["left", "right"] | None = None,
    max_length: Positive | None = None,
    min_per_class: Positive = 2,
    device: str = "cpu",
) -> None: ...


def _analyze_geometry(
    *,
    sites: Names | None = None,
    position: str | None = None,
    baseline: str = "neutral",
    n_boot: Positive = 1000,
    n_splits: Positive = 100,
    n_perm: Positive = 200,
    folds: Positive = 5,
    subspace: Literal[KINDS] = "between",
    k: Positive | None = None,
    var: float = 0.5,
    seed: int = 0,
    no_plots: bool = False,
) -> None: ...


def _directions(
    *,
    method: Literal[METHODS] = "mean_diff",
    site: str = "resid",
    position: str | None = None,
    baseline: str = "neutral",
) -> None: ...


def _compare_models(
    *,
    site: str = "resid",
    position: str | None = None,
    baseline: str = "neutral",
    method: Literal[CONTRASTS] = "one_vs_rest",
    match: Literal["cka", "depth"] = "cka",
    maps: Names = ("procrustes", "ridge"),
    dim: Positive | None = None,
    k: Positive = 10,
    n_perm: Positive = 1000,
    n_perm_heavy: Positive = 200,
    seed: int = 0,
    no_plots: bool = False,
) -> None: ...


def _steer_sweep(
    *,
    prompts: str | None = None,
    layer: Sequence[int] | None = None,
    alpha: Sequence[float] | None = None,
    max_new_tokens: Positive = 30,
    batch_size: Positive = 64,
    where: Literal["all", "new"] = "all",
    steer_tokens: Positive | None = SWEEP_STEER_TOKENS,
    seed: int = 0,
    no_prompt_baseline: bool = False,
    emotion: Names | None = None,
    n_layers: Positive = 4,
    n_alphas: Positive = 5,
    n_prompts: Positive | None = None,
    n_verify: Positive = 4,
) -> None: ...


def _patch(
    *,
    baseline: str = "neutral",
    budget: Literal["default", "fast"] = "default",
    n_boot: Positive = 1000,
    level: float = 0.95,
    batch_size: Positive = 32,
    no_plots: bool = False,
    emotion: Names | None = None,
    n_pairs: Positive | None = None,
    min_pairs: Positive = 5,
    n_positions: Positive | None = None,
    layers: Layers | None = None,
    n_layers: Positive | None = None,
    seed: int = 0,
) -> None: ...


def _ablate(
    *,
    baseline: str = "neutral",
    budget: Literal["default", "fast"] = "default",
    n_boot: Positive = 1000,
    level: float = 0.95,
    batch_size: Positive = 16,
    no_plots: bool = False,
    targets: Names | None = None,
    from_layer: int | None = None,
    mode: Literal["fixed", "per_layer"] = "fixed",
    n_random: Positive | None = None,
    probe_layer: int | None = None,
    methods: Names = ("logreg", "ncm"),
    position: str = "mean",
    n_train: Positive | None = None,
    n_eval: Positive | None = None,
    seed: int = 0,
) -> None: ...


def _heads(
    *,
    emotion: Names | None = None,
    baseline: str | None = None,
    layer: int | None = None,
    budget: Literal["default", "fast"] = "default",
    top_k: Sequence[Positive] | None = None,
    n_random: Positive | None = None,
    n_ablate: Positive | None = None,
    n_per_class: Positive | None = None,
    n_boot: Positive = 1000,
    top_neurons: Positive = 20,
    top_prompts: Positive = 5,
    batch_size: Positive = 16,
    seed: int = 0,
    no_ablation: bool = False,
    no_plots: bool = False,
) -> None: ...


#: config table -> the function whose keyword options the table sets
OPTIONS: dict[str, Callable[..., Any]] = {
    "extract": _extract,
    "geometry": _analyze_geometry,
    "vectors": _directions,
    "compare": _compare_models,
    "steer-sweep": _steer_sweep,
    "patch": _patch,
    "ablate": _ablate,
    "heads": _heads,
}

#: config table -> (module, name) of its named budgets (``budget = "fast"``)
BUDGETS = {
    "patch": ("emocircuits.interventions.budgets", "PATCH_BUDGETS"),
    "ablate": ("emocircuits.interventions.budgets", "ABLATE_BUDGETS"),
    "heads": ("emocircuits.interventions.budgets", "HEADS_BUDGETS"),
}


def options(table: str) -> dict[str, inspect.Parameter]:
    """The settable keyword options of a config table's function (name -> parameter)."""
    sig = inspect.signature(OPTIONS[table])
    return {
        n: p
        for n, p in sig.parameters.items()
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and n not in RUNNER_SET
    }


def budget_table(table: str) -> dict[str, dict[str, Any]] | None:
    """The named budgets of a config table's function, or None if it has none.

    >>> sorted(budget_table("patch")), budget_table("geometry")
    (['default', 'fast'], None)
    """
    if table not in BUDGETS:
        return None
    import importlib

    module, name = BUDGETS[table]
    return getattr(importlib.import_module(module), name)


# -------------------------------------------------------------------------------- adapters
# One per stage: load the inputs, call the library, save the result into ``out``. ``run``
# holds the study-wide loading settings: dtype, revision, trust_remote_code. The option
# names of the tables are the commands' (``no_plots``); each adapter passes them on as the
# library's keywords (``save(plots=not no_plots)``).
def _filled(table: str, opts: dict[str, Any]) -> dict[str, Any]:
    """A stage's options with the defaults of the options it leaves out."""
    return {**{n: p.default for n, p in options(table).items()}, **opts}


def capture(model: str, data: str, out: Path, opts: dict[str, Any], run: dict[str, Any]) -> None:
    """``extract(lm, data, out, **opts)``: the capture folder (resumes a partial one)."""
    from emocircuits.capture import capture_positions, extract
    from emocircuits.data import load_dataset
    from emocircuits.models import load_model

    o = _filled("extract", opts)
    ds = load_dataset(data, min_per_class=o["min_per_class"])
    sites = tuple(o["sites"]) + (("heads",) if o["heads"] and "heads" not in o["sites"] else ())
    lm = load_model(model, dtype=run["dtype"], device=o["device"],
                    revision=run["revision"] or None,
                    trust_remote_code=run["trust_remote_code"], progress=False)  # fmt: skip
    extract(lm, ds, out, sites=sites, positions=capture_positions(ds, tuple(o["positions"])),
            layers=o["layers"], batch_size=o["batch_size"], padding_side=o["padding_side"],
            max_length=o["max_length"], shard_size=o["shard_size"], progress=False)  # fmt: skip


def geometry(acts: Path, out: Path, opts: dict[str, Any], other: Path | None = None) -> None:
    """``analyze_geometry(acts, compare=other, **opts).save(out)``."""
    from emocircuits.capture import load_activations
    from emocircuits.geometry.stage import analyze_geometry

    o = _filled("geometry", opts)
    no_plots = o.pop("no_plots")
    o["sites"] = list(o["sites"]) if o["sites"] else None
    res = analyze_geometry(
        load_activations(acts), compare=None if other is None else load_activations(other), **o
    )
    folder = res.save(out, figures=False)
    if not no_plots:
        res.save_figures(folder)


def vectors(acts: Path, path: Path, opts: dict[str, Any]) -> None:
    """``directions(acts, **opts).save(path)``: the vectors file."""
    from emocircuits.capture import load_activations
    from emocircuits.geometry.vectors import directions

    directions(load_activations(acts), **_filled("vectors", opts)).save(path)


def compare(acts: list[Path], names: list[str], out: Path, opts: dict[str, Any]) -> None:
    """``compare_models(acts, names=names, **opts).save(out)``."""
    from emocircuits.compare.comparison import compare_models

    o = _filled("compare", opts)
    no_plots = o.pop("no_plots")
    res = compare_models([str(a) for a in acts], list(names), progress=False, **o)
    folder = res.save(out, plots=False)
    if not no_plots:
        res.plot(folder / "figures")


def steer(model: str, vecs: Path, out: Path, opts: dict[str, Any], run: dict[str, Any]) -> None:
    """``steer_sweep(lm, prompts, vecs, **opts).save(out)`` (float32: as the command), and
    the recommended settings next to the vectors file."""
    from emocircuits.interventions.sweep import steer_sweep
    from emocircuits.models import load_model

    o = _filled("steer-sweep", opts)
    prompts = o.pop("prompts")
    o["prompt_baseline"] = not o.pop("no_prompt_baseline")
    lm = load_model(model, trust_remote_code=run["trust_remote_code"], progress=False)
    res = steer_sweep(lm, prompts, str(vecs), progress=False, **o)
    res.save(out)
    res.save_recommendations(str(vecs))


def causal(stage: str, model: str, data: str, vecs: Path, out: Path, opts: dict, run: dict) -> None:
    """``patch`` / ``ablate`` / ``heads``: ``fn(lm, data, vecs, **opts).save(out)``."""
    from emocircuits.interventions.ablate_stage import ablate
    from emocircuits.interventions.heads import heads
    from emocircuits.interventions.patch_stage import patch

    o = _filled(stage, opts)
    no_plots = o.pop("no_plots")
    if "no_ablation" in o:
        o["ablation"] = not o.pop("no_ablation")
    fn = {"patch": patch, "ablate": ablate, "heads": heads}[stage]
    res = fn(model, data, str(vecs), dtype=run["dtype"],
             trust_remote_code=run["trust_remote_code"], progress=False, **o)  # fmt: skip
    res.save(out, plots=not no_plots)

"""The one place where the study meets the library: for every stage, the function whose
keyword options its config table sets (:data:`OPTIONS`) and one small adapter that runs the
stage into its folder (``result.save(folder)`` writes what the matching command writes).

The study reads a stage's options with :func:`inspect.signature` from ``OPTIONS[table]``:
its keyword parameters with a default, less the ones the runner fills in itself
(:data:`RUNNER_SET`). Until a stage's library function lands, ``OPTIONS`` names a stub
below with the same keywords and defaults as the command has today; switching a stage to
the library is then one line here (``"geometry": analyze_geometry``) and one in its adapter.

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


# ------------------------------------------------------------------- option stubs (TEMPORARY)
# Each stub has exactly the keyword options of its command today; the integrator replaces
# the entry in OPTIONS by the library function (same keywords, same defaults) and deletes it.
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
    "extract": _extract,  # TEMPORARY until ec.extract lands
    "geometry": _analyze_geometry,  # TEMPORARY until ec.analyze_geometry lands
    "vectors": _directions,  # TEMPORARY until ec.directions lands
    "compare": _compare_models,  # TEMPORARY until ec.compare_models lands
    "steer-sweep": _steer_sweep,  # TEMPORARY until ec.steer_sweep lands
    "patch": _patch,  # TEMPORARY until ec.patch lands
    "ablate": _ablate,  # TEMPORARY until ec.ablate lands
    "heads": _heads,  # TEMPORARY until ec.heads lands
}

#: config table -> (module, name) of its named budgets (``budget = "fast"``)
BUDGETS = {
    "patch": ("emocircuits.interventions.patching", "PATCH_BUDGETS"),
    "ablate": ("emocircuits.interventions.ablation", "ABLATE_BUDGETS"),
    "heads": ("emocircuits.interventions.heads", "HEADS_BUDGETS"),
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
# holds the study-wide loading settings: dtype, revision, trust_remote_code.
def capture(model: str, data: str, out: Path, opts: dict[str, Any], run: dict[str, Any]) -> None:
    """``extract(lm, data, out, **opts)``: the capture folder (resumes a partial one)."""
    # TEMPORARY until ec.extract lands
    _command("extract", model=model, data=data, out=str(out), quiet=True, dtype=run["dtype"],
             revision=run["revision"] or None, trust_remote_code=run["trust_remote_code"],
             **opts)  # fmt: skip


def geometry(acts: Path, out: Path, opts: dict[str, Any], other: Path | None = None) -> None:
    """``analyze_geometry(acts, other=..., **opts).save(out)``."""
    # TEMPORARY until ec.analyze_geometry lands
    _command("geometry", activations=str(acts), out=str(out),
             compare=None if other is None else str(other), **opts)  # fmt: skip


def vectors(acts: Path, path: Path, opts: dict[str, Any]) -> None:
    """``directions(acts, **opts).save(path)``: the vectors file."""
    # TEMPORARY until ec.directions lands
    _command("vectors", activations=str(acts), out=str(path), **opts)


def compare(acts: list[Path], names: list[str], out: Path, opts: dict[str, Any]) -> None:
    """``compare_models(acts, names=names, **opts).save(out)``."""
    # TEMPORARY until ec.compare_models lands
    _command("compare", activations=[str(a) for a in acts], names=names, out=str(out),
             quiet=True, **opts)  # fmt: skip


def steer(model: str, vecs: Path, out: Path, opts: dict[str, Any], run: dict[str, Any]) -> None:
    """``steer_sweep(lm, prompts, vecs, **opts).save(out)`` (float32: as the command)."""
    # TEMPORARY until ec.steer_sweep lands
    _command("steer-sweep", model=model, vectors=str(vecs), out=str(out), quiet=True,
             trust_remote_code=run["trust_remote_code"], **opts)  # fmt: skip


def causal(stage: str, model: str, data: str, vecs: Path, out: Path, opts: dict, run: dict) -> None:
    """``patch`` / ``ablate`` / ``heads``: ``fn(lm, data, vecs, **opts).save(out)``."""
    # TEMPORARY until ec.patch, ec.ablate, ec.heads land
    _command(stage, model=model, data=data, vectors=str(vecs), out=str(out), quiet=True,
             dtype=run["dtype"], trust_remote_code=run["trust_remote_code"], **opts)  # fmt: skip


def _command(name: str, **values: Any) -> None:
    """TEMPORARY: run ``emocircuits NAME`` in-process with these option values (the
    command's own defaults for the rest), until the stage's library function lands."""
    import argparse
    import importlib

    module = importlib.import_module(f"emocircuits.commands.{name.replace('-', '_')}")
    sub = argparse.ArgumentParser().add_subparsers()
    module.register(sub)
    parser = sub.choices[name]
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    ns = argparse.Namespace(**{k: a.default for k, a in actions.items()})
    for key, value in values.items():
        if key not in actions:
            raise TypeError(f"`emocircuits {name}` has no option {key!r}")
        if isinstance(value, list | tuple):  # as argparse gives it: nargs -> list, else tuple
            value = list(value) if actions[key].nargs in ("+", "*") else tuple(value)
        setattr(ns, key, value)
    module.run(ns)

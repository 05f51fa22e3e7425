"""The one place where the study meets the library: for every stage, the function whose
keyword options its config table sets (:data:`OPTIONS`) and one small adapter that runs the
stage into its folder (``result.save(folder)`` writes what the matching command writes).

The study reads a stage's options with :func:`inspect.signature` from ``OPTIONS[table]``:
its keyword parameters, less the ones the runner fills in itself (:data:`RUNNER_SET`). An
option declared without a default takes the library function's (:data:`LIBRARY`), so a
default is defined once.

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

from emocircuits.geometry.directions import CONTRASTS, METHODS
from emocircuits.geometry.subspaces import KINDS

#: an int option that must be >= 1 (the config refuses 0 and negatives before any model work)
Positive = Annotated[int, ">= 1"]
#: a batch size: a whole number >= 1, or "auto" (sized from free memory)
BatchSize = Positive | Literal["auto"]
Layers = Sequence[int]  # a list, or a string such as "0,10-20,-1"
Names = Sequence[str]  # a list, or a comma-separated string
Dtype = Literal["float32", "bfloat16", "float16"]
Chat = Literal["user", "assistant"]  # None: raw text (emocircuits.capture.chat)

# keywords the runner sets from the study itself: never read from a stage table
RUNNER_SET = frozenset(
    ("model", "data", "out", "output", "activations", "vectors", "compare", "names",
     "vectors_dir", "models", "output_table", "quiet", "overwrite", "trust_remote_code",
     "revision", "help", "progress", "other", "lm", "acts",
     # where the model lives: [study] settings, the same for every stage
     "dtype", "device", "device_map", "max_memory", "offload_folder", "quantization")
)  # fmt: skip


# ------------------------------------------------------------------- the tables' options
# A config table's keys are its command's option names (``no_plots`` for ``--no-plots``),
# so that configs and stage hashes stay what they were. These declarations give their
# types and the defaults of the options the library function does not have; the others
# take the library's (``LIBRARY``, checked by
# tests/test_study.py::test_config_defaults_are_the_librarys).
def _extract(
    *,
    sites: Names,
    heads: bool = False,
    positions: Names,
    layers: Layers | None,
    batch_size: BatchSize,
    shard_size: Positive,
    padding_side: Literal["left", "right"] | None,
    max_length: Positive | None,
    min_per_class: Positive,
    chat: Chat | None,
    system: str | None,
) -> None: ...


def _analyze_geometry(
    *,
    sites: Names | None,
    position: str | None,
    baseline: str,
    n_boot: Positive,
    n_splits: Positive,
    n_perm: Positive,
    folds: Positive,
    subspace: Literal[KINDS],
    k: Positive | None,
    var: float,
    seed: int,
    no_plots: bool = False,
) -> None: ...


def _directions(
    *,
    method: Literal[METHODS],
    site: str,
    position: str | None,
    baseline: str,
) -> None: ...


def _compare_models(
    *,
    site: str,
    position: str | None,
    baseline: str,
    method: Literal[CONTRASTS],
    match: Literal["cka", "depth"],
    maps: Names,
    dim: Positive | None,
    k: Positive,
    n_perm: Positive,
    n_perm_heavy: Positive,
    seed: int,
    no_plots: bool = False,
) -> None: ...


def _steer_sweep(
    *,
    prompts: str | None = None,
    layer: Sequence[int] | None,
    alpha: Sequence[float] | None,
    max_new_tokens: Positive,
    batch_size: BatchSize,
    where: Literal["all", "new"],
    steer_tokens: Positive | None,
    seed: int,
    no_prompt_baseline: bool = False,
    emotion: Names | None,
    n_layers: Positive,
    n_alphas: Positive,
    n_prompts: Positive | None,
    n_verify: Positive,
    screen_tokens: Positive | None,
    n_keep: Positive,
    method: Literal[METHODS] | None,
    chat: Chat | None,
    system: str | None,
) -> None: ...


def _causal(
    *,
    baseline: str,
    budget: Literal["default", "fast"],
    n_boot: Positive,
    level: float,
    batch_size: BatchSize,
    no_plots: bool = False,
) -> None:
    """The options ``patch`` and ``ablate`` share, first in both tables (as the commands'
    ``_add_causal_args``)."""


def _options_after(first: Callable[..., None]) -> Callable[[Callable], Callable]:
    """Declares a table whose options are ``first``'s, then its own."""

    def declare(fn: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(fn)
        params = [*inspect.signature(first).parameters.values(), *own.parameters.values()]
        fn.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        fn.__annotations__ = {**first.__annotations__, **fn.__annotations__}
        return fn

    return declare


@_options_after(_causal)
def _patch(
    *,
    emotion: Names | None,
    n_pairs: Positive | None,
    min_pairs: Positive,
    n_positions: Positive | None,
    layers: Layers | None,
    n_layers: Positive | None,
    seed: int,
) -> None: ...


@_options_after(_causal)
def _ablate(
    *,
    targets: Names | None,
    from_layer: int | None,
    mode: Literal["fixed", "per_layer"],
    n_random: Positive | None,
    probe_layer: int | None,
    methods: Names,
    position: str,
    n_train: Positive | None,
    n_eval: Positive | None,
    seed: int,
) -> None: ...


def _heads(
    *,
    emotion: Names | None,
    baseline: str | None,
    layer: int | None,
    budget: Literal["default", "fast"],
    top_k: Sequence[Positive] | None,
    n_random: Positive | None,
    n_ablate: Positive | None,
    n_per_class: Positive | None,
    n_boot: Positive,
    top_neurons: Positive,
    top_prompts: Positive,
    batch_size: BatchSize,
    seed: int,
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

#: config table -> (module, name) of the library function whose defaults its options take
LIBRARY = {
    "extract": ("emocircuits.capture", "extract"),
    "geometry": ("emocircuits.geometry.stage", "analyze_geometry"),
    "vectors": ("emocircuits.geometry.vectors", "directions"),
    "compare": ("emocircuits.compare.comparison", "compare_models"),
    "steer-sweep": ("emocircuits.interventions.sweep", "steer_sweep"),
    "patch": ("emocircuits.interventions.patch_stage", "patch"),
    "ablate": ("emocircuits.interventions.ablate_stage", "ablate"),
    "heads": ("emocircuits.interventions.heads", "heads"),
}

#: config table -> (module, name) of its named budgets (``budget = "fast"``)
BUDGETS = {
    "patch": ("emocircuits.interventions.budgets", "PATCH_BUDGETS"),
    "ablate": ("emocircuits.interventions.budgets", "ABLATE_BUDGETS"),
    "heads": ("emocircuits.interventions.budgets", "HEADS_BUDGETS"),
}


def _imported(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


def options(table: str) -> dict[str, inspect.Parameter]:
    """The settable keyword options of a config table's function (name -> parameter), the
    defaults it leaves out taken from the library function's."""
    library = inspect.signature(_imported(*LIBRARY[table])).parameters
    out = {}
    for n, p in inspect.signature(OPTIONS[table]).parameters.items():
        if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or n in RUNNER_SET:
            continue
        if p.default is inspect.Parameter.empty:
            p = p.replace(default=library[n].default)
        out[n] = p
    return out


def budget_table(table: str) -> dict[str, dict[str, Any]] | None:
    """The named budgets of a config table's function, or None if it has none.

    >>> sorted(budget_table("patch")), budget_table("geometry")
    (['default', 'fast'], None)
    """
    return _imported(*BUDGETS[table]) if table in BUDGETS else None


# -------------------------------------------------------------------------------- adapters
# One per stage: load the inputs, call the library, save the result into ``out``. ``run``
# holds the study-wide loading settings: revision, trust_remote_code and the placement
# (dtype, device, device_map, max_memory, offload_folder, quantization). The option
# names of the tables are the commands' (``no_plots``); each adapter passes them on as the
# library's keywords (``save(plots=not no_plots)``). Adapters that load a model return
# where it was placed (for stage.json).
def placement(run: dict[str, Any]) -> dict[str, Any]:
    """The placement keywords of :func:`~emocircuits.models.load_model` from the study
    settings (TOML has no null: ``""`` is None; dtype and device default to ``auto``).

    >>> placement({"dtype": "float32", "device": "", "device_map": ""})["device"]
    'auto'
    """
    from emocircuits.models.loading import PLACEMENT

    auto = ("dtype", "device")
    return {k: run.get(k) or ("auto" if k in auto else None) for k in PLACEMENT}


def _filled(table: str, opts: dict[str, Any]) -> dict[str, Any]:
    """A stage's options with the defaults of the options it leaves out."""
    return {**{n: p.default for n, p in options(table).items()}, **opts}


def capture(
    model: str, data: str, out: Path, opts: dict[str, Any], run: dict[str, Any]
) -> dict[str, Any]:
    """``extract(lm, data, out, **opts)``: the capture folder (resumes a partial one)."""
    from emocircuits.capture import capture_positions, extract
    from emocircuits.data import load_dataset
    from emocircuits.models import load_model
    from emocircuits.models.loading import placement_record

    o = _filled("extract", opts)
    ds = load_dataset(data, min_per_class=o["min_per_class"])
    sites = tuple(o["sites"]) + (("heads",) if o["heads"] and "heads" not in o["sites"] else ())
    lm = load_model(model, revision=run["revision"] or None,
                    trust_remote_code=run["trust_remote_code"], progress=False,
                    **placement(run))  # fmt: skip
    extract(lm, ds, out, sites=sites, positions=capture_positions(ds, tuple(o["positions"])),
            layers=o["layers"], batch_size=o["batch_size"], padding_side=o["padding_side"],
            max_length=o["max_length"], chat=o["chat"], system=o["system"],
            shard_size=o["shard_size"], progress=False)  # fmt: skip
    return placement_record(lm.provenance)


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


def steer(
    model: str, vecs: Path, out: Path, opts: dict[str, Any], run: dict[str, Any]
) -> dict[str, Any]:
    """``steer_sweep(lm, prompts, vecs, **opts).save(out)``, and the recommended settings
    next to the vectors file."""
    from emocircuits.interventions.sweep import steer_sweep
    from emocircuits.models import load_model
    from emocircuits.models.loading import placement_record

    o = _filled("steer-sweep", opts)
    prompts = o.pop("prompts")
    o["prompt_baseline"] = not o.pop("no_prompt_baseline")
    lm = load_model(model, revision=run["revision"] or None,
                    trust_remote_code=run["trust_remote_code"], progress=False,
                    **placement(run))  # fmt: skip
    res = steer_sweep(lm, prompts, str(vecs), progress=False, **o)
    res.save(out)
    res.save_recommendations(str(vecs))
    return placement_record(lm.provenance)


def causal(
    stage: str, model: str, data: str, vecs: Path, out: Path, opts: dict, run: dict
) -> dict[str, Any]:
    """``patch`` / ``ablate`` / ``heads``: ``fn(lm, data, vecs, **opts).save(out)``."""
    from emocircuits.interventions.ablate_stage import ablate
    from emocircuits.interventions.heads import heads
    from emocircuits.interventions.patch_stage import patch

    o = _filled(stage, opts)
    no_plots = o.pop("no_plots")
    if "no_ablation" in o:
        o["ablation"] = not o.pop("no_ablation")
    fn = {"patch": patch, "ablate": ablate, "heads": heads}[stage]
    from emocircuits.models.loading import placement_record

    res = fn(model, data, str(vecs), trust_remote_code=run["trust_remote_code"],
             progress=False, **placement(run), **o)  # fmt: skip
    res.save(out, plots=not no_plots)
    return placement_record(res.summary.get("model") or {})

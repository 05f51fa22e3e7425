"""What each finished stage folder yields as MLflow metrics (no mlflow here): per-layer
series from its tables, scalars from its ``summary.json`` / ``sweep.json``, and the
manifest that names the stage.

**Per-layer metric rule.** A table ``T.csv`` with a layer column gives the series
``T/{name}[.{group value}...]`` with ``step`` = the layer. Known tables have a :class:`TableRule`
(:data:`RULES`): which columns become metrics and under which name (a 95% interval as
``{name}_lo`` / ``{name}_hi``, p-values as ``{name}_p``), which columns tell the series apart,
and which rows are kept. Within-model tables keep the residual stream at the main position
rule (``site = resid``, ``position = main_position`` of ``summary.json``: the other sites and
rules stay in the CSV artifacts); cross-model tables are indexed by the first model's layer
(``layer_a``) at its matched layer of the second. For example::

    similarity/cosine.mean_diff.gratitude.anger      (and cosine_lo, cosine_hi, distance)
    stability/split_half_cos.mean_diff.gratitude     (norm, bootstrap_self_cos, ...; _lo, _hi)
    shared/raw_cos.gratitude.anger                   agreement/cos.method_pca.anger
    subspaces/overlap.position_last                  probes_cv/accuracy.logreg (_lo, _hi, _p)
    layer_pairs/cka.smollm2.gemma3 (cka_p, rsa, mknn, matched_layer)
    maps/r2.smollm2.gemma3.ridge                     directions/cos.smollm2.gemma3.ridge.anger
    patching/recovered.directional.anger             (every position; readout: position -1)
    ablation_probe/accuracy.direction_all.logreg     components/contrast.attn.anger.cue

Per-head and per-neuron tables and steer's layer x alpha grid give no series (their
numbers are in the artifacts, steer's chosen settings among the scalars). Any other table
with a ``layer`` column follows a generic rule: columns written as decimals are metrics,
the other columns that vary (but True/False flags) name the series; a table that would give
more than :data:`GENERIC_MAX_SERIES` series, or two values for one (series, layer), gives
none and is named in the tag ``emocircuits.metrics_skipped``.
Characters MLflow does not accept in names (``:`` included) become ``_``.

>>> flatten({"a": {"b": 1}})
{'a.b': 1}
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emocircuits.errors import DataError

GENERIC_MAX_SERIES = 64
KEY_LIMIT = 250  # MAX_ENTITY_KEY_LENGTH
_BAD_NAME_CHARS = re.compile(r"[^\w.\- /]")
_DECIMAL = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+|nan|inf|infinity)$", re.I)


@dataclass(frozen=True)
class TableRule:
    """How one saved table becomes per-layer metric series.

    ``values`` maps a column to its metric name (a template filled from the row, e.g.
    ``"{measure}_lo"``); ``group`` lists the columns whose values, joined by ``.``, tell the
    series apart; ``where`` keeps rows whose column equals the value or is one of a tuple of
    values (``{main_position}`` is filled in from ``summary.json``); ``exclude`` drops rows
    the same way. A rule without ``values`` says the table gives no series.

    >>> rule = TableRule({"cos": "cos"}, group=("emotion",))
    >>> rule.step
    'layer'
    """

    values: Mapping[str, str]
    group: tuple[str, ...] = ()
    where: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    exclude: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    step: str = "layer"


_RESID_MAIN = {"site": "resid", "position": "{main_position}"}

# fmt: off
RULES: dict[str, TableRule | tuple[TableRule, ...]] = {
    # geometry (emocircuits geometry, write_analysis): resid at the main position rule
    "similarity": TableRule(
        {"cosine": "cosine", "ci_low": "cosine_lo", "ci_high": "cosine_hi",
         "class_mean_distance": "distance"},
        group=("method", "emotion_1", "emotion_2"), where=_RESID_MAIN),
    "stability": TableRule(
        {"value": "{measure}", "lo": "{measure}_lo", "hi": "{measure}_hi"},
        group=("method", "emotion"), where=_RESID_MAIN),
    "shared": TableRule({"value": "{measure}"}, group=("class_1", "class_2"), where=_RESID_MAIN),
    "agreement": TableRule(
        {"cos": "cos", "lo": "cos_lo", "hi": "cos_hi"},
        group=("compared", "emotion"), where=_RESID_MAIN),
    "subspaces": TableRule(
        {"overlap": "overlap", "p_value": "overlap_p", "null_mean": "overlap_null"},
        group=("compared",), where=_RESID_MAIN, exclude={"compared": "layers"}, step="layer_a"),
    # compare (emocircuits compare, write_comparison): model A's layer at its matched layer of B
    "layer_pairs": TableRule(
        {"cka": "cka", "cka_p": "cka_p", "rsa": "rsa", "rsa_p": "rsa_p", "mknn": "mknn",
         "mknn_p": "mknn_p", "layer_b": "matched_layer"},
        group=("model_a", "model_b"), where={"matched": "True"}, step="layer_a"),
    "maps": TableRule(
        {"r2": "r2", "r2_p": "r2_p", "identification": "identification",
         "identification_p": "identification_p", "overlap": "overlap", "overlap_p": "overlap_p",
         "decoding": "decoding", "decoding_p": "decoding_p"},
        group=("model_a", "model_b", "map"), step="layer_a"),
    "directions": TableRule(
        {"cos": "cos", "shuffle_p": "shuffle_p", "perm_p": "perm_p"},
        group=("model_a", "model_b", "map", "emotion"), step="layer_a"),
    # patch: every position patched at once (directional vs random), and the readout position
    "patching": (
        TableRule({"recovered": "recovered", "ci_low": "recovered_lo", "ci_high": "recovered_hi"},
                  group=("kind", "emotion"), where={"position": "all"}),
        TableRule({"recovered": "readout", "ci_low": "readout_lo", "ci_high": "readout_hi"},
                  group=("kind", "emotion"), where={"position": "-1"}),
    ),
    # ablate: the probe fitted on clean activations, read at every layer (random draws: CSV)
    "ablation_probe": TableRule(
        {"accuracy": "accuracy", "removed": "removed"}, group=("condition", "method"),
        where={"probe": "fixed"}, exclude={"kind": "random"}),
    # heads: what attention and MLP of each block add along the direction
    "components": TableRule(
        {"contrast": "contrast", "share": "share"}, group=("component", "emotion", "position"),
        where={"component": ("attn", "mlp")}),
    # tables that give no per-layer series (per head or neuron; steer's layer x alpha grid,
    # whose chosen settings are in sweep.json)
    **dict.fromkeys(("heads", "neurons", "neuron_prompts", "summary"), TableRule({})),
}
# fmt: on


def flatten(obj: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts as one level with joined keys; lists, scalars and ``None`` are leaves.

    >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    {'a.b': 1, 'a.c': [1, 2], 'd': None}
    """
    if not isinstance(obj, Mapping):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def _name(text: str) -> str:
    """A metric/param/tag key MLflow accepts everywhere (``:`` is refused on Windows)."""
    key = _BAD_NAME_CHARS.sub("_", text).strip("/")
    key = re.sub("/{2,}", "/", key)
    return key[:KEY_LIMIT]


def _part(value: Any) -> str:
    """One group value inside a metric name (no path separators)."""
    return _name(str(value)).replace("/", "_")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _float(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


Series = dict[str, dict[int, float]]


def _rule_series(
    rows: list[dict[str, str]], table: str, rule: TableRule, context: Mapping[str, str]
) -> tuple[Series, str | None]:
    """Series of one table by its rule; the second item says why some were dropped."""
    cols = set(rows[0]) if rows else set()
    where = {
        k: (v.format(**context),) if isinstance(v, str) else v
        for k, v in rule.where.items()
        if k in cols
    }
    exclude = {k: (v,) if isinstance(v, str) else v for k, v in rule.exclude.items()}
    out: Series = {}
    dup = 0
    for row in rows:
        if any(row.get(k) not in v for k, v in where.items()):
            continue
        if any(row.get(k) in v for k, v in exclude.items()):
            continue
        step = _float(row.get(rule.step))
        if step is None:
            continue
        suffix = "".join(f".{_part(row[g])}" for g in rule.group if row.get(g))
        for col, template in rule.values.items():
            value = _float(row.get(col))
            if value is None:
                continue
            key = _name(f"{table}/{_part(template.format(**row))}{suffix}")
            series = out.setdefault(key, {})
            if int(step) in series:
                dup += 1
                continue
            series[int(step)] = value
    return out, (f"{table}.csv ({dup} repeated layers)" if dup else None)


def _generic_series(rows: list[dict[str, str]], table: str) -> tuple[Series, str | None]:
    """The generic rule: decimal columns are metrics, the other columns that vary (but
    True/False flags) name the series."""
    if not rows or "layer" not in rows[0]:
        return {}, None
    cols = [c for c in rows[0] if c != "layer"]
    values = [
        c
        for c in cols
        if any(_DECIMAL.match(r[c] or "") for r in rows)
        and all(r[c] in ("", None) or _float(r[c]) is not None for r in rows)
    ]
    flags = {c for c in cols if {r[c] for r in rows} <= {"True", "False", ""}}
    group = [
        c for c in cols if c not in values and c not in flags and len({r[c] for r in rows}) > 1
    ]
    rule = TableRule({c: c for c in values}, group=tuple(group))
    series, problem = _rule_series(rows, table, rule, {})
    if problem:
        return {}, problem
    if len(series) > GENERIC_MAX_SERIES:
        return {}, f"{table}.csv ({len(series)} series > {GENERIC_MAX_SERIES})"
    return series, None


def _probe_series(probes: Mapping[str, Any]) -> Series:
    """``probes_cv/{accuracy,accuracy_lo,accuracy_hi,accuracy_p}.{method}`` for resid."""
    layers = (probes.get("layers") or {}).get("resid")
    sites = (probes.get("sites") or {}).get("resid") or {}
    if not layers:
        return {}
    ci = (probes.get("ci") or {}).get("resid") or {}
    pv = (probes.get("p_value") or {}).get("resid") or {}
    out: Series = {}
    for method, acc in sites.items():
        cols = {
            "accuracy": acc,
            "accuracy_lo": (ci.get(method) or {}).get("low"),
            "accuracy_hi": (ci.get(method) or {}).get("high"),
            "accuracy_p": pv.get(method),
        }
        for name, vals in cols.items():
            if vals and len(vals) == len(layers):
                out[_name(f"probes_cv/{name}.{_part(method)}")] = {
                    int(layer): float(v)
                    for layer, v in zip(layers, vals, strict=True)
                    if _number(v) is not None
                }
    return out


def _summary_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """Numbers of ``summary.json`` (its ``headline``, the compare measures, ``seconds``) and
    of steer's ``sweep.json`` (``recommended`` settings per emotion, without the limits)."""
    out: dict[str, float] = {}
    for emotion, rec in (summary.get("recommended") or {}).items():
        for key, v in flatten(rec).items():
            if not key.startswith("limits.") and (x := _number(v)) is not None:
                out[_name(f"summary/recommended.{emotion}.{key}")] = x
    for key, v in flatten(summary.get("headline") or {}).items():
        if (x := _number(v)) is not None:
            out[_name(f"summary/headline.{key}")] = x
    for pair in summary.get("pairs") or []:
        if not isinstance(pair, Mapping):
            continue
        name = _part(f"{pair.get('model_a')}_vs_{pair.get('model_b')}")
        for key, v in flatten(pair.get("measures") or {}).items():
            if (x := _number(v)) is not None:
                out[_name(f"summary/{name}.{key}")] = x
    seconds = summary.get("seconds")
    if isinstance(seconds, Mapping):
        for key, v in flatten(seconds).items():
            if (x := _number(v)) is not None:
                out[_name(f"seconds/{key}")] = x
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path.name}: {e}", where=str(path.parent)) from e


STAGE_FILES = ("stage.json", "manifest.json")  # a capture's manifest.json is its activations'


def read_manifest(stage_dir: str | Path) -> dict[str, Any]:
    """What a finished stage folder says about itself: ``stage.json`` (written last), or a
    ``manifest.json`` that names its ``stage``.

    >>> read_manifest("runs/study/stages/geometry/x-1a2b")["stage"]   # doctest: +SKIP
    'geometry'
    """
    folder = Path(stage_dir)
    for name in STAGE_FILES:
        if (folder / name).is_file():
            manifest = _read_json(folder / name)
            if isinstance(manifest, dict) and "stage" in manifest:
                return manifest
    raise DataError("no stage.json: not a finished stage folder", where=str(folder))


def _finished(folder: Path) -> bool:
    try:
        read_manifest(folder)
    except DataError:
        return False
    return True


def stage_metrics(
    stage_dir: str | Path,
) -> tuple[Series, dict[str, float], list[str]]:
    """Per-layer series ``{name: {layer: value}}``, scalars and the tables left out.

    >>> series, scalars, skipped = stage_metrics("runs/study/stages/geometry/x")  # doctest: +SKIP
    >>> series["probes_cv/accuracy.logreg"][12]                                  # doctest: +SKIP
    0.91
    """
    folder = Path(stage_dir)
    summary = {}
    if (folder / "summary.json").is_file():
        summary = _read_json(folder / "summary.json")
        summary = summary if isinstance(summary, dict) else {}
    context = {"main_position": str(summary.get("main_position") or "mean")}
    series: Series = {}
    skipped: list[str] = []
    for path in sorted(folder.glob("*.csv")):
        rows = _read_csv(path)
        rules = RULES.get(path.stem)
        if rules is None:
            got, problem = _generic_series(rows, path.stem)
            series.update(got)
            skipped += [problem] if problem else []
            continue
        for rule in rules if isinstance(rules, tuple) else (rules,):
            got, problem = _rule_series(rows, path.stem, rule, context)
            series.update(got)
            skipped += [problem] if problem else []
    if (folder / "probes_cv.json").is_file():
        series.update(_probe_series(_read_json(folder / "probes_cv.json")))
    scalars = _summary_scalars(summary)
    if (folder / "sweep.json").is_file():
        sweep = _read_json(folder / "sweep.json")
        scalars.update(_summary_scalars({"recommended": (sweep or {}).get("recommended")}))
    return series, scalars, skipped

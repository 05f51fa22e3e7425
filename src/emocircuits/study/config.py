"""The study's configuration: one TOML file that can set every option of every stage.

A study config has a ``[study]`` table (models, datasets, which analyses, output folder)
and one table per stage, named like the stage's command, whose keys are the keyword options
of the stage's library function (:mod:`emocircuits.study.calls`; ``n_boot`` or ``n-boot``,
the same names as the command's ``--n-boot``). What a table does not set keeps the
function's own default; the arguments the runner fills in itself (model, data, output
folder, activations, vectors, ...) cannot be set. Names and value types are checked against
the function's signature (defaults and annotations), without argparse. ``emocircuits run
--print-config`` prints the effective configuration as TOML, a valid config file.

>>> cfg = load_config(None, overrides={"study": {"models": ["smollm2-135m"]}})
>>> cfg.models, cfg.stage_options("geometry")["n_boot"]
(['smollm2-135m'], 1000)
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emocircuits.errors import EmocircuitsError
from emocircuits.study.calls import OPTIONS, RUNNER_SET, budget_table, options
from emocircuits.study.values import check_value, type_hints


class ConfigError(EmocircuitsError):
    """A study configuration that cannot be used (names the file and line)."""


ANALYSES = ("geometry", "compare", "steer", "patch", "ablate", "heads")

# the command behind each stage; `vectors` runs inside the geometry stage
COMMANDS = {
    "capture": "extract",
    "geometry": "geometry",
    "vectors": "vectors",
    "compare": "compare",
    "steer": "steer-sweep",
    "patch": "patch",
    "ablate": "ablate",
    "heads": "heads",
}

STUDY_DEFAULTS: dict[str, Any] = {
    "models": ["smollm2-135m", "gemma3-270m"],
    # everyday: its directions transfer best to informal, differently written text, in
    # place of extended (docs/BENCHMARKS.md, "Training presets"); baseline: the pilot's set
    "data": ["everyday", "baseline"],
    "out": "runs/study",
    # where the models live, for every stage (load_model's keywords; "" = none): see
    # `emocircuits extract --help`
    "dtype": "auto",
    "device": "auto",
    "device_map": "",
    "max_memory": "",
    "offload_folder": "",
    "quantization": "",
    "revision": "",
    "trust_remote_code": False,
    "analyses": list(ANALYSES),
    "causal_data": "everyday",
    "mlflow": True,
    # where the stages run: "local" (this process, one after another) or "ray" (a Ray
    # task each, at the same time where they do not depend on each other); see README
    "executor": "local",
    "address": "",  # the Ray cluster ("" = RAY_ADDRESS, else a Ray started for the run)
    "max_retries": 2,  # Ray: new attempts of a stage whose worker died
    "stage_cpus": 1.0,  # Ray: CPUs asked for by every stage (its torch threads)
    "model_stage_gpus": 1.0,  # Ray: GPUs asked for by a model stage when device is cuda
}

EXECUTORS = ("local", "ray")

# settings the study uses where a command's default is sized for a single, deeper run
# (the whole default study must fit in about ten minutes on two cores); the steering sweep
# runs with the command's own defaults (4 layers x 5 alphas x 20 prompts x 30 tokens, made
# cheap by its successive halving: docs/BENCHMARKS.md)
STUDY_STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "vectors": {"method": "one_vs_rest", "position": "mean"},
    "compare": {"n_perm_heavy": 100},
    "patch": {"budget": "fast"},
    "ablate": {"budget": "fast"},
    "heads": {"budget": "fast"},
}

# the [study] keys that say where the models run (load_model's PLACEMENT; not imported
# from there, which would import torch for reading a config)
PLACEMENT_KEYS = ("dtype", "device", "device_map", "max_memory", "offload_folder", "quantization")

_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v


def _line(text: str, table: str, key: str) -> int | None:
    """Line (1-based) of ``key`` inside ``[table]`` of a TOML text, or of the table itself."""
    current = None
    for i, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if s.startswith("[") and not s.startswith("[["):
            current = s.strip("[] ").strip("\"'")
            if key == "" and current == table:
                return i
            continue
        m = _KEY.match(raw)
        if m and current == table and m.group(1).strip("\"'") == key:
            return i
    return None


@dataclass
class StudyConfig:
    """The effective configuration: ``study`` settings plus per-command options."""

    study: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "(defaults)"
    # per command, the options whose value comes from its --budget (printed as comments,
    # so that a printed config with another budget still takes that budget's values)
    from_budget: dict[str, set[str]] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.study["models"])

    @property
    def data(self) -> list[str]:
        return list(self.study["data"])

    @property
    def out(self) -> Path:
        return Path(self.study["out"])

    def on(self, analysis: str) -> bool:
        return analysis in self.study["analyses"]

    def stage_options(self, stage: str) -> dict[str, Any]:
        """Every settable option of the stage's command, with its effective value."""
        return dict(self.stages[COMMANDS[stage]])

    def to_toml(self) -> str:
        """The effective configuration as a TOML file (``--print-config``)."""
        lines = [f"# emocircuits study configuration (from {self.source})", "[study]"]
        lines += [f"{k} = {_toml(v)}" for k, v in self.study.items()]
        for cmd, opts in self.stages.items():
            lines += ["", f"[{cmd}]"]
            budget = self.from_budget.get(cmd, set())
            for k, v in opts.items():
                if k in budget:
                    shown = "(automatic)" if v is None else _toml(v)
                    lines.append(f"# {k} = {shown}  (from budget {_toml(opts['budget'])})")
                else:
                    unset = _UNSET.get(k, "(automatic)")
                    lines.append(f"# {k} = {unset}" if v is None else f"{k} = {_toml(v)}")
        return "\n".join(lines) + "\n"


# how --print-config shows an option left unset where "(automatic)" would mislead
_UNSET = {"chat": '(raw text; "user" or "assistant": the chat template)', "system": "(none)"}


def _toml(v: Any) -> str:
    if isinstance(v, dict):  # an inline table (a device map, max_memory)
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def load_config(
    path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None
) -> StudyConfig:
    """Read a study TOML (or none: the defaults), apply ``overrides`` (same shape, e.g.
    from the command line) and check every key and value against the commands' options.
    Problems raise :class:`ConfigError` naming ``file:line``."""

    text, raw, src = "", {}, "(defaults)"
    if path is not None:
        src = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read the config {path}: {e.strerror}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"\(at line (\d+), column \d+\)", str(e))
            line = m.group(1) if m else text.count("\n") + 1  # "at end of document"
            where = f"{path}:{line}"
            msg = re.sub(r"\s*\(at (line|end).*\)", "", str(e))
            raise ConfigError(f"{where}: not valid TOML: {msg}") from None

    def where(table: str, key: str = "") -> str:
        line = _line(text, table, key)
        return f"{src}:{line}" if line else src

    names = set(OPTIONS)
    study = dict(STUDY_DEFAULTS)
    merged: dict[str, dict[str, Any]] = {}
    for layer, is_file in ((raw, True), (overrides or {}, False)):
        for table, values in layer.items():
            here = (lambda k="", t=table: where(t, k)) if is_file else (lambda k="": "--set")
            if table != "study" and table not in names:
                known = ", ".join(["study", *sorted(names)])
                raise ConfigError(f"{here()}: unknown table [{table}] (known: {known})")
            if not isinstance(values, dict):
                raise ConfigError(f"{here()}: [{table}] must be a table of settings")
            for key, value in values.items():
                k = key.replace("-", "_")
                if table == "study":
                    if k not in STUDY_DEFAULTS:
                        raise ConfigError(
                            f"{here(key)}: unknown study setting {key!r} "
                            f"(known: {', '.join(STUDY_DEFAULTS)})"
                        )
                    study[k] = _check_study(k, value, here(key))
                else:
                    if k not in options(table):
                        why = (
                            "is a [study] setting (where the models run: every stage)"
                            if k in PLACEMENT_KEYS
                            else "is set by the study runner"
                            if k in RUNNER_SET
                            else f"is not an option of `emocircuits {table}`"
                        )
                        raise ConfigError(f"{here(key)}: [{table}] {key} {why}")
                    merged.setdefault(table, {})[k] = (value, here(key))
    stages: dict[str, dict[str, Any]] = {}
    from_budget: dict[str, set[str]] = {}
    for stage, cmd in COMMANDS.items():
        opts = options(cmd)
        hints = type_hints(OPTIONS[cmd])
        given = {**STUDY_STAGE_DEFAULTS.get(stage, {})}
        given.update({k: v for k, (v, _) in merged.get(cmd, {}).items()})
        values = {k: p.default for k, p in opts.items()}
        for k, v in given.items():
            try:
                values[k] = check_value(v, hints.get(k, Any), opts[k].default)
            except ValueError as e:
                at = merged[cmd][k][1] if k in merged.get(cmd, {}) else where(cmd)
                flag = "--" + k.replace("_", "-")
                raise ConfigError(f"{at}: [{cmd}] {k} ({flag}): {e}") from None
        table = budget_table(cmd)
        if table is not None:
            # the budget's values, not its name, go into the settings (and the stage hash)
            chosen = table[values["budget"]]
            from_budget[cmd] = {k for k in chosen if values[k] is None}
            values.update({k: chosen[k] for k in from_budget[cmd]})
        stages[cmd] = {k: _jsonable(v) for k, v in values.items()}
    return StudyConfig(study, stages, src, from_budget)


def _check_study(key: str, value: Any, where: str) -> Any:
    if key in PLACEMENT_KEYS:
        return _check_placement(key, value, where)
    want = type(STUDY_DEFAULTS[key])
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if key == "executor" and value not in EXECUTORS:
        raise ConfigError(f"{where}: unknown executor {value!r} ({', '.join(EXECUTORS)})")
    if key in ("max_retries", "stage_cpus", "model_stage_gpus") and (
        isinstance(value, int | float) and not isinstance(value, bool) and value < 0
    ):
        raise ConfigError(f"{where}: study {key} must be >= 0, got {value!r}")
    if want is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: study {key} must be a list of names")
        if key == "analyses":
            bad = [v for v in value if v not in ANALYSES]
            if bad:
                raise ConfigError(
                    f"{where}: unknown analysis {bad[0]!r} (known: {', '.join(ANALYSES)})"
                )
        elif not value:
            raise ConfigError(f"{where}: study {key} is empty")
        return list(value)
    if not isinstance(value, want):
        raise ConfigError(f"{where}: study {key} must be a {want.__name__}, got {value!r}")
    return value


def _check_placement(key: str, value: Any, where: str) -> Any:
    """A placement setting's form (names exist and sizes parse; whether a device is there
    is checked when the study is planned, on the machine that runs it)."""
    from emocircuits.errors import ModelError
    from emocircuits.models.loading import DTYPE_CHOICES, QUANTIZATIONS, parse_max_memory

    dict_ok = key in ("device_map", "max_memory")
    if not isinstance(value, str) and not (dict_ok and isinstance(value, dict)):
        kind = "a string or a table" if dict_ok else "a string"
        raise ConfigError(f"{where}: study {key} must be {kind}, got {value!r}")
    if key == "dtype" and value not in DTYPE_CHOICES:
        raise ConfigError(f"{where}: unknown dtype {value!r} ({', '.join(DTYPE_CHOICES)})")
    if key == "quantization" and value not in ("", *QUANTIZATIONS):
        raise ConfigError(
            f'{where}: unknown quantization {value!r} ({", ".join(QUANTIZATIONS)}, or "")'
        )
    if key == "max_memory":
        try:
            parse_max_memory(value)
        except ModelError as e:
            raise ConfigError(f"{where}: {e}") from None
    return value

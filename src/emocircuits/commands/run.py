"""`emocircuits run`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from emocircuits.commands._common import add_model_placement_args, model_placement
from emocircuits.errors import EmocircuitsError


def _set_overrides(items: Sequence[str]) -> dict[str, dict]:
    """``--set table.key=value`` (value parsed as TOML, else taken as a string)."""
    import tomllib

    out: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        table, dot, name = key.strip().rpartition(".")
        if not eq or not dot or not name:
            raise EmocircuitsError(
                f"--set {item!r}: expected TABLE.KEY=VALUE, e.g. geometry.n_boot=200"
            )
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        out.setdefault(table, {})[name] = parsed
    return out


def run(args: argparse.Namespace) -> int:
    from emocircuits.study.config import load_config

    over = _set_overrides(args.set or [])
    study = over.setdefault("study", {})
    for k in ("models", "data", "out"):
        if getattr(args, k):
            study[k] = getattr(args, k)
    study.update({k: v for k, v in model_placement(args).items() if v is not None})
    if args.only:
        study["analyses"] = list(args.only)
    if args.no_mlflow:
        study["mlflow"] = False
    if args.executor:
        study["executor"] = args.executor
    if args.address:
        study["address"] = args.address
    cfg = load_config(args.config, over)
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return 0
    from emocircuits.study.runner import run_study
    from emocircuits.study.summary import print_summary

    res = run_study(cfg, progress=not args.quiet)
    print_summary(res)
    for key, why in res.failed.items():
        print(f"emocircuits: error: stage {key}: {why}", file=sys.stderr)
    return 2 if res.failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.study.config import ANALYSES, EXECUTORS, STUDY_DEFAULTS

    ru = sub.add_parser(
        "run",
        help="the whole study: data -> capture -> geometry -> compare -> causal tests -> report",
        description="Runs the whole study and writes DIR/report.html. Every stage is cached "
        "in DIR/stages/<stage>/<label>-<hash> by a hash of its inputs and settings: a re-run "
        "with nothing changed does no model work, a changed setting re-runs only the stages "
        "that depend on it, an interrupted run resumes. Defaults: models smollm2-135m and "
        "gemma3-270m, datasets everyday and baseline, every analysis; steering strengths "
        "and layers are chosen from the data (see `steer-sweep --help`). A TOML config sets "
        "anything: a [study] table and one table per command with that command's options "
        "(see --print-config). Tracked in MLflow (DIR/mlflow.db unless "
        "MLFLOW_TRACKING_URI is set).",
        epilog="examples:\n  emocircuits run\n  emocircuits run --print-config > study.toml\n"
        "  emocircuits run --config study.toml --out runs/mystudy\n"
        "  emocircuits run --models smollm2-135m --only geometry steer --set "
        "steer-sweep.max_new_tokens=20\n"
        "  emocircuits run --config study.toml --executor ray --address head-node:6379\n"
        "  mlflow ui --backend-store-uri sqlite:///runs/study/mlflow.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ru.add_argument("--config", help="study TOML file")
    ru.add_argument("--models", nargs="+", help="models (built-in names, folders, .gguf, hub ids)")
    ru.add_argument("--data", nargs="+", help="datasets (preset names or JSONL files)")
    ru.add_argument("--out", help=f"output folder (default {STUDY_DEFAULTS['out']})")
    ru.add_argument("--only", nargs="+", choices=ANALYSES, help="run only these analyses")
    ru.add_argument("--set", action="append", metavar="TABLE.KEY=VALUE",
                    help="set one option, e.g. geometry.n_boot=200 (repeatable)")  # fmt: skip
    ru.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    ru.add_argument("--executor", choices=EXECUTORS,
                    help="where the stages run: local (this process; the default) or ray (a "
                    "Ray task each, independent stages at the same time; needs "
                    "emocircuits[distributed] and an output folder every node sees)")  # fmt: skip
    ru.add_argument("--address", metavar="ADDRESS",
                    help="the Ray cluster to run on (host:port or auto; default RAY_ADDRESS, "
                    "else a Ray started for this run)")  # fmt: skip
    ru.add_argument("--print-config", action="store_true",
                    help="print the effective configuration (TOML) and exit")  # fmt: skip
    ru.add_argument("--quiet", action="store_true", help="no live progress display")
    add_model_placement_args(ru, defaults=False)  # default: the config's [study] values
    ru.set_defaults(func=run)

"""`emocircuits probe`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from emocircuits.commands._common import (
    _csv,
    add_counts,
    add_level_arg,
    add_reading_args,
    lib_default,
)


# -------------------------------------------------------------------------------- probe
def _is_folder(arg: str) -> bool:
    return Path(arg).expanduser().is_dir()


def _inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """The training and test activations: folders are opened; datasets (a preset or a
    JSONL file) are captured in memory through ``--model`` at the site and rule read."""
    from emocircuits.capture import extract, load_activations
    from emocircuits.data import load_dataset
    from emocircuits.errors import DataError

    given = {"--train": args.train, "--test": args.test}
    datasets = {}
    for flag, arg in given.items():
        if arg is None or _is_folder(arg):
            continue
        try:
            datasets[flag] = load_dataset(arg)
        except DataError as e:
            raise DataError(f"{flag} {arg}: not an activation folder, and {e}") from None
    if args.model is not None and not datasets:
        raise DataError(
            "--model is used only for --train/--test datasets (a preset or JSONL "
            "file); activation folders already name their model"
        )
    lm = None
    if datasets:
        from emocircuits.models import DEFAULT_MODEL, load_model

        name = args.model or DEFAULT_MODEL
        lm = load_model(name, dtype=args.dtype, device=args.device, progress=not args.quiet)
        if not args.quiet:
            print(
                f"capturing {', '.join(d.source for d in datasets.values())} with {name} "
                f"({args.site}/{args.position or 'mean'}, in memory)"
            )

    def store(flag: str) -> Any:
        arg = given[flag]
        if arg is None:
            return None
        if flag not in datasets:
            return load_activations(arg)
        rules = tuple(dict.fromkeys([args.position or "mean", "mean"]))  # mean: lexical baseline
        return extract(
            lm,
            datasets[flag],
            sites=(args.site,),
            positions=rules,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )

    return store("--train"), store("--test")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from emocircuits.geometry.probes import probe

    train, test = _inputs(args)
    rep = probe(
        train,
        test,
        site=args.site,
        position=args.position,
        methods=args.methods,
        folds=args.folds,
        c=args.c,
        standardize=not args.no_standardize,
        level=args.level,
        seed=args.seed,
    )
    out = rep.save(args.out) if args.out else None
    how = f"trained on {args.train}, tested on {args.test}" if test else f"{args.folds}-fold"
    table = Table(
        title=f"probe accuracy by layer · {rep.site}/{rep.position} · {how}",
        caption=f"chance {rep.chance:.2f}; [..]: {rep.level:.0%} Wilson interval over "
        f"{rep.n_test} test rows; lexical baseline = layer 0, mean-pooled",
    )
    table.add_column("layer", justify="right")
    for m in rep.results:
        table.add_column(m, justify="right")
    for i, layer in enumerate(rep.layers):
        cells = []
        for r in rep.results.values():
            mark = " ◀ best" if layer == r["best_layer"] else ""
            mark += " (cv pick)" if test and layer == r["selected_layer"] else ""
            cells.append(
                f"{r['accuracy'][i]:.2f} [{r['ci_low'][i]:.2f}, {r['ci_high'][i]:.2f}]{mark}"
            )
        table.add_row(str(layer), *cells)
    if not args.quiet:
        Console().print(table)
    for m, r in rep.results.items():
        lex = (rep.lexical or {}).get(m)
        print(
            f"{m}: best layer {r['best_layer']} accuracy {r['best_accuracy']:.3f} "
            f"(layer 0: {r['layer0_accuracy']:.3f}"
            + (f", lexical baseline {lex:.3f}" if lex is not None else "")
            + f", chance {rep.chance:.2f}, Bonferroni p {r['best_p_value_bonferroni']:.1e})"
        )
    if out is not None:
        print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.capture import extract
    from emocircuits.geometry.probes import PROBES
    from emocircuits.geometry.probes import probe as fn
    from emocircuits.models import DEFAULT_MODEL, load_model

    pr = sub.add_parser(
        "probe",
        help="probe accuracy per layer: k-fold, or trained on one folder and tested on another",
        description="Linear probes at every layer: multinomial logistic regression (L2, "
        "features standardised on the training rows) and the nearest-class-mean classifier. "
        "With --test, trains on --train and tests on --test (transfer to a differently "
        "written set: the honest estimate); without, k-fold within --train. The JSON has, "
        "per method, the accuracy at every layer with its Wilson interval and binomial "
        "p-value against chance, the best layer, the layer chosen by k-fold on the training "
        "folder, layer 0 and the lexical baseline (layer 0, mean-pooled). --train and --test "
        "are activation folders (from `extract`) or datasets (a preset or JSONL file), which "
        "are captured in memory through --model first. See docs/FORMAT.md.",
    )
    pr.add_argument(
        "--train", required=True, help="activation folder, preset or JSONL file to train on"
    )
    pr.add_argument(
        "--test", default=None, help="activation folder (same model), preset or JSONL to test on"
    )
    pr.add_argument(
        "--model",
        default=None,
        help=f"model that captures --train/--test datasets (default {DEFAULT_MODEL})",
    )
    pr.add_argument(
        "--dtype",
        default=lib_default(load_model, "dtype"),
        choices=("float32", "bfloat16", "float16"),
        help="compute dtype for datasets (default %(default)s)",
    )
    pr.add_argument("--device", default=lib_default(load_model, "device"))
    add_counts(pr, extract, {"--batch-size": "rows per forward pass for datasets"})
    pr.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    pr.add_argument(
        "--methods",
        type=_csv,
        default=lib_default(fn, "methods"),
        help=f"comma list of {','.join(PROBES)}",
    )
    add_reading_args(pr, fn, baseline=False)
    add_counts(pr, fn, {"--folds": None})
    pr.add_argument(
        "--c",
        "--C",
        dest="c",
        type=float,
        default=lib_default(fn, "c"),
        help="inverse L2 strength (default %(default)s)",
    )
    add_level_arg(pr, fn)
    pr.add_argument(
        "--no-standardize",
        action="store_true",
        help="fit on raw (centred) features instead of per-dimension z-scores; this weakens "
        "the layer-0 lexical baseline much more than the deeper layers",
    )
    pr.add_argument(
        "--seed", type=int, default=lib_default(fn, "seed"), help="fold assignment seed"
    )
    pr.add_argument("--quiet", action="store_true", help="no table, only the summary lines")
    pr.set_defaults(func=run)

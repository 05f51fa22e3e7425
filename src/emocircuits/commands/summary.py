"""`emocircuits summary`."""

from __future__ import annotations

import argparse

from emocircuits.commands._common import add_counts, add_reading_args, analyse_activations


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from emocircuits.geometry.summary import layer_summary

    s = analyse_activations(layer_summary, args, folds=args.folds)
    p = s.provenance
    table = Table(
        title=f"{p['model']} · {p['dataset']} · {p['site']} · {p['position']}",
        caption=(
            f"Emotion columns: ‖mean(emotion) − mean({s.baseline})‖ per layer. "
            f"NCM: {s.folds}-fold nearest-class-mean accuracy over {len(s.labels)} classes "
            f"(chance {s.chance:.2f}) on raw activations, and on activations standardised per "
            "dimension (fitted on training folds; raw distances are dominated by a few huge "
            "dimensions). Layer 0 is the embedding: the lexical baseline."
        ),
    )
    table.add_column("layer", justify="right")
    for lab in s.diff_norms:
        table.add_column(lab, justify="right")
    table.add_column("NCM raw", justify="right")
    table.add_column("NCM std", justify="right")
    best = int(s.ncm_accuracy_std.argmax())
    for i, layer in enumerate(s.layers):
        std = f"{s.ncm_accuracy_std[i]:.2f}" + (" ◀ best" if i == best else "")
        table.add_row(
            str(layer),
            *(f"{v[i]:.2f}" for v in s.diff_norms.values()),
            f"{s.ncm_accuracy[i]:.2f}",
            std,
        )
    Console().print(table)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.geometry.summary import layer_summary as fn

    sm = sub.add_parser("summary", help="per-layer mean differences and NCM accuracy")
    sm.add_argument("activations", help="folder written by `extract`")
    add_reading_args(sm, fn)
    add_counts(sm, fn, {"--folds": None})
    sm.set_defaults(func=run)

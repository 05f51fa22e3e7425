"""`emocircuits patch`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass
from emocircuits.commands._common import (
    _add_causal_args,
    _layers,
    _patch_inputs,
    _patch_meta,
    _positive,
    fill_budget,
)


def run(args: argparse.Namespace) -> int:
    import time

    from emocircuits.geometry.analysis import write_tables
    from emocircuits.interventions.patching import headline, patch
    from emocircuits.interventions.readout import readout
    from emocircuits.models import load_model

    start = time.time()
    fill_budget(args, "patch")
    ds, vecs, emotions = _patch_inputs(args)
    lm = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                    progress=not args.quiet)  # fmt: skip
    layers = None
    if args.layers:
        layers = sorted({lm.arch.normalize_layer(x, "resid") for x in args.layers})
    readouts = {e: readout(lm.tokenizer, e) for e in emotions}
    res = patch(
        lm, ds.texts, ds.labels, vecs, readouts, emotions=emotions, baseline=args.baseline,
        n_pairs=args.n_pairs, min_pairs=args.min_pairs, n_positions=args.n_positions,
        layers=layers, n_layers=args.n_layers, batch_size=args.batch_size, seed=args.seed,
        progress=not args.quiet,
    )  # fmt: skip
    rows = res.table(n_boot=args.n_boot, level=args.level, seed=args.seed)
    gaps = res.gaps(n_boot=args.n_boot, level=args.level, seed=args.seed)
    head = headline(rows, gaps)
    summary = {
        "format": "emocircuits.patch",
        "version": 1,
        **_patch_meta(lm, ds, vecs, readouts, args),
        "settings": {**res.settings, "layers": res.layers, "columns": res.columns,
                     "n_boot": args.n_boot, "ci_level": args.level, "budget": args.budget,
                     "dtype": args.dtype},
        "gaps": gaps,
        "headline": head,
        "seconds": round(time.time() - start, 1),
    }  # fmt: skip
    out = write_tables(
        args.out,
        {"pairs": res.pair_rows(ds.ids), "gaps": gaps, "patching": rows},
        {"summary.json": summary},
    )
    paths = []
    if not args.no_plots:
        from emocircuits.plots.patching import plot_patch_folder

        paths = plot_patch_folder(out)
    for e, h in head.items():
        print(f"{e}: LD gap {h['gap']:+.2f} [{h['gap_ci_low']:+.2f}, "
              f"{h['gap_ci_high']:+.2f}] over {h['pairs_used']} pairs "
              f"({h['pairs_found']} of equal length found)")  # fmt: skip
        d = h["directional_all_positions"]
        if d:
            print(f"  directional, all positions: best at layer {d['best_layer']}, recovered "
                  f"{d['recovered']:.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]; random "
                  f"direction there {d['random_at_best_layer']:+.2f}")  # fmt: skip
        print(f"  full patch: the body recovers >= 0.5 up to layer "
              f"{h['full_body_last_layer_ge_half']}, the readout position from layer "
              f"{h['full_readout_position_first_layer_ge_half']}")  # fmt: skip
    print(
        f"wrote {out}: pairs.csv, gaps.csv, patching.csv, summary.json"
        + (f", {len(paths) // 2} figures in {out / 'figures'}" if paths else "")
        + f" in {summary['seconds']} s ({res.settings['forward_passes']} forward passes)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    pa = sub.add_parser(
        "patch",
        help="activation patching: emotion-prompt activations into matched neutral runs",
        description="Pairs each emotion prompt with a neutral prompt of the same token length "
        "(after the cue ' I feel'), runs both, and patches the emotion run's residual into "
        "the neutral run at every layer and position counted from the end (-1 = the cue's "
        "last token, where the readout is; 'body' = all earlier positions together): the "
        "whole vector (full) and only its component along the emotion direction "
        "(directional); per layer also directional and random-direction patches of every "
        "position at once. Metric: LD = mean logit of the emotion's feeling words minus "
        "reference words after the cue; recovered fraction = sum(LD_patched - LD_neutral) / "
        "sum(LD_emotion - LD_neutral) over pairs, with a bootstrap interval over pairs. "
        "Writes pairs.csv, gaps.csv, patching.csv, summary.json and heatmaps "
        "(docs/FORMAT.md). Each patched run starts from the clean run at its layer; "
        "--budget fast (8 layers, 3 positions, 12 pairs per emotion) is the whole-study "
        "setting (docs/BENCHMARKS.md has the costs).",
    )
    _add_causal_args(pa, batch_size=32)
    pa.add_argument("--emotion", nargs="+", default=None, help="emotions (default: all)")
    pa.add_argument("--n-pairs", type=_positive, default=None, help="pairs per emotion (24)")
    pa.add_argument(
        "--min-pairs", type=_positive, default=5, help="fewer equal-length pairs is an error"
    )
    pa.add_argument(
        "--n-positions", type=_positive, default=None, help="last positions patched one by one (6)"
    )
    pa.add_argument(
        "--layers", type=_layers, default=None, help="resid layers, e.g. '0-30' (default all)"
    )
    pa.add_argument(
        "--n-layers",
        type=_positive,
        default=None,
        help="patch this many evenly spaced --layers, first and last included (default all)",
    )
    pa.add_argument("--seed", type=int, default=0, help="pairing and random directions")
    pa.set_defaults(func=run)

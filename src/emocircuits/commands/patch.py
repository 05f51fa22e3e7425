"""`emocircuits patch`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from emocircuits.commands._common import (
    _add_model_arg,
    _layers,
    add_counts,
    add_level_arg,
    add_model_placement_args,
    lib_default,
    model_placement,
)
from emocircuits.interventions.causal import DEFAULT_DATA
from emocircuits.interventions.patch_stage import patch


def _add_causal_args(p: argparse.ArgumentParser, fn: Callable) -> None:
    """The arguments `patch` and `ablate` share, defaults from the library function ``fn``."""
    _add_model_arg(p)
    p.add_argument("--vectors", required=True, help="vectors file written by `vectors`")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"preset or JSONL (default {DEFAULT_DATA})")
    p.add_argument(
        "--baseline", default=lib_default(fn, "baseline"), help="label of the neutral prompts"
    )
    p.add_argument(
        "--budget",
        choices=("default", "fast"),
        default=lib_default(fn, "budget"),
        help="named settings for the options not given (fast: for a whole-study run)",
    )
    add_counts(p, fn, {"--n-boot": "bootstrap resamples"})
    add_level_arg(p, fn)
    add_counts(p, fn, {"--batch-size": None})
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_placement_args(p)


def run(args: argparse.Namespace) -> int:
    res = patch(
        args.model, args.data, args.vectors, emotion=args.emotion, baseline=args.baseline,
        budget=args.budget, n_pairs=args.n_pairs, min_pairs=args.min_pairs,
        n_positions=args.n_positions, layers=args.layers, n_layers=args.n_layers,
        n_boot=args.n_boot, level=args.level, batch_size=args.batch_size, seed=args.seed,
        trust_remote_code=args.trust_remote_code, progress=not args.quiet,
        **model_placement(args),
    )  # fmt: skip
    out = res.save(args.out, plots=not args.no_plots)
    paths, summary, head = res.figure_paths, res.summary, res.summary["headline"]
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
        + f" in {summary['seconds']} s ({summary['settings']['forward_passes']} forward passes)"
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
    _add_causal_args(pa, patch)
    pa.add_argument(
        "--emotion",
        nargs="+",
        default=lib_default(patch, "emotion"),
        help="emotions (default: all)",
    )
    add_counts(
        pa,
        patch,
        {
            "--n-pairs": "pairs per emotion (24)",
            "--min-pairs": "fewer equal-length pairs is an error",
            "--n-positions": "last positions patched one by one (6)",
        },
    )
    pa.add_argument(
        "--layers",
        type=_layers,
        default=lib_default(patch, "layers"),
        help="resid layers, e.g. '0-30' (default all)",
    )
    add_counts(
        pa,
        patch,
        {
            "--n-layers": "patch this many evenly spaced --layers, first and last included "
            "(default all)"
        },
    )
    pa.add_argument(
        "--seed", type=int, default=lib_default(patch, "seed"), help="pairing and random directions"
    )
    pa.set_defaults(func=run)

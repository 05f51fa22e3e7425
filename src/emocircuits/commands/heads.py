"""`emocircuits heads`."""

from __future__ import annotations

import argparse
from pathlib import Path

from emocircuits.commands._common import (
    _add_model_arg,
    _positive,
    add_counts,
    add_model_placement_args,
    lib_default,
    model_placement,
)
from emocircuits.errors import EmocircuitsError
from emocircuits.interventions.heads import heads


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EmocircuitsError(f"{out} exists and is not a folder")
    res = heads(
        args.model, args.data, args.vectors, emotion=args.emotion, baseline=args.baseline,
        layer=args.layer, budget=args.budget, top_k=args.top_k, n_random=args.n_random,
        n_ablate=args.n_ablate, n_per_class=args.n_per_class, n_boot=args.n_boot,
        top_neurons=args.top_neurons, top_prompts=args.top_prompts,
        batch_size=args.batch_size, seed=args.seed, ablation=not args.no_ablation,
        trust_remote_code=args.trust_remote_code, progress=not args.quiet,
        **model_placement(args),
    )  # fmt: skip
    folder = res.save(out, plots=not args.no_plots)
    paths = res.figure_paths
    baseline = res.summary["settings"]["baseline"]
    st = res.summary["settings"]
    print(f"readout layer {st['layer']} ({st['layer_choice']}); contrasts: emotion minus "
          f"{baseline} prompts, [95% bootstrap interval over prompts]")  # fmt: skip
    for e, h in res.summary["headline"].items():
        tops = ", ".join(f"{t['name']} {t['contrast']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}]"
                         for t in h["top_heads"][:3])  # fmt: skip
        print(f"{e}: top heads at {st['position']}: {tops}")
        for a in h["ablation"]:
            if a["ranked_at"] == st["position"]:
                print(f"  ablate top {a['k']} ({a['metric']}): drop {a['top_drop']:+.3f} vs "
                      f"random {a['random_mean']:+.3f} (95% up to {a['random_hi']:+.3f}), "
                      f"p {a['p']:.3g}")  # fmt: skip
        if h["top_neurons"]:
            n = h["top_neurons"][0]
            ci = f"[{n['lo']:+.3f}, {n['hi']:+.3f}]"
            print(f"  top neuron L{n['layer']}N{n['neuron']} {n['contrast']:+.3f} {ci}, "
                  f"most active on {n['top_labels']}")  # fmt: skip
    print(
        f"wrote {folder}: {', '.join(f'{t}.csv' for t in res.tables)}, summary.json"
        + (f", {len(paths) // 2} figures in {folder / 'figures'}" if paths else "")
        + f" in {res.summary['seconds']['total']} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    hd = sub.add_parser(
        "heads",
        help="attention heads and MLP neurons that write an emotion direction; head ablation",
        description="Direct contribution of every attention head (and MLP neuron) of the "
        "blocks before the readout layer to each emotion's direction there: its write into "
        "the residual stream projected on the unit direction, read at the vectors' position "
        "rule (over the prompt) and at the last token of the cue ' I feel'; per emotion the "
        "contrast emotion prompts minus neutral prompts with a bootstrap interval (Gemma 2/3 "
        "post-norms linearised with each position's own normaliser). Then the top-k heads "
        "are mean-ablated (z replaced by its mean over neutral prompts) against random sets "
        "of k heads: drops in the logit difference at the cue and in the projection. Writes "
        "CSV tables, summary.json and figures (docs/FORMAT.md). Vectors: `emocircuits "
        "vectors --method one_vs_rest` on an `extended` folder.",
    )
    _add_model_arg(hd)
    hd.add_argument("--vectors", required=True, help="vectors file written by `vectors`")
    hd.add_argument(
        "--data", default=None, help="preset or JSONL (default: the data the vectors came from)"
    )
    hd.add_argument(
        "--emotion",
        nargs="+",
        default=lib_default(heads, "emotion"),
        help="emotions (default: all)",
    )
    hd.add_argument(
        "--baseline",
        default=lib_default(heads, "baseline"),
        help="baseline label (default: the vectors')",
    )
    hd.add_argument(
        "--layer",
        type=int,
        default=lib_default(heads, "layer"),
        help="readout resid layer (default: the vectors' layer with the best separation)",
    )
    hd.add_argument(
        "--budget",
        choices=("default", "fast"),
        default=lib_default(heads, "budget"),
        help="named settings for the options not given (fast: 32 prompts per class, k = 2 "
        "and 8 against 39 random sets on 4 prompts per class, for a whole-study run)",
    )
    hd.add_argument(
        "--top-k", type=_positive, nargs="+", default=lib_default(heads, "top_k"), help="(1 2 4 8)"
    )
    add_counts(
        hd,
        heads,
        {
            "--n-random": "random head sets per k (50)",
            "--n-ablate": "prompts per class in the ablation (12; cost: about n_random x "
            "len(top-k) x emotions x n-ablate prompt runs, each from its first ablated block "
            "on)",
            "--n-per-class": "prompts per class (default all)",
            "--n-boot": "bootstrap resamples",
            "--top-neurons": "per emotion",
            "--top-prompts": "per top neuron",
            "--batch-size": None,
        },
    )
    hd.add_argument("--seed", type=int, default=lib_default(heads, "seed"))
    hd.add_argument("--no-ablation", action="store_true", help="direct contributions only")
    hd.add_argument("--no-plots", action="store_true", help="tables only")
    hd.add_argument("--out", required=True, help="output folder")
    hd.add_argument("--trust-remote-code", action="store_true")
    hd.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_placement_args(hd)
    hd.set_defaults(func=run)

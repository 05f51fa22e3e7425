"""`emocircuits ablate`."""

from __future__ import annotations

import argparse

from emocircuits.commands._common import _csv, add_counts, lib_default, model_placement
from emocircuits.commands.patch import _add_causal_args
from emocircuits.interventions.ablate_stage import ablate


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _p(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def run(args: argparse.Namespace) -> int:
    result = ablate(
        args.model, args.data, args.vectors, baseline=args.baseline, budget=args.budget,
        targets=args.targets, from_layer=args.from_layer, mode=args.mode,
        n_random=args.n_random, probe_layer=args.probe_layer, methods=args.methods,
        position=args.position, n_train=args.n_train, n_eval=args.n_eval,
        n_boot=args.n_boot, level=args.level, batch_size=args.batch_size, seed=args.seed,
        trust_remote_code=args.trust_remote_code, progress=not args.quiet,
        **model_placement(args),
    )  # fmt: skip
    out = result.save(args.out, plots=not args.no_plots)
    paths, summary, head = result.figure_paths, result.summary, result.summary["headline"]
    st = summary["settings"]
    print(f"{st['mode']} direction(s) projected out at layers {st['ablated_layers'][0]}-"
          f"{st['ablated_layers'][1]}; null: {st['n_random']} random subspaces of the same "
          f"dimension; p = (1 + #null >= observed) / (1 + draws)")  # fmt: skip
    for t, h in head.items():
        print(f"{t} ({h['dim']} direction{'s' if h['dim'] > 1 else ''}):")
        for e, g in h["ld_gap"].items():
            print(f"  LD gap {e}: {g['gap_clean']:+.2f} -> {g['gap_ablated']:+.2f}, removed "
                  f"{_pct(g['removed'])} [{_pct(g['ci_low'])}, {_pct(g['ci_high'])}] "
                  f"vs random {_pct(g['null_mean'])}, p {_p(g['p'])}")  # fmt: skip
        for m, pr in h["probe"].items():
            f, r = pr["fixed"], pr["refit"]
            print(f"  {m} probe at layer {st['probe_layer']}: {f['accuracy_clean']:.2f} -> "
                  f"{f['accuracy_ablated']:.2f}, above-chance removed {_pct(f['removed'])} vs "
                  f"random {_pct(f['null_mean'])}, p {_p(f['p'])}; refitted "
                  f"{r['accuracy_clean']:.2f} -> {r['accuracy_ablated']:.2f}")  # fmt: skip
    print(
        f"wrote {out}: ablation_ld.csv, ablation_probe.csv, summary.json"
        + (f", {len(paths) // 2} figures in {out / 'figures'}" if paths else "")
        + f" in {summary['seconds']} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ab = sub.add_parser(
        "ablate",
        help="direction ablation: project emotion directions out, measure what is lost",
        description="Projects emotion directions out of the residual stream at every layer "
        "from --from-layer on (--mode fixed: the direction of that layer, as Tigges et al. "
        "2023; per_layer: each layer's own), for each --targets entry (an emotion, or 'all': "
        "the span of every emotion's direction), and as the null the same for --n-random "
        "random subspaces of the same dimension. On held-out prompts (--n-eval per label) "
        "it measures the fraction of each emotion's LD gap (emotion vs neutral prompts) "
        "removed, and the fraction of a 4-way probe's above-chance accuracy removed: probes "
        "fitted on clean activations of --n-train other prompts per label, read at every "
        "layer, and probes refitted on the ablated activations (k-fold) at --probe-layer. "
        "p = (1 + #random draws removing as much) / (1 + draws). Writes ablation_ld.csv, "
        "ablation_probe.csv, summary.json and figures (docs/FORMAT.md). --budget fast "
        "(targets all, 39 random subspaces, 10 held-out prompts per label) is the "
        "whole-study setting.",
    )
    _add_causal_args(ab, ablate)
    ab.add_argument(
        "--targets",
        type=_csv,
        default=lib_default(ablate, "targets"),
        help="emotions and/or all (default: each and all)",
    )
    ab.add_argument(
        "--from-layer",
        type=int,
        default=lib_default(ablate, "from_layer"),
        help="first ablated layer (default n_layers // 2)",
    )
    ab.add_argument("--mode", choices=("fixed", "per_layer"), default=lib_default(ablate, "mode"))
    add_counts(ab, ablate, {"--n-random": "random draws per dimension (20)"})
    ab.add_argument(
        "--probe-layer",
        type=int,
        default=lib_default(ablate, "probe_layer"),
        help="headline probe layer (default the last)",
    )
    ab.add_argument(
        "--methods", type=_csv, default=lib_default(ablate, "methods"), help="probe methods"
    )
    ab.add_argument(
        "--position",
        default=lib_default(ablate, "position"),
        help="probe position rule (default mean)",
    )
    add_counts(
        ab,
        ablate,
        {
            "--n-train": "probe prompts per label (80)",
            "--n-eval": "held-out prompts per label (40)",
        },
    )
    ab.add_argument(
        "--seed", type=int, default=lib_default(ablate, "seed"), help="split and random directions"
    )
    ab.set_defaults(func=run)

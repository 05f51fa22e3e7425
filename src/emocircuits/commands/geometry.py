"""`emocircuits geometry`."""

from __future__ import annotations

import argparse

from emocircuits.commands._common import (
    _add_activations_arg,
    _csv,
    add_counts,
    add_reading_args,
    lib_default,
)


# ----------------------------------------------------------------------------- geometry
def run(args: argparse.Namespace) -> int:
    from emocircuits.capture import load_activations
    from emocircuits.geometry.stage import analyze_geometry

    res = analyze_geometry(
        load_activations(args.activations),
        compare=load_activations(args.compare) if args.compare else None,
        sites=list(args.sites) if args.sites else None,
        position=args.position,
        baseline=args.baseline,
        n_boot=args.n_boot,
        n_splits=args.n_splits,
        n_perm=args.n_perm,
        folds=args.folds,
        subspace=args.subspace,
        k=args.k,
        var=args.var,
        seed=args.seed,
    )
    out = res.save(args.out, figures=False)
    paths = [] if args.no_plots else res.save_figures(out)
    h, pos = res.summary["headline"], res.summary["main_position"]
    if "split_half_mean_diff_middle_layers" in h:
        sh = h["split_half_mean_diff_middle_layers"]
        print(
            f"stability: split-half cosine of mean_diff directions (resid/{pos}), layers "
            f"{sh['layers'][0]}-{sh['layers'][1]}: min {sh['min']:.2f}, mean {sh['mean']:.2f}"
        )
        if sh["min"] < 0.9:
            n = min(res.summary["n_per_label"].values())
            print(
                f"  (below 0.9: with {n} prompts in the smallest class the directions are "
                "still noisy; split-half cosine grows with the number of prompts)"
            )
    if "raw_mean_cos_median" in h:
        print(
            f"shared component: raw class means have median cosine "
            f"{h['raw_mean_cos_median']:.2f} (the pilot's 'all 0.99'); after removing the "
            f"global mean {h['centred_mean_cos_median']:.2f}"
        )
    for m in ("logreg", "ncm"):
        if f"cv_{m}" in h:
            c = h[f"cv_{m}"]
            print(
                f"{res.probes['folds']}-fold {m} probe (resid/{pos}): best {c['best']:.2f} at "
                f"layer {c['best_layer']}, layer 0 {c['layer0']:.2f}, chance "
                f"{res.probes['chance']:.2f} (transfer to other text: `emocircuits probe`)"
            )
    print(
        f"wrote {out}: {', '.join(sorted(res.tables))} (.csv), probes_cv.json, summary.json"
        + (f", {len(paths) // 2} figures in {out / 'figures'}" if paths else "")
        + f" in {res.summary['seconds']['total']} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.geometry.stage import analyze_geometry as fn
    from emocircuits.geometry.subspaces import KINDS

    ge = sub.add_parser(
        "geometry",
        help="the whole within-model analysis of an activation folder (tables + figures)",
        description="Every within-model analysis, for every site and position rule captured: "
        "cosines, norms and distances with bootstrap intervals (mean_diff, one_vs_rest, and "
        "the pilot's raw_mean), split-half and bootstrap stability, the shared-component "
        "diagnosis, agreement between methods, position rules and presets, emotion "
        "subspaces across layers with the k/d and label-permutation nulls, and k-fold "
        "probes. Writes CSV tables, probes_cv.json, summary.json and figures "
        "(docs/FORMAT.md). No model is run.",
    )
    _add_activations_arg(ge)
    ge.add_argument("--out", "--output_dir", required=True, help="output folder")
    ge.add_argument(
        "--compare",
        default=lib_default(fn, "compare"),
        help="a folder of the same model on another dataset",
    )
    ge.add_argument(
        "--sites", type=_csv, default=lib_default(fn, "sites"), help="sites (default: all captured)"
    )
    add_reading_args(
        ge, fn, site=False, position_help="main position rule (default mean, if captured)"
    )
    add_counts(
        ge,
        fn,
        {
            "--n-boot": "bootstrap resamples",
            "--n-splits": "random half splits",
            "--n-perm": "label permutations",
            "--folds": None,
        },
    )
    ge.add_argument(
        "--subspace",
        choices=KINDS,
        default=lib_default(fn, "subspace"),
        help="between: span of the class-mean contrasts (k <= classes-1); within: the PCA "
        "subspace of each emotion's prompts around the baseline mean (the pilot's; slower)",
    )
    add_counts(ge, fn, {"--k": "subspace dimension (default: by --var)"})
    ge.add_argument(
        "--var",
        type=float,
        default=lib_default(fn, "var"),
        help="with no --k: smallest k explaining this share of the squared norm "
        "(default %(default)s)",
    )
    ge.add_argument("--seed", type=int, default=lib_default(fn, "seed"))
    ge.add_argument("--no-plots", action="store_true", help="tables only")
    ge.set_defaults(func=run)

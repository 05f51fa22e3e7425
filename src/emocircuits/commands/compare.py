"""`emocircuits compare`: parse, call :func:`emocircuits.compare.compare_models` (or, for
the pilot's ``--vectors_dir``, :func:`emocircuits.compare.compare_pilot_vectors`), save,
print."""

from __future__ import annotations

import argparse
from pathlib import Path

from emocircuits.commands._common import _csv, add_counts, add_reading_args, lib_default
from emocircuits.compare.comparison import GENERAL, MATCHES, compare_models
from emocircuits.errors import EmocircuitsError


def _fmt_p(p: float | None) -> str:
    if p is None:
        return ""
    return ", p < 1e-300" if p == 0 else f", p {p:.2g}"


def _print_measures(summary: dict) -> None:
    for pair in summary["pairs"]:
        ms = pair["measures"]
        print(f"{pair['model_a']} vs {pair['model_b']} (beyond chance: p < 0.05):")
        for title, keys in (
            ("general similarity (all stimuli, not emotion-specific)", GENERAL),
            ("emotion geometry", [k for k in ms if k not in GENERAL]),
        ):
            print(f"  {title}:")
            for name in keys:
                if name not in ms:
                    continue
                h = ms[name]
                band = h.get("null_95")
                null = f"null {h['null_mean']:.3f}" + (
                    f" [{band[0]:.3f}, {band[1]:.3f}]" if band and None not in band else ""
                )
                extra = ""
                if "label_permuted" in h:
                    lp = h["label_permuted"]
                    extra = f"; label-permuted {lp['null_mean']:.3f}{_fmt_p(lp['p'])}"
                if h.get("min_p") is not None and h["min_p"] >= 0.05:
                    extra += f" (smallest possible p: {h['min_p']:.3g})"
                verdict = "yes" if h["beyond_chance"] else "no"
                print(f"    {name:26s} {h['value']:.3f}  {null}{_fmt_p(h.get('p'))}{extra}"
                      f"  -> {verdict}")  # fmt: skip
        emo = [k for k in ms if k not in GENERAL]
        yes = [k for k in emo if ms[k]["beyond_chance"]]
        print(f"  shared emotion geometry beyond chance by {len(yes)} of {len(emo)} measures")


def _cmd_compare_pilot(args: argparse.Namespace) -> int:
    from emocircuits.compare.naive import compare_pilot_vectors
    from emocircuits.geometry.vectors import EmotionVectors

    if not args.models or len(args.models) < 2:
        raise EmocircuitsError("--vectors_dir needs --models with at least two model names")
    vecs = {
        # the pilot's {model}_vectors.pkl names: `vectors` writes them as .safetensors
        m: EmotionVectors.load(Path(args.vectors_dir) / f"{m}_vectors.safetensors")
        for m in args.models
    }
    res = compare_pilot_vectors(vecs)
    table = res.save(args.out or ".", table=args.output_table, plots=False)
    print(f"{'emotion':12s} {'pair':40s} {'mean':>8s} {'std':>7s} {'min':>8s} {'max':>8s}  "
          "random-vector 95% range of the mean")  # fmt: skip
    for r in res.table:
        pair = f"{r['model_a']} <-> {r['model_b']}"
        print(
            f"{r['emotion']:12s} {pair:40s} {r['mean']:8.4f} {r['std']:7.4f} {r['min']:8.4f} "
            f"{r['max']:8.4f}  [{r['random_mean_lo']:.4f}, {r['random_mean_hi']:.4f}]"
        )
    print(
        "these cosines compare coordinate i of one model with coordinate i of another, which "
        "mean nothing to each other: they sit inside the random-vector range by construction. "
        "For a real comparison: emocircuits compare --activations A B --out DIR"
    )
    paths = res.plot(args.out) if args.out and not args.no_plots else []
    print(f"wrote {table}" + (f" and {len(paths) // 2} figures in {args.out}" if paths else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.vectors_dir:
        return _cmd_compare_pilot(args)
    if not args.activations or len(args.activations) < 2:
        raise EmocircuitsError("compare needs --activations with at least two folders")
    if not args.out:
        raise EmocircuitsError("compare needs --out (the folder to write)")
    if args.names and len(args.names) != len(args.activations):
        raise EmocircuitsError(
            f"--names has {len(args.names)} names for {len(args.activations)} folders"
        )
    res = compare_models(
        args.activations,
        list(args.names) if args.names else None,
        site=args.site,
        position=args.position,
        method=args.method,
        baseline=args.baseline,
        k=args.k,
        dim=args.dim,
        n_perm=args.n_perm,
        n_perm_heavy=args.n_perm_heavy,
        match=args.match,
        maps=args.maps,
        seed=args.seed,
        progress=not args.quiet,
    )
    out = res.save(args.out, plots=False)
    paths = [] if args.no_plots else res.plot(out / "figures")
    _print_measures(res.summary)
    if "naive" in res.tables:
        print(
            "naive.csv: the pilot's coordinate-wise cosines (equal widths only), beside random "
            "vectors: coordinate-dependent, not a comparison"
        )
    print(
        f"wrote {out}: {', '.join(sorted(res.tables))} (.csv), summary.json"
        + (f", {len(paths) // 2} figures in {out / 'figures'}" if paths else "")
        + f" in {res.summary['seconds']['total']} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.geometry.directions import CONTRASTS

    co = sub.add_parser(
        "compare",
        help="compare emotion geometry across models (basis-free, every number with its null)",
        description="Compares two or more activation folders of the same stimuli (rows matched "
        "by id), captured from different models (any widths and depths). Over every layer "
        "pair: linear CKA (unbiased HSIC), RSA of the emotion centroids (Mantel relabeling "
        "null) and mutual k-nearest neighbours, each with a permutation null. At each layer "
        "of the first model and its best-matching layer of the second: Procrustes (on top "
        "principal components) and ridge maps fitted on half of the rows; on the other half, "
        "held-out R^2, cos(W v_A, v_B) per emotion against maps fitted on shuffled pairs and "
        "against label-permuted directions, identification of each emotion (chance 1/E), "
        "decoding of held-out prompts by the other model's class centroids (binomial) and "
        "the overlap of the mapped emotion subspace (k/d and permutation nulls). Nothing "
        "depends on a model's basis or scale. Writes CSV tables, summary.json and figures "
        "(docs/FORMAT.md). The pilot's naive table: --vectors_dir DIR --models A B "
        "--output_table CSV [--output_dir DIR].",
    )
    co.add_argument("--activations", nargs="+", default=None, help="two or more folders")
    co.add_argument("--names", nargs="+", default=None, help="a short name per folder")
    co.add_argument("--out", "--output_dir", default=None, help="output folder")

    def default(name: str):
        return lib_default(compare_models, name)

    add_reading_args(
        co, compare_models, position_help="position rule (default mean if captured by all)"
    )
    co.add_argument(
        "--method",
        default=default("method"),
        choices=CONTRASTS,
        help="emotion directions compared through the maps (default %(default)s)",
    )
    co.add_argument(
        "--match",
        default=default("match"),
        choices=MATCHES,
        help="layer of the second model paired with each layer of the first: highest CKA "
        "(cka) or the same relative depth (depth); default %(default)s",
    )
    co.add_argument(
        "--maps",
        type=_csv,
        default=tuple(default("maps")),
        help=f"procrustes,ridge (default {','.join(default('maps'))})",
    )
    add_counts(
        co,
        compare_models,
        {
            "--dim": "Procrustes: principal components of each model (default min(64, fit "
            "rows / 4))",
            "--k": "mutual kNN neighbours (default %(default)s)",
            "--n-perm": "label permutations, Mantel relabelings, ridge shuffles (default "
            "%(default)s)",
            "--n-perm-heavy": "permutations of the costly nulls: CKA and mutual kNN over every "
            "layer pair, Procrustes refits (default %(default)s)",
        },
    )
    co.add_argument(
        "--seed",
        type=int,
        default=default("seed"),
        help="split and permutations (default %(default)s)",
    )
    co.add_argument("--no-plots", action="store_true", help="tables only")
    co.add_argument("--quiet", action="store_true", help="no progress bar")
    co.add_argument("--vectors_dir", default=None, help="pilot: folder of {model}_vectors files")
    co.add_argument("--models", nargs="+", default=None, help="pilot: model names in it")
    co.add_argument(
        "--output_table",
        default=None,
        help="pilot: naive table CSV to write (default OUT/cross_model_similarity.csv)",
    )
    co.set_defaults(func=run)

"""`emocircuits data`."""

from __future__ import annotations

import argparse
from pathlib import Path

from emocircuits.commands._common import _Parser, _positive, add_counts, lib_default
from emocircuits.errors import EmocircuitsError


# ---------------------------------------------------------------------------------- data
def run(args: argparse.Namespace) -> int:
    from emocircuits.data import load_dataset, presets

    if args.data_cmd == "list":
        from emocircuits.data import preset_index

        index = preset_index()
        for name in sorted(presets()):
            ds = load_dataset(name)
            counts = ", ".join(f"{k} {v}" for k, v in ds.counts().items())
            langs = sorted({e.lang or "?" for e in ds.examples})
            role = (index.get(name) or {}).get("role", "?")
            print(
                f"{name:17s} v{ds.version or '?':3s} {role:9s}{len(ds):5d} rows  "
                f"lang={','.join(langs)}  ({counts})"
            )
        return 0
    if args.data_cmd == "audit":
        return _audit(args)
    if args.data_cmd == "show":
        ds = load_dataset(args.preset)
        ver = f" version {ds.version}," if ds.version else ""
        print(f"{ds.source}:{ver} {len(ds)} rows, sha256 {ds.sha256[:16]}…, labels {ds.counts()}")
        shown = ds.examples if args.n is None else ds.examples[: args.n]
        for e in shown:
            word = f"  [{e.emotion_word}]" if e.emotion_word else ""
            print(f"{e.id:14s} {e.emotion:10s} {e.text}{word}")
        return 0
    if args.data_cmd == "export":
        from emocircuits.capture.store import atomic_write_bytes

        ds = load_dataset(args.preset)
        out = Path(args.out)
        if out.exists() and not args.force:
            raise EmocircuitsError(f"{out} exists; pass --force to replace it")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, ds.to_jsonl().encode())
        print(f"wrote {len(ds)} rows to {out}")
        return 0
    # validate
    ds = load_dataset(args.file, min_per_class=args.min_per_class, baseline=args.baseline)
    print(f"{args.file}: OK, {len(ds)} rows, labels {ds.counts()}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from emocircuits.geometry.audit import audit_dataset

    lm = None
    if args.model is not None:
        from emocircuits.models import load_model

        lm = load_model(args.model, dtype=args.dtype, device=args.device, progress=not args.quiet)
    res = audit_dataset(
        args.file,
        lm,
        against=args.against,
        folds=args.folds,
        seed=args.seed,
        duplicate_threshold=args.duplicate_threshold,
        top_words=args.top_words,
    )
    con = Console()
    ver = f" (version {res.version})" if res.version else ""
    con.print(
        f"{res.source}{ver}: {res.n_rows} rows, sha256 {res.sha256[:12]}…, chance {res.chance:.2f}",
        highlight=False,
        markup=False,
    )
    t = Table(title="per class: rows, mean length, share of rows with each feature")
    t.add_column("")
    for c in res.classes:
        t.add_column(c, justify="right")
    t.add_row("rows", *(str(res.counts[c]) for c in res.classes))
    for f in res.features:
        t.add_row(f["description"], *(f"{f[c]:.2f}" for c in res.classes))
    if not args.quiet:
        con.print(t)
    t = Table(title=f"each trivial feature alone ({res.settings['folds']}-fold lookup classifier)")
    for c in ("feature", "accuracy [95%]", "vs chance", "gives away (AUC)", "warn"):
        t.add_column(c)
    for r in res.trivial:
        t.add_row(
            r["description"],
            f"{r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
            f"{r['above_chance']:+.2f}",
            f"{r['gives_away']} ({r['auc']:.2f})",
            "yes" if r["warning"] else "",
        )
    if not args.quiet:
        con.print(t)
    for c in res.classes:
        top = [f"{w['token']} ({w['z']:.1f})" for w in res.words if w["class"] == c][:8]
        print(f"give-away tokens of {c} (log-odds z): {', '.join(top)}")
    b = res.bow
    print(
        f"bag-of-words probe: {b['accuracy']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}] "
        f"({b['folds']}-fold, {b['vocabulary']} tokens; chance {res.chance:.2f})"
    )
    if res.layer0:
        z = res.layer0
        print(
            f"layer-0 probe ({z['model']}): {z['accuracy']:.3f} [{z['ci_low']:.3f}, "
            f"{z['ci_high']:.3f}]"
        )
    print(
        f"near-duplicate pairs: {len(res.duplicates)} within"
        + (
            f", {len(res.duplicates_against)} against {res.against['source']}"
            if res.against
            else ""
        )
    )
    for w in res.warnings:
        print(f"warning: {w}")
    if not res.warnings:
        print("no warnings")
    if args.out:
        print(f"wrote {res.save(args.out)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.data import load_dataset
    from emocircuits.geometry.audit import TRIVIAL_MARGIN, audit_dataset
    from emocircuits.models import load_model

    d = sub.add_parser("data", help="list, show, export and validate datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)
    dsub.add_parser("list", help="the presets shipped with emocircuits")
    s = dsub.add_parser("show", help="print a preset or file")
    s.add_argument("preset", help="preset name or JSONL file")
    s.add_argument("-n", type=_positive, help="show only the first N rows")
    e = dsub.add_parser("export", help="write a preset to a JSONL file (to edit or extend)")
    e.add_argument("preset")
    e.add_argument("--out", required=True, help="JSONL file to write")
    e.add_argument("--force", action="store_true", help="replace an existing file")
    v = dsub.add_parser(
        "validate",
        help="check a JSONL file (the checks every load runs)",
        description="Checks: valid JSON objects; text and emotion present and non-empty; "
        "emotion_word occurs in text; ids unique; every label has --min-per-class rows; "
        "the --baseline label exists. Problems are reported as file:line.",
    )
    v.add_argument("file")
    add_counts(v, load_dataset, {"--min-per-class": None})
    v.add_argument(
        "--baseline",
        default=lib_default(load_dataset, "baseline"),
        help="require this label (e.g. neutral)",
    )
    a = dsub.add_parser(
        "audit",
        help="what besides the emotion tells a dataset's classes apart",
        description="Per class: balance, length, ? ! ..., lowercase start, all-caps words, "
        "emoji and first-person rates; near-duplicate rows (within the set and against "
        "--against); the tokens that give each class away (log-odds ratio with an "
        "informative Dirichlet prior, Monroe et al. 2008, z-scores); a bag-of-words probe "
        "and, with --model, the layer-0 lexical probe (k-fold, Wilson intervals). Warns when "
        f"one trivial feature alone classifies at least {TRIVIAL_MARGIN:.2f} above chance.",
    )
    a.add_argument("file", help="preset name or JSONL file")
    a.add_argument("--model", default=None, help="also the layer-0 probe of this model")
    a.add_argument(
        "--dtype",
        default=lib_default(load_model, "dtype"),
        choices=("float32", "bfloat16", "float16"),
        help="model dtype (default %(default)s)",
    )
    a.add_argument("--device", default=lib_default(load_model, "device"))
    a.add_argument(
        "--against",
        default=None,
        help="a second set (preset or JSONL): its rows that nearly duplicate this set's",
    )
    a.add_argument("--out", default=None, help="folder for audit.json, CSV tables, figures")
    add_counts(a, audit_dataset, {"--folds": None, "--top-words": None})
    a.add_argument("--seed", type=int, default=lib_default(audit_dataset, "seed"))
    a.add_argument(
        "--duplicate-threshold",
        type=float,
        default=lib_default(audit_dataset, "duplicate_threshold"),
        help="word-set Jaccard overlap from which two rows are near-duplicates "
        "(default %(default)s)",
    )
    a.add_argument("--quiet", action="store_true", help="no tables, only the summary lines")
    d.set_defaults(func=run)

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
        for name in sorted(presets()):
            ds = load_dataset(name)
            counts = ", ".join(f"{k} {v}" for k, v in ds.counts().items())
            langs = sorted({e.lang or "?" for e in ds.examples})
            print(f"{name:10s} {len(ds):5d} rows  lang={','.join(langs)}  ({counts})")
        return 0
    if args.data_cmd == "show":
        ds = load_dataset(args.preset)
        print(f"{ds.source}: {len(ds)} rows, sha256 {ds.sha256[:16]}…, labels {ds.counts()}")
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


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.data import load_dataset

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
    d.set_defaults(func=run)

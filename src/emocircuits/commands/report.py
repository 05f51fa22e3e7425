"""`emocircuits report`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from emocircuits.report import build_report

    path = build_report(args.dir)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("report", help="rebuild DIR/report.html from a finished study")
    rp.add_argument("dir", help="the study's output folder")
    rp.set_defaults(func=run)

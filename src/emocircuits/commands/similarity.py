"""`emocircuits similarity`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass
from emocircuits.commands._common import (
    _add_activations_arg,
    _add_reading_args,
    _positive,
    _site_array,
)


# ---------------------------------------------------------------------------- similarity
def run(args: argparse.Namespace) -> int:
    import csv
    import io

    from emocircuits.capture.store import atomic_write_bytes
    from emocircuits.geometry.similarity import geometry

    acts, position, x = _site_array(args)
    g = geometry(
        x,
        acts.labels,
        layers=acts.layers(args.site),
        method=args.method,
        baseline=args.baseline,
        n_boot=args.n_boot,
        level=args.level,
    )
    rows = g.rows()
    for r in rows:
        r.update(site=args.site, position=position, model=acts.manifest["model"].get("name"))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue().encode())
    print(
        f"wrote {out}: {len(rows)} rows (pairs x layers), {g.level:.0%} bootstrap intervals "
        f"over prompts ({g.n_boot} resamples), method {g.method}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.geometry.directions import CONTRASTS

    si = sub.add_parser(
        "similarity",
        help="cosines between emotion directions per layer, with bootstrap intervals (CSV)",
        description="Per layer and emotion pair: cosine between the emotions' contrast "
        "directions and the distance between class means, each with a stratified bootstrap "
        "percentile interval over prompts. One CSV row per pair and layer (the pilot's "
        "pairwise table plus interval columns). raw_mean reproduces the pilot's numbers.",
    )
    _add_activations_arg(si)
    si.add_argument("--out", "--output_table", required=True, help="CSV file to write")
    si.add_argument("--method", default="mean_diff", choices=CONTRASTS)
    _add_reading_args(si)
    si.add_argument("--n-boot", type=_positive, default=1000)
    si.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    si.set_defaults(func=run)

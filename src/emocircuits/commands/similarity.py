"""`emocircuits similarity`."""

from __future__ import annotations

import argparse

from emocircuits.commands._common import (
    _add_activations_arg,
    add_counts,
    add_level_arg,
    add_reading_args,
    analyse_activations,
    lib_default,
)


# ---------------------------------------------------------------------------- similarity
def run(args: argparse.Namespace) -> int:
    from emocircuits.geometry.similarity import emotion_similarity

    res = analyse_activations(
        emotion_similarity, args, method=args.method, n_boot=args.n_boot, level=args.level
    )
    out = res.save(args.out)
    print(
        f"wrote {out}: {len(res.rows())} rows (pairs x layers), {res.level:.0%} bootstrap "
        f"intervals over prompts ({res.n_boot} resamples), method {res.method}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.geometry.directions import CONTRASTS
    from emocircuits.geometry.similarity import emotion_similarity as fn

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
    si.add_argument("--method", default=lib_default(fn, "method"), choices=CONTRASTS)
    add_reading_args(si, fn)
    add_counts(si, fn, {"--n-boot": None})
    add_level_arg(si, fn)
    si.set_defaults(func=run)

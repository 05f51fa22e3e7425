"""`emocircuits map-vectors`: parse, call :func:`emocircuits.compare.map_vectors`, save,
print."""

from __future__ import annotations

import argparse
from pathlib import Path

from emocircuits.commands._common import lib_default
from emocircuits.compare.transfer import MAP_METHODS, map_vectors


def run(args: argparse.Namespace) -> int:
    out = map_vectors(args.source, args.target, args.vectors, method=args.method)
    path = out.save(args.out)
    print(
        f"wrote {path}: {len(out.emotions)} directions of {Path(args.source)} mapped "
        f"({args.method}) into the {len(out.layers)} layers of {Path(args.target)}; steer "
        f"with `steer --transfer {path}`"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    mv = sub.add_parser(
        "map-vectors",
        help="carry one model's emotion directions into another model (for `steer --transfer`)",
        description="Fits a map from the --source model's activations to the --target "
        "model's on the same stimuli (ridge with leave-one-out penalty, or Procrustes in "
        "the top principal coordinates, as `compare` does), and applies it to the --vectors "
        "of the source model, layer by layer at the same relative depth. The result is a "
        "vectors file for the target model: `steer --model TARGET --vectors OWN --transfer "
        "OUT` steers with the mapped direction next to the target's own and a random one.",
    )
    mv.add_argument("--source", required=True, help="activation folder of the vectors' model")
    mv.add_argument("--target", required=True, help="activation folder of the other model")
    mv.add_argument("--vectors", required=True, help="the source model's vectors file")
    mv.add_argument("--out", required=True, help="mapped vectors file (.safetensors)")
    mv.add_argument(
        "--method",
        choices=MAP_METHODS,
        default=lib_default(map_vectors, "method"),
        help="the map (default %(default)s)",
    )
    mv.set_defaults(func=run)

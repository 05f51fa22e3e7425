"""`emocircuits vectors`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emocircuits.commands._common import (
    _add_activations_arg,
    add_reading_args,
    analyse_activations,
    lib_default,
)


# ------------------------------------------------------------------------------- vectors
def run(args: argparse.Namespace) -> int:
    from emocircuits.geometry.vectors import directions, safetensors_path

    vecs = analyse_activations(directions, args, method=args.method)
    if safetensors_path(args.out) != Path(args.out):
        print(
            f"note: writing safetensors to {safetensors_path(args.out)} (never pickle)",
            file=sys.stderr,
        )
    path = vecs.save(args.out)
    print(
        f"wrote {path}: {len(vecs.emotions)} emotions ({', '.join(vecs.emotions)}) x "
        f"{len(vecs.layers)} layers, method {vecs.method}, {vecs.site}/{vecs.position}, "
        f"baseline {vecs.baseline}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.geometry.directions import METHODS
    from emocircuits.geometry.vectors import directions

    ve = sub.add_parser(
        "vectors",
        help="emotion directions per layer from an activation folder",
        description="Directions per emotion and layer, saved as safetensors + JSON. Methods: "
        "mean_diff (emotion mean - baseline mean), one_vs_rest (- mean of all other rows), "
        "raw_mean (the pilot's uncontrasted class mean, for reproducing its tables only), "
        "pca (leading component of the uncentred emotion-vs-baseline differences), probe "
        "(logistic-regression weights). The pilot's flag spellings are accepted. The "
        "steering commands (steer-sweep, steer) steer with one_vs_rest directions whatever "
        "the method here: they rebuild them from the activation folder the file records.",
    )
    _add_activations_arg(ve)
    ve.add_argument(
        "--out",
        "--output",
        required=True,
        help="vectors file (.safetensors; a .pkl name is written as .safetensors)",
    )
    ve.add_argument("--method", default=lib_default(directions, "method"), choices=METHODS)
    add_reading_args(ve, directions)
    ve.set_defaults(func=run)

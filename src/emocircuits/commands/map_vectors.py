"""`emocircuits map-vectors`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from emocircuits.errors import EmocircuitsError

if TYPE_CHECKING:
    pass


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from emocircuits.capture import load_activations
    from emocircuits.compare.analysis import align_rows
    from emocircuits.compare.maps import map_directions
    from emocircuits.geometry.vectors import EmotionVectors, safetensors_path

    vecs = EmotionVectors.load(args.vectors)
    a, b = load_activations(args.source), load_activations(args.target)
    (xa, xb), _, _ = align_rows([a, b], vecs.site, vecs.position)
    la, lb = xa.shape[1] - 1, xb.shape[1] - 1
    if xa.shape[2] != vecs.directions[vecs.emotions[0]].shape[-1]:
        raise EmocircuitsError(f"{args.vectors} is not from the model of {args.source}")
    pairs = {j: round(j * la / lb) for j in range(lb + 1)}  # same relative depth
    pairs = {j: i for j, i in pairs.items() if i in vecs.layers}
    if not pairs:
        raise EmocircuitsError(f"no layer of {args.vectors} matches a layer of {args.target}")
    dirs = {e: np.zeros((len(pairs), xb.shape[2]), dtype=np.float32) for e in vecs.emotions}
    for k, (j, i) in enumerate(pairs.items()):
        d = np.stack([vecs.directions[e][vecs.layers.index(i)] for e in vecs.emotions])
        mapped = map_directions(xa[:, i], xb[:, j], d, method=args.method)
        for e, m in zip(vecs.emotions, mapped, strict=True):
            dirs[e][k] = m
    out = EmotionVectors(
        directions=dirs,
        norms={e: np.ones(len(pairs), dtype=np.float32) for e in vecs.emotions},
        layers=list(pairs),
        method=f"mapped:{vecs.method}",
        site=vecs.site,
        position=vecs.position,
        baseline=vecs.baseline,
        provenance={"mapped_from": str(safetensors_path(args.vectors)), "map": args.method,
                    "source_activations": str(args.source),
                    "target_activations": str(args.target),
                    "layer_pairs": {str(j): i for j, i in pairs.items()},
                    "layer_matching": "same relative depth",
                    "source": vecs.provenance, "norms": "not meaningful (set to 1)"},
    )  # fmt: skip
    path = out.save(args.out)
    print(
        f"wrote {path}: {len(vecs.emotions)} directions of {a.path} mapped ({args.method}) "
        f"into the {len(pairs)} layers of {b.path}; steer with `steer --transfer {path}`"
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
    mv.add_argument("--method", choices=("ridge", "procrustes"), default="ridge")
    mv.set_defaults(func=run)

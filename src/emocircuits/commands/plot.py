"""`emocircuits plot`."""

from __future__ import annotations

import argparse
from pathlib import Path

from emocircuits.commands._common import lib_default
from emocircuits.errors import EmocircuitsError


# --------------------------------------------------------------------------------- plot
def run(args: argparse.Namespace) -> int:
    from emocircuits.geometry.vectors import safetensors_path
    from emocircuits.plots.analysis import plot_geometry, plot_probe, plot_vectors

    if (args.input is None) == (args.input_flag is None):
        raise EmocircuitsError("give one input: a geometry folder, a probe JSON or a vectors file")
    target = Path(args.input or args.input_flag)
    is_vectors = target.suffix in (".pkl", ".pickle", ".safetensors")
    if not is_vectors and not target.exists():
        raise EmocircuitsError(f"no such file or folder: {target}")
    if is_vectors:
        out = Path(args.out or target.parent / f"{safetensors_path(target).stem}-plots")
    else:
        out = Path(args.out) if args.out else (target if target.is_dir() else target.parent)
    projection = None
    if args.activations is not None:  # checked before anything is drawn
        from emocircuits.capture import load_activations
        from emocircuits.geometry.subspaces import class_projection
        from emocircuits.plots.analysis import plot_projection

        acts = load_activations(args.activations)
        layers = acts.layers(args.site)
        layer = args.layer if args.layer is not None else layers[len(layers) // 2]
        if layer not in layers:
            raise EmocircuitsError(
                f"layer {layer} out of range (layers {layers[0]}..{layers[-1]})",
                where=str(acts.path),
            )
        position = args.position or acts.default_position
        x = acts.get(args.site, position)[:, layers.index(layer)]
        points, explained = class_projection(x, acts.labels, baseline=args.baseline)
        projection = (
            plot_projection(
                points,
                acts.labels,
                explained,
                title=f"classes at layer {layer} · {acts.manifest['model'].get('name')} · "
                f"{args.site}/{position}",
            ),
            f"projection-{args.site}-{position}-layer{layer}",
        )
    if is_vectors:
        from emocircuits.geometry.vectors import EmotionVectors

        file = safetensors_path(target)
        paths = plot_vectors(EmotionVectors.load(file), out, file.stem)
    elif target.is_file():
        paths = plot_probe(target, out)
    else:
        paths = plot_geometry(
            target, args.out, site=args.site, position=args.position, method=args.method
        )
    if projection is not None:
        from emocircuits.plots.common import save_figure

        paths += save_figure(projection[0], out / projection[1])
    print(f"wrote {len(paths)} files ({len(paths) // 2} figures, PNG + SVG):")
    for p in paths[::2]:
        print(f"  {p.with_suffix('')}.{{png,svg}}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.geometry.directions import CONTRASTS
    from emocircuits.geometry.subspaces import class_projection
    from emocircuits.plots.analysis import plot_geometry

    pl = sub.add_parser(
        "plot",
        help="figures (PNG + SVG) from a geometry folder, a probe file or a vectors file",
        description="Draws, without recomputing, the figures of a folder written by "
        "`geometry` (norms, distances, similarity heatmaps with intervals, stability, shared "
        "component, subspace overlap, probe accuracy), of a JSON file written by `probe` "
        "(accuracy by layer with chance and the lexical baseline), or of a vectors file "
        "written by `vectors` (the pilot's norms, distances and heatmaps). With "
        "--activations, also a 2-D projection of the classes at --layer. The pilot's "
        "`--vectors_file X.pkl --output_dir DIR` works (X.safetensors is read).",
    )
    pl.add_argument("input", nargs="?", default=None, help="geometry folder or probe JSON file")
    pl.add_argument(
        "--input",
        "--vectors_file",
        dest="input_flag",
        default=None,
        help="same as the positional argument (--vectors_file: the pilot's spelling)",
    )
    pl.add_argument("--out", "--output_dir", default=None, help="figure folder")
    pl.add_argument(
        "--site",
        default=lib_default(plot_geometry, "site"),
        help="site to draw (default %(default)s)",
    )
    pl.add_argument(
        "--position",
        default=lib_default(plot_geometry, "position"),
        help="position rule (default: the main one)",
    )
    pl.add_argument(
        "--method",
        default=lib_default(plot_geometry, "method"),
        choices=CONTRASTS,
        help="direction method drawn",
    )
    pl.add_argument("--activations", default=None, help="folder for the 2-D projection")
    pl.add_argument("--layer", type=int, default=None, help="layer of the projection")
    pl.add_argument("--baseline", default=lib_default(class_projection, "baseline"))
    pl.set_defaults(func=run)

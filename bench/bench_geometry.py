"""Within-model geometry benchmark (RQ1): emocircuits' vectorised analyses vs straightforward
baselines, in the same run, on activation folders already captured (no model is run).

For each folder, on ``resid`` / ``mean`` (all layers):

1. ``geometries(x, labels, ("mean_diff", "one_vs_rest", "raw_mean"), n_boot=B)`` vs a Python
   loop over the B bootstrap replicates: resample rows within each class (numpy), recompute
   the class means, the three methods' contrast directions, their pairwise cosines, norms
   and class-mean distances (plain, not debiased) per layer, then percentiles. Check: the
   library's ``cos_plugin`` against the loop's full-sample cosines (max |diff| < 1e-4);
2. ``split_half_stability(x, labels, n_splits=100)`` vs a loop over the splits (the same
   random halves, so the cosines must agree);
3. ``overlap_test(x, labels, n_perm=200)`` (``between`` subspaces, layer x layer) vs a loop
   over the permutations (the same ones) with ``np.linalg.svd`` of the between-class
   contrasts per layer and the overlap formula per layer pair;
4. ``cross_validated(x, labels, "logreg", k=5)`` vs scikit-learn
   ``LogisticRegression(C=0.1, max_iter=1000)`` per layer and fold on features standardised
   with the training fold (the same folds); accuracy agreement per layer;
5. the whole ``emocircuits geometry --activations DIR --out <tmp> --no-plots`` command in a
   subprocess (wall time) with its per-analysis seconds (``summary.json`` key ``seconds``),
   once for all sites and once per site (``--sites S``).

Library calls are timed best of 3 (once if a call takes more than 5 s), the baselines once
(the split-half loop best of 3), with ``time.perf_counter``. The issue's target: every
within-model analysis of one model, all layers and sites, in under 10 s on 2 cores.

    python bench/bench_geometry.py                       # default: runs/dev/{base,ext3}-smollm2
    python bench/bench_geometry.py --quick               # shorter baseline loops, extrapolated
    python bench/bench_geometry.py --activations runs/x --n-boot 1000 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import CPU_PER_WALL, FOREIGN, Meter, _cos, cpu_model, finish, spread, timed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDERS = ("runs/dev/base-smollm2", "runs/dev/ext3-smollm2")
METHODS = ("mean_diff", "one_vs_rest", "raw_mean")
SITE, POSITION = "resid", "mean"
TARGET_S = 10.0
ANALYSES = ("similarity+norms", "stability", "shared", "agreement", "subspaces", "probes")


# --------------------------------------------------------------------------- helpers


def log(msg: str = "") -> None:
    print(msg, flush=True)


def machine(threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": "unknown",
        "nproc": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    if cpu_model():
        info["cpu"] = cpu_model()
    try:
        import sklearn

        info["scikit-learn"] = sklearn.__version__
    except ImportError:
        info["scikit-learn"] = "not installed"
    try:
        from threadpoolctl import threadpool_info

        pools = threadpool_info()
        info["blas"] = [f"{p['internal_api']} {p['num_threads']} threads" for p in pools]
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------- baselines


def naive_geometry(
    x: np.ndarray, labels: Sequence[str], n_boot: int, baseline: str = "neutral", seed: int = 0
) -> tuple[dict[tuple, np.ndarray], dict[tuple, np.ndarray]]:
    """Plain (not debiased) cosines, norms and distances with percentile intervals, one
    bootstrap replicate at a time. Returns ``(point, interval)`` keyed by
    ``(method, "cos", a, b)``, ``(method, "norm", e)`` and ``("dist", a, b)``."""
    lab = np.asarray(labels)
    classes = list(dict.fromkeys(lab.tolist()))
    emotions = [c for c in classes if c != baseline]
    groups = [x[lab == c] for c in classes]
    counts = np.array([len(g) for g in groups], dtype=float)
    ib = classes.index(baseline)

    def stats(means: np.ndarray) -> dict[tuple, np.ndarray]:  # means [C, L, W]
        out: dict[tuple, np.ndarray] = {}
        dirs: dict[str, dict[str, np.ndarray]] = {m: {} for m in METHODS}
        for i, e in enumerate(classes):
            if e == baseline:
                continue
            rest = [k for k in range(len(classes)) if k != i]
            rest_mean = (counts[rest, None, None] * means[rest]).sum(0) / counts[rest].sum()
            dirs["mean_diff"][e] = means[i] - means[ib]
            dirs["one_vs_rest"][e] = means[i] - rest_mean
            dirs["raw_mean"][e] = means[i]
        for m, d in dirs.items():
            for e in emotions:
                out[(m, "norm", e)] = np.linalg.norm(d[e], axis=-1)
            for a, b in combinations(emotions, 2):
                out[(m, "cos", a, b)] = _cos(d[a], d[b])
        for (i, a), (j, b) in combinations(enumerate(classes), 2):
            out[("dist", a, b)] = np.linalg.norm(means[i] - means[j], axis=-1)
        return out

    point = stats(np.stack([g.mean(0, dtype=np.float64) for g in groups]))
    rng = np.random.default_rng(seed)
    reps = {k: np.empty((n_boot, *v.shape)) for k, v in point.items()}
    for r in range(n_boot):
        means = np.stack([g[rng.integers(0, len(g), len(g))].mean(0) for g in groups])
        for k, v in stats(means).items():
            reps[k][r] = v
    interval = {k: np.percentile(v, [2.5, 97.5], axis=0) for k, v in reps.items()}
    return point, interval


def naive_split_half(
    x: np.ndarray,
    labels: Sequence[str],
    n_splits: int,
    baseline: str = "neutral",
    seed: int = 0,
    n_run: int | None = None,
) -> dict[str, np.ndarray]:
    """``mean_diff`` split-half cosines, one split at a time (the first ``n_run`` of them).
    The halves are drawn like ``emocircuits.geometry.stats.split_halves`` (class by class,
    then split by split, from one generator) so both implementations see the same halves."""
    lab = np.asarray(labels)
    classes = list(dict.fromkeys(lab.tolist()))
    emotions = [c for c in classes if c != baseline]
    rng = np.random.default_rng(seed)
    index = {c: np.flatnonzero(lab == c) for c in classes}
    first = {
        c: [rng.permutation(idx)[: len(idx) // 2] for _ in range(n_splits)]
        for c, idx in index.items()
    }
    n_run = n_splits if n_run is None else n_run
    out = {e: np.empty((n_run, x.shape[1])) for e in emotions}
    for s in range(n_run):
        m1, m2 = {}, {}
        for c, idx in index.items():
            in_first = np.isin(idx, first[c][s])
            m1[c], m2[c] = x[idx[in_first]].mean(0), x[idx[~in_first]].mean(0)
        for e in emotions:
            out[e][s] = _cos(m1[e] - m1[baseline], m2[e] - m2[baseline])
    return out


def naive_overlap(
    x: np.ndarray,
    labels: Sequence[str],
    n_perm: int,
    baseline: str = "neutral",
    seed: int = 0,
    k: int = 3,
) -> dict[str, np.ndarray]:
    """Layer x layer overlap of the ``between`` subspaces and its label-permutation null,
    one permutation, one layer (SVD) and one layer pair at a time. The permutations are
    drawn like ``overlap_test``'s (same generator, same order)."""
    lab = np.asarray(labels)
    classes = list(dict.fromkeys(lab.tolist()))
    ib = classes.index(baseline)
    n_layers = x.shape[1]
    k = min(k, len(classes) - 1)

    def bases(lab_: np.ndarray) -> list[np.ndarray]:
        means = np.stack([x[lab_ == c].mean(0) for c in classes])  # [C, L, W]
        diffs = np.stack([means[i] - means[ib] for i in range(len(classes)) if i != ib], -1)
        out = []
        for layer in range(n_layers):
            u, _, _ = np.linalg.svd(diffs[layer].astype(np.float64), full_matrices=False)
            out.append(u[:, :k])
        return out

    def overlaps(bs: list[np.ndarray]) -> np.ndarray:
        o = np.empty((n_layers, n_layers))
        for i in range(n_layers):
            for j in range(n_layers):
                o[i, j] = ((bs[i].T @ bs[j]) ** 2).sum() / k
        return o

    obs = overlaps(bases(lab))
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(len(lab)) for _ in range(n_perm)]
    null = np.empty((n_perm, n_layers, n_layers))
    for p, perm in enumerate(perms):
        null[p] = overlaps(bases(lab[perm]))
    return {
        "overlap": obs,
        "null_mean": null.mean(0),
        "null_hi": np.quantile(null, 0.95, axis=0),
        "p_value": (1 + (null >= obs[None] - 1e-5).sum(0)) / (1 + n_perm),
    }


def sklearn_cv(
    x: np.ndarray, labels: Sequence[str], layers: Sequence[int], k: int = 5, seed: int = 0
) -> np.ndarray:
    """k-fold accuracy per layer: scikit-learn ``LogisticRegression(C=0.1, max_iter=1000)``
    fitted per layer and fold on features standardised with the training fold (the same
    stratified folds as ``cross_validated``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from emocircuits.geometry.probes import stratified_folds

    lab = np.asarray(labels)
    fold = stratified_folds(lab, k, seed)
    acc = np.zeros(len(layers))
    for li, layer in enumerate(layers):
        xl = x[:, layer].astype(np.float64)
        correct = 0
        for f in range(k):
            test = fold == f
            scaler = StandardScaler().fit(xl[~test])
            clf = LogisticRegression(C=0.1, max_iter=1000)
            clf.fit(scaler.transform(xl[~test]), lab[~test])
            correct += int((clf.predict(scaler.transform(xl[test])) == lab[test]).sum())
        acc[li] = correct / len(lab)
    return acc


# --------------------------------------------------------------------------- library


def bench_folder(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from emocircuits.capture import load_activations
    from emocircuits.geometry.probes import cross_validated
    from emocircuits.geometry.similarity import geometries, split_half_stability
    from emocircuits.geometry.subspaces import overlap_test

    acts = load_activations(folder)
    x, labels = acts.get(SITE, POSITION), acts.labels
    n, n_layers, width = x.shape
    log(
        f"  {n} rows x {n_layers} layers x {width} ({SITE}/{POSITION}); labels "
        f"{dict(sorted({c: labels.count(c) for c in set(labels)}.items()))}; sites "
        f"{'+'.join(acts.sites)}, positions {'+'.join(acts.positions)}"
    )
    q = args.quick
    rows: list[dict[str, Any]] = []

    def row(name: str, lib_s: float, base_s: float, base_note: str, check: str) -> None:
        rows.append(
            {
                "analysis": name,
                "emocircuits_s": lib_s,
                "baseline_s": base_s,
                "baseline": base_note,
                "speedup": base_s / lib_s,
                "check": check,
            }
        )
        log(
            f"  {name}: emocircuits {lib_s:.3f}s (cpu/wall {CPU_PER_WALL[-2]:.2f}, other "
            f"processes {FOREIGN[-2]:.2f} cores), baseline {base_s:.2f}s (cpu/wall "
            f"{CPU_PER_WALL[-1]:.2f}, other {FOREIGN[-1]:.2f}), {base_s / lib_s:.1f}x"
        )

    # 1. similarity with bootstrap intervals
    b = args.n_boot
    lib_s, gs = timed(lambda: geometries(x, labels, METHODS, n_boot=b), args.repeats)
    nb = min(b, 100) if q else b
    base_s, (point, _) = timed(lambda: naive_geometry(x, labels, nb), 1)
    base_s *= b / nb
    diff = max(
        float(np.max(np.abs(g.cos_plugin[pair] - point[(m, "cos", *pair)])))
        for m, g in gs.items()
        for pair in g.cos_plugin
    )
    check = f"cos_plugin max abs diff {diff:.1e} ({'ok' if diff < 1e-4 else 'FAILED'}: < 1e-4)"
    log(f"  check: {check}")
    row(
        f"`geometries` 3 methods, B={b}",
        lib_s,
        base_s,
        f"loop over {b} replicates" + (f" (timed {nb}, extrapolated)" if nb < b else ""),
        check,
    )

    # 2. split-half stability
    s = args.n_splits
    lib_s, sh = timed(lambda: split_half_stability(x, labels, n_splits=s), args.repeats)
    ns = min(s, 20) if q else s
    base_s, nsh = timed(lambda: naive_split_half(x, labels, s, n_run=ns), args.repeats)
    base_s *= s / ns
    diff = max(float(np.max(np.abs(sh[e][:ns] - nsh[e]))) for e in nsh)
    check = f"same halves: cosines max abs diff {diff:.1e}"
    log(f"  check: {check}")
    row(
        f"`split_half_stability`, {s} splits",
        lib_s,
        base_s,
        f"loop over {s} splits" + (f" (timed {ns}, extrapolated)" if ns < s else ""),
        check,
    )

    # 3. subspace overlap, layer x layer, with the permutation null
    p = args.n_perm
    lib_s, ot = timed(lambda: overlap_test(x, labels, n_perm=p), args.repeats)
    npm = min(p, 20) if q else p
    base_s, nov = timed(lambda: naive_overlap(x, labels, npm), 1)
    base_s *= p / npm
    d_obs = float(np.max(np.abs(ot.overlap - nov["overlap"])))
    check = f"observed overlap max abs diff {d_obs:.1e}"
    if npm == p:
        d_null = float(np.max(np.abs(ot.null_mean - nov["null_mean"])))
        d_p = float(np.max(np.abs(ot.p_value - nov["p_value"])))
        check += f"; same permutations: null mean {d_null:.1e}, p-value {d_p:.1e}"
    log(f"  check: {check}")
    row(
        f"`overlap_test` between, {n_layers}x{n_layers} layers, {p} perms",
        lib_s,
        base_s,
        f"loop over {p} perms, np.linalg.svd per layer"
        + (f" (timed {npm}, extrapolated)" if npm < p else ""),
        check,
    )

    # 4. k-fold logistic-regression probes
    lib_s, acc = timed(lambda: cross_validated(x, labels, "logreg", k=5), args.repeats)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        log("  scikit-learn: skipped (not importable)")
    else:
        layers = spread(n_layers, 5) if q else list(range(n_layers))
        base_s, sk = timed(lambda: sklearn_cv(x, labels, layers), 1)
        base_s *= n_layers / len(layers)
        da = np.abs(acc[layers] - sk)
        check = (
            f"accuracy max abs diff {da.max():.3f} (mean {da.mean():.4f}, "
            f"{int(np.rint(da.max() * n))} of {n} rows) over {len(layers)} layers"
        )
        log(f"  check: {check}")
        row(
            f"`cross_validated` logreg, 5 folds x {n_layers} layers",
            lib_s,
            base_s,
            "sklearn LogisticRegression(C=0.1, max_iter=1000) per layer and fold"
            + (f" (timed {len(layers)} layers, extrapolated)" if len(layers) < n_layers else ""),
            check,
        )

    # 5. the whole command, all sites, then (not with --quick) one site at a time
    cli: dict[str, Any] = {}
    runs = [None] if q else [None, *[s for s in acts.sites if s != "heads"]]
    for site in runs:
        key = site or "all"
        cli[key] = run_cli(folder, site, args)
        log(
            f"  emocircuits geometry ({key} sites): wall {cli[key]['wall_s']:.1f}s, "
            f"(cpu/wall {cli[key]['cpu_per_wall']:.2f}, other processes "
            f"{cli[key]['other_cores']:.2f} cores), in-process "
            f"{cli[key]['seconds']['total']:.1f}s {cli[key]['seconds']}"
        )
    return {
        "folder": str(folder),
        "shape": [n, n_layers, width],
        "sites": [s for s in acts.sites if s != "heads"],
        "positions": acts.positions,
        "rows": rows,
        "cli": cli,
    }


def run_cli(folder: Path, site: str | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ec-bench-geom-") as tmp:
        cmd = [sys.executable, "-m", "emocircuits", "geometry", "--activations", str(folder)]
        cmd += ["--out", tmp, "--no-plots", "--n-boot", str(args.n_boot)]
        cmd += ["--n-splits", str(args.n_splits), "--n-perm", str(args.n_perm)]
        if site:
            cmd += ["--sites", site]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        with Meter() as m:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        FOREIGN.append(m.foreign)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    return {
        "command": cmd,
        "wall_s": m.wall,
        "cpu_per_wall": m.cpu_per_wall,
        "other_cores": m.foreign,
        "seconds": summary["seconds"],
    }


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_tables(res: dict[str, Any]) -> None:
    n, n_layers, width = res["shape"]
    log()
    log(f"### {res['folder']} ({n} prompts, {n_layers} layers x {width}, {SITE}/{POSITION})")
    log()
    log("| analysis | emocircuits (s) | baseline (s) | speed-up | baseline | check |")
    log("|---|---:|---:|---:|---|---|")
    for r in res["rows"]:
        log(
            f"| {r['analysis']} | {r['emocircuits_s']:.3f} | {r['baseline_s']:.2f} | "
            f"{r['speedup']:.1f}x | {r['baseline']} | {r['check']} |"
        )
    cli = res["cli"]
    cols = list(cli)
    log()
    log("`emocircuits geometry --no-plots`, seconds from summary.json (in-process):")
    log()
    log("| analysis | " + " | ".join(f"{c} sites" if c == "all" else c for c in cols) + " |")
    log("|---|" + "---:|" * len(cols))
    for a in (*ANALYSES, "total"):
        vals = [cli[c]["seconds"].get(a) for c in cols]
        cells = ["-" if v is None else f"{v:.2f}" for v in vals]
        log(f"| {a} | " + " | ".join(cells) + " |")
    log("| wall, subprocess | " + " | ".join(f"{cli[c]['wall_s']:.2f}" for c in cols) + " |")
    log(
        f"| total < {TARGET_S:.0f} s | "
        + " | ".join(verdict(cli[c]["seconds"]["total"] < TARGET_S) for c in cols)
        + " |"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Within-model geometry (RQ1): emocircuits vs straightforward baselines, "
        "and the whole `emocircuits geometry` command, on captured activation folders."
    )
    p.add_argument(
        "--activations",
        action="append",
        type=Path,
        default=None,
        help="activation folder (repeatable; default: runs/dev/base-smollm2 and "
        "runs/dev/ext3-smollm2 when they exist)",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (1000)")
    p.add_argument("--n-splits", type=int, default=100, help="split halves (100)")
    p.add_argument("--n-perm", type=int, default=200, help="label permutations (200)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="baseline loops on 100 replicates / 20 splits / 20 permutations / 5 layers, "
        "extrapolated linearly; library calls once; the command for all sites only",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (also OMP_NUM_THREADS)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    args.repeats = 1 if args.quick else 3
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    folders = args.activations
    if folders is None:
        folders = [ROOT / f for f in DEFAULT_FOLDERS if (ROOT / f / "manifest.json").is_file()]
    missing = [f for f in folders if not (Path(f) / "manifest.json").is_file()]
    if not folders or missing:
        what = f"not activation folders: {', '.join(map(str, missing))}" if missing else "none"
        log(f"No activation folders found ({what}). Make one with, for example:")
        log("  emocircuits extract --data baseline --out runs/dev/base-smollm2")
        log("and pass it with --activations DIR (repeatable).")
        return 1
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = machine(torch.get_num_threads())
    results: dict[str, Any] = {"machine": info, "args": vars(args) | {"activations": folders}}
    results["loadavg_start"] = os.getloadavg()
    log("emocircuits within-model geometry benchmark")
    log(
        f"  machine: {info['cpu']}, {info['nproc']} cores, torch threads "
        f"{info['torch_threads']}, BLAS {', '.join(info.get('blas', [])) or 'unknown'}"
    )
    log(
        f"  versions: python {info['python']}, numpy {info['numpy']}, torch {info['torch']}, "
        f"scikit-learn {info['scikit-learn']}"
    )
    log(
        f"  B={args.n_boot}, splits {args.n_splits}, permutations {args.n_perm}; library calls "
        f"best of {args.repeats}; load average at start {os.getloadavg()[0]:.2f}"
        f"{'; --quick (baseline loops shortened and extrapolated)' if args.quick else ''}"
    )
    results["folders"] = []
    for folder in folders:
        log()
        log(f"== {folder}  [t={time.perf_counter() - t_start:.0f}s]")
        results["folders"].append(bench_folder(Path(folder), args))
    for res in results["folders"]:
        print_tables(res)
    log()
    finish(results, args.threads, t_start, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cross-model comparison benchmark (RQ2): emocircuits' vectorised comparisons vs
straightforward baselines, in the same run, on two activation folders already captured from
different models on the same dataset (no model is run).

On ``resid`` / ``mean`` (all layers of both models, rows aligned by id with
``emocircuits.compare.align_rows``):

1. ``cka_null(ga, gb, P)`` (Grams computed once) vs a loop calling
   ``linear_cka(xa, xb[p])`` per permutation (Grams recomputed each time), on the same
   permutations (``emocircuits.compare.perm.permutations(n, P, seed)``, applied to the rows
   of the side with fewer layers, as ``cka_null`` does). Check: the replicates agree;
2. ``mutual_knn(na, nb, P)`` vs a Python loop over permutations, layer pairs and rows
   intersecting the neighbour sets (Python ``set``), from the same kNN indices. Check:
   observed values and the first null replicates agree exactly;
3. the Procrustes part of ``compare_directions`` (``maps=["procrustes"]``,
   ``n_shuffle=P``) at each layer of A and its best-CKA layer of B vs a loop over layers
   (numpy SVD for the PCA) and shuffles calling ``scipy.linalg.orthogonal_procrustes`` on
   the PCA coordinates. Check: observed and shuffled-pair cosines;
4. the ridge part (``maps=["ridge"]``, ``n_perm``) vs scikit-learn: ``RidgeCV`` (leave-one-
   out over the library's penalty grid) per layer, then ``Ridge`` (the library's penalty)
   refitted on each shuffled pairing. Check: chosen penalties, observed and shuffled cosines;
5. the whole ``emocircuits compare --activations A B --out <tmp> --quiet`` command in a
   subprocess (wall time) with its per-stage seconds (``summary.json`` key ``seconds``),
   with ``--no-plots`` and with figures.

``P`` is ``--n-perm-heavy`` for 1-3 (CKA, mutual kNN, Procrustes shuffles) and ``--n-perm``
for 4 (label permutations and ridge shuffles), as in ``emocircuits compare``. The library's
map calls also compute the label-permutation null (``n_perm``), which the baselines do not:
their speed-ups are conservative. Library calls are timed best of 3 (once if a call takes
more than 5 s), the baselines once, on a few replicates extrapolated linearly to all of them
(fixed per-layer costs counted in full). The issue's target: every comparison of one pair of
models (all layer pairs, nulls with >= 1000 permutations where cheap) in under 2 minutes on
2 cores.

    python bench/bench_compare.py                     # runs/dev/ext3-smollm2 vs extended-gemma3
    python bench/bench_compare.py --quick             # fewer baseline replicates, extrapolated
    python bench/bench_compare.py --a runs/x --b runs/y --n-perm-heavy 500 --json bench.json
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import CPU_PER_WALL, FOREIGN, Meter, _cos, cpu_model, finish, spread, timed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_A, DEFAULT_B = "runs/dev/ext3-smollm2", "runs/dev/extended-gemma3"
SITE, POSITION = "resid", "mean"
BASELINE, METHOD, K, SEED = "neutral", "one_vs_rest", 10, 0
TARGET_S = 120.0
STAGES = ("grams", "cka", "rsa", "mknn", "maps", "naive", "total")


# --------------------------------------------------------------------------- helpers


def log(msg: str = "") -> None:
    print(msg, flush=True)


def machine(threads: int) -> dict[str, Any]:
    import scipy
    import sklearn

    info: dict[str, Any] = {
        "cpu": cpu_model() or "unknown",
        "nproc": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
    }
    try:
        from threadpoolctl import threadpool_info

        pools = threadpool_info()
        info["blas"] = [f"{p['internal_api']} {p['num_threads']} threads" for p in pools]
    except ImportError:
        pass
    return info


def _normalised(x: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """One layer ``[n, W]`` centred on the fit rows, unit mean squared norm there (float64)."""
    t = x.astype(np.float64)
    t -= t[fit].mean(0)
    return t / max(np.sqrt((t[fit] ** 2).sum(1).mean()), 1e-300)


def _directions(t: np.ndarray, labels: np.ndarray, emotions: Sequence[str]) -> np.ndarray:
    """One-vs-rest emotion directions ``[E, W]``: class mean minus the mean of the other rows."""
    return np.stack([t[labels == e].mean(0) - t[labels != e].mean(0) for e in emotions])


# --------------------------------------------------------------------------- baselines


def naive_cka_null(
    xa: np.ndarray, xb: np.ndarray, perms: np.ndarray, shuffle_a: bool
) -> np.ndarray:
    """CKA under each permutation, one ``linear_cka`` call (both models' Grams) at a time."""
    from emocircuits.compare import linear_cka

    out = []
    for p in perms:
        out.append(linear_cka(xa[p], xb) if shuffle_a else linear_cka(xa, xb[p]))
    return np.stack(out)


def naive_mknn(
    na: np.ndarray, nb: np.ndarray, perms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Mutual kNN ``[La, Lb]`` and its null for ``perms`` (rows of A shuffled: row ``p[i]``'s
    neighbours are ``p[na[i]]``), with Python sets, one permutation, layer pair and row at a
    time. Returns ``(observed, null, seconds observed, seconds null)``."""
    la, n, k = na.shape
    lb = len(nb)
    sets_b = [[set(row) for row in nb[b].tolist()] for b in range(lb)]

    def score(p: list[int]) -> np.ndarray:
        out = np.zeros((la, lb))
        for a in range(la):
            rows_a = na[a].tolist()
            for i in range(n):
                mine = {p[j] for j in rows_a[i]}
                pi = p[i]
                for b in range(lb):
                    out[a, b] += len(mine & sets_b[b][pi])
        return out / (n * k)

    t0 = time.perf_counter()
    observed = score(list(range(n)))
    t1 = time.perf_counter()
    null = np.stack([score(p.tolist()) for p in perms]) if len(perms) else np.empty((0, la, lb))
    return observed, null, t1 - t0, time.perf_counter() - t1


def naive_procrustes(
    xa: np.ndarray,
    xb: np.ndarray,
    labels: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    fit: np.ndarray,
    held: np.ndarray,
    emotions: Sequence[str],
    dim: int,
    shuffles: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per layer pair: normalise, PCA (numpy SVD on the fit rows), orthogonal Procrustes on
    the PCA coordinates (scipy) and the mapped emotion directions' cosines; then the same
    refitted on each shuffled pairing. Returns ``(cos [L, E], cos_shuffle [S, L, E],
    seconds per-layer work, seconds shuffle loop)``."""
    from scipy.linalg import orthogonal_procrustes

    held_lab = labels[held]
    cos = np.empty((len(pairs), len(emotions)))
    cos_s = np.empty((len(shuffles), len(pairs), len(emotions)))
    t_fixed = t_loop = 0.0
    for li, (ia, ib) in enumerate(pairs):
        t0 = time.perf_counter()
        ta, tb = _normalised(xa[:, ia], fit), _normalised(xb[:, ib], fit)
        va = np.linalg.svd(ta[fit], full_matrices=False)[2][:dim].T
        vb = np.linalg.svd(tb[fit], full_matrices=False)[2][:dim].T
        za, zb = ta @ va, tb @ vb
        da = _directions(ta[held], held_lab, emotions) @ va
        db = _directions(tb[held], held_lab, emotions) @ vb
        rot, _ = orthogonal_procrustes(za[fit], zb[fit])
        cos[li] = _cos(da @ rot, db)
        t1 = time.perf_counter()
        za_f, zb_f = za[fit], zb[fit]
        for s, p in enumerate(shuffles):
            rot, _ = orthogonal_procrustes(za_f, zb_f[p])
            cos_s[s, li] = _cos(da @ rot, db)
        t_fixed += t1 - t0
        t_loop += time.perf_counter() - t1
    return cos, cos_s, t_fixed, t_loop


def naive_ridge(
    xa: np.ndarray,
    xb: np.ndarray,
    labels: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    fit: np.ndarray,
    held: np.ndarray,
    emotions: Sequence[str],
    shuffles: np.ndarray,
    lams: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Per layer pair: scikit-learn ``RidgeCV`` (leave-one-out over the library's grid:
    mean squared singular value of the fit rows x 10^-6..10^3, 19 values) and the mapped
    directions' cosines; then ``Ridge(alpha=lams[i])`` refitted on each shuffled pairing.
    Returns ``(alpha [L], cos [L, E], cos_shuffle [S, L, E], seconds per-layer work,
    seconds shuffle loop)``."""
    from sklearn.linear_model import Ridge, RidgeCV

    held_lab = labels[held]
    alpha = np.empty(len(pairs))
    cos = np.empty((len(pairs), len(emotions)))
    cos_s = np.empty((len(shuffles), len(pairs), len(emotions)))
    t_fixed = t_loop = 0.0
    for li, (ia, ib) in enumerate(pairs):
        t0 = time.perf_counter()
        ta, tb = _normalised(xa[:, ia], fit), _normalised(xb[:, ib], fit)
        xf, yf = ta[fit], tb[fit]
        grid = (xf**2).sum() / min(xf.shape) * np.logspace(-6, 3, 19)
        model = RidgeCV(alphas=grid).fit(xf, yf)
        alpha[li] = model.alpha_
        da = _directions(ta[held], held_lab, emotions)
        db = _directions(tb[held], held_lab, emotions)
        cos[li] = _cos(da @ model.coef_.T, db)
        t1 = time.perf_counter()
        for s, p in enumerate(shuffles):
            w = Ridge(alpha=lams[li]).fit(xf, yf[p]).coef_  # [Wb, Wa]
            cos_s[s, li] = _cos(da @ w.T, db)
        t_fixed += t1 - t0
        t_loop += time.perf_counter() - t1
    return alpha, cos, cos_s, t_fixed, t_loop


# --------------------------------------------------------------------------- benchmark


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    import emocircuits
    from emocircuits.compare import (
        align_rows,
        cka_null,
        compare_directions,
        knn_indices,
        mutual_knn,
        split_rows,
    )
    from emocircuits.compare.cka import cka_from_grams, gram_matrices
    from emocircuits.compare.perm import permutations

    stores = [emocircuits.load_activations(f) for f in (args.a, args.b)]
    for s in stores:
        s.get(SITE, POSITION)  # names what is missing
    (xa, xb), _ids, labels_l = align_rows(stores, SITE, POSITION)
    labels = np.asarray(labels_l)
    n, la, wa = xa.shape
    lb, wb = xb.shape[1:]
    counts = {c: int((labels == c).sum()) for c in sorted(set(labels_l))}
    log(
        f"  A {args.a}: {la} layers x {wa}; B {args.b}: {lb} layers x {wb}; {n} rows "
        f"({SITE}/{POSITION}); labels {counts}"
    )
    q, ph, pn = args.quick, args.n_perm_heavy, args.n_perm
    rows: list[dict[str, Any]] = []

    def row(
        name: str, lib_s: float, base_s: float, measured: float, note: str, extrap: bool, check: str
    ) -> None:
        rows.append(
            {
                "stage": name,
                "emocircuits_s": lib_s,
                "baseline_s": base_s,
                "baseline_extrapolated": extrap,
                "baseline_measured_s": measured,
                "baseline": note,
                "speedup": base_s / lib_s,
                "check": check,
            }
        )
        log(
            f"  {name}: emocircuits {lib_s:.3f}s (cpu/wall {CPU_PER_WALL[-2]:.2f}, other "
            f"processes {FOREIGN[-2]:.2f} cores), baseline {base_s:.2f}s"
            f"{' (extrapolated)' if extrap else ''} (cpu/wall {CPU_PER_WALL[-1]:.2f}, other "
            f"{FOREIGN[-1]:.2f}), {base_s / lib_s:.1f}x"
        )
        log(f"    check: {check}")

    # 1. CKA permutation null over every layer pair
    gram_s, (grams_a, grams_b) = timed(lambda: (gram_matrices(xa), gram_matrices(xb)), args.repeats)
    (ga, diag_a), (gb, diag_b) = grams_a, grams_b
    log(f"  Grams of both models (computed once, shared): {gram_s:.2f}s")
    lib_s, null = timed(lambda: cka_null(ga, gb, ph, SEED), args.repeats)
    shuffle_a = lb > la  # cka_null shuffles the side with fewer layers
    nc = min(ph, 2 if q else 4)
    perms = permutations(n, ph, SEED)[:nc]
    meas_s, naive = timed(lambda: naive_cka_null(xa, xb, perms, shuffle_a), 1)
    base_s = meas_s * ph / nc
    diff = float(np.nanmax(np.abs(null[:nc] - naive)))
    check = (
        f"same {nc} permutations (rows of {'A' if shuffle_a else 'B'} shuffled): max abs diff "
        f"{diff:.1e} ({'ok' if diff < 1e-4 else 'FAILED'}: < 1e-4)"
    )
    row(
        f"CKA null, {la}x{lb} layer pairs, {ph} perms",
        lib_s,
        base_s,
        meas_s,
        f"`linear_cka(xa, xb[p])` per permutation (timed {nc}); library Grams "
        f"({gram_s:.1f} s, once) not counted",
        nc < ph,
        check,
    )

    # 2. mutual kNN and its null
    knn_s, (na, nb) = timed(
        lambda: (knn_indices(ga, diag_a, K), knn_indices(gb, diag_b, K)), args.repeats
    )
    log(f"  kNN indices of both models (k={K}, shared): {knn_s:.2f}s")
    lib_s, (mk, mk_null) = timed(lambda: mutual_knn(na, nb, ph, SEED), args.repeats)
    nm = min(ph, 1 if q else 2)
    perms = permutations(n, ph, SEED)[:nm]
    base_s, (obs, nnull, t_obs, t_null) = timed(lambda: naive_mknn(na, nb, perms), 1)
    base_est = t_obs + t_null * ph / max(nm, 1)
    d_obs = float(np.abs(mk - obs).max())
    d_null = float(np.abs(mk_null[:nm] - nnull).max()) if nm else 0.0
    ok = d_obs < 1e-12 and d_null < 1e-12
    check = (
        f"observed max abs diff {d_obs:.1e}, same {nm} permutations {d_null:.1e} "
        f"({'ok' if ok else 'FAILED'}: identical)"
    )
    row(
        f"mutual kNN (k={K}) + null, {la}x{lb} layer pairs, {ph} perms",
        lib_s,
        base_est,
        base_s,
        f"Python sets per permutation, layer pair and row (timed observed + {nm}); "
        f"kNN indices ({knn_s:.1f} s) shared, not counted",
        nm < ph,
        check,
    )
    # layer pairs for the maps: each layer of A with its best-CKA layer of B (as the command)
    cka = cka_from_grams(ga, gb)
    ga = gb = grams_a = grams_b = None  # free the Grams (~1 GB) before the maps
    best_b = np.nanargmax(np.where(np.isnan(cka), -np.inf, cka), 1)
    pairs = list(enumerate(best_b.tolist()))
    fit, held = split_rows(labels_l, SEED)
    held_lab = labels[held]
    emotions = [c for c in dict.fromkeys(held_lab.tolist()) if c != BASELINE]
    n_fit = len(fit)
    dim = int(min(max(2, min(64, n_fit // 4)), wa, wb, n_fit - 1))

    def lib_maps(kind: str, n_shuffle: int) -> Any:
        return compare_directions(
            xa,
            xb,
            labels_l,
            pairs,
            fit=fit,
            held=held,
            method=METHOD,
            baseline=BASELINE,
            n_perm=pn,
            n_shuffle=n_shuffle,
            maps=[kind],
            seed=SEED,
        )[kind]

    # 3. Procrustes with the shuffled-pair null
    lib_s, pr = timed(lambda: lib_maps("procrustes", ph), args.repeats)
    npr = min(ph, 3 if q else 10)
    shuffles = permutations(n_fit, ph, SEED + 2)[:npr]
    base_s, (cos, cos_s, t_fix, t_loop) = timed(
        lambda: naive_procrustes(xa, xb, labels, pairs, fit, held, emotions, dim, shuffles), 1
    )
    base_est = t_fix + t_loop * ph / npr
    d_obs = float(np.abs(pr.cos - cos).max())
    d_null = float(np.abs(pr.cos_shuffle[:npr] - cos_s).max())
    ok = d_obs < 1e-6 and d_null < 1e-3
    check = (
        f"observed cos max abs diff {d_obs:.1e}, same {npr} shuffles {d_null:.1e} "
        f"({'ok' if ok else 'FAILED'}: < 1e-6, < 1e-3 float32)"
    )
    row(
        f"Procrustes (d={dim}) + shuffled-pair null, {len(pairs)} layer pairs, {ph} shuffles",
        lib_s,
        base_est,
        base_s,
        f"numpy SVD PCA + scipy `orthogonal_procrustes` per layer and shuffle (timed {npr} "
        f"shuffles); library also does {pn} label permutations",
        npr < ph,
        check,
    )

    # 4. ridge with leave-one-out penalty and the shuffled-pair null
    lib_s, rr = timed(lambda: lib_maps("ridge", ph), args.repeats)
    sel = spread(len(pairs), 4 if q else 8)
    nr = min(pn, 2 if q else 5)
    shuffles = permutations(n_fit, pn, SEED + 2)[:nr]
    sub = [pairs[i] for i in sel]
    base_s, (alpha, cos, cos_s, t_fix, t_loop) = timed(
        lambda: naive_ridge(xa, xb, labels, sub, fit, held, emotions, shuffles, rr.lam[sel]), 1
    )
    base_est = (t_fix + t_loop * pn / nr) * len(pairs) / len(sel)
    same = np.isclose(alpha, rr.lam[sel], rtol=1e-6)
    d_obs = float(np.abs(rr.cos[sel][same] - cos[same]).max()) if same.any() else float("nan")
    d_null = float(np.abs(rr.cos_shuffle[:nr, sel] - cos_s).max())
    ok = d_null < 1e-3 and (not same.any() or d_obs < 1e-4)
    check = (
        f"penalty same as RidgeCV at {int(same.sum())}/{len(sel)} layers (observed cos max abs "
        f"diff there {d_obs:.1e}); same {nr} shuffles {d_null:.1e} "
        f"({'ok' if ok else 'FAILED'}: < 1e-4, < 1e-3 float32)"
    )
    row(
        f"ridge (LOO penalty) + shuffled-pair null, {len(pairs)} layer pairs, {pn} shuffles",
        lib_s,
        base_est,
        base_s,
        f"sklearn `RidgeCV` + `Ridge` per shuffle (timed {len(sel)} layers x {nr} shuffles); "
        f"library also does {pn} label permutations",
        nr < pn or len(sel) < len(pairs),
        check,
    )

    # 5. the whole command, without and with figures
    cli = {
        key: run_cli(args, plots) for key, plots in (("no-plots", False), ("with figures", True))
    }
    for key, c in cli.items():
        log(
            f"  emocircuits compare ({key}): wall {c['wall_s']:.1f}s (cpu/wall "
            f"{c['cpu_per_wall']:.2f}, other processes {c['other_cores']:.2f} cores), "
            f"in-process {c['seconds']['total']:.1f}s {c['seconds']}"
        )
    return {
        "a": str(args.a),
        "b": str(args.b),
        "shapes": [[n, la, wa], [n, lb, wb]],
        "layer_pairs": [[int(i), int(j)] for i, j in pairs],
        "procrustes_dim": dim,
        "rows": rows,
        "cli": cli,
    }


def run_cli(args: argparse.Namespace, plots: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ec-bench-compare-") as tmp:
        cmd = [sys.executable, "-m", "emocircuits", "compare", "--activations"]
        cmd += [str(args.a), str(args.b), "--out", tmp, "--quiet"]
        cmd += ["--n-perm", str(args.n_perm), "--n-perm-heavy", str(args.n_perm_heavy)]
        if not plots:
            cmd.append("--no-plots")
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MPLBACKEND": "Agg"}
        with Meter() as m:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        FOREIGN.append(m.foreign)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((Path(tmp) / "summary.json").read_text())
        figures = len(list((Path(tmp) / "figures").glob("*"))) if plots else 0
    return {
        "command": cmd,
        "wall_s": m.wall,
        "cpu_per_wall": m.cpu_per_wall,
        "other_cores": m.foreign,
        "seconds": summary["seconds"],
        "figure_files": figures,
    }


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_tables(res: dict[str, Any], args: argparse.Namespace) -> None:
    (n, la, wa), (_, lb, wb) = res["shapes"]
    log()
    log(
        f"### {res['a']} ({la} layers x {wa}) vs {res['b']} ({lb} layers x {wb}), {n} prompts, "
        f"{SITE}/{POSITION}"
    )
    log()
    log("| stage | emocircuits (s) | baseline (s) | speed-up | baseline | check |")
    log("|---|---:|---:|---:|---|---|")
    for r in res["rows"]:
        mark = "*" if r["baseline_extrapolated"] else ""
        log(
            f"| {r['stage']} | {r['emocircuits_s']:.3f} | {r['baseline_s']:.2f}{mark} | "
            f"{r['speedup']:.{0 if r['speedup'] >= 10 else 1}f}x | {r['baseline']} | {r['check']} |"
        )
    log()
    log("\\* extrapolated linearly from the replicates timed (per-layer costs in full).")
    cli = res["cli"]
    cols = list(cli)
    log()
    log(
        f"`emocircuits compare --n-perm {args.n_perm} --n-perm-heavy {args.n_perm_heavy}`, "
        "seconds from summary.json (in-process):"
    )
    log()
    log("| stage | " + " | ".join(cols) + " |")
    log("|---|" + "---:|" * len(cols))
    for a in STAGES:
        vals = [cli[c]["seconds"].get(a) for c in cols]
        log(f"| {a} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
    log("| wall, subprocess | " + " | ".join(f"{cli[c]['wall_s']:.2f}" for c in cols) + " |")
    log(
        f"| wall < {TARGET_S:.0f} s | "
        + " | ".join(verdict(cli[c]["wall_s"] < TARGET_S) for c in cols)
        + " |"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Cross-model comparison (RQ2): emocircuits vs straightforward baselines, "
        "and the whole `emocircuits compare` command, on two captured activation folders."
    )
    p.add_argument("--a", type=Path, default=ROOT / DEFAULT_A, help=f"first folder ({DEFAULT_A})")
    p.add_argument("--b", type=Path, default=ROOT / DEFAULT_B, help=f"second folder ({DEFAULT_B})")
    p.add_argument(
        "--n-perm",
        type=int,
        default=1000,
        help="label permutations and ridge shuffled pairs (1000)",
    )
    p.add_argument(
        "--n-perm-heavy",
        type=int,
        default=200,
        help="CKA and mutual-kNN permutations, Procrustes shuffled pairs (200)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer baseline replicates (CKA 2, kNN 1, Procrustes 3, ridge 4 layers x 2), "
        "extrapolated linearly; library calls once",
    )
    p.add_argument("--threads", type=int, default=2, help="torch/BLAS threads (2)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    args.repeats = 1 if args.quick else 3
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [f for f in (args.a, args.b) if not (Path(f) / "manifest.json").is_file()]
    if missing:
        log(f"Not activation folders: {', '.join(map(str, missing))}. Capture both models on")
        log("one dataset, for example:")
        log("  emocircuits extract --model smollm2 --data extended --out runs/dev/ext3-smollm2")
        log("and pass them with --a DIR --b DIR.")
        return 1
    if min(args.n_perm, args.n_perm_heavy) < 1:
        log("--n-perm and --n-perm-heavy must be positive")
        return 2
    torch.set_num_threads(args.threads)
    try:  # numpy / scipy / scikit-learn BLAS on the same number of threads
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    t_start = time.perf_counter()
    info = machine(torch.get_num_threads())
    results: dict[str, Any] = {"machine": info, "args": vars(args)}
    results["loadavg_start"] = os.getloadavg()
    log("emocircuits cross-model comparison benchmark")
    log(
        f"  machine: {info['cpu']}, {info['nproc']} cores, torch threads "
        f"{info['torch_threads']}, BLAS {', '.join(info.get('blas', [])) or 'unknown'}"
    )
    log(
        f"  versions: python {info['python']}, numpy {info['numpy']}, scipy {info['scipy']}, "
        f"torch {info['torch']}, scikit-learn {info['scikit-learn']}"
    )
    log(
        f"  permutations {args.n_perm}, heavy {args.n_perm_heavy}; library calls best of "
        f"{args.repeats}; load average at start {os.getloadavg()[0]:.2f}"
        f"{'; --quick (baseline loops shortened and extrapolated)' if args.quick else ''}"
    )
    res = run_bench(args)
    results["comparison"] = res
    print_tables(res, args)
    log()
    finish(results, args.threads, t_start, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which training preset gives directions that hold on differently written text?

For each model, a logistic-regression probe (the library's ``fit_probe``: L2, C = 0.1,
features z-scored on the training rows; ``probe``'s defaults) is trained on each training
set on the mean-pooled residual stream, at the layer that the training set's own 5-fold
cross-validation picks (never the test set's best layer), and tested on each held-out set:
accuracy with its Wilson interval, neutral recall, and the layer-0 (lexical) probe trained
and tested the same way. ``A+B`` trains on both sets together.

Activations are captured once per model and dataset into ``--runs`` (resumable; ~10-25 min
per model on 2 busy cores) and reused.

    python bench/bench_everyday.py                                  # the table of BENCHMARKS
    python bench/bench_everyday.py --models smollm2-135m --train extended everyday \\
        --test natural everyday_heldout --json runs/everyday.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import cpu_model

import emocircuits as ec
from emocircuits.geometry.probes import cross_validated, fit_probe, wilson_interval

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("smollm2-135m", "gemma3-270m")
TRAIN = ("extended", "everyday", "extended+everyday")
TEST = ("natural", "bench/data/heldout_final.jsonl", "everyday_heldout")


def capture(model: str, data: str, runs: Path, lm_cache: dict[str, Any]) -> ec.ActivationStore:
    """The resid/mean activations of ``data`` through ``model`` (captured once)."""
    folder = runs / model / Path(data).stem
    if (folder / "manifest.json").is_file():
        return ec.load_activations(folder)
    if model not in lm_cache:
        lm_cache.clear()
        lm_cache[model] = ec.load_model(model, progress=False)
    src = str(ROOT / data) if data.endswith(".jsonl") else data
    t0 = time.perf_counter()
    store = ec.extract(
        lm_cache[model], src, folder, sites=("resid",), positions=("mean",), progress=False
    )
    print(
        f"  captured {model} / {data}: {len(store.labels)} rows in "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return store


def arrays(stores: list[ec.ActivationStore]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([s.get("resid", "mean") for s in stores])
    y = np.concatenate([np.asarray(s.labels) for s in stores])
    return x, y


def evaluate(xtr: np.ndarray, ytr: np.ndarray, tests: dict[str, tuple]) -> dict[str, Any]:
    """CV on the training set (picks the layer), then transfer to each test set."""
    cv = cross_validated(xtr, ytr, "logreg", k=5, seed=0)
    pick = int(cv.argmax())
    probe = fit_probe(xtr, ytr, "logreg")
    row: dict[str, Any] = {
        "layer": pick,
        "cv": float(cv[pick]),
        "cv_layer0": float(cv[0]),
        "n_train": len(ytr),
    }
    neutral = probe.classes.index("neutral")
    for name, (x, y) in tests.items():
        pred = probe.predict(x)  # [n, L]
        acc = (pred == np.array([probe.classes.index(v) for v in y])[:, None]).mean(0)
        lo, hi = wilson_interval(acc[pick], len(y))
        is_neutral = y == "neutral"
        row[name] = {
            "accuracy": float(acc[pick]),
            "ci": [float(lo), float(hi)],
            "neutral_recall": float((pred[is_neutral, pick] == neutral).mean()),
            "layer0": float(acc[0]),
            "best_layer": int(acc.argmax()),
            "best_accuracy": float(acc.max()),
            "n": len(y),
            "neutral_as": {
                c: int((pred[is_neutral, pick] == i).sum()) for i, c in enumerate(probe.classes)
            },
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--train", nargs="+", default=list(TRAIN))
    ap.add_argument("--test", nargs="+", default=list(TEST))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "everyday"))
    ap.add_argument("--capture-only", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    runs = Path(args.runs)
    print(
        f"machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}",
        flush=True,
    )
    out: dict[str, Any] = {}
    for model in args.models:
        lm_cache: dict[str, Any] = {}
        sets = {p for t in args.train for p in t.split("+")} | set(args.test)
        stores = {d: capture(model, d, runs, lm_cache) for d in sorted(sets)}
        lm_cache.clear()
        if args.capture_only:
            continue
        tests = {Path(t).stem: arrays([stores[t]]) for t in args.test}
        for train in args.train:
            xtr, ytr = arrays([stores[p] for p in train.split("+")])
            r = evaluate(xtr, ytr, tests)
            out.setdefault(model, {})[train] = r
            cells = "  ".join(
                f"{t}: {r[t]['accuracy']:.3f} [{r[t]['ci'][0]:.2f}, {r[t]['ci'][1]:.2f}] "
                f"nR {r[t]['neutral_recall']:.2f} L0 {r[t]['layer0']:.3f}"
                for t in tests
            )
            print(
                f"{model:13s} {train:18s} layer {r['layer']:2d} cv {r['cv']:.3f} "
                f"(L0 {r['cv_layer0']:.3f})  {cells}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

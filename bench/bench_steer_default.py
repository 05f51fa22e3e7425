"""The default steering path against issue 16's targets, on 20 neutral prompts the project
never used (``bench/data/steer_default_prompts.txt``), sampled with 3 seeds.

Per built-in model: directions the way the README's commands build them with their
defaults (``extract --data extended`` at the residual stream, then ``vectors`` with its
default method), the setting ``steer-sweep`` recommends with its defaults (run here unless
one is saved next to the vectors), then ``steer`` with that setting, sampling. Per emotion
it reports, against the targets: the VADER compound change over unsteered (mean, 95%
interval resampling prompts with all their seeds), the TextBlob change (the second judge),
the share of continuations with the emotion's markers, the perplexity ratio under the
unsteered model (median of per-row ratios and ratio of means), the distinct-2 ratio and
the VADER change of 4 random directions at the same setting (pooled).

    python bench/bench_steer_default.py --out bench-steer-default.json --max-new-tokens 30
    python bench/bench_steer_default.py --models smollm2-135m \\
        --vectors smollm2-135m=runs/v.safetensors       # reuse vectors (and their v.steer.json)
    python bench/bench_steer_default.py --sweep smollm2-135m=runs/sweep   # a saved sweep
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_model

import emocircuits as ec
from emocircuits.commands._common import lib_default
from emocircuits.data.dataset import load_prompts
from emocircuits.errors import EmocircuitsError
from emocircuits.geometry.vectors import directions
from emocircuits.interventions.scorers import MARKERS

PROMPTS = Path(__file__).parent / "data" / "steer_default_prompts.txt"
TARGETS = {
    "gratitude_vader_change": ">= +0.40",
    "anger_vader_change": "<= -0.35",
    "apology_markers": ">= 0.50",
    "perplexity_ratio": "<= 1.5 (median and ratio of means)",
    "distinct_2_ratio": ">= 0.75",
    "random_vader_change": "|x| < 0.10",
}


def _pairs(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        model, sep, path = v.partition("=")
        if not sep:
            raise SystemExit(f"expected MODEL=PATH, got {v!r}")
        out[model] = path
    return out


def build_vectors(lm: ec.LoadedModel, folder: Path, method: str) -> Path:
    """``extract --data extended --sites resid`` then ``vectors --method METHOD``."""
    acts = ec.extract(lm, "extended", folder / "ext", sites=("resid",), progress=False)
    return directions(acts, method=method).save(folder / "v.safetensors")


def verdict(emotion: str, d: dict[str, Any], r: dict[str, Any] | None) -> dict[str, Any]:
    """The targets this emotion's direction row ``d`` (and random row ``r``) meet."""
    out = {}
    if emotion == "gratitude":
        out["effect"] = d["vader_change"] >= 0.40
    elif emotion == "anger":
        out["effect"] = d["vader_change"] <= -0.35
    elif emotion == "apology":
        out["effect"] = d[f"marker_{emotion}"] >= 0.50
    out["perplexity"] = max(d["perplexity_ratio_median"], d["perplexity_ratio_mean"]) <= 1.5
    out["distinct_2"] = d["distinct_2_ratio"] >= 0.75
    out["random"] = r is not None and abs(r["vader_change"]) < 0.10
    out["all"] = all(out.values())
    return out


def one_model(model: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    lm = ec.load_model(model, progress=False)
    seconds: dict[str, float] = {"load": time.perf_counter() - t0}
    folder = work / model
    folder.mkdir(parents=True, exist_ok=True)
    given = _pairs(args.vectors).get(model)
    t = time.perf_counter()
    vpath = Path(given) if given else build_vectors(lm, folder, args.method)
    seconds["vectors"] = time.perf_counter() - t
    vecs = ec.EmotionVectors.load(vpath)
    sweep_dir = _pairs(args.sweep).get(model)
    setting: Any = None
    t = time.perf_counter()
    if sweep_dir:
        setting = ec.SweepResult.load(sweep_dir)
    else:
        try:
            from emocircuits.interventions.settings import load_recommendation

            load_recommendation(vpath, lm.provenance, "gratitude")
        except EmocircuitsError:  # no saved setting for this model: the sweep's defaults
            res = ec.steer_sweep(lm, None, vpath, progress=False)
            res.save(folder / "sweep")
            res.save_recommendations(vpath)
    seconds["sweep"] = time.perf_counter() - t
    prompts = load_prompts(PROMPTS)
    emotions = [e for e in vecs.emotions if e != "neutral"]
    out: dict[str, Any] = {"vectors": str(vpath), "method": vecs.method, "emotions": {}}
    for emotion in emotions:
        t = time.perf_counter()
        try:
            res = ec.steer(lm, prompts, vpath, emotion, setting=setting,
                           max_new_tokens=args.max_new_tokens, decoding="sample",
                           temperature=args.temperature, top_p=args.top_p,
                           seeds=args.seeds, progress=False)  # fmt: skip
        except EmocircuitsError as e:  # e.g. the sweep found no setting within its limits
            out["emotions"][emotion] = {"error": str(e)}
            print(f"  {model} {emotion}: {e}", flush=True)
            continue
        seconds[f"steer_{emotion}"] = time.perf_counter() - t
        res.save(folder / f"steer-{emotion}.jsonl")
        by = {r["condition"]: r for r in res.summary}
        d, r = by["direction"], by.get("random")
        row = {
            "setting": {k: res.meta["settings"][k] for k in ("layers", "alphas", "steer_tokens",
                                                               "where", "source")},
            "n_rows": d["n"], "n_prompts": d["n_prompts"],
            "vader_change": [d["vader_change"], d["vader_change_lo"], d["vader_change_hi"]],
            "textblob_change": [d["textblob_change"], d["textblob_change_lo"],
                                d["textblob_change_hi"]],
            "markers": ([d[f"marker_{emotion}"], d[f"marker_{emotion}_lo"],
                         d[f"marker_{emotion}_hi"]] if emotion in MARKERS else None),
            "perplexity_ratio_median": d["perplexity_ratio_median"],
            "perplexity_ratio_mean": d["perplexity_ratio_mean"],
            "distinct_2_ratio": d["distinct_2_ratio"],
            "random_vader_change": None if r is None else [r["vader_change"],
                                                           r["vader_change_lo"],
                                                           r["vader_change_hi"]],
            "prompt_baseline": by.get("prompt", {}).get("vader_change"),
            "judge_agreement": res.meta["judge_agreement"],
            "meets": verdict(emotion, d, r),
        }  # fmt: skip
        out["emotions"][emotion] = row
        mk = "" if row["markers"] is None else f" markers {row['markers'][0]:.0%}"
        print(f"  {model} {emotion}: L{row['setting']['layers']} a{row['setting']['alphas']} "
              f"VADER {d['vader_change']:+.3f} [{d['vader_change_lo']:+.3f}, "
              f"{d['vader_change_hi']:+.3f}] TextBlob {d['textblob_change']:+.3f}{mk} "
              f"ppl x{d['perplexity_ratio_median']:.2f}/x{d['perplexity_ratio_mean']:.2f} "
              f"d2 x{d['distinct_2_ratio']:.2f} random "
              f"{'-' if r is None else format(r['vader_change'], '+.3f')} "
              f"-> {'PASS' if row['meets']['all'] else 'miss'}", flush=True)  # fmt: skip
    out["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="smollm2-135m,gemma3-270m")
    p.add_argument(
        "--vectors",
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="reuse a vectors file (and the setting saved next to it)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="MODEL=DIR",
        help="use the recommendation of a saved steer-sweep folder",
    )
    p.add_argument(
        "--method",
        default=lib_default(directions, "method"),
        help="direction method when building vectors (default: the vectors command's, %(default)s)",
    )
    p.add_argument("--work", default="runs/bench-steer-default")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON results")
    args = p.parse_args(argv)
    args.seeds = tuple(int(s) for s in args.seeds.split(","))
    torch.set_num_threads(args.threads)
    import os

    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                    "loadavg_start": os.getloadavg()},
        "prompts": str(PROMPTS), "targets": TARGETS,
        "decoding": {"kind": "sample", "temperature": args.temperature, "top_p": args.top_p,
                     "seeds": list(args.seeds), "max_new_tokens": args.max_new_tokens},
        "models": {},
    }  # fmt: skip
    for model in args.models.split(","):
        print(model, flush=True)
        results["models"][model] = one_model(model, args, Path(args.work))
        if args.out:  # after each model, so that a long run leaves something behind
            Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"total {results['seconds']:.0f} s; load average {os.getloadavg()[0]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A full steer-sweep (issue 5's target: 3 emotions x 4 layers x 5 alphas x 20 prompts x 30
tokens in <= 5 minutes on 2 cores), against plain batched ``generate`` of the same number of
continuations in the same run (the floor: the sweep adds steering, scoring, perplexity, KL
and the random controls' share of rows).

    python bench/bench_sweep.py --vectors v.safetensors     # smollm2-135m
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _machine import cpu_model

import emocircuits as ec
from emocircuits.data.dataset import neutral_prompts
from emocircuits.geometry.vectors import EmotionVectors
from emocircuits.interventions import typical_norms
from emocircuits.interventions.generation import generate
from emocircuits.interventions.sweep import calibrate_alphas, default_layers, sweep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--vectors", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = ec.load_model(args.model, progress=False)
    vecs = EmotionVectors.load(args.vectors)
    base = ec.load_dataset("baseline").examples
    scales = typical_norms(lm, [e.text for e in base][:: max(1, len(base) // 64)])
    kl_texts = [e.text for e in base if e.emotion == "neutral"][:16]
    emotions = [e for e in vecs.emotions if e != "neutral"]
    layers = default_layers(lm.arch.n_layers)
    t1 = time.perf_counter()
    alphas, _ = calibrate_alphas(lm, vecs, emotions, layer=layers[len(layers) // 2],
                                 scales=scales, kl_texts=kl_texts)  # fmt: skip
    t2 = time.perf_counter()
    prompts = neutral_prompts("tune")
    res = sweep(lm, prompts, vecs, emotions, layers=layers, alphas=alphas, scales=scales,
                kl_texts=kl_texts, batch_size=args.batch_size)  # fmt: skip
    t3 = time.perf_counter()
    n = len(res.generations)
    generate(lm, (prompts * (n // len(prompts) + 1))[:n], max_new_tokens=30,
             batch_size=args.batch_size)  # fmt: skip
    t4 = time.perf_counter()
    print(f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, {args.model}")
    print(
        f"{len(emotions)} emotions x {len(layers)} layers x {len(alphas)} alphas x "
        f"{len(prompts)} prompts = {n} continuations (with none, random, prompt)"
    )
    print(
        f"load + norms {t1 - t0:.1f} s, alpha calibration {t2 - t1:.1f} s, sweep "
        f"{t3 - t2:.1f} s; total {t3 - t0:.1f} s (target <= 300 s)"
    )
    print(f"plain generate of {n} continuations: {t4 - t3:.1f} s "
          f"(sweep / plain = {(t3 - t2) / (t4 - t3):.2f}x)")  # fmt: skip
    checked = res.settings["random_checked"]
    print(f"random control raised to {res.settings['n_verify']} draws at {len(checked)} settings")
    for e, r in res.recommendations.items():
        print(f"  {e}: layer {r.layer} alpha {r.alpha} {r.effect} {r.value:+.3f} "
              f"[{r.lo:+.3f}, {r.hi:+.3f}] ppl x{r.perplexity_ratio_median:.2f} "
              f"random {r.random_vader_change:+.3f} ({r.random_draws} draws) "
              f"{'ok' if r.meets_limits else r.reason}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

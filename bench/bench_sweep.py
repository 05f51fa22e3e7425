"""The command's own default sweep (issue 16's target: <= 0.5x the time of a plain batched
``generate`` of all its continuations at full length): alpha calibration and the sweep of
3 emotions x 4 layers x 5 alphas x 20 prompts x 30 tokens (the screen, the full-length
settings it keeps with their pooled random controls, the held-out evaluation), against
plain batched ``generate`` of the continuations the whole grid has at full length (20
prompts x (none + 3 emotions x 20 settings + a random direction at each of the 20 settings
+ the prompting baseline per emotion) = 1680 x 30 tokens), in the same process. The plain
generation runs in two halves, one before and one after the sweep, so a machine whose load
drifts weighs on both sides alike; wall and this process's CPU seconds are both reported.

    python bench/bench_sweep.py --vectors v.safetensors     # smollm2-135m
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from _machine import Meter, cpu_model

import emocircuits as ec
from emocircuits.data.dataset import neutral_prompts
from emocircuits.geometry.vectors import EmotionVectors, steering_vectors
from emocircuits.interventions.generation import generate, has_chat_template
from emocircuits.interventions.steering import steering_scales
from emocircuits.interventions.sweep import (
    SCREEN_TOKENS,
    calibrate_alphas,
    default_layers,
    neutral_kl_texts,
    sweep,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--vectors", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--screen-tokens", type=int, default=SCREEN_TOKENS, help="0: no screen")
    p.add_argument("--n-keep", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = ec.load_model(args.model, progress=False)
    vecs = steering_vectors(EmotionVectors.load(args.vectors), args.vectors)[0]
    scales = steering_scales(lm)
    kl_texts = neutral_kl_texts()
    emotions = [e for e in vecs.emotions if e != "neutral"]
    layers = default_layers(lm.arch.n_layers)
    prompts = neutral_prompts("tune")
    n_grid = len(prompts) * (1 + len(layers) * 5 * (len(emotions) + 1)
                             + has_chat_template(lm) * len(emotions))  # fmt: skip
    plain_prompts = (prompts * (n_grid // len(prompts) + 1))[:n_grid]
    half = n_grid // 2

    def plain(part: list[str]) -> Meter:
        with Meter() as m:
            generate(lm, part, max_new_tokens=30, batch_size=args.batch_size)
        return m

    p1 = plain(plain_prompts[:half])
    with Meter() as cal:
        alphas, _ = calibrate_alphas(lm, vecs, emotions, layer=layers[len(layers) // 2],
                                     scales=scales, kl_texts=kl_texts)  # fmt: skip
    with Meter() as sw:
        res = sweep(lm, prompts, vecs, emotions, layers=layers, alphas=alphas, scales=scales,
                    kl_texts=kl_texts, batch_size=args.batch_size,
                    screen_tokens=args.screen_tokens or None, n_keep=args.n_keep)  # fmt: skip
    p2 = plain(plain_prompts[half:])
    plain_wall, plain_cpu = p1.wall + p2.wall, (p1.cpu_per_wall * p1.wall
                                                + p2.cpu_per_wall * p2.wall)  # fmt: skip
    own_wall = cal.wall + sw.wall
    own_cpu = cal.cpu_per_wall * cal.wall + sw.cpu_per_wall * sw.wall
    by_stage: dict[str, int] = {}
    for r in res.generations:
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + 1
    print(f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, {args.model}, "
          f"batch {args.batch_size}, {vecs.method} directions")  # fmt: skip
    print(
        f"grid: {len(emotions)} emotions x {len(layers)} layers x {len(alphas)} alphas x "
        f"{len(prompts)} prompts; plain generate of its {n_grid} continuations x 30 tokens"
    )
    print(f"sweep rows by stage: {by_stage} (screen {res.settings['screen_tokens']} tokens, "
          f"keep {res.settings['n_keep']}), random checked at "
          f"{len(res.settings['random_checked'])} settings")  # fmt: skip
    print(f"alpha calibration {cal.wall:.1f} s, sweep {sw.wall:.1f} s; plain {plain_wall:.1f} s "
          f"({p1.wall:.1f} + {p2.wall:.1f})")  # fmt: skip
    print(f"ratio, wall: sweep {sw.wall / plain_wall:.2f}x, calibration + sweep "
          f"{own_wall / plain_wall:.2f}x (target <= 0.5x)")  # fmt: skip
    print(f"ratio, this process's CPU seconds: sweep {sw.cpu_per_wall * sw.wall / plain_cpu:.2f}x,"
          f" calibration + sweep {own_cpu / plain_cpu:.2f}x")  # fmt: skip
    print(f"other processes used up to {max(m.foreign for m in (p1, cal, sw, p2)):.2f} cores; "
          f"load average at end {os.getloadavg()[0]:.2f}")  # fmt: skip
    for e, r in res.recommendations.items():
        if not r.found:
            print(f"  {e}: none ({len(r.candidates)} tried)")
            continue
        h = r.held_out or {}
        print(f"  {e}: layer {r.layer} alpha {r.alpha} {r.effect} tune {r.value:+.3f} "
              f"[{r.lo:+.3f}, {r.hi:+.3f}], held out {h['value']:+.3f} [{h['lo']:+.3f}, "
              f"{h['hi']:+.3f}] ppl x{h['perplexity_ratio_median']:.2f} distinct-2 "
              f"x{h['distinct_2_ratio']:.2f} random {h['random_vader_change']:+.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

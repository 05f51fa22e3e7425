"""Steered vs plain generation speed, in the same run (issue 5's target: steered >= 0.95x).

Greedy ``generate`` of SmolLM2-135M (or ``--model``) on ``--n`` neutral-ish prompts from the
`baseline` preset, ``--tokens`` new tokens, batches of ``--batch-size``; the steered run adds
one direction at one layer (every position). Each is timed best of ``--repeats``, alternating
plain and steered so drift hits both.

    python bench/bench_steer.py                    # smollm2-135m, 20 prompts, 30 tokens
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from _machine import cpu_model

import emocircuits as ec
from emocircuits.interventions import Steer, typical_norms
from emocircuits.interventions.generation import generate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--steer-tokens",
        type=int,
        default=None,
        help="hold the push for the first N new tokens (default: every token)",
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = ec.load_model(args.model, progress=False)
    texts = [e.text for e in ec.load_dataset("baseline").examples if e.emotion == "neutral"]
    prompts = texts[: args.n]
    s = typical_norms(lm, texts[:32])
    v = np.random.default_rng(0).normal(size=lm.arch.width)
    steers = [Steer(args.layer, v, 0.25, float(s[args.layer]))]
    kw = {"max_new_tokens": args.tokens, "batch_size": args.batch_size}
    generate(lm, prompts[: args.batch_size], **kw)  # warm-up
    best = {"plain": np.inf, "steered": np.inf}
    for _ in range(args.repeats):
        for name, st in (("plain", ()), ("steered", steers)):
            t0 = time.perf_counter()
            generate(lm, prompts, steers=st, steer_tokens=args.steer_tokens if st else None, **kw)
            best[name] = min(best[name], time.perf_counter() - t0)
    ratio = best["plain"] / best["steered"]
    print(f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, {args.model}")
    print(f"{args.n} prompts x {args.tokens} tokens, batch {args.batch_size}, best of "
          f"{args.repeats}, push held for {args.steer_tokens or 'every'} token(s): plain "
          f"{best['plain']:.2f} s, steered {best['steered']:.2f} s, "
          f"steered speed = {ratio:.3f}x plain (target >= 0.95)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bfloat16 vs float32 capture on the default model, interleaved in one process.

Usage: python bench/bench_dtype.py [--rows-step 3] [--passes 2]
Prints the total capture time of each dtype over the same batches and the speed-up.
"""

from __future__ import annotations

import argparse
import time

import torch

import emocircuits as ec
from emocircuits.capture.capture import CaptureSpec, iter_capture, plan_batches, token_lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows-step", type=int, default=3, help="every Nth row of `extended`")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = ec.load_dataset("extended").texts[:: args.rows_step]
    models = {
        d: ec.load_model(args.model, dtype=d, progress=False) for d in ("float32", "bfloat16")
    }
    spec = CaptureSpec(positions=("last", "mean"))
    batches = plan_batches(token_lengths(models["float32"], texts), 16)
    for lm in models.values():  # warm-up on the longest batch
        list(iter_capture(lm, texts, spec, batches=batches[:1]))
    seconds = dict.fromkeys(models, 0.0)
    for i, rows in enumerate(batches * args.passes):
        for name in list(models)[:: 1 if i % 2 else -1]:  # flip the order every batch
            t0 = time.perf_counter()
            list(iter_capture(models[name], texts, spec, batches=[rows]))
            seconds[name] += time.perf_counter() - t0
    print(f"{args.model}: {len(texts)} rows x {args.passes} passes, resid+attn+mlp, last+mean")
    for name, s in seconds.items():
        print(f"  {name:9s} {s:7.2f} s")
    print(f"  bfloat16 speed-up: {seconds['float32'] / seconds['bfloat16']:.2f}x")


if __name__ == "__main__":
    main()

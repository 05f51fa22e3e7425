"""`emocircuits steer-sweep`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from emocircuits.errors import EmocircuitsError

if TYPE_CHECKING:
    pass
from emocircuits.commands._common import (
    _add_steer_args,
    _positive,
    _print_steer_table,
    _steer_setup,
    _write_jsonl,
)


def run(args: argparse.Namespace) -> int:
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


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.interventions.sweep import SWEEP_STEER_TOKENS

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
    sw.set_defaults(func=run)

"""`emocircuits steer-sweep`."""

from __future__ import annotations

import argparse

from emocircuits.commands._common import add_counts, lib_default, model_placement
from emocircuits.commands.steer import add_steer_args
from emocircuits.interventions.sweep import steer_sweep


def run(args: argparse.Namespace) -> int:
    from emocircuits.capture.chat import check_chat
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.interventions.inputs import check_request, direction_note, resolve_prompts
    from emocircuits.interventions.summary import steer_table
    from emocircuits.interventions.sweep import calibration_line, default_sweep_dir
    from emocircuits.models import load_model

    # bad input fails before the model loads
    check_chat(args.chat, args.system)
    if args.prompts:
        resolve_prompts(args.prompts)
    vecs = EmotionVectors.load(args.vectors)
    note = direction_note(vecs, args.vectors)
    if note:
        print(note)
    check_request(vecs, args.emotion or (), args.layer or (), args.vectors)
    lm = load_model(args.model, trust_remote_code=args.trust_remote_code, progress=not args.quiet,
                    **model_placement(args))  # fmt: skip
    res = steer_sweep(
        lm, args.prompts, args.vectors, emotion=args.emotion, layer=args.layer,
        alpha=args.alpha, n_layers=args.n_layers, n_alphas=args.n_alphas,
        n_prompts=args.n_prompts, n_verify=args.n_verify, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, where=args.where, steer_tokens=args.steer_tokens,
        seed=args.seed, prompt_baseline=not args.no_prompt_baseline, chat=args.chat,
        system=args.system, progress=not args.quiet,
    )  # fmt: skip
    line = calibration_line(res)
    if line:
        print(line)
    out = res.save(args.out or default_sweep_dir(args.vectors, lm.name))
    path = res.save_recommendations(args.vectors)
    print(steer_table([r for r in res.summary if r["condition"] != "direction"]))
    print(res.recommendation_lines())
    print(f"wrote {out}/ (rows.jsonl, summary.csv, sweep.json, dose-response figures) and {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def default(name: str):
        return lib_default(steer_sweep, name)

    sw = sub.add_parser(
        "steer-sweep",
        help="dose-response over layers x alphas; saves the recommended setting per emotion",
        description="Steers the prompts (default: 20 shipped open-ended neutral prompts) "
        f"with every emotion's direction at every --layer (default: --n-layers "
        f"{default('n_layers')} layers evenly at 30-60% of the depth) and --alpha (default: "
        f"--n-alphas {default('n_alphas')} strengths chosen "
        "from the data, geometrically spaced between those costing a KL of 0.06 and 2 "
        "nats/token on neutral text; 0.03 and 0.5 with --steer-tokens all), the push held "
        f"for the first --steer-tokens new tokens (default {default('steer_tokens')}), plus "
        "a random direction at each setting, "
        "all in one batched generation. Writes rows.jsonl, summary.csv, sweep.json and a "
        "dose-response figure per emotion into --out, and the recommended setting per "
        "emotion (largest lower 95% bound of the effect with perplexity <= 1.35x none, "
        "distinct-2 >= 0.75x none, and --n-verify pooled random directions moving VADER "
        "< 0.15) into "
        "VECTORS.steer.json, which `steer` reads.",
    )
    add_steer_args(sw, steer_sweep)
    sw.add_argument("--emotion", nargs="+", default=None, help="default: all in the vectors")
    add_counts(
        sw,
        steer_sweep,
        {
            "--n-layers": "default layers (without --layer; %(default)s)",
            "--n-alphas": "strengths chosen from the data (%(default)s)",
            "--n-prompts": "use only the first N prompts",
            "--n-verify": "random directions (pooled) at a setting before it is recommended "
            "(default %(default)s; 1: the single draw every setting gets)",
        },
    )
    sw.add_argument("--out", default=None, help="folder (default: next to the vectors)")
    sw.set_defaults(func=run)

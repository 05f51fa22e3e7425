"""`emocircuits steer-sweep`."""

from __future__ import annotations

import argparse

from emocircuits.commands._common import _positive, add_counts, lib_default, model_placement
from emocircuits.commands.steer import add_steer_args
from emocircuits.interventions.sweep import steer_sweep


def _screen_tokens(value: str) -> int | None:
    """``off`` (None: every setting at full length) or a whole number >= 1."""
    return None if value == "off" else _positive(value)


def run(args: argparse.Namespace) -> int:
    from emocircuits.capture.chat import check_chat
    from emocircuits.geometry.vectors import EmotionVectors, steering_vectors
    from emocircuits.interventions.inputs import check_request, resolve_prompts
    from emocircuits.interventions.summary import steer_table
    from emocircuits.interventions.sweep import calibration_line, default_sweep_dir
    from emocircuits.models import load_model

    # bad input fails before the model loads
    check_chat(args.chat, args.system)
    if args.prompts:
        resolve_prompts(args.prompts)
    vecs = EmotionVectors.load(args.vectors)
    method = None if args.method == "as-is" else args.method
    _, rebuilt = steering_vectors(vecs, args.vectors, method)  # refuses before the model loads
    if rebuilt["rebuilt_from"]:
        print(f"steering with {rebuilt['method']} directions rebuilt from "
              f"{rebuilt['rebuilt_from']} ({args.vectors} holds {vecs.method} directions, "
              "which steer weakly)")  # fmt: skip
    check_request(vecs, args.emotion or (), args.layer or (), args.vectors)
    lm = load_model(args.model, trust_remote_code=args.trust_remote_code, progress=not args.quiet,
                    **model_placement(args))  # fmt: skip
    res = steer_sweep(
        lm, args.prompts, args.vectors, emotion=args.emotion, layer=args.layer,
        alpha=args.alpha, n_layers=args.n_layers, n_alphas=args.n_alphas,
        n_prompts=args.n_prompts, n_verify=args.n_verify, max_new_tokens=args.max_new_tokens,
        screen_tokens=args.screen_tokens, n_keep=args.n_keep, method=method,
        batch_size=args.batch_size, where=args.where, steer_tokens=args.steer_tokens,
        seed=args.seed, prompt_baseline=not args.no_prompt_baseline, chat=args.chat,
        system=args.system, progress=not args.quiet,
    )  # fmt: skip
    line = calibration_line(res)
    if line:
        print(line)
    out = res.save(args.out or default_sweep_dir(args.vectors, lm.name))
    path = res.save_recommendations(args.vectors)
    print("held-out prompts, at the recommended settings:")
    print(steer_table(res.stage("held_out")))
    print(res.recommendation_lines())
    print(f"wrote {out}/ (rows.jsonl, summary.csv, sweep.json, dose-response figures) and {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.geometry.directions import METHODS

    def default(name: str):
        return lib_default(steer_sweep, name)

    sw = sub.add_parser(
        "steer-sweep",
        help="dose-response over layers x alphas; saves the recommended setting per emotion",
        description="Splits the prompts (default: 20 shipped open-ended neutral prompts) "
        "into a tune half and a held-out half (seeded). On the tune half it steers with every "
        f"emotion's direction at every --layer (default: --n-layers {default('n_layers')} "
        f"layers evenly at 30-60% of the depth) and --alpha (default: --n-alphas "
        f"{default('n_alphas')} strengths chosen from the data, geometrically spaced between "
        "those costing a KL of 0.06 and 2 nats/token on neutral text; 0.03 and 0.5 with "
        f"--steer-tokens all), the push held for the first --steer-tokens new tokens "
        f"(default {default('steer_tokens')}), first with --screen-tokens "
        f"({default('screen_tokens')}) new tokens, then the --n-keep ({default('n_keep')}) "
        "best settings per emotion at full length, with --n-verify random directions "
        "(pooled) at a setting before it is recommended. The recommended setting per emotion "
        "(largest lower 95% bound of the effect, above 0, with perplexity <= 1.35x none, "
        "distinct-2 >= 0.75x none and the random directions moving VADER < 0.15), or 'none' "
        "when no setting passes, goes into VECTORS.steer.json, which `steer` reads; its "
        "effect is then measured on the held-out half. Writes rows.jsonl, summary.csv, "
        "sweep.json and a dose-response figure per emotion into --out.",
    )
    add_steer_args(sw, steer_sweep)
    sw.add_argument("--emotion", nargs="+", default=None, help="default: all in the vectors")
    sw.add_argument(
        "--method",
        choices=(*METHODS, "as-is"),
        default=default("method"),
        help="steer with directions of this method (default %(default)s, which steers best); "
        "vectors of another method are rebuilt from the activation folder they record; "
        "'as-is': the vectors as they are",
    )
    sw.add_argument(
        "--screen-tokens",
        type=_screen_tokens,
        default=default("screen_tokens"),
        metavar="N|off",
        help="new tokens per continuation when every setting is screened (default "
        "%(default)s); 'off': every setting at full length",
    )
    add_counts(
        sw,
        steer_sweep,
        {
            "--n-layers": "default layers (without --layer; %(default)s)",
            "--n-alphas": "strengths chosen from the data (%(default)s)",
            "--n-prompts": "use only the first N prompts (half tune, half held out)",
            "--n-keep": "settings per emotion kept by the screen for full length "
            "(default %(default)s)",
            "--n-verify": "random directions (pooled) at a setting before it is recommended, "
            "and at the recommended setting on the held-out prompts (default %(default)s)",
        },
    )
    sw.add_argument("--out", default=None, help="folder (default: next to the vectors)")
    sw.set_defaults(func=run)

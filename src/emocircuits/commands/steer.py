"""`emocircuits steer`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from emocircuits.commands._common import (
    _add_model_arg,
    _steer_tokens,
    add_chat_args,
    add_counts,
    add_decoding_args,
    add_model_placement_args,
    lib_default,
    model_placement,
)
from emocircuits.interventions.run import steer


def run(args: argparse.Namespace) -> int:
    from emocircuits.capture.chat import check_chat
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.interventions.inputs import check_request, direction_note, resolve_prompts
    from emocircuits.interventions.settings import require_setting
    from emocircuits.interventions.steering import describe_push
    from emocircuits.interventions.summary import steer_table
    from emocircuits.models import load_model

    # bad input fails before the model loads
    check_chat(args.chat, args.system)
    if args.prompts:
        resolve_prompts(args.prompts)
    if args.transfer:
        EmotionVectors.load(args.transfer)
    require_setting(args.vectors, args.layer, args.alpha)
    vecs = EmotionVectors.load(args.vectors)
    note = direction_note(vecs, args.vectors)
    if note:
        print(note)
    check_request(vecs, [args.emotion], args.layer or (), args.vectors)
    lm = load_model(args.model, trust_remote_code=args.trust_remote_code, progress=not args.quiet,
                    **model_placement(args))  # fmt: skip
    res = steer(
        lm, args.prompts, args.vectors, args.emotion, layer=args.layer, alpha=args.alpha,
        transfer=args.transfer, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        where=args.where, steer_tokens=args.steer_tokens, seed=args.seed,
        n_random=args.n_random, prompt_baseline=not args.no_prompt_baseline,
        chat=args.chat, system=args.system, progress=not args.quiet,
        decoding=args.decoding, temperature=args.temperature, top_p=args.top_p,
        seeds=args.seeds,
    )  # fmt: skip
    st = res.meta["settings"]
    if st["source"].startswith("recommended"):
        print(f"using the recommended setting: layer {st['layers'][0]}, alpha "
              f"{st['alphas'][0]}, pushed at {describe_push(st['steer_tokens'], st['where'])} "
              f"({st['source']})")  # fmt: skip
    out = res.save(args.out)
    print(steer_table(res.summary))
    agree = res.meta["judge_agreement"]["settings"]
    if agree["n"]:
        rho = "n/a" if agree["spearman"] is None else f"{agree['spearman']:+.2f}"
        print(f"VADER and TextBlob (second judge, never used to choose): same sign at "
              f"{agree['sign_agreement']:.0%} of {agree['n']} settings, "
              f"Spearman {rho}")  # fmt: skip
    print(f"wrote {out} ({len(res.generations)} rows) and {out.with_suffix('.summary.json')}")
    return 0


def add_steer_args(p: argparse.ArgumentParser, fn: Callable[..., Any]) -> None:
    """The options `steer` and `steer-sweep` share; defaults read from ``fn``."""
    _add_model_arg(p)
    p.add_argument("--vectors", required=True, help="vectors file written by `vectors`")
    p.add_argument(
        "--prompts",
        default=None,
        help=".txt (one per line) or .jsonl with text (default: the shipped neutral prompts)",
    )
    p.add_argument("--layer", type=int, nargs="+", default=None, help="residual layer(s)")
    p.add_argument(
        "--alpha", type=float, nargs="+", default=None, help="strength(s), x typical norm"
    )
    add_counts(p, fn, {"--max-new-tokens": None, "--batch-size": None})
    p.add_argument(
        "--where",
        choices=("all", "new"),
        default=lib_default(fn, "where"),
        help="add at every position (default) or only at generated tokens",
    )
    steer_tokens = lib_default(fn, "steer_tokens")
    p.add_argument(
        "--steer-tokens",
        type=_steer_tokens,
        default=steer_tokens,
        metavar="N|all",
        help="push only while the first N new tokens are written (with --where all, the "
        "prompt too); the rest is written without the push, attending to the pushed "
        f"tokens; 'all': every token (default {steer_tokens or 'all'})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=lib_default(fn, "seed"),
        help="random-direction control (default %(default)s)",
    )
    p.add_argument("--no-prompt-baseline", action="store_true", help="skip the prompting baseline")
    add_chat_args(p, fn, "prompt")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_placement_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser(
        "steer",
        help="continue prompts with an emotion direction added, and score the text",
        description="Adds alpha * s_l * (unit direction) to the residual stream at each "
        "--layer (s_l: the median residual norm there over content tokens of 64 baseline "
        "prompts, so alphas compare across layers and models) while the model continues "
        "each prompt (sampled with --seeds, or --decoding greedy; KV cache, batched; a "
        "row's text does not depend on the batch). Conditions: none (unsteered), direction, "
        "random (a random unit direction, same layer and alpha), prompt (chat models: the "
        "prompt wrapped in an instruction to express the emotion) and, with --transfer, "
        "another model's direction mapped into this one. Without --layer/--alpha the "
        "setting recommended by `steer-sweep` for this model is used. Each JSONL row has "
        "the prompt, condition, layer, alpha, decoding, seed, the continuation (new text "
        "only), VADER compound, TextBlob polarity (a second judge), emotion-marker hits, "
        "NRC lexicon counts, repetition and the perplexity "
        "under the unsteered model; FILE.summary.json has means with bootstrap intervals "
        "over prompts (each with all its seeds) and the two judges' agreement.",
    )
    add_steer_args(st, steer)
    st.add_argument("--emotion", required=True, help="which direction to add")
    st.add_argument("--out", required=True, help="JSONL file to write")
    st.add_argument(
        "--transfer",
        default=None,
        help="vectors already mapped into this model (`emocircuits map-vectors`): adds the "
        "condition `transfer`",
    )
    add_counts(
        st,
        steer,
        {
            "--n-random": "random directions per setting (default %(default)s; condition "
            "`random`, column `draw`); their rows are pooled: one draw is a noisy estimate of "
            "the null"
        },
    )
    add_decoding_args(st, steer)
    st.set_defaults(func=run)

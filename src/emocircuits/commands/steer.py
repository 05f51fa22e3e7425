"""`emocircuits steer`."""

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
    from tqdm.auto import tqdm

    from emocircuits.capture.store import atomic_write_json
    from emocircuits.data.dataset import load_prompts
    from emocircuits.geometry.vectors import EmotionVectors, safetensors_path
    from emocircuits.interventions.run import steer_prompts, summarize
    from emocircuits.interventions.steering import describe_push
    from emocircuits.interventions.sweep import load_recommendation, settings_path

    if args.prompts:
        load_prompts(args.prompts)  # its problems first
    transfer = EmotionVectors.load(args.transfer) if args.transfer else None
    if (not args.layer or not args.alpha) and not settings_path(args.vectors).is_file():
        raise EmocircuitsError(
            f"no --layer/--alpha given and no recommended settings "
            f"({settings_path(args.vectors)}); run `emocircuits steer-sweep --vectors "
            f"{args.vectors}` first, or give --layer and --alpha"
        )
    prompts, vecs, lm, scales, _ = _steer_setup(args, [args.emotion])
    source = "command line"
    layers, alphas, where, steer_tokens = args.layer, args.alpha, args.where, args.steer_tokens
    if not layers or not alphas:
        rec = load_recommendation(args.vectors, lm.provenance, args.emotion)
        layers = layers or [rec["layer"]]
        alphas = alphas or [rec["alpha"]]
        where = rec.get("where", where)
        if steer_tokens is None:  # given on the command line: that wins
            steer_tokens = rec.get("steer_tokens")
        source = f"recommended by steer-sweep ({rec['effect']} {rec['value']:+.3f})"
        print(f"using the recommended setting: layer {layers[0]}, alpha {alphas[0]}, pushed at "
              f"{describe_push(steer_tokens, where)} ({source})")  # fmt: skip
    from emocircuits.interventions.run import has_chat_template

    chat = has_chat_template(lm) and not args.no_prompt_baseline
    per = 1 + args.n_random + (transfer is not None)
    n = len(prompts) * (1 + chat + len(layers) * len(alphas) * per)
    with tqdm(total=n, desc="steer", unit="text", disable=args.quiet) as bar:
        rows = steer_prompts(
            lm, prompts, vecs, args.emotion, layers=layers, alphas=alphas,
            scales=scales, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            where=where, steer_tokens=steer_tokens, seed=args.seed,
            prompt=False if args.no_prompt_baseline else None, transfer=transfer,
            n_random=args.n_random, progress=bar.update,
        )  # fmt: skip
    out = Path(args.out)
    _write_jsonl(out, rows)
    summary = summarize(rows)
    meta = {
        "format": "emocircuits.steer",
        "version": 1,
        "model": lm.provenance,
        "vectors": {"file": str(safetensors_path(args.vectors)), **vecs.meta()},
        "transfer": None if transfer is None else {"file": str(args.transfer), **transfer.meta()},
        "emotion": args.emotion,
        "scales": {"what": "median residual norm over content tokens of 64 baseline prompts",
                   "values": [round(float(v), 4) for v in scales]},
        "settings": {"layers": list(layers), "alphas": list(alphas), "where": where,
                     "steer_tokens": steer_tokens, "source": source,
                     "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                     "n_random": args.n_random, "decoding": "greedy", "dtype": str(lm.dtype),
                     "prompts": str(args.prompts or "shipped neutral prompts (tune split)"),
                     "n_prompts": len(prompts)},
        "summary": summary,
    }  # fmt: skip
    atomic_write_json(out.with_suffix(".summary.json"), meta)
    _print_steer_table(summary)
    print(f"wrote {out} ({len(rows)} rows) and {out.with_suffix('.summary.json')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser(
        "steer",
        help="continue prompts with an emotion direction added, and score the text",
        description="Adds alpha * s_l * (unit direction) to the residual stream at each "
        "--layer (s_l: the median residual norm there over content tokens of 64 baseline "
        "prompts, so alphas compare across layers and models) while the model continues "
        "each prompt (greedy, KV cache, batched). Conditions: none (unsteered), direction, "
        "random (a random unit direction, same layer and alpha), prompt (chat models: the "
        "prompt wrapped in an instruction to express the emotion) and, with --transfer, "
        "another model's direction mapped into this one. Without --layer/--alpha the "
        "setting recommended by `steer-sweep` for this model is used. Each JSONL row has "
        "the prompt, condition, layer, alpha, the continuation (new text only), VADER "
        "compound, emotion-marker hits, NRC lexicon counts, repetition and the perplexity "
        "under the unsteered model; FILE.summary.json has means with bootstrap intervals.",
    )
    _add_steer_args(st)
    st.add_argument("--emotion", required=True, help="which direction to add")
    st.add_argument("--out", required=True, help="JSONL file to write")
    st.add_argument(
        "--transfer",
        default=None,
        help="vectors already mapped into this model (`emocircuits map-vectors`): adds the "
        "condition `transfer`",
    )
    st.add_argument(
        "--n-random",
        type=_positive,
        default=4,
        help="random directions per setting (default 4; condition `random`, column `draw`); "
        "their rows are pooled: one draw is a noisy estimate of the null",
    )
    st.set_defaults(func=run)

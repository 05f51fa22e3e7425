"""`emocircuits extract`."""

from __future__ import annotations

import argparse
import sys

from emocircuits.commands._common import (
    _add_model_arg,
    _csv,
    _layers,
    add_chat_args,
    add_counts,
    add_model_placement_args,
    lib_default,
    model_placement,
)


# ------------------------------------------------------------------------------- extract
def run(args: argparse.Namespace) -> int:
    from emocircuits.capture import capture_positions, extract
    from emocircuits.capture.chat import check_chat
    from emocircuits.data import load_dataset
    from emocircuits.models import load_model

    check_chat(args.chat, args.system)  # fail before loading
    ds = load_dataset(args.data, min_per_class=args.min_per_class)
    sites = args.sites + (("heads",) if args.heads and "heads" not in args.sites else ())
    positions = capture_positions(ds, args.positions)
    if positions != tuple(args.positions):
        print(
            f"note: {args.data} has no emotion_word field; capturing {', '.join(positions)}",
            file=sys.stderr,
        )
    lm = load_model(
        args.model,
        **model_placement(args),
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        progress=not args.quiet,
    )
    acts = extract(
        lm,
        ds,
        args.out,
        sites=sites,
        positions=positions,
        layers=args.layers,
        batch_size=args.batch_size,
        padding_side=args.padding_side,
        max_length=args.max_length,
        chat=args.chat,
        system=args.system,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    m = acts.manifest
    print(
        f"wrote {acts.path}: {m['n_rows']} rows x {m['n_layers']} layers x {m['width']} "
        f"({', '.join(m['sites'])}; {', '.join(m['positions'])}) in {m['seconds']} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emocircuits.capture import extract
    from emocircuits.capture.positions import RULES
    from emocircuits.models import load_model

    sites = lib_default(extract, "sites")
    positions = lib_default(extract, "positions")
    x = sub.add_parser(
        "extract",
        help="capture activations of a model on a dataset into a folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One forward pass per batch captures, for every layer, the residual "
        "stream (index 0 = embeddings, i = output of block i), the attention and MLP "
        "outputs, and optionally each head's input to the output projection. Output: "
        "safetensors shards + manifest.json (docs/FORMAT.md). An interrupted run resumes "
        "when re-run with the same arguments.",
        epilog="position rules:\n"
        "  last                last non-padding token (with --chat: the text's last)\n"
        "  end                 last token of the whole input (with --chat user: the\n"
        "                      assistant header, where the model is about to answer)\n"
        "  mean                mean over content tokens (no specials, no first token;\n"
        "                      with --chat: the text's own tokens, template excluded)\n"
        "  emotion_word        last sub-token of the row's emotion_word (= _last);\n"
        "                      rows without one (neutral) fall back to 'last'\n"
        "  emotion_word_first  / emotion_word_mean: first / mean of its sub-tokens\n"
        "  all                 every token (small runs only)\n",
    )
    _add_model_arg(x)
    x.add_argument("--data", required=True, help="preset name or JSONL file")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument(
        "--sites",
        type=_csv,
        default=sites,
        help=f"comma list of resid,attn,mlp,heads (default {','.join(sites)})",
    )
    x.add_argument("--heads", action="store_true", help="also capture per-head outputs")
    x.add_argument(
        "--positions",
        type=_csv,
        default=positions,
        help=f"comma list of {','.join(RULES)} (default {','.join(positions)})",
    )
    x.add_argument(
        "--layers",
        type=_layers,
        default=lib_default(extract, "layers"),
        help="layers to keep, e.g. '0,10-20,-1' (default all)",
    )
    add_counts(x, extract, {"--batch-size": None, "--shard-size": "rows per shard file"})
    x.add_argument(
        "--padding-side",
        choices=("left", "right"),
        default=lib_default(extract, "padding_side"),
        help="override the tokenizer's padding side (results do not depend on it)",
    )
    add_counts(
        x,
        extract,
        {
            "--max-length": "truncate longer prompts",
            "--min-per-class": "refuse datasets with fewer rows in some label (default "
            "%(default)s)",
        },
    )
    add_chat_args(x, extract, "text")
    x.add_argument(
        "--revision",
        default=lib_default(load_model, "revision"),
        help="hub revision (branch, tag or commit)",
    )
    x.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a hub model's own Python code to run (off by default)",
    )
    x.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing folder made with other settings",
    )
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_placement_args(x)
    x.set_defaults(func=run)

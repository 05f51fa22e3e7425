"""What the command modules share: argument types, shared arguments, output helpers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emocircuits.errors import EmocircuitsError

if TYPE_CHECKING:
    import numpy as np

    from emocircuits.capture.store import ActivationStore


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _layers(value: str) -> tuple[int, ...]:
    """``"0,5,-1"`` or ``"10-20"`` (inclusive range) or a mix."""
    out: list[int] = []
    for part in _csv(value):
        try:
            if "-" in part.lstrip("-"):
                a, b = part.lstrip("-").split("-", 1)
                lo = -int(a) if part.startswith("-") else int(a)
                out += list(range(lo, int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a layer list: {value!r}") from None
    return tuple(out)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _steer_tokens(value: str) -> int | None:
    """``all`` (None: push while every new token is written) or a whole number >= 1."""
    return None if value == "all" else _positive(value)


# ------------------------------------------------------------------------------- summary
def _site_array(args: argparse.Namespace) -> tuple[ActivationStore, str, np.ndarray]:
    """The activation folder of ``args.activations``, the position (default: the first
    captured) and the ``[n, layers, width]`` array at ``args.site``."""
    from emocircuits.capture import load_activations

    acts = load_activations(args.activations)
    position = args.position or acts.default_position
    return acts, position, acts.get(args.site, position)


# -------------------------------------------------------------------------------- steer
def _steer_setup(args: argparse.Namespace, emotions: Sequence[str]) -> tuple:
    """Prompts, vectors, the model and its typical residual norms (checked in that order,
    so bad input fails before the model loads)."""
    from emocircuits.data import load_dataset
    from emocircuits.data.dataset import load_prompts, neutral_prompts
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.interventions import typical_norms
    from emocircuits.models import load_model

    prompts = load_prompts(args.prompts) if args.prompts else neutral_prompts("tune")
    vecs = EmotionVectors.load(args.vectors)
    if vecs.method != "one_vs_rest":
        print(f"note: {args.vectors} holds {vecs.method} directions; one_vs_rest directions "
              "(`vectors --method one_vs_rest`) leave out what all emotions share and "
              "steer more specifically (docs/BENCHMARKS.md)")  # fmt: skip
    for e in emotions:
        if e not in vecs.directions:
            raise EmocircuitsError(
                f"no {e!r} direction in {args.vectors} (has {', '.join(vecs.emotions)})"
            )
    for layer in args.layer or ():
        if layer not in vecs.layers:
            raise EmocircuitsError(
                f"layer {layer} is not in {args.vectors} "
                f"(layers {vecs.layers[0]}-{vecs.layers[-1]})"
            )
    lm = load_model(args.model, trust_remote_code=args.trust_remote_code, progress=not args.quiet)
    base = load_dataset("baseline").examples
    scales = typical_norms(lm, [e.text for e in base][:: max(1, len(base) // 64)])
    return prompts, vecs, lm, scales, [e.text for e in base if e.emotion == "neutral"][:16]


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    import json

    from emocircuits.capture.store import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    )


def _print_steer_table(summary: Sequence[dict]) -> None:
    print(f"{'condition':10s} {'emotion':10s} {'layer':>5s} {'alpha':>6s}  "
          f"{'VADER change [95%]':24s} {'marker':>6s}  ppl ratio  distinct-2")  # fmt: skip
    for r in summary:
        layer = "-" if r["layer"] is None else str(r["layer"])
        ch = f"{r['vader_change']:+.3f} [{r['vader_change_lo']:+.3f}, {r['vader_change_hi']:+.3f}]"
        mk = r.get(f"marker_{r['emotion']}", float("nan")) if r["emotion"] else float("nan")
        print(f"{r['condition']:10s} {r['emotion'] or '-':10s} {layer:>5s} {r['alpha']:6.3f}  "
              f"{ch:24s} {mk:6.2f}  {r['perplexity_ratio_median']:9.2f}  "
              f"{r['distinct_2_ratio']:.2f}")  # fmt: skip


# --------------------------------------------------------------------------------- patch
def _patch_inputs(args: argparse.Namespace):
    """Dataset, vectors and emotions of `patch` / `ablate`, checked before the model loads."""
    from emocircuits.data import load_dataset
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.interventions.readout import FEELING_WORDS

    ds = load_dataset(args.data)
    vecs = EmotionVectors.load(args.vectors)
    if vecs.site != "resid":
        raise EmocircuitsError(f"{args.vectors} has {vecs.site} directions; resid is needed")
    labels = set(ds.labels)
    if args.baseline not in labels:
        raise EmocircuitsError(f"{args.data} has no {args.baseline!r} prompts")
    wanted = list(getattr(args, "emotion", None) or [])
    for e in wanted:
        if e not in vecs.directions:
            raise EmocircuitsError(
                f"no {e!r} direction in {args.vectors} (has {', '.join(vecs.emotions)})"
            )
        if e not in FEELING_WORDS or e not in labels:
            raise EmocircuitsError(
                f"{e!r} needs feeling words for the readout and prompts in {args.data}"
            )
    emotions = wanted or [e for e in vecs.emotions if e in FEELING_WORDS and e in labels]
    if not emotions:
        raise EmocircuitsError(
            f"no emotion of {args.vectors} has feeling words and prompts in {args.data}"
        )
    return ds, vecs, emotions


def _patch_meta(lm, ds, vecs, readouts, args: argparse.Namespace) -> dict:
    from emocircuits.geometry.vectors import safetensors_path

    return {
        "model": lm.provenance,
        "vectors": {"file": str(safetensors_path(args.vectors)), **vecs.meta()},
        "dataset": ds.provenance(),
        "readouts": {e: r.meta() for e, r in readouts.items()},
    }


def budget_table(command: str) -> dict[str, dict[str, Any]] | None:
    """The named settings of ``emocircuits COMMAND --budget``, or None if it has none.

    >>> sorted(budget_table("patch")), budget_table("geometry")
    (['default', 'fast'], None)
    """
    if command == "patch":
        from emocircuits.interventions.patching import PATCH_BUDGETS as table
    elif command == "ablate":
        from emocircuits.interventions.ablation import ABLATE_BUDGETS as table
    elif command == "heads":
        from emocircuits.interventions.heads import HEADS_BUDGETS as table
    else:
        return None
    return table


def fill_budget(args: argparse.Namespace, command: str) -> None:
    """Fill the settings not given on the command line from the budget ``args.budget``."""
    for key, value in budget_table(command)[args.budget].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _add_causal_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    """The arguments `patch` and `ablate` share."""
    _add_model_arg(p)
    p.add_argument("--vectors", required=True, help="vectors file written by `vectors`")
    p.add_argument("--data", default="extended", help="preset or JSONL (default extended)")
    p.add_argument("--baseline", default="neutral", help="label of the neutral prompts")
    p.add_argument(
        "--budget",
        choices=("default", "fast"),
        default="default",
        help="named settings for the options not given (fast: for a whole-study run)",
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--n-boot", type=_positive, default=1000, help="bootstrap resamples")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--batch-size", type=_positive, default=batch_size)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_activations_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--activations", "--activations_dir", required=True, help="folder written by `extract`"
    )


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    from emocircuits.models import DEFAULT_MODEL

    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in name, folder, .gguf file or hub id (default {DEFAULT_MODEL})",
    )


def _add_reading_args(p: argparse.ArgumentParser) -> None:
    """Which activations an analysis reads: site, position rule, baseline label."""
    p.add_argument("--site", default="resid", help="resid, attn, mlp (default resid)")
    p.add_argument(
        "--position", default=None, help="position rule (default mean if captured, else the first)"
    )
    p.add_argument("--baseline", default="neutral", help="baseline label (default neutral)")


def _add_steer_args(p: argparse.ArgumentParser, steer_tokens: int | None = None) -> None:
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
    p.add_argument("--max-new-tokens", type=_positive, default=30)
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument(
        "--where",
        choices=("all", "new"),
        default="all",
        help="add at every position (default) or only at generated tokens",
    )
    p.add_argument(
        "--steer-tokens",
        type=_steer_tokens,
        default=steer_tokens,
        metavar="N|all",
        help="push only while the first N new tokens are written (with --where all, the "
        "prompt too); the rest is written without the push, attending to the pushed "
        f"tokens; 'all': every token (default {steer_tokens or 'all'})",
    )
    p.add_argument("--seed", type=int, default=0, help="random-direction control (default 0)")
    p.add_argument("--no-prompt-baseline", action="store_true", help="skip the prompting baseline")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def lib_default(fn: Any, name: str) -> Any:
    """The default of keyword ``name`` of library function ``fn``: the one place a default
    is defined (the command's ``--help`` and the study config read it from there).

    >>> def f(x, *, n_boot=1000): ...
    >>> lib_default(f, "n_boot")
    1000
    """
    import inspect

    default = inspect.signature(fn).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{fn.__qualname__}() has no default for {name!r}")
    return default

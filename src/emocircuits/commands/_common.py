"""What the command modules share: argument types, shared arguments, output helpers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _layers(value: str) -> tuple[int, ...]:
    """``"0,5,-1"`` or ``"10-20"`` (inclusive range) or a mix (argparse type)."""
    from emocircuits.models.architectures import parse_layers

    try:
        return tuple(parse_layers(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _batch_size(value: str) -> int | str:
    """``auto`` (sized from free memory) or a whole number >= 1."""
    return "auto" if value.strip().lower() == "auto" else _positive(value)


def _steer_tokens(value: str) -> int | None:
    """``all`` (None: push while every new token is written) or a whole number >= 1."""
    return None if value == "all" else _positive(value)


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


def add_model_placement_args(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """Where and how a command's model is loaded: ``--device``, ``--device-map``,
    ``--max-memory``, ``--offload-folder``, ``--dtype``, ``--quantization`` (one group;
    defaults read from :func:`~emocircuits.models.load_model`; ``defaults=False``: None,
    for ``run``, whose config supplies them). :func:`model_placement` reads them back."""
    from emocircuits.models.loading import (
        DEVICE_MAP_STRATEGIES,
        DTYPE_CHOICES,
        QUANTIZATIONS,
        load_model,
    )

    def d(name: str) -> Any:
        return lib_default(load_model, name) if defaults else None

    g = p.add_argument_group("model placement (GPUs, large models)")
    g.add_argument("--device", default=d("device"),
                   help="cpu, cuda, cuda:N, mps, or auto: CUDA, then MPS, else CPU "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--device-map", default=d("device_map"), metavar="MAP",
                   help=f"spread the model over devices: {', '.join(DEVICE_MAP_STRATEGIES)}, "
                   "or a JSON file of module name -> device (0, cuda:1, cpu, disk)")  # fmt: skip
    g.add_argument("--max-memory", default=d("max_memory"), metavar="SIZES",
                   help="memory per device for a --device-map strategy, e.g. "
                   "0=20GiB,cpu=60GiB (alone: implies --device-map auto)")  # fmt: skip
    g.add_argument("--offload-folder", default=d("offload_folder"), metavar="DIR",
                   help="where weights mapped to 'disk' are kept")  # fmt: skip
    g.add_argument("--dtype", default=d("dtype"), choices=DTYPE_CHOICES,
                   help="compute dtype; auto: bfloat16 on a CUDA GPU that has it, else "
                   "float32 (default %(default)s); activations are stored as float32")  # fmt: skip
    g.add_argument("--quantization", default=d("quantization"), choices=QUANTIZATIONS,
                   help="load 4-bit or 8-bit weights with bitsandbytes (CUDA; pip install "
                   "'emocircuits[quant]')")  # fmt: skip


def model_placement(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :func:`~emocircuits.models.load_model` that
    :func:`add_model_placement_args` added, as parsed."""
    from emocircuits.models.loading import PLACEMENT

    return {k: getattr(args, k) for k in PLACEMENT}


def add_reading_args(
    p: argparse.ArgumentParser,
    fn: Callable[..., Any],
    *,
    site: bool = True,
    baseline: bool = True,
    position_help: str = "position rule (default mean if captured, else the first)",
) -> None:
    """Which activations an analysis reads: ``--site`` (unless ``site`` is False),
    ``--position`` and ``--baseline`` (unless ``baseline`` is False); defaults read from
    library function ``fn``."""
    if site:
        p.add_argument(
            "--site", default=lib_default(fn, "site"), help="resid, attn, mlp (default %(default)s)"
        )
    p.add_argument("--position", default=lib_default(fn, "position"), help=position_help)
    if baseline:
        p.add_argument(
            "--baseline",
            default=lib_default(fn, "baseline"),
            help="baseline label (default %(default)s)",
        )


def analyse_activations(fn: Callable[..., Any], args: argparse.Namespace, **kw: Any) -> Any:
    """``fn`` called on the ``--activations`` folder with the options of
    :func:`add_reading_args` and the keywords ``kw``."""
    from emocircuits.capture import load_activations

    return fn(
        load_activations(args.activations),
        site=args.site,
        position=args.position,
        baseline=args.baseline,
        **kw,
    )


def add_counts(
    p: argparse.ArgumentParser, fn: Callable[..., Any], helps: Mapping[str, str | None]
) -> None:
    """Whole-number options (>= 1), one per flag of ``helps`` (flag -> its help): ``--n-perm``
    is keyword ``n_perm`` of library function ``fn``, whose default it takes.
    ``--batch-size`` also takes ``auto``."""
    for flag, text in helps.items():
        default = lib_default(fn, flag.removeprefix("--").replace("-", "_"))
        if flag == "--batch-size":
            text = text or (
                "rows per forward pass, or auto (sized from free memory); halved when a "
                "batch runs out of memory (default %(default)s)"
            )
        p.add_argument(
            flag, type=_batch_size if flag == "--batch-size" else _positive, default=default,
            help=text,
        )  # fmt: skip


def add_level_arg(p: argparse.ArgumentParser, fn: Callable[..., Any]) -> None:
    """``--level``: the level of the intervals (default read from ``fn``)."""
    p.add_argument(
        "--level",
        type=float,
        default=lib_default(fn, "level"),
        help="interval level (default %(default)s)",
    )


def add_chat_args(p: argparse.ArgumentParser, fn: Callable[..., Any], what: str) -> None:
    """``--chat`` and ``--system``: put each text through the model's chat template
    (defaults read from library function ``fn``; ``what`` says what the texts are)."""
    p.add_argument(
        "--chat",
        choices=("user", "assistant"),
        default=lib_default(fn, "chat"),
        help=f"put each {what} through the model's chat template as the user's message "
        "(the assistant's turn opened after it) or as the assistant's reply (left open); "
        "default: raw text. For instruct models: see the README, 'Instruct models'",
    )
    p.add_argument(
        "--system",
        default=lib_default(fn, "system"),
        help="a system prompt (with --chat; folded into the user turn by templates that "
        "have no system role)",
    )


def _seeds(value: str) -> tuple[int, ...]:
    """``"0,1,2"``: distinct whole numbers >= 0 (argparse type)."""
    try:
        seeds = tuple(int(v) for v in _csv(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of whole numbers: {value!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"need distinct whole numbers >= 0, got {value!r}")
    return seeds


def _number(ok: Callable[[float], bool], what: str) -> Callable[[str], float]:
    """An argparse type: a number for which ``ok`` holds (``what`` says which)."""

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not ok(x):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return x

    return parse


_temperature = _number(lambda t: 0 < t < float("inf"), "> 0")
_top_p = _number(lambda p: 0 < p <= 1, "in (0, 1]")


def add_decoding_args(p: argparse.ArgumentParser, fn: Callable[..., Any]) -> None:
    """``--decoding``, ``--temperature``, ``--top-p`` and ``--seeds`` (defaults read from
    library function ``fn``, whose keywords they are)."""
    from emocircuits.interventions.generation import DECODING_KINDS

    seeds = ",".join(map(str, lib_default(fn, "seeds")))
    p.add_argument("--decoding", choices=DECODING_KINDS, default=lib_default(fn, "decoding"),
                   help="sample (one continuation per seed; intervals resample prompts with "
                   "all their seeds) or greedy (default %(default)s)")  # fmt: skip
    p.add_argument("--temperature", type=_temperature, default=lib_default(fn, "temperature"),
                   help="sampling temperature, > 0 (default %(default)s)")  # fmt: skip
    p.add_argument("--top-p", type=_top_p, default=lib_default(fn, "top_p"),
                   help="sample from the smallest set of tokens holding this share of the "
                   "probability, in (0, 1] (default %(default)s)")  # fmt: skip
    p.add_argument("--seeds", type=_seeds, default=lib_default(fn, "seeds"), metavar="LIST",
                   help=f"sampling seeds, comma list (default {seeds}); a row's text depends "
                   "on its prompt, steering, decoding and seed only")  # fmt: skip


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

"""What the command modules share: argument types, shared arguments, output helpers."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


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

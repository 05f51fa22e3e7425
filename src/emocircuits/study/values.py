"""Checking a config value against a keyword option's annotation and default (no argparse).

What an annotation allows: ``bool``, ``int``, ``float`` (an int is taken as a float),
``str``, ``Literal[...]`` (one of the choices), ``Annotated[int, ">= 1"]`` (a whole number
>= 1), ``X | None`` (the words ``all``, ``auto`` or ``none`` give None: TOML has no null),
and sequences ``Sequence[X]`` / ``tuple[X, ...]`` / ``list[X]`` (one value is a list of one;
a string is a comma-separated list, for ints also ranges: ``"0,10-20,-1"``). Without an
annotation the default's type decides; an option without either takes any value.

>>> from collections.abc import Sequence
>>> check_value("0-2,5", Sequence[int] | None, None)
[0, 1, 2, 5]
>>> check_value(3, float, 0.5)
3.0
>>> check_value("many", int, 1000)
Traceback (most recent call last):
...
ValueError: not a whole number: 'many'
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from emocircuits.models.architectures import parse_layers

NONE_WORDS = ("all", "auto", "none")


def type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of ``fn`` (``Annotated`` kept); {} if they cannot be
    resolved (names only imported for type checking): then the defaults decide."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # NameError, TypeError from unresolvable strings
        return {}


def _from_default(default: Any) -> Any:
    if default is None or default is Any:
        return Any
    if isinstance(default, list | tuple):
        inner = type(default[0]) if default else Any
        return collections.abc.Sequence[inner]
    return type(default)


def check_value(value: Any, annotation: Any, default: Any = None) -> Any:
    """``value`` as the option wants it (JSON-like: lists, not tuples), or ValueError with a
    one-line reason."""
    if annotation is Any or annotation is None:
        annotation = _from_default(default)
        if annotation is not Any and default is None:
            annotation = annotation | None
    return _check(value, annotation)


def _check(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return list(value) if isinstance(value, tuple) else value
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        v = _check(value, base)
        if ">= 1" in meta and isinstance(v, int) and v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.lower() in NONE_WORDS)
        ):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"invalid value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            shown = ", ".join(repr(c) for c in choices)
            raise ValueError(f"invalid choice: {value!r} (choose from {shown})")
        return value
    if origin in (list, tuple, collections.abc.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        if isinstance(value, str):
            if _base(inner) is int:
                return [_check(v, inner) for v in parse_layers(value)]
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, list | tuple):
            value = [value]
        return [_check(v, inner) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int or tp is float:
        return _number(value, tp)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    return value  # an annotation this module does not know: the function checks it


def _number(value: Any, tp: type[int] | type[float]) -> int | float:
    """``value`` as an ``int`` or ``float`` (``tp``): a number, or a string that parses as
    one; never a bool. A float option takes an int, an int option no float."""
    if isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            pass
    allowed = int if tp is int else int | float
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ValueError(f"not a {'whole number' if tp is int else 'number'}: {value!r}")
    return tp(value)


def _base(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp

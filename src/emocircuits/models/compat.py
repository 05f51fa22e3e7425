"""What differs between the transformers releases the project supports (``>=5.0,<6``).

The key-value cache of a forward pass is ``past_key_values`` up to 5.23 and ``cache`` from
5.24 on (the old name still works there, with a ``FutureWarning``, until 5.40). The model
tells which name it takes: its ``forward`` signature is read, not the version number, so a
model whose forward is wrapped (accelerate's device hooks) answers as well.

>>> cache_kwarg(lm.arch.base_model)                       # doctest: +SKIP
'cache'
>>> out = lm.arch.base_model(**inputs, use_cache=True)    # doctest: +SKIP
>>> output_cache(out).get_seq_length()                    # doctest: +SKIP
7
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

CACHE_NAMES = ("cache", "past_key_values")  # the current name first


def cache_kwarg(module: Any) -> str:
    """The keyword under which ``module``'s forward takes a key-value cache: ``"cache"``
    (transformers >= 5.24) or ``"past_key_values"``.

    >>> class Old:
    ...     def forward(self, input_ids, past_key_values=None): ...
    >>> cache_kwarg(Old())
    'past_key_values'
    """
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # no readable signature: the current name
        return CACHE_NAMES[0]
    return next((n for n in CACHE_NAMES if n in params), CACHE_NAMES[0])


def cache_from_kwargs(kwargs: Mapping[str, Any]) -> Any:
    """The key-value cache among a forward call's keyword arguments, under either name
    (None if there is none).

    >>> cache_from_kwargs({"past_key_values": 3}), cache_from_kwargs({"cache": 4})
    (3, 4)
    """
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def output_cache(out: Any) -> Any:
    """The key-value cache a forward pass returned (``out.cache``, or
    ``out.past_key_values`` before 5.24), without touching the deprecated alias."""
    fields = getattr(out, "__dataclass_fields__", {})
    return getattr(out, next((n for n in CACHE_NAMES if n in fields), CACHE_NAMES[1]))


__all__ = ["cache_from_kwargs", "cache_kwarg", "output_cache"]

"""Hooks as context managers: they register on enter and always remove their own handles.

>>> with hooked([(model.lm_head, "forward", fn)]):  # doctest: +SKIP
...     model(**inputs)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

Hook = tuple[nn.Module, str, Callable[..., Any]]
"""``(module, kind, fn)``; kind ``"forward"`` -> ``fn(module, args, output)``, kind
``"pre"`` -> ``fn(module, args, kwargs)`` (forward pre-hook with keyword arguments)."""


@contextmanager
def hooked(hooks: Sequence[Hook]) -> Iterator[None]:
    """Attach ``hooks`` for the duration of the block; remove exactly them on exit, also
    after an exception. The model's weights and modules are never changed."""
    handles = []
    try:
        for module, kind, fn in hooks:
            if kind == "forward":
                handles.append(module.register_forward_hook(fn))
            elif kind == "pre":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                raise ValueError(f"unknown hook kind {kind!r}")
        yield
    finally:
        for h in handles:
            h.remove()


#: libraries whose own hooks stay on a model by design (transformers puts output-capturing
#: hooks on the blocks the first time hidden states are asked for; accelerate's offload)
OWN_HOOKS = ("transformers.", "accelerate.")


def count_hooks(model: nn.Module) -> int:
    """Number of forward (pre-)hooks on any module of ``model`` that are not transformers'
    or accelerate's own: 0 after every emocircuits call."""
    hooks = (h for m in model.modules()
             for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()))  # fmt: skip
    where = (getattr(getattr(h, "func", h), "__module__", "") or "" for h in hooks)
    return sum(not w.startswith(OWN_HOOKS) for w in where)


def first_tensor(output: Any) -> Any:
    """Blocks return a tensor (transformers 5) or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, tuple | list) else output

"""Named settings (``budget="default"|"fast"``) of the causal analyses :func:`patch`,
:func:`ablate` and :func:`heads`: what a setting left as None takes. A setting given
explicitly wins; ``fast`` is the whole-study setting (docs/BENCHMARKS.md has the costs).

>>> sorted(budget_table("patch")), budget_table("geometry")
(['default', 'fast'], None)
>>> resolve_budget("patch", "fast", {"n_pairs": 5, "n_positions": None})
{'n_pairs': 5, 'n_positions': 3, 'n_layers': 8}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from emocircuits.errors import EmocircuitsError

BUDGETS = ("default", "fast")

PATCH_BUDGETS: dict[str, dict[str, Any]] = {
    "default": {"n_pairs": 24, "n_positions": 6, "n_layers": None},
    "fast": {"n_pairs": 12, "n_positions": 3, "n_layers": 8},
}
"""Named settings of ``patch``: ``default`` is the full heatmap (every layer, 6 positions,
24 pairs per emotion); ``fast`` (for a whole-study run) patches 8 evenly spaced layers (the
embedding and the last included), the cue's two tokens and the one before (-1, -2, -3) and
the body, with 12 pairs per emotion."""

ABLATE_BUDGETS: dict[str, dict[str, Any]] = {
    "default": {"n_train": 80, "n_eval": 40, "n_random": 20, "targets": None},
    "fast": {"n_train": 32, "n_eval": 10, "n_random": 39, "targets": ("all",)},
}
"""Named settings of ``ablate`` (``n_train``/``n_eval``: prompts per label for the probe
and the held-out prompts). ``default``: each emotion's direction and their span (``all``)
against 20 random subspaces of each dimension (smallest attainable p = 1/21). ``fast``
(for a whole-study run): the span only, against 39 random subspaces of its dimension
(smallest p = 1/40 = 0.025), on 10 held-out prompts per label, probes fitted on 32 per
label."""

HEADS_BUDGETS: dict[str, dict[str, Any]] = {
    "default": {"top_k": (1, 2, 4, 8), "n_random": 50, "n_ablate": 12, "n_per_class": None},
    "fast": {"top_k": (2, 8), "n_random": 39, "n_ablate": 4, "n_per_class": 32},
}
"""Named settings of ``heads``. ``default``: contributions over every prompt, k = 1, 2, 4, 8
against 50 random head sets (smallest attainable p = 1/51) on 12 prompts per class.
``fast`` (for a whole-study run): 32 prompts per class, k = 2 and 8 against 39 random sets
(smallest attainable p = 1/40 = 0.025) on 4 prompts per class."""

_TABLES = {"patch": PATCH_BUDGETS, "ablate": ABLATE_BUDGETS, "heads": HEADS_BUDGETS}


def budget_table(command: str) -> dict[str, dict[str, Any]] | None:
    """The named settings of a stage (``patch``, ``ablate``, ``heads``), or None if it has
    none (see the module docstring for an example)."""
    return _TABLES.get(command)


def resolve_budget(command: str, budget: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The budget's settings, with every setting of ``given`` that is not None winning
    (keys of ``given`` outside the budget are ignored)."""
    table = _TABLES[command]
    if budget not in table:
        raise EmocircuitsError(f"unknown budget {budget!r}; choose from {', '.join(table)}")
    return {k: v if given.get(k) is None else given[k] for k, v in table[budget].items()}

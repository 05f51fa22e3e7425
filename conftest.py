"""Doctests run with the suite (``--doctest-modules`` on ``src``). Docstring examples that
need a real activation folder or model are marked ``+SKIP`` throughout: they are
illustrations, not tests, so they are deselected (and counted as such) rather than
reported as skipped tests."""

from __future__ import annotations

import doctest

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, illustrations = [], []
    for item in items:
        dt = getattr(item, "dtest", None)
        if dt is not None and all(ex.options.get(doctest.SKIP) for ex in dt.examples):
            illustrations.append(item)
        else:
            keep.append(item)
    if illustrations:
        config.hook.pytest_deselected(items=illustrations)
        items[:] = keep

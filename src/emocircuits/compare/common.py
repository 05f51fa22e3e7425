"""What the comparison modules share: reading their CSV tables back with their types, and
small helpers about activation stores (in memory or on disk) and file names.

A table is written by :func:`emocircuits.tables.csv_bytes` (``None`` -> empty
cell, ``True`` -> ``True``, floats by ``repr``), so :func:`read_rows` gives back the very
values that were written: text columns stay text, an empty cell is ``None``, ``True`` /
``False`` are booleans, and numbers are ``int`` or ``float`` again.

>>> import io
>>> read_rows(io.StringIO("model_a,layer_a,cka,lambda,matched\\n12,3,0.5,,True\\n"))
[{'model_a': '12', 'layer_a': 3, 'cka': 0.5, 'lambda': None, 'matched': True}]
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO, Any

from emocircuits.capture.store import ActivationStore, load_activations

#: columns that hold names, never numbers (a model called "12" stays "12")
TEXT_COLUMNS = frozenset({"model_a", "model_b", "map", "emotion", "basis"})


def _value(key: str, v: str) -> Any:
    if key in TEXT_COLUMNS:
        return v
    if v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v) if v.lstrip("-").isdigit() else float(v)
    except ValueError:
        return v


def read_rows(source: str | os.PathLike[str] | IO[str]) -> list[dict[str, Any]]:
    """Rows of a CSV table written by emocircuits, each value with its type back."""
    if isinstance(source, str | os.PathLike):
        with open(source, newline="", encoding="utf-8") as f:
            return read_rows(f)
    return [{k: _value(k, v) for k, v in row.items()} for row in csv.DictReader(source)]


def safe_name(name: str) -> str:
    """``name`` usable in a file name: anything but letters, digits, ``-_.`` becomes ``_``.

    >>> safe_name("<b>a/b</b>")
    '_b_a_b__b_'
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def as_store(acts: ActivationStore | str | os.PathLike[str]) -> ActivationStore:
    """An activation store, read from its folder when given a path.

    >>> as_store("runs/smollm2").path  # doctest: +SKIP
    PosixPath('runs/smollm2')
    """
    return load_activations(acts) if isinstance(acts, str | os.PathLike) else acts


def store_path(acts: ActivationStore) -> Path | None:
    """The folder of a store, or None for one held in memory.

    >>> store_path(load_activations("runs/smollm2"))  # doctest: +SKIP
    PosixPath('runs/smollm2')
    """
    path = getattr(acts, "path", None)
    return None if path is None else Path(path)


def store_meta(acts: ActivationStore) -> dict[str, Any]:
    """The store's provenance (its manifest: model, dtype, dataset, ...).

    >>> store_meta(load_activations("runs/smollm2"))["model"]["name"]  # doctest: +SKIP
    'HuggingFaceTB/SmolLM2-135M'
    """
    return dict(getattr(acts, "manifest", None) or getattr(acts, "provenance", None) or {})


def where(acts: ActivationStore) -> str | None:
    """What an error message names for a store: its folder, or its model in memory.

    >>> where(load_activations("runs/smollm2"))  # doctest: +SKIP
    'runs/smollm2'
    """
    path = store_path(acts)
    if path is not None:
        return str(path)
    name = store_meta(acts).get("model", {}).get("name")
    return f"activations of {name}" if name else None

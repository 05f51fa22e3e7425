"""Tidy tables (lists of flat dicts) as CSV files: what every stage's result folder holds;
rows of nested values (steering continuations) as JSONL, and JSON files read with a clear error.

>>> csv_bytes([{"layer": 0, "cos": 0.5}]).decode().splitlines()
['layer,cos', '0,0.5']
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emocircuits.capture.store import atomic_write_bytes, atomic_write_json
from emocircuits.errors import DataError


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    """A tidy table (list of flat dicts with the same keys) as CSV bytes."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue().encode()


def write_tables(
    out: str | Path, tables: dict[str, list[dict[str, Any]]], json_files: dict[str, Any]
) -> Path:
    """Write ``{name}.csv`` per table, then the JSON files in order (the last one, by
    convention ``summary.json``, marks the folder complete); every file atomically.

    >>> write_tables("runs/x", {"t": [{"a": 1}]}, {"summary.json": {}})  # doctest: +SKIP
    PosixPath('runs/x')
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        atomic_write_bytes(out / f"{name}.csv", csv_bytes(rows))
    for name, obj in json_files.items():
        atomic_write_json(out / name, obj)
    return out


def read_table(folder: str | Path, name: str) -> list[dict[str, Any]]:
    """Rows of a saved table with numbers parsed back (``""`` stays a string).

    >>> read_table("runs/x", "t")  # doctest: +SKIP
    [{'a': 1}]
    """
    path = Path(folder) / f"{name}.csv"
    if not path.is_file():
        raise DataError(f"no {name}.csv in {folder} (not a geometry folder?)")
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                with contextlib.suppress(ValueError):
                    row[k] = int(v) if v.lstrip("-").isdigit() else float(v)
            rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object a line, atomically (the folder is made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows :func:`write_jsonl` wrote (blank lines skipped); a bad line names itself."""
    try:
        return [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise DataError(f"not JSONL ({e.msg})", where=f"{path}:{e.lineno}") from None


def read_json(path: Path) -> Any:
    """A JSON file's content, or a :class:`DataError` naming the file."""
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError:
        raise DataError("not a JSON file", where=str(path)) from None

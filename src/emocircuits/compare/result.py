"""The folder of a cross-model comparison: :class:`ComparisonResult` (what
:func:`~emocircuits.compare.comparison.compare_models` returns) saves its tables (CSV),
``summary.json`` and figures exactly as ``emocircuits compare --out`` writes them, and reads
such a folder back.

>>> ComparisonResult.load("runs/compare-a-b").rows()[0]["measure"]  # doctest: +SKIP
'cka'
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from emocircuits.compare.common import read_rows, safe_name
from emocircuits.errors import DataError
from emocircuits.results import Result
from emocircuits.tables import write_tables

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMAT = "emocircuits.compare"
#: the tables of a comparison folder, in the order they are written
TABLES = ("layer_pairs", "maps", "directions", "naive")


@dataclass(repr=False)
class ComparisonResult(Result):
    """What :func:`compare_models` found: tidy ``tables`` (lists of flat dicts: per layer
    pair, per map and layer, per mapped direction, and the pilot's naive table when two
    widths are equal) and the ``summary`` (provenance, settings, and per model pair one
    headline per measure beside its null).

    ``save(folder)`` writes ``{table}.csv``, ``summary.json`` (last) and, unless
    ``plots=False``, the figures in ``folder/figures``: what ``emocircuits compare --out
    folder`` writes. ``rows()`` is one row per model pair and measure.

    >>> res = ComparisonResult.load("runs/compare")  # doctest: +SKIP
    >>> [r["measure"] for r in res.rows() if r["beyond_chance"]][:2]  # doctest: +SKIP
    ['cka', 'rsa']
    >>> res.save("runs/compare-copy", plots=False)  # doctest: +SKIP
    PosixPath('runs/compare-copy')
    """

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    command: ClassVar[str] = "compare"

    def rows(self) -> list[dict[str, Any]]:
        """Per model pair and measure: its value, the null's 95% range, p, beyond chance."""
        out = []
        for pair in self.summary.get("pairs", []):
            for name, h in pair["measures"].items():
                lo, hi = h.get("null_95") or (None, None)
                out.append(
                    {
                        "pair": f"{pair['model_a']} vs {pair['model_b']}",
                        "measure": name,
                        "value": h["value"],
                        "null_lo": lo,
                        "null_hi": hi,
                        "p": h.get("p"),
                        "beyond_chance": h["beyond_chance"],
                    }
                )
        return out

    def title(self) -> str:
        names = " vs ".join(m["name"] for m in self.summary.get("models", []))
        rows = self.rows()
        yes = sum(r["beyond_chance"] for r in rows)
        return f"ComparisonResult: {names}: {yes} of {len(rows)} measures beyond chance"

    def save(self, path: str | os.PathLike[str], *, plots: bool = True) -> Path:
        """Write ``{table}.csv`` and ``summary.json`` (last) into ``path``, then the figures
        into ``path/figures`` unless ``plots`` is False; returns the folder."""
        out = write_tables(path, self.tables, {"summary.json": self.summary})
        if plots:
            self.plot(out / "figures")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ComparisonResult:
        """Read a folder written by :meth:`save` (or ``emocircuits compare``)."""
        folder = Path(path)
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            raise DataError(f"{folder} is not a comparison folder (no summary.json)")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summary.get("format") != FORMAT:
            raise DataError(f"{summary_path} is not an {FORMAT} summary")
        tables = {
            name: read_rows(folder / f"{name}.csv")
            for name in TABLES
            if (folder / f"{name}.csv").is_file()
        }
        return cls(tables, summary)

    def figure(self) -> Figure | None:
        """CKA over every layer pair of the first model pair, best matches marked."""
        return next((fig for _, fig in self._figures()), None)

    def plot(self, out: str | os.PathLike[str]) -> list[Path]:
        """Write every figure (PNG and SVG) into ``out``, per model pair: CKA over every
        layer pair, the mapped-direction cosines of each map with both nulls,
        identification and map quality by layer; returns the paths."""
        from emocircuits.plots.common import save_figure

        paths: list[Path] = []
        for stem, fig in self._figures():
            paths += save_figure(fig, Path(out) / stem)
        return paths

    def _figures(self) -> Iterator[tuple[str, Figure]]:
        """``(file stem, figure)`` pairs, drawn one at a time from the tables."""
        from emocircuits.plots.compare import (
            cka_heatmap,
            identification_curves,
            map_quality,
            mapped_cosines,
        )

        grid = self.tables.get("layer_pairs", [])
        maps = self.tables.get("maps", [])
        dirs = self.tables.get("directions", [])
        for ma, mb in dict.fromkeys((r["model_a"], r["model_b"]) for r in grid):
            stem = f"{safe_name(ma)}_vs_{safe_name(mb)}"
            rows = [r for r in grid if (r["model_a"], r["model_b"]) == (ma, mb)]
            la = sorted({r["layer_a"] for r in rows})
            lb = sorted({r["layer_b"] for r in rows})
            cka, p = np.full((len(la), len(lb)), np.nan), np.full((len(la), len(lb)), np.nan)
            best = np.zeros(len(la), dtype=int)
            for r in rows:
                a, b = la.index(r["layer_a"]), lb.index(r["layer_b"])
                cka[a, b], p[a, b] = _num(r["cka"]), _num(r["cka_p"])
                if _truthy(r["matched"]):
                    best[a] = b
            yield (
                f"{stem}-cka",
                cka_heatmap(cka, la, lb, name_a=ma, name_b=mb, best_b=best, p=p),
            )
            by_map: dict[str, list[dict[str, Any]]] = {}
            for r in maps:
                if (r["model_a"], r["model_b"]) == (ma, mb):
                    by_map.setdefault(r["map"], []).append(r)
            acc, acc_p, r2 = {}, {}, {}
            layers: list[int] = []
            for m, rs in by_map.items():
                layers = [r["layer_a"] for r in rs]
                acc[m] = np.array([_num(r["identification"]) for r in rs], float)
                acc_p[m] = np.array([_num(r["identification_p"]) for r in rs], float)
                r2[m] = np.array([_num(r["r2"]) for r in rs], float)
                drows = [r for r in dirs if (r["model_a"], r["model_b"], r["map"]) == (ma, mb, m)]
                emotions = list(dict.fromkeys(r["emotion"] for r in drows))

                def col(key: str, drows: list = drows, emotions: list = emotions) -> np.ndarray:
                    return np.array(
                        [[_num(r[key]) for r in drows if r["emotion"] == e] for e in emotions]
                    )

                yield (
                    f"{stem}-{m}-cosines",
                    mapped_cosines(
                        layers,
                        dict(zip(emotions, col("cos"), strict=True)),
                        null_lo=col("shuffle_null_lo").min(0),
                        null_hi=col("shuffle_null_hi").max(0),
                        perm_lo=col("perm_null_lo").min(0),
                        perm_hi=col("perm_null_hi").max(0),
                        title=f"{m} map {ma} → {mb}: cos(W v_A, v_B) per emotion (held-out rows)",
                        xlabel=f"layer of {ma} (each with its best-matching layer of {mb})",
                    ),
                )
            if acc:
                chance = 1.0 / max(1, len({r["emotion"] for r in dirs}))
                yield (
                    f"{stem}-identification",
                    identification_curves(
                        layers, acc, chance=chance, p=acc_p,
                        title=f"Cross-model identification {ma} → {mb}",
                    ),
                )  # fmt: skip
                yield (
                    f"{stem}-r2",
                    map_quality(layers, r2, title=f"Held-out R² of the maps {ma} → {mb}"),
                )


def _num(v: Any) -> float:
    """A table cell as a number for a figure (empty or None: NaN)."""
    return np.nan if v is None or v == "" else float(v)


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("true", "1")

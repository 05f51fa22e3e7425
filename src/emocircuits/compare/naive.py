"""The pilot's naive cross-model table, kept to show why it means nothing.

It compares two models' direction vectors coordinate by coordinate. Coordinate ``i`` of one
model has no relation to coordinate ``i`` of another, so the cosine is what a random change
of basis gives: about ``0 +- 1/sqrt(W)`` per layer. Every row is therefore printed beside
the same statistics after a uniformly random rotation of the second model's directions (one
rotation for all layers: a model's directions are correlated across layers, so their mean
over layers does not average the noise away), and flagged coordinate-dependent.

The pilot compared saved vector files this way (``emocircuits compare --vectors_dir``):
:func:`compare_pilot_vectors` does it for :class:`~emocircuits.geometry.EmotionVectors` and
returns a :class:`NaiveComparison` that saves the table and one figure per emotion.

>>> d = {"m1": {"anger": np.eye(3, 8)}, "m2": {"anger": np.eye(3, 8)[::-1]}}
>>> naive_table(d)[0]["mean"]
0.333333
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from emocircuits.compare.common import read_rows, safe_name
from emocircuits.compare.perm import null_band
from emocircuits.errors import DataError
from emocircuits.results import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from emocircuits.geometry.vectors import EmotionVectors

#: the file name of the naive table in the output folder (the pilot's name)
TABLE = "cross_model_similarity.csv"


def random_cosines(width: int, n_layers: int, n_draws: int = 20000, seed: int = 0) -> np.ndarray:
    """``[n_draws, n_layers]`` cosines of independent uniformly random unit vectors."""
    rng = np.random.default_rng(seed)
    c2 = rng.beta(0.5, (width - 1) / 2, size=(n_draws, n_layers))
    return np.sqrt(c2) * rng.choice([-1.0, 1.0], size=c2.shape)


def random_basis_cosines(
    a: np.ndarray, b: np.ndarray, n_draws: int = 2000, seed: int = 0
) -> np.ndarray:
    """``[n_draws, L]`` cosines ``cos(a_l, Q b_l)`` for uniformly random rotations ``Q`` of
    ``R^W`` (one per draw, shared by the layers). ``Q b`` only needs a random orthonormal
    frame for the span of ``b``'s rows: ``b = R^T F^T`` (QR), ``Q b = R^T G^T``."""
    rng = np.random.default_rng(seed)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-300)
    _, r = np.linalg.qr(b.T)  # b.T = F r, F [W, L] orthonormal
    g, rg = np.linalg.qr(rng.normal(size=(n_draws, *b.T.shape)))  # Haar frames
    g = g * np.sign(np.diagonal(rg, axis1=-2, axis2=-1))[:, None, :]
    qb = (g @ r).transpose(0, 2, 1)  # [D, L, W]
    return np.einsum("lw,dlw->dl", a, qb)


def _stats(c: np.ndarray) -> dict[str, np.ndarray]:
    return {"mean": c.mean(-1), "std": c.std(-1), "min": c.min(-1), "max": c.max(-1)}


def naive_table(
    directions: Mapping[str, Mapping[str, np.ndarray]], seed: int = 0
) -> list[dict[str, Any]]:
    """Rows ``emotion, model_a, model_b, mean, std, min, max`` of the raw cosine over
    layers (as the pilot), each with the range of the same statistic after a random rotation
    of the second model (``random_*``) and the share of rotations whose mean cosine is at
    least as far from 0 (``p_random``).
    ``directions``: ``{model: {emotion: [L, W]}}``; models of another width are skipped;
    different depths are matched by relative depth."""
    rows = []
    for ma, mb in combinations(directions, 2):
        da, db = directions[ma], directions[mb]
        for emo in [e for e in da if e in db]:
            a, b = np.asarray(da[emo], float), np.asarray(db[emo], float)
            if a.shape[-1] != b.shape[-1]:
                continue
            idx = np.rint(np.linspace(0, len(b) - 1, len(a))).astype(int)
            b = b[idx]
            with np.errstate(invalid="ignore", divide="ignore"):
                cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            obs = _stats(cos)
            null = _stats(random_basis_cosines(a, b, seed=seed))
            row: dict[str, Any] = {"emotion": emo, "model_a": ma, "model_b": mb}
            row.update({k: round(float(v), 6) for k, v in obs.items()})
            for k, v in null.items():
                lo, hi = null_band(v)
                row[f"random_{k}_lo"], row[f"random_{k}_hi"] = (
                    round(float(lo), 6),
                    round(float(hi), 6),
                )
            row["p_random"] = round(float((np.abs(null["mean"]) >= abs(obs["mean"])).mean()), 6)
            # one layer's cosine of two independent random vectors of this width (95%)
            lo, hi = null_band(random_cosines(a.shape[-1], 1, seed=seed)[:, 0])
            row["random_vector_lo"], row["random_vector_hi"] = (
                round(float(lo), 6),
                round(float(hi), 6),
            )
            row["width"], row["layers"] = a.shape[-1], len(a)
            row["basis"] = "coordinate-dependent: not a similarity between models"
            rows.append(row)
    return rows


#: ``{emotion: {"a ↔ b": (layers of a, cosine per layer, width)}}``
Curves = dict[str, dict[str, tuple[list[int], np.ndarray, int]]]


@dataclass(repr=False)
class NaiveComparison(Result):
    """The pilot's naive table (:func:`naive_table` rows) and, per emotion and model pair,
    the raw cosine by layer for its figures. ``save(folder)`` writes
    ``folder/cross_model_similarity.csv`` (or ``table=``) and one figure per emotion in
    ``folder``: what ``emocircuits compare --vectors_dir ... --out folder`` writes. A loaded
    result has the table only (the curves need the vectors), so it saves no figures.

    >>> NaiveComparison.load("runs/naive").rows()[0]["p_random"]  # doctest: +SKIP
    0.41
    """

    table: list[dict[str, Any]] = field(default_factory=list)
    curves: Curves = field(default_factory=dict)

    command: ClassVar[str] = "compare"

    def rows(self) -> list[dict[str, Any]]:
        """The naive table: per emotion and model pair, the raw cosine's mean, std, min, max
        beside the same statistics after a random rotation."""
        return self.table

    def title(self) -> str:
        return (
            f"NaiveComparison: {len(self.table)} rows (coordinate-dependent: not a "
            "similarity between models)"
        )

    def save(
        self,
        path: str | os.PathLike[str] = ".",
        *,
        table: str | os.PathLike[str] | None = None,
        plots: bool = True,
    ) -> Path:
        """Write the table to ``table`` (default ``path/cross_model_similarity.csv``) and,
        unless ``plots`` is False, the figures into ``path``; returns the table's path."""
        from emocircuits.capture.store import atomic_write_bytes
        from emocircuits.tables import csv_bytes

        target = Path(table) if table is not None else Path(path) / TABLE
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, csv_bytes(self.table))
        if plots:
            self.plot(path)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NaiveComparison:
        """Read the table (a CSV file, or a folder holding ``cross_model_similarity.csv``)."""
        path = Path(path)
        target = path / TABLE if path.is_dir() else path
        if not target.is_file():
            raise DataError(f"no naive table {target}")
        return cls(read_rows(target))

    def figure(self) -> Figure | None:
        """The naive cosines of the first emotion by layer, beside two random vectors."""
        return next((fig for _, fig in self._figures()), None)

    def plot(self, out: str | os.PathLike[str]) -> list[Path]:
        """Write ``naive-{emotion}`` (PNG and SVG) into ``out``; returns the paths."""
        from emocircuits.plots.common import save_figure

        paths: list[Path] = []
        for stem, fig in self._figures():
            paths += save_figure(fig, Path(out) / stem)
        return paths

    def _figures(self) -> Iterator[tuple[str, Figure]]:
        from emocircuits.plots.compare import mapped_cosines

        for emo, curves in self.curves.items():
            layers, _, width = next(iter(curves.values()))
            null = random_cosines(width, 1)[:, 0]
            lo, hi = np.quantile(null, [0.025, 0.975])
            yield (
                f"naive-{safe_name(emo)}",
                mapped_cosines(
                    layers,
                    {pair: c for pair, (_, c, _) in curves.items()},
                    null_lo=np.full(len(layers), lo),
                    null_hi=np.full(len(layers), hi),
                    title=f"Naive cross-model cosine of {emo} directions (coordinate-dependent: "
                    "means nothing)",
                    ylabel="raw cosine, coordinate by coordinate",
                    xlabel="layer",
                    null_label=f"two random vectors of width {width} (95%)",
                ),
            )


def compare_pilot_vectors(vectors: Mapping[str, EmotionVectors]) -> NaiveComparison:
    """The pilot's naive comparison of saved direction vectors, ``{model name: vectors}``:
    coordinate-wise cosines per emotion and pair of models of equal width, each beside the
    same statistic after a random rotation (:func:`naive_table`). Raises ``DataError`` if
    fewer than two models are given or no two have the same width. Use
    :func:`~emocircuits.compare.compare_models` for a real comparison.

    >>> vecs = {m: EmotionVectors.load(f"v/{m}.safetensors") for m in "ab"}  # doctest: +SKIP
    >>> compare_pilot_vectors(vecs).save("runs/naive")  # doctest: +SKIP
    PosixPath('runs/naive/cross_model_similarity.csv')
    """
    if len(vectors) < 2:
        raise DataError("the naive table needs the vectors of at least two models")
    rows = naive_table({m: v.directions for m, v in vectors.items()})
    widths = {m: v.directions[v.emotions[0]].shape[-1] for m, v in vectors.items()}
    if not rows:
        raise DataError(
            f"no pair of models has the same width ({widths}); the naive table compares "
            "coordinates and exists only for equal widths. Use --activations for the "
            "basis-free comparison"
        )
    curves: Curves = {}
    names = list(vectors)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            va, vb = vectors[a], vectors[b]
            if widths[a] != widths[b]:
                continue
            idx = np.rint(np.linspace(0, len(vb.layers) - 1, len(va.layers))).astype(int)
            for e in va.emotions:
                if e in vb.directions:
                    cos = (va.directions[e] * vb.directions[e][idx]).sum(-1)
                    curves.setdefault(e, {})[f"{a} ↔ {b}"] = (va.layers, cos, widths[a])
    return NaiveComparison(rows, curves)

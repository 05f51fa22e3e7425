"""What the causal analyses (:func:`patch`, :func:`ablate`, :func:`heads`) share: their
inputs in any of the accepted shapes, checked before the model is used, the summary they
record, and :class:`TablesResult`, a result saved as CSV tables plus ``summary.json``.

>>> ds = as_dataset("baseline")
>>> len(ds)
200
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from emocircuits.errors import DataError, EmocircuitsError
from emocircuits.results import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from emocircuits.data.dataset import Dataset
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.interventions.readout import Readout
    from emocircuits.models.loading import LoadedModel


DEFAULT_DATA = "extended"
"""The data ``patch`` and ``ablate`` use when given None."""


def as_dataset(data: Dataset | str | Path) -> Dataset:
    """A :class:`~emocircuits.data.dataset.Dataset` from itself, a preset name or a JSONL path."""
    from emocircuits.data import load_dataset
    from emocircuits.data.dataset import Dataset

    return data if isinstance(data, Dataset) else load_dataset(data)


def as_vectors(vecs: EmotionVectors | str | Path) -> tuple[EmotionVectors, str | None]:
    """The vectors and the file they were read from (None when given as an object)."""
    from emocircuits.geometry.vectors import EmotionVectors, safetensors_path

    if isinstance(vecs, EmotionVectors):
        return vecs, None
    return EmotionVectors.load(vecs), str(safetensors_path(vecs))


def as_model(
    lm: LoadedModel | str, *, trust_remote_code: bool, progress: bool, **placement: Any
) -> LoadedModel:
    """``lm`` itself, or the model of that name loaded with ``placement`` (``dtype``,
    ``device``, ``device_map``, ... of :func:`~emocircuits.models.load_model`)."""
    if not isinstance(lm, str | Path):
        return lm
    from emocircuits.models import load_model

    return load_model(str(lm), trust_remote_code=trust_remote_code, progress=progress,
                      **placement)  # fmt: skip


def dtype_name(lm: LoadedModel) -> str:
    """``"float32"`` for ``torch.float32``: the name ``--dtype`` takes."""
    return str(lm.dtype).removeprefix("torch.")


@dataclass
class CausalInputs:
    """What ``patch`` and ``ablate`` analyse, checked: the prompts, the vectors and the file
    they came from (None when given as an object), the emotions."""

    dataset: Dataset
    vectors: EmotionVectors
    vectors_file: str | None
    emotions: list[str]


def causal_inputs(
    data: Dataset | str | Path | None,
    vecs: EmotionVectors | str | Path,
    *,
    baseline: str,
    emotion: Sequence[str] | None,
) -> CausalInputs:
    """The data (None: :data:`DEFAULT_DATA`) and the vectors of ``patch`` and ``ablate``,
    and the emotions they analyse (``emotion``, else every emotion of the vectors with
    feeling words and prompts), after checking everything that does not need the model."""
    from emocircuits.interventions.readout import FEELING_WORDS

    data = DEFAULT_DATA if data is None else data
    ds = as_dataset(data)
    vectors, vectors_file = as_vectors(vecs)
    data_name, vectors_name = _name(data, ds), _name(vecs, None)
    if vectors.site != "resid":
        raise EmocircuitsError(f"{vectors_name} has {vectors.site} directions; resid is needed")
    labels = set(ds.labels)
    if baseline not in labels:
        raise EmocircuitsError(f"{data_name} has no {baseline!r} prompts")
    wanted = list(emotion or [])
    for e in wanted:
        if e not in vectors.directions:
            raise EmocircuitsError(
                f"no {e!r} direction in {vectors_name} (has {', '.join(vectors.emotions)})"
            )
        if e not in FEELING_WORDS or e not in labels:
            raise EmocircuitsError(
                f"{e!r} needs feeling words for the readout and prompts in {data_name}"
            )
    emotions = wanted or [e for e in vectors.emotions if e in FEELING_WORDS and e in labels]
    if not emotions:
        raise EmocircuitsError(
            f"no emotion of {vectors_name} has feeling words and prompts in {data_name}"
        )
    return CausalInputs(ds, vectors, vectors_file, emotions)


def _name(given: Any, ds: Dataset | None) -> str:
    """How errors name an input: as given (a preset, a path), else its source."""
    if isinstance(given, str | Path):
        return str(given)
    return ds.source if ds is not None else "the vectors"


def causal_summary(
    fmt: str,
    lm: LoadedModel,
    inputs: CausalInputs,
    readouts: dict[str, Readout],
    settings: dict[str, Any],
    start: float,
    **results: Any,
) -> dict[str, Any]:
    """The ``summary.json`` of ``patch`` / ``ablate``: format, provenance, ``settings``
    (with the model's dtype), the ``results`` and the seconds since ``start``."""
    return {
        "format": fmt,
        "version": 1,
        "model": lm.provenance,
        "vectors": {"file": inputs.vectors_file, **inputs.vectors.meta()},
        "dataset": inputs.dataset.provenance(),
        "readouts": {e: r.meta() for e, r in readouts.items()},
        "settings": {**settings, "dtype": dtype_name(lm)},
        **results,
        "seconds": round(time.time() - start, 1),
    }


def read_summary(folder: Path, fmt: str) -> dict[str, Any]:
    """``summary.json`` of ``folder``, checked to be of format ``fmt``."""
    try:
        s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read summary.json ({e})", where=str(folder)) from None
    if s.get("format") != fmt:
        raise DataError(f"not an {fmt} folder", where=str(folder))
    return s


@dataclass(repr=False)
class TablesResult(Result):
    """A result kept as its saved form: ``tables`` (name -> rows, one CSV each) and
    ``summary`` (``summary.json``, written last). Subclasses set ``format``, ``table_names``
    and implement ``rows`` and ``_figures``; ``run`` holds the in-memory computation it
    came from (None after :meth:`load`)."""

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    run: Any = None
    #: the figure files (PNG and SVG) the last :meth:`save` wrote
    figure_paths: list[Path] = field(default_factory=list)

    format: ClassVar[str] = ""
    table_names: ClassVar[tuple[str, ...]] = ()

    def _figures(self) -> Iterator[tuple[str, Figure]]:
        return iter(())

    def _plot_folder(self, folder: Path) -> list[Path]:
        raise NotImplementedError

    def save(self, path: str | Path, *, plots: bool = True) -> Path:
        """Write the tables, ``summary.json`` and (``plots``) the figures into ``path``, as
        ``emocircuits <command> --out path`` does; returns the folder."""
        from emocircuits.tables import write_tables

        out = write_tables(path, self.tables, {"summary.json": self.summary})
        self.figure_paths = self._plot_folder(out) if plots else []
        return out

    @classmethod
    def load(cls, path: str | Path) -> TablesResult:
        """Read a folder written by :meth:`save` (numbers in the tables parsed back)."""
        from emocircuits.tables import read_table

        folder = Path(path)
        summary = read_summary(folder, cls.format)
        names = [n for n in cls.table_names if (folder / f"{n}.csv").is_file()]
        return cls({n: read_table(folder, n) for n in names}, summary)

    def figure(self) -> Figure | None:
        """The first of the figures ``save`` draws, or None without rows to draw."""
        return next((fig for _, fig in self._figures()), None)

    def title(self) -> str:
        model = (self.summary.get("model") or {}).get("name", "?")
        return f"{type(self).__name__}: {model}, {len(self.rows())} rows"

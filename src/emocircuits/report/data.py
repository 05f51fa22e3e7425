"""What the report holds (small dataclasses: an estimate with its interval, a null, a
source, a table, a figure, a block, a section per research question, the provenance) and
how a study folder's stages are found and read; the research questions' readers build on it.

>>> Est(0.5, 0.25, 0.75).has_interval
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emocircuits.errors import EmocircuitsError
from emocircuits.report.pilot import PilotClaim

STUDY_FILE = "study.json"
STAGE_FILES = ("stage.json",)  # written last by the runner: the folder is finished
ALPHA = 0.05
"""Significance level of every 'beyond chance' count in the answers."""
STABLE = 0.9
"""Split-half cosine at the middle layers from which directions count as stable (the
threshold `emocircuits geometry` prints its warning below)."""

QUESTIONS = {
    "rq1": ("RQ1: stable per-layer directions",
            "Do emotions appear as stable per-layer directions?"),
    "rq2": ("RQ2: similarity across models",
            "How similar are the same emotion's directions and subspaces across models?"),
    "rq3": ("RQ3: steering changes the tone",
            "Does adding a direction change the tone of what the model writes?"),
    "rq4": ("RQ4: heads, neurons and causal tests",
            "Do particular attention heads or MLP units carry emotion, and do the directions "
            "matter causally?"),
}  # fmt: skip
STAGES_OF = {"rq1": ("geometry",), "rq2": ("compare",), "rq3": ("steer",),
             "rq4": ("heads", "patch", "ablate")}  # fmt: skip
EMOTION_MEASURES = ("rsa", "cos", "identification", "overlap", "decoding")
# what a stage folder with missing, malformed or unexpected files raises while being read
UNREADABLE = (OSError, ValueError, KeyError, TypeError, IndexError, EmocircuitsError)


# ------------------------------------------------------------------------------ dataclasses
@dataclass(frozen=True)
class Est:
    """A value with an optional interval ``[lo, hi]``.

    >>> Est(0.5, 0.4, 0.6).has_interval
    True
    """

    value: float | None
    lo: float | None = None
    hi: float | None = None

    @property
    def has_interval(self) -> bool:
        return _finite(self.lo) and _finite(self.hi)


@dataclass(frozen=True)
class Null:
    """What a number is compared with: a description, its mean and its 95% range."""

    what: str
    value: float | None = None
    lo: float | None = None
    hi: float | None = None


@dataclass
class Source:
    """Where a table or figure came from (all paths relative to the study folder)."""

    stage: str
    label: str
    dir: str
    file: str = ""
    model: str | None = None
    data: str | None = None
    data_sha256: str | None = None
    site: str | None = None
    position: str | None = None
    method: str | None = None

    def at(self, file: str, **change: Any) -> Source:
        """The same source for another file (and optionally another method, ...)."""
        return Source(**{**self.__dict__, "file": file, **change})

    def describe(self) -> str:
        """One line: stage, model, data (hash), site, position, method, file."""
        parts = [f"stage {self.stage} ({self.label})"]
        if self.model:
            parts.append(f"model {self.model}")
        if self.data:
            sha = f" (sha256 {self.data_sha256[:12]}…)" if self.data_sha256 else ""
            parts.append(f"data {self.data}{sha}")
        for k in ("site", "position", "method"):
            if getattr(self, k):
                parts.append(f"{k} {getattr(self, k)}")
        parts.append(f"{self.dir}/{self.file}" if self.file else self.dir)
        return " · ".join(parts)


@dataclass
class Number:
    """A key number: its estimate (with interval), its null and p-value."""

    label: str
    est: Est
    null: Null | None = None
    p: float | None = None
    interval: str = "95% CI"
    note: str = ""


@dataclass
class Table:
    """A small table: rows are flat dicts with the same keys (cells: str, number, Est)."""

    title: str
    rows: list[dict[str, Any]]
    source: Source
    note: str = ""

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []


@dataclass
class Figure:
    """A PNG written by a stage."""

    title: str
    path: Path
    source: Source


@dataclass
class Block:
    """What one stage folder contributes to a section."""

    title: str
    source: Source
    numbers: list[Number] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what the answer is computed from


@dataclass
class Section:
    """One research question: the answer, our numbers, the pilot's claim."""

    id: str
    title: str
    question: str
    verdict: str  # "yes", "partly", "no" or "not run"
    answer: str
    blocks: list[Block]
    missing: list[str]
    pilot: PilotClaim


@dataclass
class StageRef:
    """One stage as study.json lists it."""

    stage: str
    label: str
    rel: str
    path: Path
    model: str | None
    data: str | None
    hash: str
    cached: bool
    seconds: float | None
    finished: bool
    meta: dict[str, Any]


@dataclass
class Provenance:
    """Models, datasets, versions, stages and configuration of the study."""

    models: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    versions: dict[str, str]
    stages: list[dict[str, Any]]
    config: dict[str, Any]
    started: str | None
    finished: str | None
    seconds: float | None
    failed: list[dict[str, Any]] | None = None


@dataclass
class ReportData:
    """Everything the HTML page shows."""

    out_dir: Path
    title: str
    sections: list[Section]
    provenance: Provenance
    notes: list[str] = field(default_factory=list)
    datasets: list[Block] = field(default_factory=list)  # the audit of each dataset

    def section(self, id: str) -> Section:
        """The section of one research question (``"rq1"`` ... ``"rq4"``)."""
        return next(s for s in self.sections if s.id == id)


# ---------------------------------------------------------------------------------- helpers
def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> float | None:
    """A finite float, or None (missing, NaN, '')."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    return float(v) if _finite(v) else None


def _mean(vals: Iterable[Any]) -> float | None:
    xs = [x for x in (_num(v) for v in vals) if x is not None]
    return sum(xs) / len(xs) if xs else None


def _json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _figure(ref: StageRef, src: Source, name: str, title: str) -> Figure | None:
    for rel in (name, f"figures/{name}"):
        if (ref.path / rel).is_file():
            return Figure(title, ref.path / rel, src.at(rel))
    return None


def _figures(ref: StageRef, src: Source, wanted: Iterable[tuple[str, str]]) -> list[Figure]:
    return [f for name, title in wanted if (f := _figure(ref, src, name, title)) is not None]


def _count(items: Iterable[bool]) -> int:
    return sum(bool(x) for x in items)


def _verdict(hits: Iterable[tuple[int, int]]) -> str:
    """'yes' if every part holds for all, 'no' if none holds anywhere, else 'partly'."""
    hits = [(k, n) for k, n in hits if n]
    if not hits:
        return "not run"
    if all(k == n for k, n in hits):
        return "yes"
    if all(k == 0 for k, _ in hits):
        return "no"
    return "partly"


def _f(v: float | None, d: int = 2) -> str:
    """A number in an answer sentence (``n/a`` if missing; never ``-0.00``)."""
    if v is None:
        return "n/a"
    s = f"{v + 0.0:.{d}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def _ci(e: Est, d: int = 2) -> str:
    return f"{_f(e.value, d)} [{_f(e.lo, d)}, {_f(e.hi, d)}]" if e.has_interval else _f(e.value, d)


# ------------------------------------------------------------------------------ the stages
def _stages(out: Path, study: dict[str, Any]) -> list[StageRef]:
    refs = []
    for s in study.get("stages") or []:
        if not isinstance(s, dict):
            continue
        rel = str(s.get("dir", ""))
        path = (out / rel).resolve()
        meta: dict[str, Any] = {}
        finished = False
        for name in STAGE_FILES:
            if (path / name).is_file():
                finished = True
                try:
                    meta = _json(path / name)
                except (OSError, ValueError):
                    meta = {}
        refs.append(StageRef(
            stage=str(s.get("stage", "")), label=str(s.get("label", "")), rel=rel, path=path,
            model=s.get("model"), data=s.get("data"), hash=str(s.get("hash", "")),
            cached=bool(s.get("cached")), seconds=_num(s.get("seconds")), finished=finished,
            meta=meta,
        ))  # fmt: skip
    return refs


def _source(ref: StageRef, study: dict[str, Any], **kw: Any) -> Source:
    sha = ((study.get("provenance") or {}).get("datasets") or {}).get(ref.data or "", {})
    prov = ref.meta.get("provenance") or {}
    vec = prov.get("vectors") or {}
    base = {"model": ref.model, "data": ref.data,
            "data_sha256": (sha or {}).get("sha256") or prov.get("data_sha256"),
            "site": vec.get("site"), "position": vec.get("position"),
            "method": vec.get("method")}  # fmt: skip
    base.update({k: v for k, v in kw.items() if v is not None})
    return Source(ref.stage, ref.label, ref.rel, **base)


def _analyses(study: dict[str, Any]) -> list[str] | None:
    cfg = study.get("config") or {}
    for where in (cfg.get("study") or {}, cfg):
        if isinstance(where.get("analyses"), list):
            return [str(a) for a in where["analyses"]]
    return None


def failures(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The failed stages of ``study.json``: ``[{"stage": key, "error": why}, ...]``."""
    f = study.get("failed") or []
    return [f] if isinstance(f, dict) and "stage" in f else [x for x in f if isinstance(x, dict)]


def _missing(stage: str, refs: list[StageRef], study: dict[str, Any], need: str) -> str | None:
    """Why a stage has nothing to show, or None if it has."""
    mine = [r for r in refs if r.stage == stage]
    if any(r.finished for r in mine):
        return None
    for failed in failures(study):
        if str(failed.get("stage", "")).startswith(f"{stage}/"):
            return f"`{failed['stage']}` failed: {failed.get('error', 'no message')}."
    on = _analyses(study)
    if mine:
        return (f"`{stage}` is listed in study.json but did not finish "
                f"({', '.join(r.rel for r in mine)} has no stage.json).")  # fmt: skip
    if on is not None and stage not in on:
        return (f"`{stage}` is switched off in this study's configuration (analyses: "
                f"{', '.join(on) or 'none'}), so {need} is not answered here.")  # fmt: skip
    return f"No `{stage}` stage in this study (not run or not finished): {need} is not answered."


def _guard(ref: StageRef, src: Source, title: str, fn: Callable[[], Block]) -> Block:
    """A stage whose outputs cannot be read gives a block saying so, not a crash."""
    try:
        return fn()
    except UNREADABLE as e:
        what = f"{type(e).__name__}: {e}"
        return Block(title, src, notes=[f"could not read the outputs in {ref.rel} ({what})"])

"""Read a finished study folder into small dataclasses for the report (no model is run).
The dataclasses are in :mod:`~emocircuits.report.data`, the readers of RQ1/RQ2 and RQ3/RQ4
in :mod:`~emocircuits.report.rq12` and :mod:`~emocircuits.report.rq34`.

:func:`collect` reads ``OUT/study.json`` and the saved outputs of each stage it lists
(``stages/<stage>/<label>-<hash12>/``, finished when ``stage.json`` is there) and returns a
:class:`ReportData`: one :class:`Section` per research question with its key numbers (each
with its interval and its null), tables (lists of dicts), figures (PNG paths), the pilot's
claim beside ours, and a one-line answer computed from the numbers; then the provenance.
Every table and figure carries a :class:`Source` naming the stage, model, data, site,
position and method it came from. A stage that is switched off or unfinished gives a
section that says so.

>>> data = collect("runs/study")  # doctest: +SKIP
>>> [(s.id, s.verdict) for s in data.sections]  # doctest: +SKIP
[('rq1', 'partly'), ('rq2', 'yes'), ('rq3', 'partly'), ('rq4', 'partly')]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emocircuits.errors import ReportError
from emocircuits.report.data import (
    QUESTIONS,
    STAGES_OF,
    STUDY_FILE,
    UNREADABLE,
    Block,
    Est,
    Null,
    Provenance,
    ReportData,
    Section,
    StageRef,
    _json,
    _missing,
    _num,
    _source,
    _stages,
    failures,
)
from emocircuits.report.datasets import dataset_blocks
from emocircuits.report.pilot import PILOT
from emocircuits.report.rq12 import _compare, _geometry, _rq1, _rq2
from emocircuits.report.rq34 import _ablate, _heads, _patch, _rq3, _rq4, _steer

# the dataclasses live in report/data.py, the readers of each research question in rq12.py
# and rq34.py; these names are read from here too
__all__ = ["Est", "Null", "ReportData", "collect", "failures"]


# ------------------------------------------------------------------------------- collect
def _provenance(study: dict[str, Any], refs: list[StageRef]) -> Provenance:
    prov = study.get("provenance") or {}
    models = []
    for name, m in (prov.get("models") or {}).items():
        arch = m.get("architecture")
        models.append({"model": name, "id": m.get("id"), "revision": m.get("revision"),
                       "dtype": m.get("dtype"),
                       "architecture": arch.get("model_type") if isinstance(arch, dict)
                       else arch,
                       "layers": m.get("n_layers"), "width": m.get("width"),
                       "source": m.get("source") or "", "note": m.get("note") or ""})  # fmt: skip
    datasets = [{"data": name, "version": d.get("version") or "–", "sha256": d.get("sha256"),
                 "rows": d.get("n"),
                 "labels": ", ".join(f"{k} {v}" for k, v in (d.get("labels") or {}).items())}
                for name, d in (prov.get("datasets") or {}).items()]  # fmt: skip
    stages = [{"stage": r.stage, "label": r.label, "model": r.model or "", "data": r.data or "",
               "folder": r.rel, "hash": r.hash[:12], "reused": r.cached,
               "seconds": r.seconds, "finished": r.finished} for r in refs]  # fmt: skip
    return Provenance(models, datasets, {str(k): str(v) for k, v in
                                         (prov.get("versions") or {}).items()},
                      stages, study.get("config") or {}, study.get("started"),
                      study.get("finished"), _num(study.get("seconds")),
                      failures(study))  # fmt: skip


BUILDERS: dict[str, Callable[[StageRef, dict[str, Any]], Block | list[Block] | None]] = {
    "geometry": _geometry, "compare": _compare, "steer": _steer, "heads": _heads,
    "patch": _patch, "ablate": _ablate,
}  # fmt: skip
ANSWERS: dict[str, Callable[[list[Block]], tuple[str, str]]] = {
    "rq1": _rq1, "rq2": _rq2, "rq3": _rq3, "rq4": _rq4,
}  # fmt: skip
NEEDS = {"geometry": "RQ1", "compare": "RQ2", "steer": "RQ3",
         "heads": "the head and neuron part of RQ4", "patch": "the patching part of RQ4",
         "ablate": "the ablation part of RQ4"}  # fmt: skip


def collect(out_dir: str | os.PathLike[str]) -> ReportData:
    """Read a finished (or partly finished) study folder into a :class:`ReportData`.

    Raises :class:`~emocircuits.errors.ReportError` if ``out_dir`` has no readable
    ``study.json``; a stage that is missing, unfinished or unreadable becomes a note in its
    section.
    """
    out = Path(out_dir)
    path = out / STUDY_FILE
    if not out.is_dir():
        raise ReportError(f"no such folder {out}")
    if not path.is_file():
        raise ReportError(f"no {STUDY_FILE} in {out} (not a study folder? run `emocircuits run`)")
    try:
        study = _json(path)
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read {path}: {e}") from None
    if not isinstance(study, dict):
        raise ReportError(f"{path} is not a study description (a JSON object)")
    refs = _stages(out, study)
    sections = []
    for rq, (title, question) in QUESTIONS.items():
        blocks: list[Block] = []
        missing: list[str] = []
        for stage in STAGES_OF[rq]:
            why = _missing(stage, refs, study, NEEDS[stage])
            if why:
                missing.append(why)
            for ref in refs:
                if ref.stage == stage and ref.finished:
                    got = _read(ref, study)
                    blocks += got if isinstance(got, list) else [got] if got else []
        if rq == "rq1" and not blocks and not missing:
            missing.append(
                "The geometry stages saved vectors only: the geometry analysis is "
                "switched off in this study's configuration, so RQ1 is not answered."
            )
        verdict, answer = ANSWERS[rq](blocks)
        sections.append(Section(rq, title, question, verdict, answer, blocks, missing, PILOT[rq]))
    prov = _provenance(study, refs)
    notes = []
    for f in prov.failed or []:
        notes.append(f"Stage {f.get('stage')} failed ({f.get('error')}); the stages that "
                     "needed it did not run.")  # fmt: skip
    if not prov.finished:
        notes.append("The study has not finished (study.json has no end time): the report "
                     "shows the stages finished so far.")  # fmt: skip
    models = [m["model"] for m in prov.models] or sorted({r.model for r in refs if r.model})
    data = [d["data"] for d in prov.datasets] or sorted({r.data for r in refs if r.data})
    title = f"Emotion directions study: {', '.join(models) or 'no models'}"
    title += f" on {', '.join(data)}" if data else ""
    return ReportData(out, title, sections, prov, notes, dataset_blocks(out, study))


def _read(ref: StageRef, study: dict[str, Any]) -> Block | list[Block] | None:
    """One finished stage's blocks; an unreadable folder gives a block that says so."""
    try:
        return BUILDERS[ref.stage](ref, study)
    except UNREADABLE as e:
        src = _source(ref, study)
        return Block(f"{ref.stage}: {ref.label}", src,
                     notes=[f"could not read the outputs in {ref.rel} ({type(e).__name__}: "
                            f"{e})"])  # fmt: skip

"""Run a whole study: plan the stages, reuse the finished ones, run the rest, record it all.

``study.json`` in the output folder is rewritten (atomically) after every stage: the
effective configuration, every stage with its folder, hash, whether it was reused and how
long it took, and the provenance of the models, datasets and library versions.

>>> res = run_study(load_config("study.toml"))  # doctest: +SKIP
>>> res.report  # doctest: +SKIP
PosixPath('runs/study/report.html')
"""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emocircuits.capture.store import atomic_write_json
from emocircuits.errors import EmocircuitsError
from emocircuits.study.config import StudyConfig
from emocircuits.study.stages import STAGE_FILE, Stage, plan_study, run_stage, short_name

STUDY_FILE = "study.json"


class StudyError(EmocircuitsError):
    """A stage of the study failed (names the stage)."""


@dataclass
class StudyResult:
    """Where the study is and what each stage did."""

    out: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    report: Path | None = None
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ran(self) -> list[str]:
        return [s["key"] for s in self.stages if not s["cached"]]


def versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers."""
    import numpy
    import torch
    import transformers

    from emocircuits import __version__

    return {"emocircuits": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextmanager
def _lock(out: Path):
    """One run per output folder at a time (a stale lock of a killed run is taken over)."""
    path = out / ".lock"
    if path.is_file():
        try:
            pid = int(path.read_text().strip() or 0)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            pid = 0
        if pid and pid != os.getpid():
            raise StudyError(f"{out} is in use by another emocircuits run (pid {pid})")
    path.write_text(str(os.getpid()))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _record(st: Stage, out: Path, cached: bool, seconds: float) -> dict[str, Any]:
    model = short_name(st.model) if st.model else None
    return {"key": st.key, "stage": st.name, "label": st.label, "model": model,
            "data": st.data, "dir": str(st.dir.relative_to(out)), "hash": st.hash,
            "cached": cached, "seconds": seconds}  # fmt: skip


def _provenance(cfg: StudyConfig, plan: list[Stage]) -> dict[str, Any]:
    models: dict[str, Any] = {}
    datasets: dict[str, Any] = {}
    for st in plan:
        if st.data and st.data not in datasets and st.identity.get("data"):
            datasets[st.data] = st.identity["data"]
        if st.name == "capture" and st.done():
            m = json.loads((st.dir / "manifest.json").read_text())
            prov = m.get("model", {})
            models.setdefault(short_name(str(st.model)), {
                "id": prov.get("hf_equivalent") or prov.get("hub_id") or prov.get("name"),
                "revision": prov.get("revision"), "dtype": m.get("dtype"),
                "architecture": m.get("architecture"), "n_layers": m.get("n_layers"),
                "width": m.get("width"), "source": prov.get("source"),
                "note": prov.get("note")})  # fmt: skip
    return {"models": models, "datasets": datasets, "versions": versions()}


def run_study(
    cfg: StudyConfig,
    *,
    progress: bool = True,
    tracking: bool | None = None,
    console: Any = None,
) -> StudyResult:
    """Run every stage of ``cfg`` that has no finished folder, then the report.
    ``tracking`` (default: the config's ``mlflow``) logs the study to MLflow. A stage that
    fails with a user-facing error (e.g. a model whose tokenizer allows no logit-difference
    readout) is recorded in ``res.failed`` with its reason, the stages that need it are not
    run, and everything else goes on; nothing of a failed stage is cached."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from emocircuits.models import shared_models

    t0 = time.perf_counter()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_study(cfg)
    res = StudyResult(out)
    doc: dict[str, Any] = {"format": "emocircuits.study", "version": 1,
                           "config": {"study": cfg.study, **cfg.stages}, "source": cfg.source,
                           "stages": res.stages, "started": _now(), "finished": None,
                           "seconds": None}  # fmt: skip
    console = console or Console(stderr=True)
    track = cfg.study["mlflow"] if tracking is None else tracking
    columns = (SpinnerColumn(), TextColumn("{task.description:<34}"),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())  # fmt: skip
    with ExitStack() as stack:
        stack.enter_context(_lock(out))
        stack.enter_context(shared_models())
        bar = stack.enter_context(Progress(*columns, console=console, disable=not progress))
        tasks = {st.key: bar.add_task(st.key, total=1, status="waiting") for st in plan}
        failed: dict[str, str] = {}
        for st in plan:
            task = tasks[st.key]
            blocked = [i.key for i in st.inputs if i.key in failed]
            if blocked:
                failed[st.key] = f"not run: its input {blocked[0]} failed"
                bar.update(task, completed=1, status="[red]not run (input failed)")
            elif st.done():
                seconds = json.loads((st.dir / STAGE_FILE).read_text()).get("seconds", 0.0)
                res.stages.append(_record(st, out, True, seconds))
                bar.update(task, completed=1, status="[dim]reused (cached)")
            else:
                bar.update(task, status="[yellow]running")
                bar.start_task(task)
                try:
                    seconds = run_stage(cfg, st)
                except EmocircuitsError as e:
                    failed[st.key] = str(e)
                    bar.update(task, completed=1, status="[red]failed")
                else:
                    res.stages.append(_record(st, out, False, seconds))
                    bar.update(task, completed=1, status=f"[green]done in {seconds:.0f} s")
            doc["failed"] = [{"stage": k, "error": v} for k, v in failed.items()]
            doc["provenance"] = _provenance(cfg, plan)
            atomic_write_json(out / STUDY_FILE, doc)
        res.failed = failed
        res.seconds = round(time.perf_counter() - t0, 2)
        doc.update(finished=_now(), seconds=res.seconds)
        atomic_write_json(out / STUDY_FILE, doc)
    if track:
        from emocircuits.study.tracking import log_study

        log_study(out)
    from emocircuits.report.html import write_report

    res.report = write_report(out)
    return res

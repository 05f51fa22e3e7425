"""Run a whole study: plan the stages, reuse the finished ones, run the rest, record it all.

``study.json`` in the output folder is rewritten (atomically) after every stage: the
effective configuration, every stage with its folder, hash, whether it was reused and how
long it took, and the provenance of the models, datasets and library versions.

>>> res = run_study("study.toml")  # doctest: +SKIP
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
from typing import Any, ClassVar

from emocircuits.capture.store import atomic_write_json
from emocircuits.errors import EmocircuitsError
from emocircuits.results import Result
from emocircuits.study.config import OPTIONS, STUDY_DEFAULTS, StudyConfig, load_config
from emocircuits.study.executors import require_ray, run_local, run_ray
from emocircuits.study.stages import (
    STAGE_FILE,
    Stage,
    compute_placement,
    plan_study,
    short_name,
)

STUDY_FILE = "study.json"


class StudyError(EmocircuitsError):
    """A stage of the study failed (names the stage)."""


@dataclass(repr=False)
class StudyResult(Result):
    """Where the study is and what each stage did: ``rows()`` is the stage table (one row a
    stage: key, whether it ran or was reused, seconds, folder), ``failed`` the stages that
    failed with their reasons. The study folder is written while the study runs, so
    ``save(out)`` writes nothing new (another path gets a copy of the folder); ``load`` reads
    a study folder's ``study.json`` back.

    >>> res = StudyResult.load("runs/study")  # doctest: +SKIP
    >>> res.ran, res.failed  # doctest: +SKIP
    ([], {})
    """

    command: ClassVar[str] = "run"

    out: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    report: Path | None = None
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ran(self) -> list[str]:
        """The keys of the stages that ran (not reused)."""
        return [s["key"] for s in self.stages if not s["cached"]]

    def rows(self) -> list[dict[str, Any]]:
        rows = [{"stage": s["key"], "ran": "reused" if s["cached"] else "ran",
                 "seconds": s["seconds"], "dir": s["dir"]} for s in self.stages]  # fmt: skip
        rows += [{"stage": k, "ran": "failed", "seconds": None, "dir": None}
                 for k in self.failed]  # fmt: skip
        return rows

    def title(self) -> str:
        n = len(self.stages)
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (f"StudyResult: {self.out}: {n} stage{'s' * (n != 1)} ({len(self.ran)} ran, "
                f"{n - len(self.ran)} reused{failed}) in {self.seconds:.1f} s")  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """The study folder (written as the study ran); a copy of it at another ``path``."""
        import shutil

        path = Path(path)
        if path.resolve() != self.out.resolve():
            shutil.copytree(self.out, path, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".lock"))  # fmt: skip
        return path

    @classmethod
    def load(cls, path: str | Path) -> StudyResult:
        """A study folder's ``study.json`` (what ``emocircuits run`` wrote) as a result."""
        out = Path(path)
        try:
            doc = json.loads((out / STUDY_FILE).read_text())
        except (OSError, ValueError) as e:
            raise StudyError(f"{out} has no readable {STUDY_FILE}: {e}") from None
        report = out / "report.html"
        return cls(out, list(doc.get("stages") or []), float(doc.get("seconds") or 0.0),
                   report if report.is_file() else None,
                   {f["stage"]: f["error"] for f in doc.get("failed") or []})  # fmt: skip


def versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers."""
    import numpy
    import torch
    import transformers

    from emocircuits._version import __version__

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


class _Events:
    """What the executor reports, shown on the progress display and kept in study.json
    (rewritten after every stage; stages listed in plan order whichever finished first)."""

    def __init__(self, cfg: StudyConfig, plan: list[Stage], res: StudyResult,
                 doc: dict[str, Any], bar: Any) -> None:  # fmt: skip
        self.cfg, self.plan, self.res, self.doc, self.bar = cfg, plan, res, doc, bar
        self.order = {st.key: i for i, st in enumerate(plan)}
        self.tasks = {st.key: bar.add_task(st.key, total=1, status="waiting") for st in plan}
        self.failures: dict[str, str] = {}

    def _save(self) -> None:
        self.res.stages.sort(key=lambda s: self.order[s["key"]])
        self.failures = dict(sorted(self.failures.items(), key=lambda kv: self.order[kv[0]]))
        self.doc["stages"] = self.res.stages
        self.doc["failed"] = [{"stage": k, "error": v} for k, v in self.failures.items()]
        self.doc["provenance"] = _provenance(self.cfg, self.plan)
        atomic_write_json(self.res.out / STUDY_FILE, self.doc)

    def reused(self, st: Stage) -> None:
        seconds = json.loads((st.dir / STAGE_FILE).read_text()).get("seconds", 0.0)
        self.res.stages.append(_record(st, self.res.out, True, seconds))
        self.bar.update(self.tasks[st.key], completed=1, status="[dim]reused (cached)")
        self._save()

    def blocked(self, st: Stage, by: str) -> None:
        self.failures[st.key] = f"not run: its input {by} failed"
        self.bar.update(self.tasks[st.key], completed=1, status="[red]not run (input failed)")
        self._save()

    def started(self, st: Stage) -> None:
        self.bar.update(self.tasks[st.key], status="[yellow]running")
        self.bar.start_task(self.tasks[st.key])

    def done(self, st: Stage, seconds: float, worker: str | None = None) -> None:
        rec = _record(st, self.res.out, False, seconds)
        if worker:  # the Ray worker (host:pid) that wrote it
            rec["worker"] = worker
        self.res.stages.append(rec)
        self.bar.update(self.tasks[st.key], completed=1, status=f"[green]done in {seconds:.0f} s")
        self._save()

    def failed(self, st: Stage, why: str) -> None:
        self.failures[st.key] = why
        self.bar.update(self.tasks[st.key], completed=1, status="[red]failed")
        self._save()


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
    config: StudyConfig | str | Path | dict[str, Any] | None = None,
    *,
    progress: bool = True,
    tracking: bool | None = None,
    console: Any = None,
    **overrides: Any,
) -> StudyResult:
    """Run every stage of the study that has no finished folder, then the report.

    ``config`` is a :class:`StudyConfig`, a study TOML file, a dict shaped like one, or None
    (the defaults); ``overrides`` set study settings (``models=[...]``, ``out=...``) or whole
    stage tables (``geometry={"n_boot": 200}``; ``steer_sweep=`` for ``[steer-sweep]``) on
    top of it. ``tracking`` (default: the config's ``mlflow``) logs the study to MLflow. A
    stage that fails with a user-facing error (e.g. a model whose tokenizer allows no
    logit-difference readout) is recorded in ``res.failed`` with its reason, the stages that
    need it are not run, and everything else goes on; nothing of a failed stage is cached.
    The config's ``executor`` says where the stages run: ``local`` (this process) or ``ray``
    (a Ray task each on the cluster at ``address``; :mod:`emocircuits.study.executors`);
    the folders are the same either way.

    >>> res = run_study("study.toml", out="runs/mystudy")  # doctest: +SKIP
    >>> res.report  # doctest: +SKIP
    PosixPath('runs/mystudy/report.html')
    """
    cfg = _config(config, overrides)
    if cfg.study["executor"] == "ray":
        require_ray()  # before any work: says how to install it
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from emocircuits.models import shared_models

    t0 = time.perf_counter()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_study(cfg)
    device = compute_placement(cfg)[0]
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
        bar = stack.enter_context(Progress(*columns, console=console, disable=not progress))
        ev = _Events(cfg, plan, res, doc, bar)
        if cfg.study["executor"] == "ray":
            run_ray(cfg, plan, ev, device)
        else:
            stack.enter_context(shared_models())
            run_local(cfg, plan, ev)
        res.failed = ev.failures
        res.seconds = round(time.perf_counter() - t0, 2)
        doc.update(finished=_now(), seconds=res.seconds)
        atomic_write_json(out / STUDY_FILE, doc)
    if track:
        from emocircuits.study.tracking import log_study

        log_study(out)
    from emocircuits.report import build_report

    res.report = build_report(out)
    return res


def _config(config: StudyConfig | str | Path | dict | None, overrides: dict) -> StudyConfig:
    """The effective configuration of :func:`run_study`'s arguments."""
    if isinstance(config, StudyConfig):
        if overrides:
            raise StudyError("give overrides with a config file or dict, not a StudyConfig")
        return config
    if isinstance(config, dict):
        base, path = config, None
    else:
        base, path = {}, config
    over: dict[str, dict[str, Any]] = {k: dict(v) for k, v in base.items()}
    for key, value in overrides.items():
        table = key.replace("_", "-")
        if key in STUDY_DEFAULTS:
            over.setdefault("study", {})[key] = value
        elif table in OPTIONS and isinstance(value, dict):
            over.setdefault(table, {}).update(value)
        else:
            known = ", ".join([*STUDY_DEFAULTS, *(t.replace("-", "_") for t in OPTIONS)])
            raise StudyError(f"run_study() has no setting {key!r} (known: {known})")
    return load_config(path, over)

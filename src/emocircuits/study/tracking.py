"""MLflow tracking of a study: a parent run, a child per model, a grandchild per stage.

**Store.** By default an embedded SQLite store inside the study folder ``OUT``: tracking URI
``sqlite:///OUT/mlflow.db``, the experiment's artifacts under ``OUT/mlartifacts`` (never in
``./mlruns`` of the working directory). ``MLFLOW_TRACKING_URI`` replaces that store, and an
explicit ``uri=`` replaces both; a new experiment in any ``sqlite:///`` store keeps its
artifacts in ``mlartifacts/`` beside the database file, other stores use their own default.
Browse with ``mlflow ui --backend-store-uri sqlite:///runs/study/mlflow.db`` (a path relative
to the working directory; ``sqlite:////abs/path/mlflow.db`` for an absolute one), then
http://127.0.0.1:5000. MLflow records artifact locations as absolute paths: a moved study
folder keeps its runs but loses their artifacts in the UI. mlflow is imported only when a
run is opened: the CLI does not pay for it otherwise (importing it takes 1-3 s; creating a
new store runs its schema migrations, 2-8 s on two busy cores).

**Runs.** ``study`` (parent) -> ``smollm2-135m`` (a model) -> ``geometry/extended`` (a stage of
that model); cross-model stages (``compare/extended``) are children of the parent. Every run
is ended by the context manager that opened it: ``FINISHED``, ``FAILED`` after an exception,
``KILLED`` after Ctrl-C. Links between runs are MLflow's ``mlflow.parentRunId`` tags.
:func:`log_study` logs a whole study folder from its ``study.json`` (what ``emocircuits run``
writes) as that tree, including a ``FAILED`` run for the stage that failed.

**A stage run** (:meth:`Tracker.log_stage`, from a finished stage folder: its ``stage.json``,
written last, or a ``manifest.json`` with a ``stage`` key) holds:

- params: the manifest's ``settings`` flattened with dotted keys (lists and ``None`` as JSON),
  values cut to MLflow's limit (6000 characters);
- tags: ``emocircuits.stage``, ``.label``, ``.hash``, ``.cached`` (when known),
  ``.model_name`` and ``.data`` (the study's names), ``.model`` (id), ``.model_revision``,
  ``.dtype``, ``.data_sha256``, ``.stage_dir``, ``.calls`` (the library calls; ``.commands``
  in folders of earlier versions), every scalar of the
  manifest's provenance as ``emocircuits.provenance.{key}`` and its inputs as
  ``emocircuits.input.{name}`` (their hashes);
- per-layer metrics, step = layer (:func:`stage_metrics`);
- scalar metrics (step 0): ``seconds`` (the stage's), ``seconds/{part}`` and the numbers of
  ``summary.json``: ``summary/headline.{path}`` (geometry, heads, patch, ablate, ...),
  ``summary/{a}_vs_{b}.{measure}.{value,p,null_mean,effect,z,beyond_chance,...}`` (compare),
  and of steer's ``sweep.json``: ``summary/recommended.{emotion}.{layer,alpha,value,...}``;
  booleans as 0/1, lists and strings left out (they are in the artifacts);
- artifacts: every ``.csv``, ``.json``, ``.jsonl``, ``.png``, ``.svg``, ``.html``, ``.txt``
  and ``.md`` file up to 50 MB, at its path relative to the stage folder; tensors
  (``.safetensors``) are not copied.

Per-layer metrics and scalars: :mod:`emocircuits.study.metrics`.

>>> from emocircuits.study.tracking import Tracker
>>> with Tracker("runs/study") as tracker:                                   # doctest: +SKIP
...     with tracker.study("study", params={"models": ["smollm2-135m"]}):
...         with tracker.child("smollm2-135m", tags={"emocircuits.dtype": "float32"}):
...             tracker.log_stage("runs/study/stages/geometry/smollm2-135m.extended-1a2b3c")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emocircuits.errors import DataError
from emocircuits.study.metrics import (
    GENERIC_MAX_SERIES,
    RULES,
    Series,
    TableRule,
    _finished,
    _name,
    _number,
    _read_json,
    flatten,
    read_manifest,
    stage_metrics,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT",
    "GENERIC_MAX_SERIES",
    "RULES",
    "TableRule",
    "Tracker",
    "default_uri",
    "flatten",
    "log_study",
    "read_manifest",
    "stage_metrics",
]

DEFAULT_EXPERIMENT = "emocircuits"
ARTIFACT_SUFFIXES = frozenset({".csv", ".json", ".jsonl", ".png", ".svg", ".html", ".txt", ".md"})
MAX_ARTIFACT_BYTES = 50 * 2**20
PARAM_VALUE_LIMIT = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
TAG_VALUE_LIMIT = 8000  # MAX_TAG_VAL_LENGTH


def _text(value: Any, limit: int) -> str:
    s = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _artifact_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in ARTIFACT_SUFFIXES
        and not p.name.startswith(".")
        and p.stat().st_size <= MAX_ARTIFACT_BYTES
    )


def _provenance_tags(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The named tags (model, revision, dtype, data sha256) and every provenance scalar."""
    prov = manifest.get("provenance") or {}
    flat = flatten(prov) if isinstance(prov, Mapping) else {}
    tags = {
        f"emocircuits.provenance.{k}": v
        for k, v in flat.items()
        if isinstance(v, str | int | float | bool)
    }
    model = prov.get("model") if isinstance(prov, Mapping) else None
    model_id = (model.get("id") or model.get("name")) if isinstance(model, Mapping) else model

    def first(*keys: str) -> Any:
        for k in keys:
            if flat.get(k) not in (None, ""):
                return flat[k]
        return None

    named = {
        "emocircuits.model": model_id,
        "emocircuits.model_revision": first("revision", "model.revision", "model_revision"),
        "emocircuits.dtype": first("dtype", "model.dtype", "capture.dtype"),
        "emocircuits.data_sha256": first(
            "data_sha256",
            "data.sha256",
            "dataset.sha256",
            "sha256",
            *[k for k in flat if k.endswith("sha256")],
        ),
    }
    tags.update({k: v for k, v in named.items() if v not in (None, "")})
    inputs = manifest.get("inputs") or {}
    if isinstance(inputs, Mapping):
        for k, v in inputs.items():
            tags[f"emocircuits.input.{k}"] = v.get("hash", v) if isinstance(v, Mapping) else v
    for key in ("model", "data"):
        if isinstance(manifest.get(key), str):
            tags[f"emocircuits.{'model_name' if key == 'model' else key}"] = manifest[key]
    commands = manifest.get("commands")
    if isinstance(commands, list) and commands:
        tags["emocircuits.commands"] = "\n".join(
            " ".join(map(str, c)) if isinstance(c, list) else str(c) for c in commands
        )
    calls = manifest.get("calls")  # the library calls of a stage (emocircuits.study.calls)
    if isinstance(calls, list) and calls:
        tags["emocircuits.calls"] = "\n".join(_call_text(c) for c in calls)
    return {_name(k): _text(v, TAG_VALUE_LIMIT) for k, v in tags.items()}


def _call_text(call: Any) -> str:
    """``analyze_geometry(n_boot=40, ...)``: one library call of a stage, as text."""
    if not isinstance(call, Mapping):
        return str(call)
    opts = call.get("options") or {}
    args = ", ".join(f"{k}={v!r}" for k, v in opts.items()) if isinstance(opts, Mapping) else ""
    return f"{call.get('call')}({args})"


def default_uri(out_dir: str | Path) -> str:
    """The tracking URI of a study folder: ``MLFLOW_TRACKING_URI`` or its own SQLite file.

    >>> default_uri("/tmp/study")  # MLFLOW_TRACKING_URI unset          # doctest: +SKIP
    'sqlite:////tmp/study/mlflow.db'
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(Path(out_dir) / 'mlflow.db').resolve()}"


def _artifact_location(uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite database; ``None`` (the store's default) otherwise."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    db = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    return (db.resolve().parent / "mlartifacts").as_uri()


# ---------------------------------------------------------------- the tracker


class Tracker:
    """Runs of one experiment in an MLflow store; every run it opens, it also ends.

    ``study`` opens a top-level run, ``child`` a run nested in the innermost open one (or
    in ``parent``), ``log_stage`` a run holding a finished stage folder. Leaving the tracker
    ends whatever is still open (``FAILED`` after an exception). No global MLflow state
    (active run, tracking URI) is touched.

    >>> with Tracker("runs/study") as t, t.study("study"):   # doctest: +SKIP
    ...     run_id = t.log_stage("runs/study/stages/compare/extended-1a2b3c4d5e6f")
    """

    def __init__(
        self, out_dir: str | Path, experiment: str = DEFAULT_EXPERIMENT, uri: str | None = None
    ) -> None:
        self.out_dir = Path(out_dir)
        self.experiment = experiment
        self.uri = uri or default_uri(self.out_dir)
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._open: list[str] = []  # run ids, innermost last

    # -- store
    @property
    def client(self) -> MlflowClient:
        """The MLflow client (imports mlflow and creates the store on first use)."""
        if self._client is None:
            for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
                logging.getLogger(name).setLevel(logging.WARNING)  # schema creation chatter
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:///"):
                Path(self.uri[len("sqlite:///") :].split("?", 1)[0]).parent.mkdir(
                    parents=True, exist_ok=True
                )
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        """The experiment's id, created on first use (artifacts as in the module docs)."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=_artifact_location(self.uri)
                    )
                except Exception:  # created meanwhile by another process
                    exp = self.client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    @property
    def active(self) -> str | None:
        """The innermost open run's id (``None`` outside any run)."""
        return self._open[-1] if self._open else None

    # -- runs
    def start(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: str | None = None,
    ) -> str:
        """Open a run (nested in ``parent`` if given) and return its id; pair with :meth:`end`.

        Prefer :meth:`study` and :meth:`child`, which always end their run.
        """
        all_tags = {"mlflow.source.name": "emocircuits", "mlflow.source.type": "LOCAL"}
        with contextlib.suppress(Exception):
            import getpass

            all_tags["mlflow.user"] = getpass.getuser()
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        all_tags.update({_name(k): _text(v, TAG_VALUE_LIMIT) for k, v in (tags or {}).items()})
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        self._open.append(run_id)
        try:
            self.log(run_id, params=params)
        except BaseException:
            self.end(run_id, "FAILED")
            raise
        return run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run opened by :meth:`start` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if run_id in self._open:
            self._open.remove(run_id)
        self.client.set_terminated(run_id, status)

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: str | None = None,
    ) -> Iterator[str]:
        """A run as a context: ``FINISHED`` on exit, ``FAILED`` (``KILLED``) on an exception."""
        run_id = self.start(name, params, tags, parent)
        status = "FINISHED"
        try:
            yield run_id
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if status == "FINISHED":
                self.end(run_id, status)
            else:  # never hide the original exception behind a failing store
                try:
                    self.end(run_id, status)
                except Exception as e:  # pragma: no cover - store gone
                    logging.getLogger(__name__).warning("could not end run %s: %s", run_id, e)

    def study(
        self,
        name: str = "study",
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> contextlib.AbstractContextManager[str]:
        """The study's top-level run (``params``: the configuration, flattened).

        >>> with Tracker("runs/s").study("study", {"models": ["a"]}) as run_id:  # doctest: +SKIP
        ...     pass
        """
        return self.run(name, params, tags, parent=None)

    def child(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: str | None = None,
    ) -> contextlib.AbstractContextManager[str]:
        """A run nested in ``parent`` (default: the innermost open run).

        >>> with tracker.child("smollm2-135m") as model_run:   # doctest: +SKIP
        ...     tracker.log_stage(stage_dir, name="geometry/extended")
        """
        return self.run(name, params, tags, parent=parent or self.active)

    # -- logging
    def log(
        self,
        run_id: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        series: Series | None = None,
    ) -> int:
        """Log into a run (default: the innermost open one) in batched calls; returns how
        many values were sent. ``params`` are flattened; ``series`` is ``{name: {step: v}}``.

        >>> tracker.log(metrics={"seconds": 1.5}, series={"a": {0: 0.5, 1: 0.8}})  # doctest: +SKIP
        3
        """
        from mlflow.entities import Metric, Param, RunTag

        run_id = run_id or self.active
        if run_id is None:
            raise RuntimeError("no open run to log into")
        now = int(time.time() * 1000)
        flat = flatten(params or {})
        p = [Param(_name(k), _text(v, PARAM_VALUE_LIMIT)) for k, v in flat.items()]
        t = [RunTag(_name(k), _text(v, TAG_VALUE_LIMIT)) for k, v in (tags or {}).items()]
        m = [Metric(_name(k), float(v), now, 0) for k, v in (metrics or {}).items()]
        for key, points in (series or {}).items():
            m.extend(Metric(_name(key), float(v), now, int(s)) for s, v in sorted(points.items()))
        if p or t or m:
            self.client.log_batch(run_id, metrics=m, params=p, tags=t)
        return len(p) + len(t) + len(m)

    def log_files(self, files: list[Path], root: Path, run_id: str | None = None) -> int:
        """Copy files into a run's artifacts at their paths relative to ``root``."""
        run_id = run_id or self.active
        if run_id is None:
            raise RuntimeError("no open run to log into")
        for path in files:
            rel = path.relative_to(root).parent.as_posix()
            self.client.log_artifact(run_id, str(path), None if rel == "." else rel)
        return len(files)

    def log_stage(
        self,
        stage_dir: str | Path,
        *,
        run: str | None = None,
        parent: str | None = None,
        name: str | None = None,
        cached: bool | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Log a finished stage folder (module docs) and return its run's id.

        Without ``run``, a new run named ``name`` (default ``{stage}/{label}``) is opened in
        ``parent`` (default: the innermost open run) and ended here, ``FAILED`` if logging
        fails; with ``run``, everything goes into that open run, which the caller ends.

        >>> with tracker.child("smollm2-135m"):                          # doctest: +SKIP
        ...     tracker.log_stage(geometry_dir, name="geometry/extended", cached=False)
        """
        folder = Path(stage_dir)
        manifest = read_manifest(folder)
        all_tags: dict[str, Any] = {
            "emocircuits.stage": manifest["stage"],
            "emocircuits.label": manifest.get("label", ""),
            "emocircuits.hash": manifest.get("hash", ""),
            "emocircuits.stage_dir": str(folder.resolve()),
        }
        if cached is not None:
            all_tags["emocircuits.cached"] = str(bool(cached)).lower()
        all_tags.update(_provenance_tags(manifest))
        all_tags.update(tags or {})
        series, scalars, skipped = stage_metrics(folder)
        if _number(manifest.get("seconds")) is not None:
            scalars["seconds"] = float(manifest["seconds"])
        if skipped:
            all_tags["emocircuits.metrics_skipped"] = "; ".join(skipped)
        settings = manifest.get("settings") or {}

        def write(run_id: str) -> None:
            self.log(run_id, params=settings, tags=all_tags, metrics=scalars, series=series)
            self.log_files(_artifact_files(folder), folder, run_id)

        if run is not None:
            write(run)
            return run
        label = name or f"{manifest['stage']}/{manifest.get('label', folder.name)}"
        with self.run(label, parent=parent or self.active) as run_id:
            write(run_id)
        return run_id

    # -- context
    def close(self, status: str = "FINISHED") -> None:
        """End every run still open, innermost first."""
        while self._open:
            self.end(self._open[-1], status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            with contextlib.suppress(Exception):
                self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


# ---------------------------------------------------------------- a whole study folder


def log_study(
    out_dir: str | Path,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    uri: str | None = None,
    name: str = "study",
) -> str:
    """Log a study folder (its ``study.json`` and every finished stage) as one run tree.

    Parent ``name`` (params: the configuration; tags: versions, dataset hashes), a child per
    model (tags: id, revision, dtype; params: architecture, layers, width) holding that
    model's stages, and cross-model stages as children of the parent. A study whose
    ``study.json`` names a ``failed`` stage gets a ``FAILED`` run for it (tag
    ``emocircuits.error``) and ends ``FAILED``; one that never finished ends ``KILLED``.
    Returns the parent's id.

    >>> log_study("runs/study")                                  # doctest: +SKIP
    '5f0c...'
    """
    out = Path(out_dir)
    study = _read_json(out / "study.json") if (out / "study.json").is_file() else None
    if not isinstance(study, dict):
        raise DataError("no study.json: not a study folder", where=str(out))
    prov = study.get("provenance") or {}
    models = prov.get("models") or {}
    tags: dict[str, Any] = {
        f"emocircuits.version.{k}": v for k, v in (prov.get("versions") or {}).items()
    }
    for data, facts in (prov.get("datasets") or {}).items():
        if isinstance(facts, Mapping) and facts.get("sha256"):
            tags[f"emocircuits.data.{data}.sha256"] = facts["sha256"]
    tags["emocircuits.out"] = str(out.resolve())
    stages = [s for s in study.get("stages") or [] if isinstance(s, Mapping)]
    by_model: dict[str | None, list[Mapping[str, Any]]] = {}
    for s in stages:
        if _finished(out / str(s.get("dir", ""))):
            by_model.setdefault(s.get("model"), []).append(s)
    from emocircuits.report.build import failures

    failed = failures(dict(study))

    datasets = prov.get("datasets") or {}

    def log_stages(group: list[Mapping[str, Any]]) -> None:
        for s in group:
            # what the stage's own provenance leaves out, the study's says
            facts = models.get(s.get("model")) or {}
            data = datasets.get(s.get("data")) or {}
            known = {
                "emocircuits.model": facts.get("id"),
                "emocircuits.model_revision": facts.get("revision"),
                "emocircuits.dtype": facts.get("dtype"),
                "emocircuits.data_sha256": data.get("sha256")
                if isinstance(data, Mapping)
                else None,
            }
            own = _provenance_tags(read_manifest(out / s["dir"]))
            extra = {k: v for k, v in known.items() if v and k not in own}
            if "seconds" in s:
                extra["emocircuits.seconds_in_study"] = s["seconds"]
            name = f"{s.get('stage')}/{s.get('data') or s.get('label')}"
            tracker.log_stage(out / s["dir"], name=name, cached=s.get("cached"), tags=extra)

    tracker = Tracker(out, experiment, uri)
    with tracker:
        parent = tracker.start(name, params=study.get("config") or {}, tags=tags)
        status = "FINISHED" if study.get("finished") else "KILLED"
        try:
            seconds = _number(study.get("seconds"))
            tracker.log(parent, metrics={} if seconds is None else {"seconds": seconds})
            files = [out / f for f in ("study.json", "report.html") if (out / f).is_file()]
            tracker.log_files(files, out, parent)
            for model, group in by_model.items():
                if model is None:
                    continue
                facts = models.get(model) or {}
                mtags = {
                    "emocircuits.model_name": model,
                    "emocircuits.model": facts.get("id", model),
                    "emocircuits.model_revision": facts.get("revision"),
                    "emocircuits.dtype": facts.get("dtype"),
                    "emocircuits.architecture": facts.get("architecture"),
                }
                mtags = {k: v for k, v in mtags.items() if v is not None}
                with tracker.child(str(model), params=facts, tags=mtags, parent=parent):
                    log_stages(group)
            log_stages(by_model.get(None, []))
            for f in failed:
                key = str(f.get("stage") or "failed")
                error = {"emocircuits.stage": key.split("/")[0], "emocircuits.key": key,
                         "emocircuits.error": str(f.get("error", ""))}  # fmt: skip
                tracker.end(tracker.start(key, tags=error, parent=parent), "FAILED")
                status = "FAILED"
            if status != "FINISHED":
                tracker.log(parent, tags={"emocircuits.study_unfinished": "true"})
        except BaseException as e:
            with contextlib.suppress(Exception):  # keep the original exception
                tracker.end(parent, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        tracker.end(parent, status)
    return parent

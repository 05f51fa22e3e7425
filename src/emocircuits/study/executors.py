"""Where the study's stages run: one after another in this process (``local``), or as Ray
tasks on a cluster (``ray``), each started when the stages it reads are done.

Both run the same function, :func:`emocircuits.study.stages.run_stage`, which writes the
stage into a partial folder and publishes it with a rename: the stage folders, their
hashes and contents are the same whichever executor ran them. The driver (this process)
keeps the progress display, ``study.json`` and MLflow; a Ray worker only writes its stage
folder into the output folder, which every node must see at the same path (a shared
filesystem), like the models and the data files.

On Ray every attempt of a stage writes its own ``<folder>.partial.<pid>.<id>`` (the worker's
process id), which the next attempt removes: a worker that dies leaves nothing that is
built on. Ray retries a stage whose worker or node died (``max_retries`` times); a stage
that still fails is reported like a stage that raised a user error, and the others go on.

>>> run_local(cfg, plan, events)  # doctest: +SKIP
>>> run_ray(cfg, plan, events)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol

from emocircuits.errors import EmocircuitsError
from emocircuits.study.config import StudyConfig
from emocircuits.study.stages import Stage, run_stage

#: the stages that load a model (a GPU each when the study computes on cuda)
MODEL_STAGES = ("capture", "steer", "patch", "ablate", "heads")
#: environment variables the driver passes to the Ray workers (where models are cached)
FORWARDED_ENV = ("EMOCIRCUITS_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class ExecutorError(EmocircuitsError):
    """The executor cannot run (Ray not installed, no cluster at the address)."""


class Events(Protocol):
    """What an executor tells the runner (which updates the display and study.json)."""

    failures: dict[str, str]

    def reused(self, st: Stage) -> None: ...
    def blocked(self, st: Stage, by: str) -> None: ...
    def started(self, st: Stage) -> None: ...
    def done(self, st: Stage, seconds: float, worker: str | None = None) -> None: ...
    def failed(self, st: Stage, why: str) -> None: ...


def _settled(st: Stage, ev: Events) -> bool:
    """Report a stage whose input failed, or that is finished already; True if so."""
    blocked = [i.key for i in st.inputs if i.key in ev.failures]
    if blocked:
        ev.blocked(st, blocked[0])
        return True
    if st.done():
        ev.reused(st)
        return True
    return False


def run_local(cfg: StudyConfig, plan: list[Stage], ev: Events) -> None:
    """Every stage in plan order, in this process."""
    for st in plan:
        if _settled(st, ev):
            continue
        ev.started(st)
        try:
            seconds = run_stage(cfg, st)
        except EmocircuitsError as e:
            ev.failed(st, str(e))
        else:
            ev.done(st, seconds)


def require_ray() -> Any:
    """The ``ray`` module, or an :class:`ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(
            "the ray executor needs Ray, which is not installed: "
            "pip install 'emocircuits[distributed]'"
        ) from None
    return ray


def stage_resources(cfg: StudyConfig, st: Stage, device: str) -> dict[str, float]:
    """What a stage asks Ray for: ``stage_cpus`` CPUs, and ``model_stage_gpus`` GPUs for a
    stage that loads a model when the study computes on cuda.

    >>> from emocircuits.study.config import load_config
    >>> cfg = load_config(None)
    >>> stage_resources(cfg, Stage("capture", "m.d", "m", "d", [], {}, {}), "cuda")
    {'num_cpus': 1.0, 'num_gpus': 1.0}
    """
    gpus = cfg.study["model_stage_gpus"] if st.name in MODEL_STAGES and device == "cuda" else 0
    return {"num_cpus": float(cfg.study["stage_cpus"]), "num_gpus": float(gpus)}


def attempt_folder(st: Stage) -> Path:
    """A partial folder of this attempt alone; the folders of earlier attempts (whose worker
    died) are removed first."""
    for old in st.dir.parent.glob(f"{st.dir.name}.partial*"):
        shutil.rmtree(old, ignore_errors=True)
    return st.dir.with_name(f"{st.dir.name}.partial.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def stage_task(cfg: StudyConfig, st: Stage, cwd: str, threads: int) -> dict[str, Any]:
    """What a Ray worker runs for one stage: :func:`run_stage` in the driver's working
    folder (relative paths read the same), with as many torch threads as CPUs it asked for.
    A user-facing error comes back as ``{"error": ...}``; anything else propagates."""
    import socket

    import torch

    here = os.getcwd()
    before = torch.get_num_threads()
    os.chdir(cwd)
    torch.set_num_threads(max(1, threads))
    part = attempt_folder(st)
    try:
        seconds = run_stage(cfg, st, part)
    except EmocircuitsError as e:  # nothing of a failed stage is kept
        shutil.rmtree(part, ignore_errors=True)
        return {"error": str(e)}
    finally:
        torch.set_num_threads(before)
        os.chdir(here)
    return {"seconds": seconds, "worker": f"{socket.gethostname()}:{os.getpid()}"}


def _connect(ray: Any, address: str) -> bool:
    """Connect to the cluster (or start a Ray for this run); True if this call did."""
    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    address = address or os.environ.get("RAY_ADDRESS", "")
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False}
    if not address:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address or None, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local Ray"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExecutorError(f"cannot start or reach the Ray cluster ({where}): {msg}") from None
    return True


def run_ray(cfg: StudyConfig, plan: list[Stage], ev: Events, device: str) -> None:
    """Every stage as a Ray task, submitted when its inputs are done; returns when every
    stage is done, reused, failed or blocked. ``device``: the study's device type."""
    ray = require_ray()
    from ray.exceptions import RayError, RayTaskError

    started = _connect(ray, cfg.study["address"])
    task = ray.remote(stage_task)
    cwd = os.getcwd()
    waiting = list(plan)
    finished: set[str] = set()
    pending: dict[Any, Stage] = {}
    try:
        while waiting or pending:
            for st in list(waiting):
                if any(i.key in ev.failures for i in st.inputs) or st.done():
                    waiting.remove(st)
                    _settled(st, ev)
                    if st.key not in ev.failures:
                        finished.add(st.key)
                elif all(i.key in finished for i in st.inputs):
                    waiting.remove(st)
                    res = stage_resources(cfg, st, device)
                    ref = task.options(
                        **res, max_retries=int(cfg.study["max_retries"]),
                        retry_exceptions=False, name=st.key,
                    ).remote(cfg, st, cwd, int(res["num_cpus"]))  # fmt: skip
                    pending[ref] = st
                    ev.started(st)
            if not pending:
                break  # nothing runs and nothing can start (cannot happen: a plan is ordered)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            st = pending.pop(ref)
            try:
                out = ray.get(ref)
            except RayTaskError:
                raise  # a bug in a stage: as with the local executor, the study stops
            except RayError as e:  # the worker or node died on every attempt
                n = int(cfg.study["max_retries"]) + 1
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                ev.failed(st, f"failed on Ray after {n} attempt{'s' * (n != 1)} "
                              f"({type(e).__name__}: {first})")  # fmt: skip
                continue
            if "error" in out:
                ev.failed(st, out["error"])
            else:
                finished.add(st.key)
                ev.done(st, out["seconds"], out.get("worker"))
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()

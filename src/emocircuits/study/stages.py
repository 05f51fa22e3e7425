"""The study's stages: what each runs, what it depends on, and its cache folder.

Every stage is one call of the library (:mod:`emocircuits.study.calls`) on the saved
outputs of the stages before it; its folder ``stages/<stage>/<label>-<hash12>`` holds
exactly what the result's ``save`` writes (what the matching command writes to ``--out``)
plus ``log.txt`` (what it printed) and ``stage.json``, written last, with when the stage
started and finished (a capture folder's own ``manifest.json`` belongs to the activations).
The hash covers the stage's settings, the identity of its model and dataset, the hashes of
its inputs and the emocircuits version, so:

- a finished folder (with ``stage.json``) for the same hash is reused as it is;
- changing one setting changes the hash of that stage and of the stages that read it only;
- an interrupted stage leaves ``<folder>.partial``: a capture resumes from its finished
  shards, any other stage starts again (on Ray every attempt writes its own
  ``<folder>.partial.<pid>.<id>``, removed by the next attempt: never built on).

>>> plan = plan_study(load_config(None))  # doctest: +SKIP
>>> [s.key for s in plan][:3]  # doctest: +SKIP
['capture/smollm2-135m.everyday', 'capture/smollm2-135m.baseline', 'geometry/...']
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emocircuits.capture.store import atomic_write_bytes, atomic_write_json
from emocircuits.study import calls
from emocircuits.study.config import COMMANDS, StudyConfig

VECTORS = "vectors.safetensors"
STAGE_FILE = "stage.json"


@dataclass
class Stage:
    """One unit of cached work. ``identity`` is what, besides settings and inputs, decides
    the result (model files, dataset bytes)."""

    name: str
    label: str
    model: str | None
    data: str | None
    inputs: list[Stage]
    settings: dict[str, Any]
    identity: dict[str, Any]
    hash: str = ""
    dir: Path = field(default_factory=Path)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.label}"

    @property
    def partial(self) -> Path:
        return self.dir.with_name(self.dir.name + ".partial")

    def done(self) -> bool:
        return (self.dir / STAGE_FILE).is_file()


def model_identity(name: str, revision: str = "") -> dict[str, Any]:
    """What names a model's weights without loading it: a built-in's package version, a
    local file's or folder's content hash, a hub id and revision."""
    from importlib.metadata import PackageNotFoundError, version

    from emocircuits.models.loading import BUILTINS, _folder_fingerprint, sha256_file

    if name in BUILTINS:
        dist = BUILTINS[name]["pip"].split()[-1].split("==")[0]
        try:
            return {"builtin": name, "package": f"{dist}=={version(dist)}"}
        except PackageNotFoundError:
            return {"builtin": name, "package": None}  # loading will say how to install it
    p = Path(name).expanduser()
    if p.is_file():
        return {"file": str(p.resolve()), "sha256": sha256_file(p)}
    if p.is_dir():
        return {"folder": str(p.resolve()), "sha256": _folder_fingerprint(p)}
    return {"hub": name, "revision": revision or None}


def short_name(name: str) -> str:
    """A model's or dataset's name as used in folder labels: a path's last part, a hub id
    with ``/`` replaced (``runs/x/my-model`` -> ``my-model``, ``org/model`` -> ``org_model``)."""
    p = Path(name).expanduser()
    if p.exists():
        return p.stem if p.is_file() else p.name
    return name.replace("/", "_")


def data_identity(name: str) -> dict[str, Any]:
    from emocircuits.data import load_dataset

    ds = load_dataset(name)
    return {"source": name, "sha256": ds.sha256, "version": ds.version, "n": len(ds),
            "labels": ds.counts()}  # fmt: skip


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def compute_placement(cfg: StudyConfig) -> tuple[str, str]:
    """``(device type, dtype)`` the study's arithmetic runs in (``cpu``, ``cuda``, ``mps``;
    ``float32``, ...): what decides its numbers, hence part of the stage hashes. Where the
    weights are kept (device map, memory limits, offload) does not change them: offloaded
    modules are computed on the main device. A device that is not there fails here,
    before any stage runs; on Ray, a cuda device with an explicit dtype is taken as given
    (the GPUs may be on the workers only)."""
    import torch

    from emocircuits.errors import ModelError
    from emocircuits.models.loading import compute_device, resolve_dtype

    s = cfg.study
    try:
        dev = compute_device(s["device"] or "auto", s["device_map"] or None)
    except ModelError as e:
        # on Ray the GPUs may be on the workers only: a cuda device named with its dtype is
        # taken as given (a stage on a worker without it fails there, naming it)
        if s.get("executor") != "ray" or not str(s["device"]).startswith("cuda"):
            raise
        if (s["dtype"] or "auto") == "auto":
            raise ModelError(f"{e}; on Ray with GPUs on the workers only, set the study's "
                             "dtype (auto chooses it from the GPU)") from None  # fmt: skip
        dev = torch.device("cuda")
    dtype = resolve_dtype(s["dtype"] or "auto", dev)
    return dev.type, str(dtype).removeprefix("torch.")


# options that enter a stage's hash only when set: a study that leaves them unset keeps the
# stage hashes (and folders) it had before they existed
_HASHED_WHEN_SET = ("chat", "system")


def _hashed(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if not (k in _HASHED_WHEN_SET and v is None)}


def plan_study(cfg: StudyConfig) -> list[Stage]:
    """The stages of a study in the order they run (each after its inputs)."""
    from emocircuits._version import __version__

    models = {m: model_identity(m, cfg.study["revision"]) for m in cfg.models}
    datas = {d: data_identity(d) for d in dict.fromkeys([*cfg.data, cfg.study["causal_data"]])}
    device, dtype = compute_placement(cfg)
    run = {"dtype": dtype, "trust_remote_code": cfg.study["trust_remote_code"],
           "revision": cfg.study["revision"]}  # fmt: skip
    if device != "cpu":  # CPU studies keep the hashes they had before devices were settings
        run["device"] = device
    plan: list[Stage] = []

    def add(name: str, label: str, model: str | None, data: str | None, inputs: list[Stage],
            settings: dict[str, Any]) -> Stage:  # fmt: skip
        ident = {"model": models.get(model or ""), "data": datas.get(data or ""), **run}
        st = Stage(name, label, model, data, inputs, settings, ident)
        st.hash = _hash({"stage": name, "settings": _hashed(settings), "identity": ident,
                         "inputs": [i.hash for i in inputs], "version": __version__})  # fmt: skip
        st.dir = cfg.out / "stages" / name / f"{label}-{st.hash[:12]}"
        plan.append(st)
        return st

    cap: dict[tuple[str, str], Stage] = {}
    geo: dict[tuple[str, str], Stage] = {}
    need = cfg.data if not any(cfg.on(a) for a in ("steer", "patch", "ablate", "heads")) else [
        *cfg.data, cfg.study["causal_data"]]  # fmt: skip
    need = list(dict.fromkeys(need))
    for m in cfg.models:
        mn = short_name(m)
        for d in need:
            cap[m, d] = add("capture", f"{mn}.{short_name(d)}", m, d, [],
                            {**cfg.stage_options("capture"), "device": device})  # fmt: skip
        for d in need:
            others = [cap[m, o] for o in need if o != d][:1]  # stability across datasets
            if cfg.on("geometry") or d == cfg.study["causal_data"]:
                settings = {"geometry": cfg.stage_options("geometry") if cfg.on("geometry")
                            else None, "vectors": cfg.stage_options("vectors")}  # fmt: skip
                geo[m, d] = add("geometry", f"{mn}.{short_name(d)}", m, d, [cap[m, d], *others],
                                settings)  # fmt: skip
        causal = geo.get((m, cfg.study["causal_data"]))
        for a in ("steer", "patch", "ablate", "heads"):
            if cfg.on(a) and causal is not None:
                add(a, mn, m, cfg.study["causal_data"], [causal], cfg.stage_options(a))
    if cfg.on("compare") and len(cfg.models) >= 2:
        for d in cfg.data:
            add("compare", short_name(d), None, d, [cap[m, d] for m in cfg.models],
                cfg.stage_options("compare"))  # fmt: skip
    return plan


# the library function behind each stage's call (recorded in stage.json)
FUNCTIONS = {"capture": "extract", "geometry": "analyze_geometry", "vectors": "directions",
             "compare": "compare_models", "steer": "steer_sweep", "patch": "patch",
             "ablate": "ablate", "heads": "heads"}  # fmt: skip


def run_calls(cfg: StudyConfig, st: Stage, out: Path) -> list[dict[str, Any]]:
    """Run ``st`` into ``out`` through its library calls (:mod:`emocircuits.study.calls`);
    returns what was called, with which options (for ``stage.json``)."""
    from emocircuits.models.loading import PLACEMENT

    run = {k: cfg.study[k] for k in ("revision", "trust_remote_code", *PLACEMENT)}
    done: list[dict[str, Any]] = []

    def record(stage: str) -> dict[str, Any]:
        opts = cfg.stage_options(stage)
        done.append({"call": FUNCTIONS[stage], "options": opts})
        return opts

    if st.name == "capture":
        placed = calls.capture(str(st.model), str(st.data), out, record("capture"), run)
        done[-1]["placement"] = placed
    elif st.name == "geometry":
        cap = st.inputs[0].dir
        if cfg.on("geometry"):
            other = st.inputs[1].dir if len(st.inputs) > 1 else None
            calls.geometry(cap, out, record("geometry"), other)
        calls.vectors(cap, out / VECTORS, record("vectors"))
    elif st.name == "compare":
        names = [short_name(str(i.model)) for i in st.inputs]
        calls.compare([i.dir for i in st.inputs], names, out, record("compare"))
    elif st.name == "steer":  # a copy: the recommendations are saved next to the vectors
        shutil.copyfile(st.inputs[0].dir / VECTORS, out / VECTORS)
        placed = calls.steer(str(st.model), out / VECTORS, out, record("steer"), run)
        done[-1]["placement"] = placed
    else:  # patch, ablate and heads load the model themselves
        vectors = st.inputs[0].dir / VECTORS
        placed = calls.causal(COMMANDS[st.name], str(st.model), str(st.data), vectors, out,
                              record(st.name), run)  # fmt: skip
        done[-1]["placement"] = placed
    return done


def run_stage(cfg: StudyConfig, st: Stage, part: Path | None = None) -> float:
    """Run one stage into its ``.partial`` folder, then publish it (stage.json last, rename).
    Returns the seconds it took. Errors propagate; the partial folder stays for a capture
    (it resumes) and is discarded for anything else at the next start.

    ``part``: another partial folder, used by this call alone (the Ray executor gives each
    attempt its own, so that nothing an interrupted attempt wrote is ever built on). If
    another attempt published the stage first, this one's folder is discarded."""
    part = part or st.partial
    if part.exists() and (st.name != "capture" or part != st.partial):
        shutil.rmtree(part)
    part.mkdir(parents=True, exist_ok=True)
    started = _now()
    t0 = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        done = run_calls(cfg, st, part)
    seconds = round(time.perf_counter() - t0, 2)
    atomic_write_bytes(part / "log.txt", log.getvalue().encode("utf-8"))
    _relocate(part, st.dir)
    outputs = sorted(str(p.relative_to(part)) for p in part.rglob("*") if p.is_file())
    man = manifest(st, done, seconds, outputs, part)
    atomic_write_json(part / STAGE_FILE, {**man, "started": started, "finished": _now()})
    if st.done():  # published by another attempt meanwhile: the same content
        shutil.rmtree(part)
        return seconds
    if st.dir.exists():  # an older copy without stage.json (never a finished one)
        shutil.rmtree(st.dir)
    part.rename(st.dir)
    return seconds


def _now() -> str:
    """UTC time to the millisecond (when a stage started and finished, in stage.json)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


#: the text files whose paths are rewritten from the ``.partial`` folder to the final one
TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".txt")


def _relocate(part: Path, final: Path) -> None:
    """Point the paths that the outputs record into ``part`` at ``final``, where the stage
    is about to be published (a sweep records its output folder, a log the files it wrote)."""
    old, new = str(part), str(final)
    for p in part.rglob("*"):
        if p.suffix in TEXT_SUFFIXES and p.is_file():
            text = p.read_text(encoding="utf-8")
            if old in text:
                atomic_write_bytes(p, text.replace(old, new).encode("utf-8"))


def manifest(
    st: Stage,
    done: list[dict[str, Any]],
    seconds: float,
    outputs: list[str],
    part: Path | None = None,
) -> dict:
    """What a stage folder says about itself (``part``: where it is being written)."""
    return {
        "format": "emocircuits.stage",
        "version": 1,
        "stage": st.name,
        "label": st.label,
        "hash": st.hash,
        "model": st.model,
        "data": st.data,
        "settings": st.settings,
        "identity": st.identity,
        "inputs": {i.key: {"hash": i.hash, "dir": str(i.dir)} for i in st.inputs},
        "calls": done,
        "provenance": _provenance(st, done, part or st.partial),
        "seconds": seconds,
        "outputs": outputs,
    }


def _provenance(
    st: Stage, done: list[dict[str, Any]] | None = None, part: Path | None = None
) -> dict[str, Any]:
    """Model (id, revision, dtype), site, token rule, method and data hash of the stage's
    numbers, read from what its command or its inputs saved; ``placement``: where this
    stage's model ran (resolved device and dtype, modules per device, offload)."""
    part = part or st.partial
    out: dict[str, Any] = {"data_sha256": (st.identity.get("data") or {}).get("sha256")}
    placed = [c["placement"] for c in done or () if c.get("placement")]
    if placed:
        out["placement"] = placed[0]
    caps = [part] if st.name == "capture" else [i.dir for i in st.inputs]
    for d in caps:  # the activations' own manifest names model, revision, dtype, token rules
        while d is not None and not (d / "manifest.json").is_file():
            up = json.loads((d / STAGE_FILE).read_text()) if (d / STAGE_FILE).is_file() else {}
            nxt = [Path(v["dir"]) for v in up.get("inputs", {}).values()]
            d = nxt[0] if nxt else None
        if d is not None:
            m = json.loads((d / "manifest.json").read_text())
            model = {k: v for k, v in (m.get("model") or {}).items() if k != "device_map"}
            out.setdefault("model", model)  # the per-module map stays in the manifest
            keep = ("dtype", "architecture", "n_layers", "width", "sites", "positions", "capture")
            out.setdefault("capture", {k: m.get(k) for k in keep if k in m})
    vec = part / VECTORS if (part / VECTORS).is_file() else None
    if vec is None and st.inputs and (st.inputs[0].dir / VECTORS).is_file():
        vec = st.inputs[0].dir / VECTORS
    if vec is not None:
        from emocircuits.geometry.vectors import EmotionVectors

        meta = EmotionVectors.load(vec).meta()
        out["vectors"] = {k: meta.get(k) for k in ("site", "position", "method", "baseline")}
    return out

"""The study's stages: what each runs, what it depends on, and its cache folder.

Every stage is one ``emocircuits`` command run in-process on the outputs of the stages
before it; its folder ``stages/<stage>/<label>-<hash12>`` holds exactly what that command
writes to ``--out`` plus ``log.txt`` (what it printed) and ``stage.json``, written last
(a capture folder's own ``manifest.json`` belongs to the activations).
The hash covers the stage's settings, the identity of its model and dataset, the hashes of
its inputs and the emocircuits version, so:

- a finished folder (with ``stage.json``) for the same hash is reused as it is;
- changing one setting changes the hash of that stage and of the stages that read it only;
- an interrupted stage leaves ``<folder>.partial``: a capture resumes from its finished
  shards, any other stage starts again.

>>> plan = plan_study(load_config(None))  # doctest: +SKIP
>>> [s.key for s in plan][:3]  # doctest: +SKIP
['capture/smollm2-135m.extended', 'capture/smollm2-135m.baseline', 'geometry/...']
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emocircuits.capture.store import atomic_write_json
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
    return {"source": name, "sha256": ds.sha256, "n": len(ds), "labels": ds.counts()}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def plan_study(cfg: StudyConfig) -> list[Stage]:
    """The stages of a study in the order they run (each after its inputs)."""
    from emocircuits import __version__

    models = {m: model_identity(m, cfg.study["revision"]) for m in cfg.models}
    datas = {d: data_identity(d) for d in dict.fromkeys([*cfg.data, cfg.study["causal_data"]])}
    run = {"dtype": cfg.study["dtype"], "trust_remote_code": cfg.study["trust_remote_code"],
           "revision": cfg.study["revision"]}  # fmt: skip
    plan: list[Stage] = []

    def add(name: str, label: str, model: str | None, data: str | None, inputs: list[Stage],
            settings: dict[str, Any]) -> Stage:  # fmt: skip
        ident = {"model": models.get(model or ""), "data": datas.get(data or ""), **run}
        st = Stage(name, label, model, data, inputs, settings, ident)
        st.hash = _hash({"stage": name, "settings": settings, "identity": ident,
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
                            cfg.stage_options("capture"))  # fmt: skip
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


def stage_argv(cfg: StudyConfig, st: Stage, out: Path) -> list[list[str]]:
    """The command line(s) that run ``st`` into ``out``."""
    base = ["--trust-remote-code"] if cfg.study["trust_remote_code"] else []
    dtype = ["--dtype", cfg.study["dtype"]]
    if st.name == "capture":
        rev = ["--revision", cfg.study["revision"]] if cfg.study["revision"] else []
        return [["extract", "--model", st.model, "--data", st.data, "--out", str(out),
                 "--quiet", *dtype, *rev, *base, *cfg.argv("capture")]]  # fmt: skip
    if st.name == "geometry":
        cap = st.inputs[0].dir
        vec = ["vectors", "--activations", str(cap), "--output", str(out / VECTORS),
               *cfg.argv("vectors")]  # fmt: skip
        if not cfg.on("geometry"):
            return [vec]
        other = ["--compare", str(st.inputs[1].dir)] if len(st.inputs) > 1 else []
        geo = ["geometry", "--activations", str(cap), "--out", str(out), *other,
               *cfg.argv("geometry")]  # fmt: skip
        return [geo, vec]
    if st.name == "compare":
        return [["compare", "--activations", *(str(i.dir) for i in st.inputs),
                 "--names", *(short_name(str(i.model)) for i in st.inputs), "--out", str(out),
                 "--quiet",
                 *cfg.argv("compare")]]  # fmt: skip
    vectors = st.inputs[0].dir / VECTORS
    if st.name == "steer":  # a copy: the recommendations are saved next to the vectors
        shutil.copyfile(vectors, out / VECTORS)
        return [["steer-sweep", "--model", st.model, "--vectors", str(out / VECTORS),
                 "--out", str(out), "--quiet", *base, *cfg.argv("steer")]]  # fmt: skip
    extra = dtype  # patch, ablate and heads load the model themselves; steer is float32
    return [[COMMANDS[st.name], "--model", st.model, "--vectors", str(vectors), "--data",
             st.data, "--out", str(out), "--quiet", *extra, *base, *cfg.argv(st.name)]]  # fmt: skip


def run_stage(cfg: StudyConfig, st: Stage) -> float:
    """Run one stage into its ``.partial`` folder, then publish it (stage.json last, rename).
    Returns the seconds it took. Errors propagate; the partial folder stays for a capture
    (it resumes) and is discarded for anything else at the next start."""
    from emocircuits.cli import build_parser

    part = st.partial
    if part.exists() and st.name != "capture":
        shutil.rmtree(part)
    part.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = io.StringIO()
    parser = build_parser()
    argvs = stage_argv(cfg, st, part)
    with contextlib.redirect_stdout(log):
        for argv in argvs:
            print("$ emocircuits " + " ".join(argv))
            args = parser.parse_args(argv)
            args.func(args)
    seconds = round(time.perf_counter() - t0, 2)
    (part / "log.txt").write_text(log.getvalue().replace(str(part), str(st.dir)))
    outputs = sorted(str(p.relative_to(part)) for p in part.rglob("*") if p.is_file())
    atomic_write_json(part / STAGE_FILE, manifest(st, argvs, seconds, outputs))
    if st.dir.exists():  # an older copy without stage.json (never a finished one)
        shutil.rmtree(st.dir)
    part.rename(st.dir)
    return seconds


def manifest(st: Stage, argvs: list[list[str]], seconds: float, outputs: list[str]) -> dict:
    """What a stage folder says about itself."""
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
        "commands": [["emocircuits", *a] for a in argvs],
        "provenance": _provenance(st),
        "seconds": seconds,
        "outputs": outputs,
    }


def _provenance(st: Stage) -> dict[str, Any]:
    """Model (id, revision, dtype), site, token rule, method and data hash of the stage's
    numbers, read from what its command or its inputs saved."""
    part = st.partial
    out: dict[str, Any] = {"data_sha256": (st.identity.get("data") or {}).get("sha256")}
    caps = [st.partial] if st.name == "capture" else [i.dir for i in st.inputs]
    for d in caps:  # the activations' own manifest names model, revision, dtype, token rules
        while d is not None and not (d / "manifest.json").is_file():
            up = json.loads((d / STAGE_FILE).read_text()) if (d / STAGE_FILE).is_file() else {}
            nxt = [Path(v["dir"]) for v in up.get("inputs", {}).values()]
            d = nxt[0] if nxt else None
        if d is not None:
            m = json.loads((d / "manifest.json").read_text())
            out.setdefault("model", m.get("model"))
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

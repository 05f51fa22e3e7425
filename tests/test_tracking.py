"""MLflow tracking of a study, against a real SQLite MLflow store read back with
``MlflowClient``: the run tree (study -> model -> stage, compare under the study), params,
tags, per-layer metric histories whose steps are the layers, artifacts, the
``MLFLOW_TRACKING_URI`` override, FAILED runs after an exception, and one stage logged
from real ``emocircuits geometry`` output on a tiny model."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

import emocircuits as ec
from emocircuits.errors import DataError
from emocircuits.study.tracking import (
    GENERIC_MAX_SERIES,
    Tracker,
    default_uri,
    log_study,
    stage_metrics,
)

from helpers import run

# mlflow 3.17's SQLAlchemy store, with SQLAlchemy 2.1 (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
LAYERS = 4
EMOTIONS = ("gratitude", "anger")


def _png() -> bytes:
    """A valid 1x1 grey PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
        + chunk(b"IEND", b"")
    )


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def cosine(model: str, method: str, layer: int) -> float:
    """The made-up value of similarity.csv's ``cosine`` for (model, method, layer)."""
    return round(0.1 * layer + (0.01 if method == "mean_diff" else 0.02) + len(model) / 1000, 6)


def write_manifest(
    folder: Path,
    stage: str,
    label: str,
    model: str | None,
    settings: dict,
    inputs: dict[str, str],
    provenance: dict,
    file: str = "stage.json",
) -> None:
    """What the runner writes last (``stage.json``: inputs with their folders, the model's
    provenance as its activations saved it), or the layout note's ``manifest.json``."""
    if file == "stage.json":
        doc = {
            "format": "emocircuits.stage", "version": 1, "stage": stage, "label": label,
            "hash": "ab" * 32, "model": model, "data": "baseline", "settings": settings,
            "inputs": {k: {"hash": h, "dir": f"/x/{k}"} for k, h in inputs.items()},
            "commands": [["emocircuits", stage, "--out", "/x"]],
            "provenance": {"data_sha256": "ef" * 32, "capture": {"dtype": "float32"},
                           **({"model": {"name": model, "revision": f"rev-{model}",
                                         "dtype": "float32"}} if model else {}),
                           **provenance},
            "seconds": 3.25,
        }  # fmt: skip
    else:
        doc = {
            "stage": stage, "label": label, "hash": "ab" * 32, "settings": settings,
            "inputs": inputs, "seconds": 3.25,
            "provenance": {"data": "baseline", "data_sha256": "ef" * 32,
                           **({"model": model, "revision": f"rev-{model}", "dtype": "float32"}
                              if model else {}),
                           **provenance},
        }  # fmt: skip
    (folder / file).write_text(json.dumps(doc))


def make_geometry_stage(
    root: Path, model: str, *, long_setting: bool = False, file: str = "stage.json"
) -> Path:
    """A geometry stage folder as the runner writes it: tables, probes, summary, figures,
    a tensor file (not an artifact) and stage.json last."""
    folder = root / "stages" / "geometry" / f"{model}.baseline-0123456789ab"
    (folder / "figures").mkdir(parents=True)
    sim = []
    for site, position in (("resid", "mean"), ("resid", "last"), ("attn", "mean")):
        for method in ("mean_diff", "raw_mean"):
            for layer in range(LAYERS):
                c = cosine(model, method, layer)
                if (site, position) != ("resid", "mean"):
                    c = 9.0  # must be filtered out
                sim.append({
                    "site": site, "position": position, "layer": layer,
                    "emotion_1": EMOTIONS[0], "emotion_2": EMOTIONS[1], "cosine": c,
                    "ci_low": c - 0.1, "ci_high": c + 0.1, "cosine_plugin": c,
                    "reliable": "True", "class_mean_distance": 2.0 + layer,
                    "distance_ci_low": 1.0, "distance_ci_high": 3.0 + layer,
                    "method": method, "baseline": "neutral", "ci_level": 0.95, "n_boot": 50,
                })  # fmt: skip
    _write_csv(folder / "similarity.csv", sim)
    stab = [
        {"site": "resid", "position": "mean", "method": "mean_diff", "emotion": e,
         "layer": layer, "measure": m, "value": 0.5 + layer / 10, "lo": 0.4, "hi": 0.9}
        for e in EMOTIONS for layer in range(LAYERS) for m in ("norm", "split_half_cos")
    ]  # fmt: skip
    _write_csv(folder / "stability.csv", stab)
    sub = [
        {"site": "resid", "position": "mean", "compared": c, "kind": "between", "k": 2,
         "layer_a": a, "layer_b": b if c == "layers" else a, "overlap": 0.3 + a / 10,
         "p_value": 0.01, "null_mean": 0.05}
        for c in ("layers", "position:last") for a in range(LAYERS)
        for b in (range(LAYERS) if c == "layers" else [a])
    ]  # fmt: skip
    _write_csv(folder / "subspaces.csv", sub)
    # a table without a rule: the generic rule (decimal columns by the varying text columns)
    _write_csv(folder / "separation.csv", [
        {"emotion": e, "layer": layer, "cohens_d": 1.5 + layer / 4, "n": 20}
        for e in EMOTIONS for layer in range(LAYERS)
    ])  # fmt: skip
    # too many series for the generic rule: skipped and named in a tag
    _write_csv(folder / "per_unit.csv", [
        {"neuron": n, "layer": layer, "contrast": 0.5}
        for n in range(GENERIC_MAX_SERIES + 1) for layer in range(2)
    ])  # fmt: skip
    (folder / "probes_cv.json").write_text(json.dumps({
        "format": "emocircuits.probe_cv", "position": "mean", "chance": 0.25,
        "layers": {"resid": list(range(LAYERS))},
        "sites": {"resid": {"logreg": [0.4, 0.6, 0.8, 0.7]}},
        "ci": {"resid": {"logreg": {"low": [0.3, 0.5, 0.7, 0.6], "high": [0.5, 0.7, 0.9, 0.8]}}},
        "p_value": {"resid": {"logreg": [0.01, 0.001, 1e-5, 1e-4]}},
    }))  # fmt: skip
    (folder / "summary.json").write_text(json.dumps({
        "main_position": "mean", "seconds": {"total": 2.5},
        "headline": {"cv_logreg": {"best_layer": 2, "best": 0.8, "layer0": 0.4},
                     "raw_mean_cos_median": 0.99, "split_half": {"layers": [1, 2]}},
    }))  # fmt: skip
    (folder / "figures" / "norms-resid-mean.png").write_bytes(_png())
    (folder / "figures" / "norms-resid-mean.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'
    )
    (folder / "vectors.safetensors").write_bytes(b"\x00" * 64)
    settings = {"n_boot": 50, "vectors": {"method": "one_vs_rest", "site": "resid"}}
    if long_setting:
        settings["note"] = "x" * 7000
    write_manifest(folder, "geometry", f"{model}.baseline", model, settings,
                   {"capture": "cd" * 32}, {"position": "mean"}, file)  # fmt: skip
    return folder


def make_compare_stage(root: Path, models: tuple[str, str]) -> Path:
    folder = root / "stages" / "compare" / "baseline-0123456789ab"
    folder.mkdir(parents=True)
    a, b = models
    _write_csv(folder / "layer_pairs.csv", [
        {"model_a": a, "model_b": b, "layer_a": la, "layer_b": lb,
         "matched": str(lb == min(la, 2)), "cka": 0.5 + la / 10 if lb == min(la, 2) else 0.0,
         "cka_p": 0.01}
        for la in range(LAYERS) for lb in range(3)
    ])  # fmt: skip
    (folder / "summary.json").write_text(json.dumps({
        "pairs": [{"model_a": a, "model_b": b, "measures": {
            "cka": {"value": 0.61, "p": 0.005, "beyond_chance": True, "null": "text"}}}],
    }))  # fmt: skip
    write_manifest(folder, "compare", "baseline", None, {"n_perm": 30},
                   {a: "aa" * 32, b: "bb" * 32}, {})  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A study folder whose default store (OUT/mlflow.db) the tests share, one experiment
    each: creating an MLflow SQLite store runs its schema migrations (seconds)."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(autouse=True)
def no_env_uri(monkeypatch, tmp_path):
    """No MLFLOW_TRACKING_URI from outside; a clean working directory (nothing may land in
    ./mlruns)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert not any(cwd.iterdir()), list(cwd.iterdir())


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_by_name(client, experiment: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        out.setdefault(r.info.run_name, []).append(r)
    return out


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_stage_metrics_rule(tmp_path):
    folder = make_geometry_stage(tmp_path, "m1")
    series, scalars, skipped = stage_metrics(folder)
    # similarity: resid at the main rule only (the 9.0 rows of attn and `last` are dropped)
    for method in ("mean_diff", "raw_mean"):
        key = f"similarity/cosine.{method}.gratitude.anger"
        assert series[key] == {layer: cosine("m1", method, layer) for layer in range(LAYERS)}
        lo = series[f"similarity/cosine_lo.{method}.gratitude.anger"]
        assert lo == pytest.approx({k: v - 0.1 for k, v in series[key].items()})
    assert series["similarity/distance.mean_diff.gratitude.anger"][3] == 5.0
    assert not any("cosine_plugin" in k or "n_boot" in k for k in series)
    assert series["stability/split_half_cos_hi.mean_diff.anger"] == dict.fromkeys(range(4), 0.9)
    # subspaces: the layer x layer grid is left out, other comparisons by layer_a
    assert series["subspaces/overlap.position_last"] == {a: 0.3 + a / 10 for a in range(LAYERS)}
    assert not any(".layers" in k for k in series)
    assert series["probes_cv/accuracy.logreg"] == {0: 0.4, 1: 0.6, 2: 0.8, 3: 0.7}
    assert series["probes_cv/accuracy_p.logreg"][2] == 1e-5
    # the generic rule: cohens_d per emotion (n: an integer column that does not vary)
    assert series["separation/cohens_d.anger"] == {i: 1.5 + i / 4 for i in range(LAYERS)}
    assert not any(k.startswith(("separation/n", "per_unit/")) for k in series)
    assert skipped == [f"per_unit.csv ({GENERIC_MAX_SERIES + 1} series > {GENERIC_MAX_SERIES})"]
    assert scalars == {
        "summary/headline.cv_logreg.best_layer": 2.0,
        "summary/headline.cv_logreg.best": 0.8,
        "summary/headline.cv_logreg.layer0": 0.4,
        "summary/headline.raw_mean_cos_median": 0.99,
        "seconds/total": 2.5,
    }
    # similarity 2 methods x 4, stability 2 emotions x 2 measures x 3, subspaces 3,
    # separation 2, probes 4
    assert len(series) == 8 + 12 + 3 + 2 + 4

    # a table with two rules (patching: every position at once; the readout position), a
    # table that gives no series (per head), steer's recommendations
    patch = tmp_path / "patch"
    patch.mkdir()
    _write_csv(patch / "patching.csv", [
        {"emotion": "anger", "kind": kind, "layer": layer, "position": pos, "offset": "",
         "token": "", "n_pairs": 4, "recovered": layer / 10 + (pos == "-1"),
         "ci_low": -0.5, "ci_high": 1.5, "ld_patched": 0.3}
        for kind in ("full", "directional") for pos in ("all", "-1", "body")
        for layer in range(LAYERS) if not (kind == "full" and pos == "all")
    ])  # fmt: skip
    _write_csv(patch / "heads.csv", [
        {"emotion": "anger", "layer": layer, "head": h, "contrast": 0.25}
        for layer in range(LAYERS) for h in range(40)
    ])  # fmt: skip
    rec = {"layer": 12, "alpha": 0.125, "meets_limits": True, "limits": {"kl": 0.5}}
    (patch / "sweep.json").write_text(json.dumps({"recommended": {"anger": rec}}))
    series, scalars, skipped = stage_metrics(patch)
    assert series == {
        "patching/recovered.directional.anger": {i: i / 10 for i in range(LAYERS)},
        "patching/recovered_lo.directional.anger": dict.fromkeys(range(LAYERS), -0.5),
        "patching/recovered_hi.directional.anger": dict.fromkeys(range(LAYERS), 1.5),
        **{f"patching/readout{end}.{kind}.anger": {i: (i / 10 + 1, -0.5, 1.5)[j]
                                                   for i in range(LAYERS)}
           for j, end in enumerate(("", "_lo", "_hi")) for kind in ("full", "directional")},
    }  # fmt: skip
    assert skipped == []
    assert scalars == {
        "summary/recommended.anger.layer": 12.0,
        "summary/recommended.anger.alpha": 0.125,
        "summary/recommended.anger.meets_limits": 1.0,
    }

    cmp_series, cmp_scalars, _ = stage_metrics(make_compare_stage(tmp_path, ("m1", "m2")))
    assert cmp_series["layer_pairs/cka.m1.m2"] == {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8}
    assert cmp_series["layer_pairs/matched_layer.m1.m2"] == {0: 0.0, 1: 1.0, 2: 2.0, 3: 2.0}
    assert cmp_scalars == {
        "summary/m1_vs_m2.cka.value": 0.61,
        "summary/m1_vs_m2.cka.p": 0.005,
        "summary/m1_vs_m2.cka.beyond_chance": 1.0,
    }


def test_a_study_of_two_models_in_the_default_store(store):
    m1 = make_geometry_stage(store / "study", "m1", long_setting=True)
    m2 = make_geometry_stage(store / "study", "m2", file="manifest.json")  # the layout note's
    cmp = make_compare_stage(store / "study", ("m1", "m2"))
    tracker = Tracker(store)
    assert tracker.uri == f"sqlite:///{store.resolve()}/mlflow.db" == default_uri(store)
    t0 = time.perf_counter()
    with tracker, tracker.study("study", params={"models": ["m1", "m2"], "n_boot": 50}) as sid:
        with tracker.child("m1", tags={"emocircuits.model": "m1"}) as c1:
            g1 = tracker.log_stage(m1, name="geometry/baseline", cached=False)
        with tracker.child("m2") as c2:
            g2 = tracker.log_stage(m2, name="geometry/baseline", cached=True)
        gc = tracker.log_stage(cmp)
        assert tracker.active == sid
    assert tracker.active is None
    print(f"study of 3 stages logged in {time.perf_counter() - t0:.2f} s (store creation incl.)")
    assert (store / "mlflow.db").is_file()

    client = client_for(f"sqlite:///{store}/mlflow.db")
    runs = runs_by_name(client, "emocircuits")
    assert sorted((k, len(v)) for k, v in runs.items()) == [
        ("compare/baseline", 1), ("geometry/baseline", 2), ("m1", 1), ("m2", 1), ("study", 1),
    ]  # fmt: skip
    by_id = {r.info.run_id: r for rs in runs.values() for r in rs}
    parent = {rid: r.data.tags.get("mlflow.parentRunId") for rid, r in by_id.items()}
    assert parent == {sid: None, c1: sid, c2: sid, g1: c1, g2: c2, gc: sid}
    assert all(r.info.status == "FINISHED" and r.info.end_time for r in by_id.values())

    study = by_id[sid]
    assert study.data.params == {"models": '["m1", "m2"]', "n_boot": "50"}
    geo = by_id[g1]
    assert geo.data.params["n_boot"] == "50"
    assert geo.data.params["vectors.method"] == "one_vs_rest"
    note = geo.data.params["note"]  # cut to MLflow's limit
    assert len(note) == 6000 and note.endswith("...") and note.startswith("xxx")
    tags = geo.data.tags
    assert tags["emocircuits.stage"] == "geometry" and tags["emocircuits.hash"] == "ab" * 32
    assert tags["emocircuits.cached"] == "false" and by_id[g2].data.tags["emocircuits.cached"] == (
        "true"
    )
    for rid, model in ((g1, "m1"), (g2, "m2")):  # the same from stage.json and manifest.json
        t = by_id[rid].data.tags
        assert t["emocircuits.model"] == model and t["emocircuits.model_revision"] == f"rev-{model}"
        assert t["emocircuits.dtype"] == "float32" and t["emocircuits.data_sha256"] == "ef" * 32
        assert t["emocircuits.input.capture"] == "cd" * 32
        assert t["emocircuits.provenance.position"] == "mean"
    assert tags["emocircuits.model_name"] == "m1" and tags["emocircuits.data"] == "baseline"
    assert tags["emocircuits.commands"] == "emocircuits geometry --out /x"
    assert tags["emocircuits.metrics_skipped"].startswith("per_unit.csv")
    assert tags["mlflow.runName"] == "geometry/baseline"
    assert "emocircuits.model" not in by_id[gc].data.tags  # a cross-model stage

    # per-layer metrics: steps are the layers, values those of the tables (per model)
    for rid, model in ((g1, "m1"), (g2, "m2")):
        hist = client.get_metric_history(rid, "similarity/cosine.mean_diff.gratitude.anger")
        assert sorted((m.step, m.value) for m in hist) == [
            (layer, pytest.approx(cosine(model, "mean_diff", layer))) for layer in range(LAYERS)
        ]
    hist = client.get_metric_history(g1, "probes_cv/accuracy.logreg")
    assert sorted((m.step, m.value) for m in hist) == [(0, 0.4), (1, 0.6), (2, 0.8), (3, 0.7)]
    assert geo.data.metrics["seconds"] == 3.25  # scalars: step 0
    assert geo.data.metrics["summary/headline.cv_logreg.best"] == 0.8
    assert [m.step for m in client.get_metric_history(g1, "seconds")] == [0]
    hist = client.get_metric_history(gc, "layer_pairs/cka.m1.m2")
    assert sorted((m.step, m.value) for m in hist) == [(0, 0.5), (1, 0.6), (2, 0.7), (3, 0.8)]

    # artifacts: tables, JSON, figures (not tensors), under OUT/mlartifacts
    assert artifact_paths(client, g1) == {
        "stage.json", "similarity.csv", "stability.csv", "subspaces.csv", "separation.csv",
        "per_unit.csv", "probes_cv.json", "summary.json", "figures/norms-resid-mean.png",
        "figures/norms-resid-mean.svg",
    }  # fmt: skip
    assert geo.info.artifact_uri.startswith((store / "mlartifacts").resolve().as_uri())
    copied = next((store / "mlartifacts").rglob("norms-resid-mean.png"))
    assert copied.read_bytes() == _png()


def test_log_study_from_study_json(store):
    """The tree from study.json as the runner writes it: a capture stage (whose own
    manifest.json is the activations'), geometry per model, compare, a stage still running
    (no stage.json) and one that failed."""
    out = store / "from-json"
    stages = []

    def record(stage: str, label: str, model: str | None, d: Path, cached: bool) -> None:
        stages.append({"key": f"{stage}/{label}", "stage": stage, "label": label,
                       "model": model, "data": "baseline", "dir": str(d.relative_to(out)),
                       "hash": "ab" * 32, "cached": cached, "seconds": 3.0})  # fmt: skip

    for model in ("m1", "m2"):
        cap = out / "stages" / "capture" / f"{model}.baseline-0123456789ab"
        cap.mkdir(parents=True)
        (cap / "manifest.json").write_text(json.dumps({"format": "emocircuits.activations"}))
        (cap / "shard-00000.safetensors").write_bytes(b"\x00" * 64)
        (cap / "log.txt").write_text("$ emocircuits extract\n")
        write_manifest(cap, "capture", f"{model}.baseline", model, {"positions": "mean"}, {}, {})
        doc = json.loads((cap / "stage.json").read_text())
        doc["provenance"] = {}  # the study's provenance fills in model, dtype, data hash
        (cap / "stage.json").write_text(json.dumps(doc))
        record("capture", f"{model}.baseline", model, cap, cached=True)
        geo = make_geometry_stage(out, model)
        record("geometry", f"{model}.baseline", model, geo, cached=model == "m2")
    cmp = make_compare_stage(out, ("m1", "m2"))
    record("compare", "baseline", None, cmp, cached=False)
    running = out / "stages" / "heads" / "m1-0123456789ab"
    running.mkdir(parents=True)
    (running / "heads.csv").write_text("layer,head\n0,0\n")
    record("heads", "m1", "m1", running, cached=False)
    (out / "report.html").write_text("<html></html>")
    (out / "study.json").write_text(json.dumps({
        "format": "emocircuits.study", "version": 1,
        "config": {"study": {"models": ["m1", "m2"], "datasets": ["baseline"]}},
        "stages": stages,
        "failed": [{"stage": "patch/m1", "error": "patch: no pairs of equal length"}],
        "provenance": {
            "models": {m: {"id": f"org/{m}", "revision": "r1", "dtype": "bfloat16",
                           "architecture": "llama", "n_layers": 3, "width": 64}
                       for m in ("m1", "m2")},
            "datasets": {"baseline": {"sha256": "ef" * 32, "n": 200}},
            "versions": {"emocircuits": "0.1.0", "torch": "2.13.0"}},
        "started": "2026-01-01T00:00:00", "finished": None, "seconds": None,
    }))  # fmt: skip
    uri = f"sqlite:///{store}/mlflow.db"
    sid = log_study(out, experiment="from-json", uri=uri)
    client = client_for(uri)
    runs = runs_by_name(client, "from-json")
    assert sorted((k, len(v)) for k, v in runs.items()) == [
        ("capture/baseline", 2), ("compare/baseline", 1), ("geometry/baseline", 2), ("m1", 1),
        ("m2", 1), ("patch/m1", 1), ("study", 1),
    ]  # fmt: skip
    assert runs["study"][0].info.run_id == sid
    model_runs = {r.info.run_name: r for r in runs["m1"] + runs["m2"]}
    for r in runs["geometry/baseline"] + runs["capture/baseline"]:
        owner = model_runs[r.data.tags["emocircuits.model_name"]]
        assert r.data.tags["mlflow.parentRunId"] == owner.info.run_id
        assert r.data.tags["emocircuits.seconds_in_study"] == "3.0"
    geo_cached = {r.data.tags["emocircuits.model_name"]: r.data.tags["emocircuits.cached"]
                  for r in runs["geometry/baseline"]}  # fmt: skip
    assert geo_cached == {"m1": "false", "m2": "true"}
    cap = runs["capture/baseline"][0]
    assert cap.data.params == {"positions": "mean"}
    model = cap.data.tags["emocircuits.model_name"]
    assert cap.data.tags["emocircuits.model"] == f"org/{model}"
    assert cap.data.tags["emocircuits.model_revision"] == "r1"
    assert cap.data.tags["emocircuits.dtype"] == "bfloat16"
    assert cap.data.tags["emocircuits.data_sha256"] == "ef" * 32
    geo = runs["geometry/baseline"][0]  # its own provenance wins over the study's
    assert geo.data.tags["emocircuits.dtype"] == "float32"
    assert artifact_paths(client, cap.info.run_id) == {"manifest.json", "stage.json", "log.txt"}
    assert runs["compare/baseline"][0].data.tags["mlflow.parentRunId"] == sid
    m1 = model_runs["m1"]
    assert m1.data.tags["mlflow.parentRunId"] == sid
    assert m1.data.tags["emocircuits.model"] == "org/m1"
    assert m1.data.tags["emocircuits.dtype"] == "bfloat16"
    assert m1.data.params["n_layers"] == "3"
    # the failed stage and the study: FAILED, ended; everything else FINISHED
    (failed,) = runs["patch/m1"]
    assert failed.info.status == "FAILED" and failed.info.end_time
    assert failed.data.tags["emocircuits.error"] == "patch: no pairs of equal length"
    assert failed.data.tags["mlflow.parentRunId"] == sid
    study = runs["study"][0]
    assert study.info.status == "FAILED" and study.info.end_time
    assert study.data.tags["emocircuits.study_unfinished"] == "true"
    assert all(r.info.status == "FINISHED" for k, rs in runs.items()
               if k not in ("study", "patch/m1") for r in rs)  # fmt: skip
    assert study.data.params["study.datasets"] == '["baseline"]'
    assert study.data.tags["emocircuits.version.torch"] == "2.13.0"
    assert study.data.tags["emocircuits.data.baseline.sha256"] == "ef" * 32
    assert "seconds" not in study.data.metrics
    assert artifact_paths(client, sid) == {"study.json", "report.html"}


def test_mlflow_tracking_uri_overrides_the_default_store(store, tmp_path, monkeypatch):
    uri = f"sqlite:///{store}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "study"
    stage = make_geometry_stage(out, "m1")
    with Tracker(out, experiment="override") as tracker, tracker.study("study"):
        tracker.log_stage(stage)
    assert tracker.uri == uri
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()
    runs = runs_by_name(client_for(uri), "override")
    assert set(runs) == {"study", "geometry/m1.baseline"}
    (geo,) = runs["geometry/m1.baseline"]
    assert geo.info.artifact_uri.startswith((store / "mlartifacts").resolve().as_uri())
    # an explicit uri wins over the environment
    assert Tracker(out, uri="sqlite:///elsewhere.db").uri == "sqlite:///elsewhere.db"


def test_an_exception_marks_the_run_failed_and_ends_it(store):
    stage = make_geometry_stage(store / "fail", "m1")
    uri = f"sqlite:///{store}/mlflow.db"
    tracker = Tracker(store, experiment="failure")
    with tracker, tracker.study("study") as sid:
        with tracker.child("m1") as mid:
            with pytest.raises(RuntimeError, match="stage broke"), tracker.child("geometry/x"):
                raise RuntimeError("stage broke")
            assert tracker.active == mid
            ok = tracker.log_stage(stage, name="geometry/baseline")
        with pytest.raises(DataError, match="not a finished stage folder"):
            tracker.log_stage(store / "fail")  # not a stage folder: no run is opened
    with pytest.raises(KeyError), Tracker(store, experiment="failure") as t2:
        t2.start("left-open")  # never ended by hand: the tracker ends it
        raise KeyError("x")
    with pytest.raises(KeyboardInterrupt), t2.study("interrupted"):
        raise KeyboardInterrupt
    runs = runs_by_name(client_for(uri), "failure")
    status = {name: [r.info.status for r in rs] for name, rs in runs.items()}
    assert status == {
        "study": ["FINISHED"], "m1": ["FINISHED"], "geometry/x": ["FAILED"],
        "geometry/baseline": ["FINISHED"], "left-open": ["FAILED"], "interrupted": ["KILLED"],
    }  # fmt: skip
    assert all(r.info.end_time for rs in runs.values() for r in rs)
    assert runs["geometry/x"][0].data.tags["mlflow.parentRunId"] == mid
    assert runs["geometry/baseline"][0].info.run_id == ok
    assert runs["m1"][0].data.tags["mlflow.parentRunId"] == sid


def test_mlflow_is_imported_only_when_tracking_is_used():
    code = (
        "import sys, emocircuits.cli, emocircuits.study.tracking as t; "
        "t.stage_metrics('.'); assert 'mlflow' not in sys.modules, 'mlflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_real_geometry_stage(store, tiny, capsys):
    """`emocircuits geometry` on a tiny model's activations, logged as the runner would."""
    out = store / "real"
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean", "last"))
    acts = ec.extract(tiny("llama"), ec.load_dataset("baseline"), out / "acts", spec,
                      progress=False)  # fmt: skip
    stage = out / "stages" / "geometry" / "tiny-llama.baseline-0123456789ab"
    code, _, _ = run(
        capsys, "geometry", "--activations", acts.path, "--out", stage, "--n-boot", 20,
        "--n-splits", 5, "--n-perm", 5, "--folds", 3,
    )  # fmt: skip
    assert code == 0
    (stage / "stage.json").write_text(json.dumps({
        "stage": "geometry", "label": "tiny-llama.baseline", "hash": "0" * 64,
        "settings": {"n_boot": 20, "n_splits": 5, "n_perm": 5, "folds": 3},
        "provenance": {"model": "tiny-llama", "dtype": acts.manifest["dtype"],
                       "data_sha256": acts.manifest["dataset"]["sha256"]},
        "seconds": 1.0,
    }))  # fmt: skip
    uri = f"sqlite:///{store}/mlflow.db"
    tracker = Tracker(store, experiment="real")
    with tracker, tracker.study("study"), tracker.child("tiny-llama"):
        tracker.experiment_id  # noqa: B018 - the store is ready before timing
        t0 = time.perf_counter()
        rid = tracker.log_stage(stage, name="geometry/baseline")
        seconds = time.perf_counter() - t0
    series, scalars, skipped = stage_metrics(stage)
    print(f"real geometry stage: {len(series)} series, {len(scalars)} scalars, {seconds:.2f} s")
    assert seconds < 5 and not skipped
    client = client_for(uri)
    layers = len(acts.layers("resid"))
    with (stage / "similarity.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["site"] == "resid" and r["position"] == "mean"]
    method, e1, e2 = rows[0]["method"], rows[0]["emotion_1"], rows[0]["emotion_2"]
    key = f"similarity/cosine.{method}.{e1}.{e2}"
    want = {
        int(r["layer"]): float(r["cosine"])
        for r in rows
        if (r["method"], r["emotion_1"], r["emotion_2"]) == (method, e1, e2)
    }
    hist = client.get_metric_history(rid, key)
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(layers))
    got = {m.step: m.value for m in hist}
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, nan_ok=True)
    probe = client.get_metric_history(rid, "probes_cv/accuracy.logreg")
    assert sorted(m.step for m in probe) == list(range(layers))
    best = client.get_run(rid).data.metrics["summary/headline.cv_logreg.best"]
    assert best == pytest.approx(max(m.value for m in probe), abs=1e-3)
    arts = artifact_paths(client, rid)
    assert {"similarity.csv", "summary.json", "probes_cv.json", "stage.json"} <= arts
    figures = {Path(a).name for a in arts if a.startswith("figures/")}
    assert "norms-resid-mean.png" in figures and "norms-resid-mean.svg" in figures
    # every metric name is one the rule documents (table/name.groups)
    names = set(client.get_run(rid).data.metrics)
    tables = {n.split("/")[0] for n in names}
    assert tables == {
        "similarity", "stability", "shared", "agreement", "subspaces", "probes_cv", "summary",
        "seconds",
    }  # fmt: skip
    assert names == set(series) | set(scalars) | {"seconds"}

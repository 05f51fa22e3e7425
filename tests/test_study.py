"""`emocircuits run`: the configuration (TOML, --set, --print-config, errors with
file:line), the stage plan and its cache (reuse, re-running only what a changed setting
touches, resuming after kill -9), study.json and the stage folders, on tiny random models."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emocircuits.study.config import ConfigError, load_config
from emocircuits.study.runner import run_study
from emocircuits.study.stages import STAGE_FILE, plan_study

from helpers import one_error_line, run

FAST = {
    "geometry": {"n_boot": 40, "n_splits": 8, "n_perm": 20, "folds": 3},
    "compare": {"n_perm": 40, "n_perm_heavy": 10},
    "steer-sweep": {"max_new_tokens": 4, "layer": [1], "alpha": [0.5, 1.0], "batch_size": 64},
    "heads": {"top_k": [1, 2], "n_random": 4, "n_boot": 50, "top_neurons": 3},
}


def tiny_config(out: Path, models: list[Path], analyses=("geometry", "compare", "steer", "heads"),
                **study):  # fmt: skip
    over = {k: dict(v) for k, v in FAST.items()}
    over["study"] = {"models": [str(m) for m in models], "data": ["baseline"],
                     "causal_data": "baseline", "out": str(out), "analyses": list(analyses),
                     "mlflow": False, **study}  # fmt: skip
    return over


# ------------------------------------------------------------------------------ configuration
def test_print_config_is_a_config_that_reads_back_the_same(tmp_path, capsys):
    code, out, _ = run(capsys, "run", "--print-config", "--set", "geometry.n_boot=77",
                       "--models", "smollm2-135m")  # fmt: skip
    assert code == 0
    path = tmp_path / "study.toml"
    path.write_text(out)
    cfg = load_config(path)
    assert cfg.models == ["smollm2-135m"]
    assert cfg.stage_options("geometry")["n_boot"] == 77
    assert cfg.stage_options("capture")["positions"] == ["last", "mean", "emotion_word"]
    assert cfg.to_toml().splitlines()[1:] == out.splitlines()[1:]  # only the source differs


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[study]\nmodels = ['a']\n\n[geometry]\nn_bot = 3\n", 5, "not an option"),
        ("[study]\nmodls = ['a']\n", 2, "unknown study setting"),
        ("[geometry]\nn_boot = 'many'\n", 2, "n-boot"),
        ("[patch]\nout = 'x'\n", 2, "set by the study runner"),
        ("[stear]\nx = 1\n", 1, "unknown table"),
        ("[study]\nanalyses = ['geometry', 'vibes']\n", 2, "unknown analysis"),
        ("[study]\nmodels = [\n", 3, "not valid TOML"),
    ],
)
def test_config_errors_name_file_and_line(tmp_path, capsys, text, line, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:{line}: ") and words in str(e.value), str(e.value)
    code, out, err = run(capsys, "run", "--config", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and out == "" and words in one_error_line(err)
    assert not (tmp_path / "o").exists()  # nothing written


def test_set_and_flags_override_the_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[study]\nmodels = ['a']\n[steer-sweep]\nmax_new_tokens = 12\n")
    cfg = load_config(path, {"study": {"models": ["b"]}, "steer-sweep": {"max-new-tokens": 9}})
    assert cfg.models == ["b"] and cfg.stage_options("steer")["max_new_tokens"] == 9
    assert cfg.stages["steer-sweep"]["max_new_tokens"] == 9  # what the stage's call gets


def test_a_budget_becomes_its_values_in_the_settings(tmp_path, monkeypatch):
    """What a budget means is part of the stage hash: redefining it re-runs the stage."""
    from emocircuits.interventions import patching

    cfg = load_config(None, {"patch": {"n_pairs": 5}})
    opts = cfg.stage_options("patch")
    fast = patching.PATCH_BUDGETS["fast"]
    assert opts["budget"] == "fast" and opts["n_pairs"] == 5  # given beats the budget
    assert opts["n_positions"] == fast["n_positions"] and opts["n_layers"] == fast["n_layers"]
    assert cfg.stage_options("ablate")["n_random"] >= 39  # p < 0.05 is attainable
    # a printed config with the other budget takes that budget's values
    text = load_config(None).to_toml()
    assert '# n_positions = 3  (from budget "fast")' in text
    path = tmp_path / "s.toml"
    path.write_text(text.replace('[patch]\nbaseline = "neutral"\nbudget = "fast"',
                                 '[patch]\nbaseline = "neutral"\nbudget = "default"'))  # fmt: skip
    deep = load_config(path).stage_options("patch")
    assert deep["n_pairs"] == patching.PATCH_BUDGETS["default"]["n_pairs"] != fast["n_pairs"]
    before = {
        s.key: s.hash for s in plan_study(load_config(None, {"study": {"out": str(tmp_path)}}))
    }
    monkeypatch.setitem(patching.PATCH_BUDGETS, "fast", {**fast, "n_positions": 2})
    after = {
        s.key: s.hash for s in plan_study(load_config(None, {"study": {"out": str(tmp_path)}}))
    }
    assert {k for k in before if before[k] != after[k]} == {
        "patch/smollm2-135m", "patch/gemma3-270m"}  # fmt: skip


def test_the_plan_depends_only_on_what_changed(tiny_dir, tmp_path):
    models = [tiny_dir("llama"), tiny_dir("gpt2")]
    base = plan_study(load_config(None, tiny_config(tmp_path, models)))
    over = tiny_config(tmp_path, models)
    over["steer-sweep"]["max_new_tokens"] = 5
    changed = plan_study(load_config(None, over))
    diff = {a.key for a, b in zip(base, changed, strict=True) if a.hash != b.hash}
    assert diff == {"steer/llama", "steer/gpt2"}
    over = tiny_config(tmp_path, models)
    over["extract"] = {"batch_size": 4}  # upstream of everything
    assert all(
        a.hash != b.hash for a, b in zip(base, plan_study(load_config(None, over)), strict=True)
    )
    keys = [s.key for s in base]
    assert keys.index("capture/llama.baseline") < keys.index("geometry/llama.baseline")
    assert keys[-1] == "compare/baseline"


# ----------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def study(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    over = tiny_config(out, [tiny_dir("llama"), tiny_dir("gpt2")], mlflow=True)
    res = run_study(load_config(None, over), progress=False)
    return out, over, res


def test_a_study_writes_its_stages_and_study_json(study):
    out, _, res = study
    assert res.failed == {}
    doc = json.loads((out / "study.json").read_text())
    assert doc["finished"] and doc["seconds"] > 0
    keys = [s["key"] for s in doc["stages"]]
    assert keys == [s["key"] for s in res.stages] and len(keys) == 9  # 4 per model + compare
    for s in doc["stages"]:
        d = out / s["dir"]
        man = json.loads((d / STAGE_FILE).read_text())
        assert man["hash"] == s["hash"] and d.name.endswith(s["hash"][:12])
        assert all((d / p).is_file() for p in man["outputs"])
        assert man["provenance"]["data_sha256"] == doc["provenance"]["datasets"]["baseline"][
            "sha256"]  # fmt: skip
        assert man["provenance"]["model"]["dtype"] == "float32" or s["stage"] == "compare"
        assert not d.with_name(d.name + ".partial").exists()
    steer = out / next(s["dir"] for s in doc["stages"] if s["key"] == "steer/llama")
    assert {"rows.jsonl", "summary.csv", "sweep.json", "vectors.steer.json"} <= {
        p.name for p in steer.iterdir()
    }
    sweep = json.loads((steer / "sweep.json").read_text())
    assert sweep["settings"]["method"] == "one_vs_rest"  # the method that steered
    assert {r["method"] for r in sweep["recommended"].values()} == {"one_vs_rest"}
    assert sweep["settings"]["split"]["held_out"]  # chosen on one half, reported on the other
    geo = out / next(s["dir"] for s in doc["stages"] if s["key"] == "geometry/llama.baseline")
    assert (geo / "summary.json").is_file() and (geo / "vectors.safetensors").is_file()
    models = doc["provenance"]["models"]
    assert set(models) == {"llama", "gpt2"}
    assert models["gpt2"]["architecture"]["model_type"] == "gpt2"
    assert models["llama"]["revision"].startswith("sha256:")
    assert doc["provenance"]["versions"]["torch"]


def test_a_second_run_reuses_everything(study):
    out, over, _ = study
    before = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*") if p.is_file()}
    res = run_study(load_config(None, over), progress=False)
    assert res.ran == []
    after = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*") if p.is_file()}
    assert after == before


def test_changing_one_setting_reruns_only_what_depends_on_it(study):
    _, over, _ = study
    over = json.loads(json.dumps(over))
    over["heads"]["top_neurons"] = 4
    res = run_study(load_config(None, over), progress=False)
    assert sorted(res.ran) == ["heads/gpt2", "heads/llama"]


def test_a_failing_stage_is_reported_and_the_rest_goes_on(tiny_dir, tmp_path, capsys):
    """The tiny tokenizer has no one-token feeling words: `patch` cannot read out a logit
    difference. The study says so, runs the rest, caches nothing of the failed stage."""
    over = tiny_config(tmp_path / "s", [tiny_dir("llama")], analyses=("patch",))
    res = run_study(load_config(None, over), progress=False)
    assert list(res.failed) == ["patch/llama"] and "feeling word" in res.failed["patch/llama"]
    assert [s["key"] for s in res.stages] == ["capture/llama.baseline", "geometry/llama.baseline"]
    assert not list((tmp_path / "s" / "stages" / "patch").glob(f"*/{STAGE_FILE}"))


def test_killed_run_resumes(tiny_dir, tmp_path):
    """kill -9 during the study; the next run reuses every finished stage and completes."""
    out = tmp_path / "k"
    over = tiny_config(out, [tiny_dir("llama"), tiny_dir("gpt2")], analyses=("geometry",))
    cfg = tmp_path / "k.toml"
    cfg.write_text(load_config(None, over).to_toml())
    cmd = [sys.executable, "-m", "emocircuits", "run", "--config", str(cfg), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "stages").glob(f"geometry/*/{STAGE_FILE}")):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    first = {s.parent.name for s in (out / "stages").rglob(STAGE_FILE)}
    assert first, "no stage finished before the kill"
    res = run_study(load_config(cfg), progress=False)
    assert res.failed == {}
    reused = {Path(s["dir"]).name for s in res.stages if s["cached"]}
    assert first <= reused
    assert len(res.stages) == 4 and (out / "study.json").is_file()


def test_the_study_is_in_mlflow_with_params_per_layer_metrics_and_artifacts(study, monkeypatch):
    """Read back with MLflow's own client from the study's SQLite store."""
    from mlflow.tracking import MlflowClient

    out, _, _ = study
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("emocircuits")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    # every `run` of the folder logs one tree (other tests re-run this study): take one
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parents and all(r.info.status == "FINISHED" for r in parents)
    geo = next(r for r in runs if r.info.run_name.startswith("geometry") and
               r.data.tags.get("emocircuits.label") == "llama.baseline")  # fmt: skip
    params = geo.data.params
    assert [v for k, v in params.items() if k.split(".")[-1] == "n_boot"] == ["40"], params
    model_run = client.get_run(geo.data.tags["mlflow.parentRunId"])
    assert model_run.data.params, "the model's run has no parameters"
    parent = client.get_run(model_run.data.tags["mlflow.parentRunId"])
    assert "mlflow.parentRunId" not in parent.data.tags and parent.info.status == "FINISHED"
    assert parent.data.tags["emocircuits.out"] == str(out.resolve())
    per_layer = [k for k in geo.data.metrics if k.startswith("probes_cv/")]
    assert per_layer, sorted(geo.data.metrics)
    hist = client.get_metric_history(geo.info.run_id, per_layer[0])
    assert sorted(m.step for m in hist) == list(range(len(hist))) and len(hist) == 4  # 3 + emb
    names = {a.path for a in client.list_artifacts(geo.info.run_id)}
    assert "summary.json" in names and any(n.endswith(".csv") for n in names)
    assert (out / "mlartifacts").is_dir()


# ------------------------------------------------------------------------- the library API
TIMING = ("seconds", "started", "finished", "created")  # timestamps and durations


def _comparable(folder: Path) -> dict[str, object]:
    """Every file of a study folder, with the folder's own path replaced and the timing
    fields (:data:`TIMING`: in study.json, stage.json, summary.json, manifest.json) and the
    lines that print a duration (log.txt) left out; report.html and the lock are left out
    (the report has its own test in test_report). Safetensors files are compared byte for
    byte, and so are the shard checksums in manifest.json."""
    out: dict[str, object] = {}

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in TIMING}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if not p.is_file() or p.name in ("report.html", ".lock"):
            continue
        data = p.read_bytes().replace(str(folder).encode(), b"OUT")
        if p.suffix == ".json":
            out[rel] = strip(json.loads(data))
        elif p.name == "log.txt":
            out[rel] = [ln for ln in data.decode().splitlines() if not re.search(r"\d s$", ln)]
        else:
            out[rel] = data
    return out


def test_run_study_writes_what_the_run_command_writes(tiny_dir, tmp_path, capsys):
    """`ec.run_study(...)` and `emocircuits run` with the same settings: the same stage
    hashes and folders, byte for byte but for the timing fields."""
    import emocircuits.study as study_api

    settings = tiny_config(tmp_path / "lib", [tiny_dir("llama")], analyses=("geometry",))
    cfg = tmp_path / "s.toml"
    cfg.write_text(load_config(None, settings).to_toml())
    res = study_api.run_study(cfg, progress=False)
    code, _, err = run(capsys, "run", "--config", cfg, "--out", tmp_path / "cli", "--quiet")
    assert code == 0, err
    lib, cli = _comparable(tmp_path / "lib"), _comparable(tmp_path / "cli")
    assert sorted(lib) == sorted(cli) and any(k.startswith("stages/geometry/") for k in lib)
    for k in lib:
        assert lib[k] == cli[k], k
    assert isinstance(res, study_api.StudyResult) and res.report == tmp_path / "lib" / "report.html"


def test_study_result_loads_back_and_shows_itself(study):
    from emocircuits.results import Result
    from emocircuits.study.runner import StudyResult

    out, over, _ = study
    res = run_study(load_config(None, over), progress=False)  # the last run (all reused)
    back = StudyResult.load(out)
    assert isinstance(back, Result)
    assert (back.out, back.failed, back.report) == (res.out, res.failed, res.report)
    assert back.seconds == res.seconds
    assert [r["stage"] for r in back.rows()] == [s["key"] for s in res.stages]
    assert back.save(out) == out  # the folder is the study: nothing new is written
    text = repr(back)
    assert text.startswith("<StudyResult: ") and "geometry/llama.baseline" in text
    assert "<table" in back._repr_html_() and "capture/gpt2.baseline" in back._repr_html_()


def test_run_study_takes_overrides_as_keywords(tiny_dir, tmp_path):
    """`run_study(config, **overrides)`: study settings and whole tables as keywords
    (`steer_sweep=` for [steer-sweep]); a wrong name fails before anything is written."""
    from emocircuits.study.runner import StudyError, _config

    settings = tiny_config(tmp_path / "a", [tiny_dir("llama")])
    cfg = _config(settings, {"out": str(tmp_path / "b"), "steer_sweep": {"max_new_tokens": 3},
                             "geometry": {"n_boot": 41}})  # fmt: skip
    assert cfg.out == tmp_path / "b" and cfg.stage_options("geometry")["n_boot"] == 41
    assert cfg.stage_options("steer")["max_new_tokens"] == 3
    assert cfg.stage_options("steer")["batch_size"] == 64  # the rest of the table stays
    with pytest.raises(StudyError, match="no setting 'n_boot'"):
        run_study(settings, n_boot=3)
    with pytest.raises(ConfigError, match="not an option"):
        run_study(settings, geometry={"n_bot": 3})
    assert not (tmp_path / "a").exists()


def test_no_hooks_are_left_on_the_study_models(tiny_dir, tmp_path):
    """Every stage's call removes its hooks, also the stage that fails."""
    from emocircuits.capture.hooks import count_hooks
    from emocircuits.models import shared_models

    over = tiny_config(tmp_path / "h", [tiny_dir("llama")], analyses=("steer", "patch"))
    with shared_models() as models:
        res = run_study(load_config(None, over), progress=False)
        assert list(res.failed) == ["patch/llama"] and "steer/llama" in res.ran
        assert models and all(count_hooks(lm.model) == 0 for lm in models.values())


def test_config_values_are_checked_against_the_signatures(tmp_path):
    """Without argparse: ranges of layers, comma lists, choices, >= 1, `all` for None."""
    cfg = load_config(None, {"patch": {"layers": "0-2,5"}, "extract": {"sites": "resid"},
                             "steer-sweep": {"steer_tokens": "all", "alpha": [1, 2]}})  # fmt: skip
    assert cfg.stage_options("patch")["layers"] == [0, 1, 2, 5]
    assert cfg.stage_options("capture")["sites"] == ["resid"]
    assert cfg.stage_options("steer")["steer_tokens"] is None
    assert cfg.stage_options("steer")["alpha"] == [1.0, 2.0]
    for table, key, value, words in (("geometry", "subspace", "sideways", "invalid choice"),
                                     ("geometry", "n_boot", 0, "must be >= 1"),
                                     ("heads", "no_ablation", "yes", "true or false")):  # fmt: skip
        path = tmp_path / "bad.toml"
        path.write_text(f"[{table}]\n{key} = {json.dumps(value)}\n")
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert str(e.value).startswith(f"{path}:2: [{table}] {key}") and words in str(e.value)


def test_the_study_and_the_report_do_not_reach_into_the_cli():
    """study/ and report/ call the library, not the commands (the stage adapters'
    marked fallbacks in study/calls.py aside, until the library functions land)."""
    root = Path(__file__).parents[1] / "src" / "emocircuits"
    for path in [*(root / "study").glob("*.py"), *(root / "report").glob("*.py")]:
        text = path.read_text()
        if path.name == "calls.py":  # the marked fallback: import_module(f"emocircuits.commands...
            text = "\n".join(ln for ln in text.splitlines() if "import_module(" not in ln)
        found = re.findall(r"(?:import|from)\s+emocircuits\.(?:cli|commands)|import_module\(", text)
        assert not found, (path, found)
    code = ("import sys; from emocircuits.study.config import load_config; "
            "load_config(None).to_toml(); "
            "assert not [m for m in sys.modules if m.startswith(('emocircuits.cli', "
            "'emocircuits.commands'))], 'the CLI was imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_defaults_are_the_librarys():
    """A config table's declared default equals the library function's for every option
    the two share (a default is defined once: this catches a second one drifting)."""
    import inspect

    from emocircuits.capture import extract
    from emocircuits.compare.comparison import compare_models
    from emocircuits.geometry.stage import analyze_geometry
    from emocircuits.geometry.vectors import directions
    from emocircuits.interventions.ablate_stage import ablate
    from emocircuits.interventions.heads import heads
    from emocircuits.interventions.patch_stage import patch
    from emocircuits.interventions.sweep import steer_sweep
    from emocircuits.study.calls import options

    lib = {"extract": extract, "geometry": analyze_geometry, "vectors": directions,
           "compare": compare_models, "steer-sweep": steer_sweep, "patch": patch,
           "ablate": ablate, "heads": heads}  # fmt: skip
    compared = 0
    for table, fn in lib.items():
        params = inspect.signature(fn).parameters
        for name, p in options(table).items():
            if name in params and params[name].default is not inspect.Parameter.empty:
                a, b = p.default, params[name].default
                norm = lambda v: list(v) if isinstance(v, tuple | list) else v  # noqa: E731
                assert norm(a) == norm(b), (table, name, a, b)
                compared += 1
    assert compared > 40

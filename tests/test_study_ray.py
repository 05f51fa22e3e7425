"""`emocircuits run --executor ray` on a real Ray cluster started here (a head node and one
worker node on this machine, one CPU each): the same stage folders as the local executor,
byte for byte but for the timings; a worker killed with SIGKILL in the middle of a stage
(the stage is retried, nothing half-written is built on); the driver killed and started
again (finished stages reused); a user error on Ray; Ray missing (one line, exit 2).

The cluster is started with ``ray start`` in its own temporary folder and its processes
(found by that folder in their command lines, and their children) are killed at the end,
also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from emocircuits.study.config import load_config
from emocircuits.study.runner import run_study
from emocircuits.study.stages import STAGE_FILE

from helpers import one_error_line, run, start_ray_cluster, stop_ray_cluster
from test_study import _comparable, tiny_config

ANALYSES = ("geometry", "compare")  # 5 stages: a capture and a geometry per model, compare
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def cluster():
    """The address of a two-node Ray cluster on this machine (one CPU per node)."""
    pytest.importorskip("ray")
    temp = Path(tempfile.mkdtemp(prefix="ecray", dir="/tmp"))
    try:
        yield start_ray_cluster(temp, nodes=2, pythonpath=str(SRC))
    finally:
        stop_ray_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _settings(out: Path, tiny_dir, **study) -> dict:
    return tiny_config(out, [tiny_dir("llama"), tiny_dir("gpt2")], analyses=ANALYSES, **study)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Where the studies go: names of one length, so that the paths recorded inside the
    safetensors headers (the activations a vectors file came from) are as long."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def local(tiny_dir, runs) -> Path:
    """The tiny study run by the local executor, on one thread (as each Ray stage runs:
    one CPU each; the float sums of a forward pass depend on the thread count)."""
    out = runs / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_study(load_config(None, _settings(out, tiny_dir)), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert not res.failed, res.failed
    return out


def _same_stages(a: Path, b: Path) -> None:
    """The stage folders of two study folders are the same, byte for byte but for the
    timings (test_study's comparison), and study.json lists the same stages and hashes."""
    ca, cb = _comparable(a), _comparable(b)
    sa = sorted(k for k in ca if k.startswith("stages/"))
    assert sa == sorted(k for k in cb if k.startswith("stages/")) and sa
    for k in sa:
        assert ca[k] == cb[k], k
    da, db = (json.loads((d / "study.json").read_text()) for d in (a, b))
    assert [(s["key"], s["hash"]) for s in da["stages"]] == [
        (s["key"], s["hash"]) for s in db["stages"]
    ]


def test_ray_writes_the_stage_folders_the_local_executor_writes(cluster, local, tiny_dir,
                                                                runs):  # fmt: skip
    out = runs / "ray-a"
    over = _settings(out, tiny_dir, executor="ray", address=cluster)
    res = run_study(load_config(None, over), progress=False)
    assert not res.failed, res.failed
    _same_stages(local, out)
    doc = json.loads((out / "study.json").read_text())
    # two nodes of one CPU each: the two captures, ready together, ran on two workers
    workers = {s["worker"] for s in doc["stages"] if s["stage"] == "capture"}
    assert len(workers) == 2, workers
    assert not list((out / "stages").glob("*/*.partial*"))
    # a second run on Ray reuses every stage
    again = run_study(load_config(None, over), progress=False)
    assert again.ran == [] and not again.failed


def _partials(out: Path) -> list[Path]:
    return list((out / "stages").glob("*/*.partial.*")) if (out / "stages").is_dir() else []


def test_a_worker_killed_in_a_stage_is_retried_and_nothing_half_written_is_used(
    cluster, local, tiny_dir, runs
):
    """SIGKILL to the worker process writing a stage (its pid is in the partial folder's
    name; it is stopped first, and killed only if the stage is still unpublished)."""
    out = runs / "ray-b"
    over = _settings(out, tiny_dir, executor="ray", address=cluster, max_retries=2)
    box: dict[str, object] = {}

    def drive():
        try:
            box["res"] = run_study(load_config(None, over), progress=False)
        except BaseException as e:  # reported by the test below
            box["error"] = e

    driver = threading.Thread(target=drive)
    driver.start()
    killed: tuple[int, Path] | None = None
    deadline = time.time() + 300
    while killed is None and driver.is_alive() and time.time() < deadline:
        for part in _partials(out):
            pid = int(part.name.split(".partial.")[1].split(".")[0])
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            if part.is_dir():  # still writing: it can no longer publish
                os.kill(pid, signal.SIGKILL)
                killed = (pid, part)
                break
            os.kill(pid, signal.SIGCONT)  # published meanwhile: try another stage
        time.sleep(0.01)
    driver.join(timeout=600)
    assert killed is not None, "no stage was caught while it was being written"
    assert "error" not in box, box.get("error")
    res = box["res"]
    assert not res.failed, res.failed
    pid, part = killed
    final = part.with_name(part.name.split(".partial.")[0])
    assert (final / STAGE_FILE).is_file() and not part.exists()
    assert not _partials(out)
    doc = json.loads((out / "study.json").read_text())
    rec = next(s for s in doc["stages"] if final.name in s["dir"])
    assert not rec["worker"].endswith(f":{pid}")  # another worker wrote it
    _same_stages(local, out)


def test_a_driver_killed_and_started_again_reuses_the_finished_stages(cluster, local, tiny_dir,
                                                                     runs):  # fmt: skip
    """kill -9 of `emocircuits run --executor ray` once a stage is published; the next run
    (on the same cluster) reuses it, removes what the dead run's tasks left, and finishes
    with the local executor's folders."""
    out = runs / "ray-c"
    cfg = runs / "ray-c.toml"
    cfg.write_text(load_config(None, _settings(out, tiny_dir, executor="ray",
                                               address=cluster)).to_toml())  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    p = subprocess.Popen([sys.executable, "-m", "emocircuits", "run", "--config", str(cfg),
                          "--quiet"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 300
        while (
            time.time() < deadline
            and p.poll() is None
            and not list((out / "stages").glob(f"*/*/{STAGE_FILE}"))
        ):
            time.sleep(0.02)
    finally:
        p.kill()
        p.wait()
    first = {f.parent.name for f in (out / "stages").glob(f"*/*/{STAGE_FILE}")}
    assert first, "no stage finished before the kill"
    res = run_study(load_config(cfg), progress=False)
    assert not res.failed, res.failed
    assert first <= {Path(s["dir"]).name for s in res.stages if s["cached"]}
    assert not _partials(out)
    _same_stages(local, out)


def test_a_user_error_on_ray_is_a_failed_stage_and_the_rest_goes_on(cluster, tiny_dir,
                                                                   tmp_path):  # fmt: skip
    """As with the local executor (test_study): `patch` needs one-token feeling words that
    the tiny tokenizer lacks; the failure is reported and the other stages finish."""
    over = tiny_config(tmp_path / "s", [tiny_dir("llama")], analyses=("patch",),
                       executor="ray", address=cluster)  # fmt: skip
    res = run_study(load_config(None, over), progress=False)
    assert list(res.failed) == ["patch/llama"] and "feeling word" in res.failed["patch/llama"]
    assert [s["key"] for s in res.stages] == ["capture/llama.baseline", "geometry/llama.baseline"]
    assert not list((tmp_path / "s" / "stages" / "patch").glob("*"))


def test_the_ray_executor_without_ray_installed_is_one_line_exit_2(tiny_dir, tmp_path):
    """Ray really absent: a Python that sees every installed package but ray (links to
    them in a folder of its own, and no site-packages)."""
    import site

    pkgs = Path(site.getsitepackages()[0])
    farm = tmp_path / "site"
    farm.mkdir()
    for p in pkgs.iterdir():
        if not re.match(r"ray($|-|_)", p.name, re.IGNORECASE):
            (farm / p.name).symlink_to(p)
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
            "from emocircuits.cli import main; sys.exit(main(sys.argv[3:]))")  # fmt: skip
    argv = ["run", "--executor", "ray", "--models", str(tiny_dir("llama")), "--data",
            "baseline", "--only", "geometry", "--no-mlflow", "--out",
            str(tmp_path / "s")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-S", "-c", code, str(SRC), str(farm), *argv],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert p.returncode == 2, p.stderr
    line = one_error_line(p.stderr)
    assert "ray" in line.lower() and "emocircuits[distributed]" in line
    assert not (tmp_path / "s" / "stages").exists()  # nothing ran


def test_run_takes_executor_and_address_flags(capsys):
    code, out, _ = run(capsys, "run", "--print-config", "--executor", "ray", "--address",
                       "10.0.0.1:6379")  # fmt: skip
    assert code == 0
    assert 'executor = "ray"' in out and 'address = "10.0.0.1:6379"' in out
    code, _, err = run(capsys, "run", "--print-config", "--set", "study.executor=dask")
    assert code == 2 and "unknown executor 'dask'" in one_error_line(err)


def test_on_ray_a_cuda_device_with_its_dtype_may_be_on_the_workers_only(tmp_path):
    """The driver plans the study (stage hashes name the device kind and dtype); on Ray the
    GPUs may be on the workers only. Locally a missing device is an error, as before."""
    from emocircuits.errors import ModelError
    from emocircuits.study.executors import stage_resources
    from emocircuits.study.stages import Stage, compute_placement

    if torch.cuda.is_available():
        pytest.skip("this machine has the GPU: nothing to take as given")
    study = {"models": ["m"], "out": str(tmp_path), "device": "cuda", "executor": "ray"}
    cfg = load_config(None, {"study": {**study, "dtype": "bfloat16"}})
    assert compute_placement(cfg) == ("cuda", "bfloat16")
    cfg.study["model_stage_gpus"] = 0.5
    cap = Stage("capture", "m.d", "m", "d", [], {}, {})
    geo = Stage("geometry", "m.d", "m", "d", [cap], {}, {})
    assert stage_resources(cfg, cap, "cuda") == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert stage_resources(cfg, geo, "cuda") == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert stage_resources(cfg, cap, "cpu")["num_gpus"] == 0.0
    with pytest.raises(ModelError, match="set the study's dtype"):
        compute_placement(load_config(None, {"study": study}))
    with pytest.raises(ModelError):
        compute_placement(load_config(None, {"study": {**study, "executor": "local",
                                                      "dtype": "bfloat16"}}))  # fmt: skip

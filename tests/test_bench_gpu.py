"""bench/bench_gpu.py (the GPU check) runs its whole code path with ``--tiny --device cpu``
and writes every field the GPU run will report, so the script cannot rot between GPU
sessions; without CUDA it refuses in one line."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import emocircuits as ec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_gpu.py"

TOP = ("tiny", "machine", "versions", "settings", "accuracy", "big", "targets", "seconds")
MACHINE = ("device", "device_name", "gpu_memory_gib", "cpu", "nproc")
VERSIONS = ("torch", "transformers", "accelerate", "emocircuits", "cuda")
PER_LAYER = ("max_rel_err", "min_cos", "tol")
COMPARED = (*PER_LAYER, "worst_layer", "worst_rel_err", "worst_min_cos", "pass")
CAPTURE = ("n_rows", "n_tokens", "batch_size", "plain_s", "capture_s", "plain_tok_s",
           "capture_tok_s", "ratio", "ratio_min", "ratio_max", "peak_gib_plain",
           "peak_gib_capture", "above_weights_gib_plain", "above_weights_gib_capture")  # fmt: skip
GENERATE = ("n_prompts", "new_tokens", "layer", "plain_s", "steered_s", "ratio", "ratio_min",
            "ratio_max", "steering_changed_text", "peak_gib_plain", "peak_gib_steered")  # fmt: skip
SPLIT = ("status", "max_memory", "placement", "save_load_s", *COMPARED, "unsplit_s", "split_s",
         "unsplit_tok_s", "split_tok_s", "ratio", "weights_gib_on_device",
         "above_weights_gib_split", "seconds")  # fmt: skip
TARGETS = ("capture_vs_forward", "steered_vs_plain", "accuracy", "split_accuracy")


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_tiny_run_writes_every_field(tmp_path):
    out = tmp_path / "tmp" / "gpu.json"
    r = bench("--tiny", "--device", "cpu", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| arm |" in r.stdout and "| model |" in r.stdout  # the markdown tables
    res = json.loads(out.read_text())
    assert set(TOP) <= set(res) and res["tiny"] is True
    assert set(MACHINE) <= set(res["machine"]) and res["machine"]["device"] == "cpu"
    assert set(VERSIONS) <= set(res["versions"])
    assert res["versions"]["transformers"] != "not installed"

    [acc] = res["accuracy"]
    assert acc["status"] == "ok" and acc["n_tokens"] > acc["n_texts"] > 0
    for dtype in ("float32", "bfloat16"):
        assert set(COMPARED) <= set(acc[dtype])
        assert all(len(acc[dtype][k]) == acc["n_layers"] for k in PER_LAYER)
        assert acc[dtype]["pass"] is True, acc[dtype]
    # The same float32 arithmetic on the same CPU: the same numbers. bfloat16 really ran:
    # every layer differs, by at least the rounding of the weights and activations.
    assert max(acc["float32"]["max_rel_err"]) <= 1e-6
    assert all(e > 2**-12 for e in acc["bfloat16"]["max_rel_err"])
    assert set(acc["bfloat16"]["reference_cpu_bfloat16"]) >= {"max_rel_err", "min_cos"}

    big = res["big"]
    assert {"model", "config", "n_params", "dtype", "weights_gib"} <= set(big)
    cap, gen, split = big["capture"], big["generate"], big["split"]
    assert set(CAPTURE) <= set(cap) and set(GENERATE) <= set(gen) and set(SPLIT) <= set(split)
    assert cap["n_rows"] == 32 and len(cap["plain_s"]) == len(cap["capture_s"]) == 1
    assert all(finite(cap[k]) for k in ("plain_tok_s", "capture_tok_s", "ratio"))
    assert finite(gen["ratio"]) and gen["new_tokens"] == 8
    assert cap["peak_gib_plain"] is None  # no GPU memory on the CPU

    if "device_map" in inspect.signature(ec.load_model).parameters:
        # on the CPU the split puts part of the layers on disk (accelerate's offload)
        assert split["status"] == "ok", split["status"]
        assert "disk" in split["placement"] and "cpu" in split["placement"]
        assert split["pass"] is True and finite(split["ratio"])
    else:
        assert split["status"].startswith("skipped")

    assert set(TARGETS) <= set(res["targets"])
    assert isinstance(res["targets"]["capture_vs_forward"]["pass"], bool)
    assert res["targets"]["accuracy"]["pass"] is True


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "no CUDA device"),
        (("--device", "cpu"), "--device cpu is only for --tiny"),
        (("--device", "tpu"), "unknown --device 'tpu'"),
        (("--tiny", "--device", "cpu", "--gpu-share", "1.5"), "--gpu-share must be"),
        (("--tiny", "--device", "cpu", "--rows", "4"), "--rows must be >= 8"),
    ],
)
def test_refuses_in_one_line(capsys, args, says):
    if not args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = load_script().main(list(args))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and out == ""
    assert lines[0].startswith("bench_gpu.py: ") and says in lines[0]

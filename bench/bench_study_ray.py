"""The tiny study on a local Ray cluster vs the local executor, in the same run (issue 18's
target: Ray's wall time <= 1.5x the local executor's, plus Ray's start-up; two independent
model stages overlap in time).

Two tiny random models (the test fixtures' llama and gpt2), the `baseline` preset,
geometry and compare (5 stages: a capture and a geometry per model, the comparison). A
cluster of a head and ``--nodes - 1`` worker nodes (one CPU each) is started with `ray start`
(timed: Ray's start-up), then the study runs ``--repeats`` times with each executor,
alternated, each into a fresh folder (nothing reused): ``local``; ``ray`` (cold: the run
connects to the cluster itself, a new Ray job whose worker processes start and import
torch and transformers); ``ray-warm`` (the run joins a job whose workers were started and
warmed beforehand, timed apart as ``warm-up``). The local executor runs on one thread, as
each Ray stage does. The overlap is read from the stage timestamps in ``stage.json``
(``started``, ``finished``).

    python bench/bench_study_ray.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from _machine import cpu_model  # noqa: E402


def tiny_model(name: str, root: Path) -> Path:
    """A tiny random model as the tests make it (tests/conftest.py)."""
    import conftest as C

    torch.manual_seed(0)
    cfg = C.TINY_CONFIGS[name]()
    tok = C._train_tokenizer(bos=name in C.BOS_ARCHS)
    cfg.pad_token_id = tok.pad_token_id
    cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model = C.T.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    folder = root / name
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def settings(out: Path, models: list[Path], **study) -> dict:
    from test_study import tiny_config

    return tiny_config(out, models, analyses=("geometry", "compare"), **study)


def overlap(out: Path) -> dict:
    """When each capture ran (seconds from the first start) and how long the two overlapped."""
    t = {}
    for f in (out / "stages" / "capture").glob("*/stage.json"):
        m = json.loads(f.read_text())
        t[m["label"]] = [datetime.fromisoformat(m[k]).timestamp() for k in ("started", "finished")]
    t0 = min(a for a, _ in t.values())
    (a0, a1), (b0, b1) = t.values()
    return {"captures": {k: [round(a - t0, 2), round(b - t0, 2)] for k, (a, b) in t.items()},
            "overlap_s": round(max(0.0, min(a1, b1) - max(a0, b0)), 2)}  # fmt: skip


def warm_up(address: str, nodes: int) -> float:
    """Connect (a new Ray job) and start one warmed worker per node (torch, transformers
    and the study's modules imported); returns the seconds it took. The study run next
    joins this job and finds its workers ready."""
    import ray

    def warm() -> int:
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM  # noqa: F401

        import emocircuits.study.executors  # noqa: F401

        time.sleep(0.5)  # hold the CPU so that the next warm-up goes to another node
        return os.getpid()

    t0 = time.perf_counter()
    ray.init(address=address, log_to_driver=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in ("EMOCIRCUITS_CACHE",)
                                       if k in os.environ}})  # fmt: skip
    pids = ray.get([ray.remote(num_cpus=1)(warm).remote() for _ in range(nodes)])
    assert len(set(pids)) == nodes, pids
    return round(time.perf_counter() - t0, 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from emocircuits.study.config import load_config
    from emocircuits.study.runner import run_study

    from helpers import start_ray_cluster, stop_ray_cluster

    t_start = time.perf_counter()
    print(f"cpu: {cpu_model()}; cores: {os.cpu_count()}; load average {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="ecbench"))
    models = [tiny_model(n, work) for n in ("llama", "gpt2")]
    temp = Path(tempfile.mkdtemp(prefix="ecray", dir="/tmp"))
    res: dict = {"overlap": []}
    try:
        t0 = time.perf_counter()
        address = start_ray_cluster(temp, args.nodes, pythonpath=str(ROOT / "src"))
        res["ray_start_s"] = round(time.perf_counter() - t0, 2)
        print(f"ray start (head + {args.nodes - 1} node, one CPU each): {res['ray_start_s']} s")
        torch.set_num_threads(1)
        for i in range(args.repeats):
            for ex in ("local", "ray", "ray-warm"):
                out = work / f"{ex}-{i}"
                extra = {"executor": "ray", "address": address} if ex != "local" else {}
                if ex == "ray-warm":
                    res.setdefault("warm_up_s", []).append(warm_up(address, args.nodes))
                t0 = time.perf_counter()
                r = run_study(load_config(None, settings(out, models, **extra)), progress=False,
                              tracking=False)  # fmt: skip
                wall = round(time.perf_counter() - t0, 2)
                assert not r.failed, r.failed
                res.setdefault(ex, []).append(wall)
                line = f"run {i} {ex:8s}: {wall:6.2f} s"
                if ex != "local":
                    ov = overlap(out)
                    res["overlap"].append({"run": f"{ex}-{i}", **ov})
                    line += f"; capture overlap {ov['overlap_s']} s {ov['captures']}"
                if ex == "ray-warm":
                    import ray

                    ray.shutdown()
                    line += f" (warm-up before it {res['warm_up_s'][-1]} s)"
                print(line, flush=True)
    finally:
        stop_ray_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    best = {k: min(res[k]) for k in ("local", "ray", "ray-warm")}
    res["best"] = best
    for k in ("ray", "ray-warm"):
        res[f"ratio_{k}"] = round(best[k] / best["local"], 2)
        pairs = [round(r / loc, 2) for r, loc in zip(res[k], res["local"], strict=True)]
        print(f"{k} / local wall time (best of each): {res[f'ratio_{k}']}; per repeat {pairs}")
    target = 1.5 * best["local"] + res["ray_start_s"]
    print(f"target: ray (cold) <= 1.5 x local + ray start = {target:.1f} s: "
          f"{'met' if best['ray'] <= target else 'NOT met'} ({best['ray']} s)")  # fmt: skip
    res["loadavg_end"] = os.getloadavg()
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    print(f"total {res['seconds']} s; load average at end {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

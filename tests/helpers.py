"""Reference computations shared by the tests (independent of the library's capture)."""

from __future__ import annotations

import numpy as np
import torch


def close(got, want, msg=""):
    """float32 agreement: max |got - want| <= 1e-5 * max(1, max |want|)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape, msg)
    tol = 1e-5 * max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= tol, f"{msg}: max error {err:.3g} > {tol:.3g}"


def reference(lm, text, span):
    """Per-rule activations computed independently from one unpadded forward pass of the
    full causal LM with ``output_hidden_states`` (resid layers 0..L-1; hidden_states[L] is
    after the final norm)."""
    enc = lm.tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    h = torch.stack(hs, 0)[:, 0].numpy()  # [L+1, s, w]
    special, offsets = enc["special_tokens_mask"], enc["offset_mapping"]
    content = [i for i in range(len(special)) if not special[i]]
    mean_idx = content[1:] if len(content) > 1 else content
    word = []
    if span is not None:
        word = [
            i
            for i in content
            if offsets[i][1] > offsets[i][0] and offsets[i][0] < span[1] and offsets[i][1] > span[0]
        ]
    last = len(special) - 1
    return h, {
        "last": h[:, last],
        "mean": h[:, mean_idx].mean(1),
        "emotion_word_first": h[:, word[0]] if word else h[:, last],
        "emotion_word_last": h[:, word[-1]] if word else h[:, last],
        "emotion_word_mean": h[:, word].mean(1) if word else h[:, last],
    }


def run(capsys, *argv):
    """Run the CLI in-process: ``(exit code, stdout, stderr)``."""
    from emocircuits.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The CLI's promise for bad input: one line, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("emocircuits: error: ")
    return lines[0]


def start_ray_cluster(temp, nodes: int = 2, pythonpath: str | None = None) -> str:
    """Start a Ray cluster on this machine with ``ray start`` (a head and ``nodes - 1``
    worker nodes, one CPU and a small object store each, no dashboard) in the temporary
    folder ``temp`` (short: Ray's socket paths must fit in 107 characters); returns its
    address. Stop it with :func:`stop_ray_cluster`, also after a failure."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    small = ["--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats"]
    head = subprocess.run([ray, "start", "--head", "--port=0", "--include-dashboard=false",
                           f"--temp-dir={temp}", *small], capture_output=True, text=True,
                          env=env, timeout=180)  # fmt: skip
    m = re.search(r"--address='([^']+)'", head.stdout + head.stderr)
    assert head.returncode == 0 and m, head.stdout + head.stderr
    for _ in range(nodes - 1):
        node = subprocess.run([ray, "start", f"--address={m.group(1)}", *small],
                              capture_output=True, text=True, env=env, timeout=180)  # fmt: skip
        assert node.returncode == 0, node.stdout + node.stderr
    return m.group(1)


def stop_ray_cluster(temp) -> None:
    """SIGKILL every process of the cluster started in ``temp`` (those with ``temp`` in
    their command line, and their children): only this cluster, not others on the machine."""
    import contextlib
    import os

    import psutil

    mine = os.getpid()
    procs = [p for p in psutil.process_iter(["cmdline"])
             if p.pid != mine and any(str(temp) in a for a in p.info["cmdline"] or [])]  # fmt: skip
    every = set(procs)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            every.update(p.children(recursive=True))
    for p in every:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()

"""The real default model (SmolLM2-135M) and Gemma 3 270M, from their PyPI wheels: exact
capture, provenance, the conversion cache, bfloat16, and a real kill -9 + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.capture.capture import CaptureSpec, capture
from emocircuits.models.loading import builtin_gguf, sha256_file

from helpers import close, reference

pytestmark = pytest.mark.real
RULES = ("last", "mean", "emotion_word_first", "emotion_word_last", "emotion_word_mean")


def _check_against_hidden_states(lm, n=12):
    ds = ec.load_dataset("extended")
    rows = ds.examples[::73][:n]
    texts, spans = [e.text for e in rows], [e.emotion_span for e in rows]
    got = capture(
        lm, texts, CaptureSpec(sites=("resid",), positions=RULES, batch_size=5), spans=spans
    )
    L = lm.arch.n_layers
    for r, (text, span) in enumerate(zip(texts, spans, strict=True)):
        _, ref = reference(lm, text, span)
        for rule, want in ref.items():
            close(got[f"resid/{rule}"][r, :L], want[:L], f"{lm.name} {rule} row {r}")


def test_smollm2_capture_equals_transformers(smollm2):
    assert (smollm2.arch.n_layers, smollm2.arch.width, smollm2.arch.n_heads) == (30, 576, 9)
    assert smollm2.tokenizer.padding_side == "right"
    _check_against_hidden_states(smollm2)


def test_smollm2_provenance_and_cache(smollm2):
    p = smollm2.provenance
    gguf = builtin_gguf("smollm2-135m")
    assert p["dequantised_from"] == "Q4_1" and p["gguf_sha256"] == sha256_file(gguf)
    assert p["hf_equivalent"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert p["revision"] == "gguf-sha256:" + p["gguf_sha256"] and p["dtype"] == "float32"
    folder = ec.models.cache_dir() / "gguf" / p["gguf_sha256"][:16]
    stamp = (folder / "provenance.json").stat().st_mtime_ns
    again = ec.load_model("smollm2-135m", dtype="bfloat16", progress=False)
    assert (folder / "provenance.json").stat().st_mtime_ns == stamp  # no second conversion
    assert again.provenance["dtype"] == "bfloat16"
    texts = ec.load_dataset("baseline").texts[:24]
    spec = CaptureSpec(sites=("resid",), positions=("last", "mean"))
    a, b = capture(smollm2, texts, spec), capture(again, texts, spec)
    for key in ("resid/last", "resid/mean"):
        x, y = a[key][:, 1:], b[key][:, 1:]
        cos = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
        assert cos.min() > 0.98, (key, cos.min())


def test_gemma3_capture_equals_transformers(gemma3):
    lm = gemma3
    assert (lm.arch.n_layers, lm.arch.width, lm.arch.model_type) == (18, 640, "gemma3_text")
    assert lm.provenance["dequantised_from"] == "Q4_K_M"
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.bos_token == "<bos>"
    _check_against_hidden_states(lm, n=8)
    ja = ec.load_dataset("ja").examples[::25]
    got = capture(
        lm,
        [e.text for e in ja],
        CaptureSpec(sites=("resid", "attn", "mlp"), positions=("emotion_word_mean",)),
        spans=[e.emotion_span for e in ja],
    )
    r, a, m = (got[f"{s}/emotion_word_mean"] for s in ("resid", "attn", "mlp"))
    close(r[:, 1:], r[:, :-1] + a + m, "gemma3 block decomposition")


def test_kill_9_during_extraction_then_resume(tmp_path, smollm2):
    out = tmp_path / "acts"
    cmd = [
        sys.executable,
        "-m",
        "emocircuits",
        "extract",
        "--model",
        "smollm2-135m",
        "--data",
        "baseline",
        "--out",
        str(out),
        "--shard-size",
        "32",
        "--quiet",
        "--positions",
        "last,mean,emotion_word",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (out / "shard-00001.safetensors").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    done = {p.name for p in out.glob("shard-*.safetensors")}
    assert 2 <= len(done) < 7
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    resumed = ec.load_activations(out)
    ds = ec.load_dataset("baseline")
    spec = CaptureSpec(positions=("last", "mean", "emotion_word"))
    fresh = capture(smollm2, ds.texts, spec, spans=[e.emotion_span for e in ds.examples])
    for key, want in fresh.items():
        if "/" in key and not key.startswith("meta"):
            site, pos = key.split("/")
            close(resumed.get(site, pos), want, key)
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["dequantised_from"] == "Q4_1" and m["n_rows"] == 200


def test_a_gguf_file_path_loads_through_the_same_cache(smollm2, tmp_path):
    path = builtin_gguf("smollm2-135m")
    lm = ec.load_model(str(path), progress=False)
    assert lm.provenance["name"] == str(path) and lm.provenance["source"] == "gguf"
    assert lm.provenance["gguf_sha256"] == smollm2.provenance["gguf_sha256"]
    assert "builtin" not in lm.provenance
    texts = ["I can't thank you enough for the lift!"]
    spec = CaptureSpec(sites=("resid",), positions=("mean",))
    np.testing.assert_array_equal(
        capture(lm, texts, spec)["resid/mean"], capture(smollm2, texts, spec)["resid/mean"]
    )
    broken = tmp_path / "copy.gguf"
    broken.write_bytes(path.read_bytes()[: 1 << 20])  # truncated download
    with pytest.raises(ec.EmocircuitsError, match=r"copy\.gguf: not a readable GGUF file"):
        ec.load_model(broken, progress=False)

"""Batch sizes: ``"auto"`` and the out-of-memory back-off (models/batching.py) in extract,
generation and patching, and what the CLI and the study config take.

Running out of memory is simulated where the allocator would raise it: a forward pre-hook on
every embedding module raises ``torch.OutOfMemoryError`` when its input has more than N rows;
the real tiny model runs otherwise."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
import torch

import emocircuits as ec
from emocircuits.capture.hooks import count_hooks
from emocircuits.errors import MemoryLimitError
from emocircuits.interventions.generation import generate, next_token_kl, perplexity
from emocircuits.interventions.steering import Steer
from emocircuits.models.batching import (
    AUTO_CAP,
    Batches,
    auto_batch_size,
    check_batch_size,
    is_out_of_memory,
    row_bytes,
)

from helpers import close, one_error_line, run

OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
SPEC = dict(sites=("resid", "mlp"), positions=("last", "mean"))


@contextmanager
def memory_for(n_rows: int):
    """Every forward pass of more than ``n_rows`` rows fails as the CUDA allocator fails
    (any model in this process: the CLI loads its own)."""
    seen = {"failed": 0}

    def hook(module, args):
        if isinstance(module, torch.nn.Embedding) and args and args[0].shape[0] > n_rows:
            seen["failed"] += 1
            raise OOM(f"CUDA out of memory. Tried to allocate 2.00 GiB (> {n_rows} rows)")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def ds():
    full = ec.load_dataset("baseline")
    return replace(full, examples=full.examples[::4])  # 50 rows of every class


def _arrays(store):
    return {(s, p): store.get(s, p) for s in SPEC["sites"] for p in SPEC["positions"]}


def test_extract_halves_on_out_of_memory_keeps_every_row(tiny, ds, tmp_path, capsys):
    lm = tiny("llama")
    hooks = count_hooks(lm.model)
    fits = ec.extract(lm, ds, tmp_path / "two", batch_size=2, shard_size=16, progress=False,
                      **SPEC)  # fmt: skip
    big = ec.extract(lm, ds, None, batch_size=8, shard_size=16, progress=False, **SPEC)
    capsys.readouterr()
    with memory_for(3) as seen:
        got = ec.extract(lm, ds, tmp_path / "oom", batch_size=8, shard_size=16, progress=True,
                         **SPEC)  # fmt: skip
    assert seen["failed"] == 2  # 8 rows, then 4: once each, then 2 for the rest of the run
    assert count_hooks(lm.model) == hooks
    m = got.manifest
    assert m["capture"]["batch_size"] == 8 and m["capture"]["batch_size_used"] == 2
    assert m["n_rows"] == len(ds) and got.ids == ds.ids and got.labels == ds.labels
    assert [s["n_rows"] for s in m["shards"]] == [16, 16, 16, 2]  # as asked: 2 batches of 8
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("emocircuits:")]
    assert lines == ["emocircuits: extract: batch size 8 -> capture 2 (halved after running "
                     "out of memory)"]  # fmt: skip
    # the halves are the batches batch_size=2 plans: the same numbers, bit for bit; and
    # the fitting size 8 agrees to float arithmetic (other padding, other matmul shapes)
    for key, x in _arrays(got).items():
        np.testing.assert_array_equal(x, fits.get(*key), err_msg=str(key))
        close(x, big.get(*key), str(key))


def test_extract_out_of_memory_in_memory_and_a_resumed_folder(tiny, ds, tmp_path):
    """In memory the same back-off; a folder whose first shards were written at one size
    resumes after a failure with the same shards (auto: shard rows never depend on the
    memory free)."""
    lm = tiny("gpt2")
    want = ec.extract(lm, ds, None, batch_size=4, progress=False, **SPEC)
    with memory_for(2):
        got = ec.extract(lm, ds, None, batch_size=4, progress=False, **SPEC)
    assert got.manifest["capture"]["batch_size_used"] == 2
    for key, x in _arrays(got).items():
        close(x, want.get(*key), str(key))
    out = tmp_path / "auto"
    first = ec.extract(lm, ds, out, batch_size="auto", shard_size=12, progress=False, **SPEC)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["spec"]["batch_size"] == "auto"
    assert [s["n_rows"] for s in first.manifest["shards"]] == [12, 12, 12, 12, 2]
    (out / "manifest.json").unlink()
    (out / first.manifest["shards"][-1]["file"]).unlink()
    with memory_for(2):  # less memory today: other batches, the same shards
        again = ec.extract(lm, ds, out, batch_size="auto", shard_size=12, progress=False,
                           **SPEC)  # fmt: skip
    assert again.manifest["capture"]["batch_size_used"] == 2
    for key, x in _arrays(again).items():
        close(x, want.get(*key), str(key))


def test_out_of_memory_at_one_row_is_one_line_and_writes_no_manifest(tiny_dir, tmp_path, capsys):
    out = tmp_path / "never"
    args = ["extract", "--model", tiny_dir("llama"), "--data", "baseline", "--out", out,
            "--sites", "resid", "--positions", "last", "--batch-size", "4", "--quiet"]  # fmt: skip
    with memory_for(0):
        code, _, err = run(capsys, *args)
    line = one_error_line(err)
    assert code == 2 and "out of memory even at batch size 1" in line and "extract" in line
    assert not (out / "manifest.json").exists() and not list(out.glob("shard-*"))
    assert not list(out.glob("*.tmp"))


def test_generation_perplexity_and_kl_back_off_to_the_same_numbers(tiny):
    lm = tiny("gpt2")
    prompts = ["The meeting moved to Thursday.", "I went to the store and", "Here is the plan:",
               "The bus was late again, so", "We met at noon.", "The shop opens at"]  # fmt: skip
    v = np.random.default_rng(0).normal(size=lm.arch.width).astype(np.float32)
    per_row = [[Steer(2, v, a, 1.0)] for a in (0.0, 1.0, 2.0, 0.5, 0.0, 1.5)]
    want = generate(lm, prompts, per_row=per_row, max_new_tokens=5, batch_size=3)
    b = Batches(8, "steer")
    with memory_for(3):
        got = generate(lm, prompts, per_row=per_row, max_new_tokens=5, batch_size=b)
        ppl = perplexity(lm, prompts, got, batch_size=b)
    assert got == want  # the halves are batch_size=3's batches: the same greedy decoding
    assert b.provenance == {"batch_size": 8, "batch_size_used": {"generate": 3, "perplexity": 3}}
    close(ppl, perplexity(lm, prompts, got, batch_size=1), "perplexity")
    sets = [[Steer(2, v, a, 1.0)] for a in (0.5, 1.0, 2.0)]
    texts = prompts[:2]
    with memory_for(2):  # one steer set is 2 rows: one set per pass
        kl = next_token_kl(lm, texts, sets, batch_size=6)
    close(kl, next_token_kl(lm, texts, sets, batch_size=2), "kl")


def test_patching_backs_off_per_batch_of_pairs(tiny):
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.interventions.patching import run_patching
    from emocircuits.interventions.readout import Readout

    lm = tiny("llama")
    emotions = ("gratitude", "anger")
    # planted readouts and directions (the tiny vocabulary has no feeling words as tokens)
    rs = {e: Readout(e, (10 + 7 * i, 11 + 7 * i), (40, 41, 42), (f"w{i}a", f"w{i}b"))
          for i, e in enumerate(emotions)}  # fmt: skip
    n, rng = lm.arch.n_layers + 1, np.random.default_rng(0)
    dirs = {e: rng.normal(size=(n, lm.arch.width)) for e in emotions}
    norms = {e: np.ones(n) for e in emotions}
    vecs = EmotionVectors(dirs, norms, list(range(n)), "planted", "resid", "mean", "neutral")
    ex = [e for e in ec.load_dataset("extended").examples if e.emotion in (*emotions, "neutral")]
    texts, labels = [e.text for e in ex], [e.emotion for e in ex]
    kw = dict(n_pairs=4, n_positions=2, n_layers=2)
    want = run_patching(lm, texts, labels, vecs, rs, batch_size=8, **kw)
    with memory_for(5) as seen:
        got = run_patching(lm, texts, labels, vecs, rs, batch_size=8, **kw)
    assert seen["failed"] > 0 and got.settings["batch_size"] == 8
    assert want.settings["batch_size_used"]["pairs"] > got.settings["batch_size_used"]["pairs"]
    names = ("full", "directional", "directional_all", "random_all", "ld_emotion", "ld_neutral")
    for name in names:
        a, b = getattr(got, name), getattr(want, name)
        assert (np.isnan(a) == np.isnan(b)).all(), name
        close(np.nan_to_num(a), np.nan_to_num(b), name)


def test_auto_is_sized_from_free_memory_and_capped(tiny, monkeypatch):
    import emocircuits.models.batching as batching

    lm = tiny("llama")
    per_row = row_bytes(lm, 40)
    assert row_bytes(lm, 80) > per_row > 0  # longer texts, more memory per row
    assert row_bytes(lm, 40, cache_tokens=40) > per_row and row_bytes(lm, 40, kept=4) > per_row
    gib = 2**30
    monkeypatch.setattr(batching, "free_memory", lambda lm: (gib, "cpu"))
    n = auto_batch_size(lm, 10 * 2**20)  # 1 GiB free, half usable, 10 MiB x 2 a row
    assert n == 25
    assert auto_batch_size(lm, 10 * 2**20, n_rows=7) == 7
    assert auto_batch_size(lm, 1) == AUTO_CAP["cpu"]  # a cap however much is free
    assert auto_batch_size(lm, 100 * gib) == 1  # never below one row
    b = Batches("auto", "extract")
    assert b.size("capture", lm, 10 * 2**20, 200) == 25
    assert "batch size auto -> " in b.describe() and "1.0 GiB free on cpu" in b.describe()


def test_batch_size_values_the_cli_and_the_study_config(tiny_dir, tmp_path, capsys):
    from emocircuits.study.calls import OPTIONS, options
    from emocircuits.study.values import check_value, type_hints

    assert check_batch_size("auto") == "auto" and check_batch_size("12") == 12
    for bad in (0, -1, "big", 2.5, True):
        with pytest.raises(ec.EmocircuitsError, match="batch size must be"):
            check_batch_size(bad)
    assert is_out_of_memory(OOM("CUDA out of memory")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(ValueError("out of memory"))  # only allocation failures
    for table in ("extract", "steer-sweep", "patch", "ablate", "heads"):
        hint, default = type_hints(OPTIONS[table])["batch_size"], options(table)["batch_size"]
        assert check_value("auto", hint, default.default) == "auto", table
        with pytest.raises(ValueError):
            check_value(0, hint, default.default)
    out = tmp_path / "auto"
    args = ["extract", "--model", tiny_dir("gpt2"), "--data", "baseline", "--out", out,
            "--sites", "resid", "--positions", "last", "--batch-size"]  # fmt: skip
    code, _, err = run(capsys, *args, "auto")
    assert code == 0, err
    notes = [x for x in err.splitlines() if x.startswith("emocircuits: extract: batch size")]
    assert len(notes) == 1 and "auto -> capture" in notes[0]
    m = json.loads((out / "manifest.json").read_text())["capture"]
    assert m["batch_size"] == "auto" and 1 <= m["batch_size_used"] <= AUTO_CAP["cpu"]
    with pytest.raises(SystemExit) as e:
        run(capsys, *args[:-1], "--batch-size", "lots")
    assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err
    with pytest.raises(MemoryLimitError, match="batch size 1"), memory_for(0):
        generate(ec.load_model(tiny_dir("gpt2")), ["Hello there"], max_new_tokens=2)

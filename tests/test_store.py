"""Activation folders: round trip, streaming shards, resume after interruption, atomicity,
and the format as docs/FORMAT.md describes it (read with plain safetensors + numpy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

import emocircuits as ec
from emocircuits.capture.capture import CaptureSpec, capture
from emocircuits.capture.hooks import count_hooks, hooked
from emocircuits.errors import CaptureError

SPEC = CaptureSpec(
    sites=("resid", "attn", "mlp", "heads"),
    positions=("last", "mean", "emotion_word", "all"),
    batch_size=8,
)


@pytest.fixture(scope="module")
def ds():
    return ec.load_dataset("baseline")


def test_round_trip_equals_in_memory_capture(tiny, ds, tmp_path):
    lm = tiny("llama")
    acts = ec.extract(lm, ds, tmp_path / "a", SPEC, shard_size=48, progress=False)
    mem = capture(lm, ds.texts, SPEC, spans=[e.emotion_span for e in ds.examples])
    for site in SPEC.sites:
        for pos in SPEC.positions:
            np.testing.assert_array_equal(acts.get(site, pos), mem[f"{site}/{pos}"])
    assert acts.ids == ds.ids and acts.labels == ds.labels
    m = acts.manifest
    assert m["n_rows"] == 200 and m["dataset"]["sha256"] == ds.sha256
    assert m["model"]["revision"].startswith("sha256:") and m["dtype"] == "float32"
    assert len(m["shards"]) == 5  # 200 rows / (48 // 8 * 8) -> 5 shards
    assert acts.get("resid", "last").shape == (200, lm.arch.n_layers + 1, lm.arch.width)
    assert acts.get("heads", "last").shape == (200, 3, lm.arch.n_heads, lm.arch.head_dim)
    w, _ = acts.o_proj(1)
    np.testing.assert_array_equal(w, lm.arch.o_proj_weight(1)[0].numpy())
    # neutral rows have no emotion word: they fall back to `last` and say so (-1 span)
    neutral = np.array(acts.labels) == "neutral"
    np.testing.assert_array_equal(
        acts.get("resid", "emotion_word")[neutral], acts.get("resid", "last")[neutral]
    )
    spans = acts.spans("emotion_word")
    assert (spans[~neutral] >= 0).all()
    tok = acts.token_index()
    assert len(tok["row"]) == acts.n_tokens().sum() + (lm.tokenizer.bos_token is not None) * 200


def test_format_is_readable_with_plain_safetensors(tiny, ds, tmp_path):
    """What docs/FORMAT.md promises: shards hold `{site}/{position}` and `rows`."""
    lm = tiny("gpt2")
    spec = CaptureSpec(sites=("resid",), positions=("last",))
    out = ec.extract(lm, ds, tmp_path / "f", spec, shard_size=64, progress=False).path
    manifest = json.loads((out / "manifest.json").read_text())
    x = np.zeros((manifest["n_rows"], manifest["n_layers"] + 1, manifest["width"]), np.float32)
    for shard in manifest["shards"]:
        t = load_file(out / shard["file"])
        x[t["rows"]] = t["resid/last"]
    np.testing.assert_array_equal(x, ec.load_activations(out).get("resid", "last"))


def test_interrupted_extraction_resumes_to_identical_tensors(tiny, ds, tmp_path):
    lm = tiny("gpt2")
    spec = CaptureSpec(positions=("last", "mean"), batch_size=8)
    full = ec.extract(lm, ds, tmp_path / "full", spec, shard_size=32, progress=False)

    calls = {"n": 0}

    def interrupt_after_three_batches(module, args, output):
        calls["n"] += 1
        if calls["n"] == 11:  # 4 batches per shard: 2 shards finished, the 3rd is half done
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    hooks_before = count_hooks(lm.model)  # transformers may keep recording hooks of its own
    with (
        hooked([(lm.arch.blocks[0], "forward", interrupt_after_three_batches)]),
        pytest.raises(KeyboardInterrupt),
    ):
        ec.extract(lm, ds, out, spec, shard_size=32, progress=False)
    assert count_hooks(lm.model) == hooks_before
    assert sorted(p.name for p in out.glob("shard-*")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    assert not list(out.glob("*.tmp")) and not (out / "manifest.json").exists()
    with pytest.raises(CaptureError, match="unfinished extraction"):
        ec.load_activations(out)

    calls["n"] = 0
    with hooked(
        [(lm.arch.blocks[0], "forward", lambda m, a, o: calls.__setitem__("n", calls["n"] + 1))]
    ):
        resumed = ec.extract(lm, ds, out, spec, shard_size=32, progress=False)
    assert calls["n"] == 25 - 8  # 25 batches in all; the 8 of the two finished shards skipped
    for key in ("resid", "attn", "mlp"):
        for pos in ("last", "mean"):
            np.testing.assert_array_equal(resumed.get(key, pos), full.get(key, pos))

    calls["n"] = 0  # finished: a re-run does no model work
    with hooked([(lm.arch.blocks[0], "forward", lambda m, a, o: calls.__setitem__("n", 1))]):
        ec.extract(lm, ds, out, spec, shard_size=32, progress=False)
    assert calls["n"] == 0


def test_other_settings_on_existing_folder_refused_and_nothing_lost(tiny, ds, tmp_path):
    lm = tiny("gpt2")
    out = tmp_path / "x"
    ec.extract(lm, ds, out, CaptureSpec(positions=("last",)), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CaptureError, match=r"spec\.positions differ"):
        ec.extract(lm, ds, out, CaptureSpec(positions=("mean",)), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    other = tmp_path / "y"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CaptureError, match="not an extraction"):
        ec.extract(lm, ds, other, CaptureSpec(positions=("last",)), progress=False)
    assert (other / "notes.txt").read_text() == "mine"
    acts = ec.extract(lm, ds, out, CaptureSpec(positions=("mean",)), progress=False, overwrite=True)
    assert acts.positions == ["mean"]


def test_half_written_shard_is_never_read(tiny, ds, tmp_path):
    lm = tiny("gpt2")
    out = tmp_path / "h"
    spec = CaptureSpec(positions=("last",))
    ec.extract(lm, ds, out, spec, shard_size=64, progress=False)
    (out / "manifest.json").unlink()
    last = sorted(out.glob("shard-*"))[-1]
    # a crash mid-write leaves only a temporary file: the shard itself does not exist
    last.rename(out / f".{last.name}.abc.tmp")
    acts = ec.extract(lm, ds, out, spec, shard_size=64, progress=False)
    assert len(acts.manifest["shards"]) == 4
    assert acts.get("resid", "last").shape[0] == 200

"""The RQ1 stages as library calls: each result saves exactly what its command writes
(byte for byte, apart from provenance timestamps and timings), loads back, and shows
itself (``repr``, ``_repr_html_``); in-memory and on-disk activations are one type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.capture.hooks import count_hooks
from emocircuits.capture.store import ActivationStore
from emocircuits.errors import CaptureError
from helpers import run

EXTRACT = ("--sites", "resid,attn,heads", "--positions", "last,mean,emotion_word", "--batch-size", "8", "--shard-size", "64")  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _without(obj: dict, *keys: str) -> dict:
    return {k: v for k, v in obj.items() if k not in keys}


def _safetensors_parts(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _same_folder(a: Path, b: Path, *, json_ignore: dict[str, tuple[str, ...]]) -> None:
    """Every file byte-identical, except the named JSON files, which must be equal apart
    from the named top-level keys (timestamps, timings), and safetensors files with header
    metadata: the safetensors writer orders the metadata keys as a Rust HashMap does (it
    varies from process to process, also between two CLI runs), so their headers are
    compared parsed and their data bytes exactly (the shard checksums in manifest.json
    follow the header bytes and are compared the same way)."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name in json_ignore:
            ja, jb = json.loads(fa[name]), json.loads(fb[name])
            if "shards" in ja:
                for j in (ja, jb):
                    j["shards"] = [_without(s, "sha256") for s in j["shards"]]
            assert _without(ja, *json_ignore[name]) == _without(jb, *json_ignore[name]), name
        elif name.endswith(".safetensors"):
            assert _safetensors_parts(fa[name]) == _safetensors_parts(fb[name]), name
        else:
            assert fa[name] == fb[name], name


@pytest.fixture(scope="module")
def cli_acts(tiny_dir, tmp_path_factory):
    """An activation folder written by `emocircuits extract` (tiny llama, baseline)."""
    out = tmp_path_factory.mktemp("cli") / "acts"
    from emocircuits.cli import main

    assert main(["extract", "--model", str(tiny_dir("llama")), "--data", "baseline",
                 "--out", str(out), *EXTRACT, "--quiet"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def mem_acts(tiny):
    lm = tiny("llama")
    return ec.extract(
        lm, "baseline", sites=("resid", "attn", "heads"), positions=("last", "mean", "emotion_word"),
        batch_size=8, shard_size=64, progress=False,
    )  # fmt: skip


def test_in_memory_extract_saves_the_folder_extract_writes(cli_acts, mem_acts, tiny, tmp_path):
    assert mem_acts.in_memory and mem_acts.path is None
    assert count_hooks(tiny("llama").model) == 0
    saved = mem_acts.save(tmp_path / "mem")
    _same_folder(cli_acts, saved, json_ignore={"manifest.json": ("created", "seconds")})
    disk = ec.load_activations(cli_acts)
    for site in ("resid", "attn", "heads"):
        for pos in ("last", "mean", "emotion_word"):
            np.testing.assert_array_equal(mem_acts.get(site, pos), disk.get(site, pos))
    assert mem_acts.ids == disk.ids and mem_acts.labels == disk.labels
    assert mem_acts.layers("heads") == disk.layers("heads")
    np.testing.assert_array_equal(mem_acts.o_proj(1)[0], disk.o_proj(1)[0])
    np.testing.assert_array_equal(mem_acts.spans("emotion_word"), disk.spans("emotion_word"))
    np.testing.assert_array_equal(mem_acts.n_tokens(), disk.n_tokens())
    assert mem_acts.by_label("resid", "mean").keys() == disk.by_label("resid", "mean").keys()
    # the saved folder loads back as the same activations
    back = ec.load_activations(saved)
    np.testing.assert_array_equal(back.get("resid", "mean"), mem_acts.get("resid", "mean"))
    assert "in memory" in repr(mem_acts) and str(saved) not in repr(mem_acts)
    with pytest.raises(CaptureError, match="not empty"):
        mem_acts.save(saved)


def test_extract_takes_a_preset_name_a_path_or_a_dataset(tiny, tmp_path):
    lm = tiny("gpt2")
    ds = ec.load_dataset("baseline")
    path = tmp_path / "d.jsonl"
    path.write_text(ds.to_jsonl())
    kw = {"sites": ("resid",), "positions": ("last",), "progress": False}
    a = ec.extract(lm, "baseline", **kw).get("resid", "last")
    b = ec.extract(lm, path, **kw).get("resid", "last")
    c = ec.extract(lm, ds, **kw).get("resid", "last")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_no_hooks_left_after_a_failed_in_memory_extract(tiny):
    lm = tiny("gpt2")
    with pytest.raises(CaptureError):
        ec.extract(lm, "baseline", sites=("resid",), layers=(9,), progress=False)
    assert count_hooks(lm.model) == 0


def test_from_arrays_is_a_store_like_any_other():
    x = np.random.default_rng(0).normal(size=(6, 3, 4)).astype(np.float32)
    acts = ActivationStore.from_arrays({"resid/mean": x}, ["a", "a", "b", "b", "neutral", "neutral"])
    assert acts.sites == ["resid"] and acts.positions == ["mean"] and acts.default_position == "mean"
    np.testing.assert_array_equal(acts.by_label("resid", "mean")["b"], x[2:4])

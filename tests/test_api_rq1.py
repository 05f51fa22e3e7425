"""The RQ1 stages as library calls: each result saves exactly what its command writes
(byte for byte, apart from provenance timestamps and timings), loads back, and shows
itself (``repr``, ``_repr_html_``); in-memory and on-disk activations are one type."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.capture.hooks import count_hooks
from emocircuits.capture.store import ActivationStore
from emocircuits.errors import CaptureError
from emocircuits.geometry.vectors import EmotionVectors, directions

from helpers import run

SITES, POSITIONS = ("resid", "attn", "heads"), ("last", "mean", "emotion_word")
EXTRACT = ("--sites", ",".join(SITES), "--positions", ",".join(POSITIONS),
           "--batch-size", "8", "--shard-size", "64")  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _without(obj: dict, *keys: str) -> dict:
    return {k: v for k, v in obj.items() if k not in keys}


def _same_folder(a: Path, b: Path, *, json_ignore: dict[str, tuple[str, ...]]) -> None:
    """Every file byte-identical (the shards too, and so their checksums in the manifest),
    except the named JSON files, which must be equal apart from the named top-level keys
    (timestamps, timings)."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name in json_ignore:
            ja, jb = json.loads(fa[name]), json.loads(fb[name])
            assert _without(ja, *json_ignore[name]) == _without(jb, *json_ignore[name]), name
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
        lm, "baseline", sites=SITES, positions=POSITIONS, batch_size=8, shard_size=64,
        progress=False,
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
    _shows_itself(mem_acts)
    assert ActivationStore.load(saved).rows() == mem_acts.rows()
    with pytest.raises(CaptureError, match="not empty"):
        mem_acts.save(saved)
    # a store read from a folder saves as a copy of it
    assert _files(disk.save(tmp_path / "copy")) == _files(cli_acts)


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


def test_no_hooks_left_when_writing_a_shard_fails(tiny, tmp_path, monkeypatch):
    lm = tiny("gpt2")

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    # (the function emocircuits.capture.extract shadows the module of that name)
    monkeypatch.setattr(sys.modules["emocircuits.capture.extract"], "save_shard", disk_full)
    with pytest.raises(OSError, match="disk full") as err:
        ec.extract(lm, "baseline", tmp_path / "x", sites=("resid",), positions=("last",),
                   progress=False)  # fmt: skip
    assert err.traceback and count_hooks(lm.model) == 0


def test_from_arrays_is_a_store_like_any_other():
    x = np.random.default_rng(0).normal(size=(6, 3, 4)).astype(np.float32)
    acts = ActivationStore.from_arrays(
        {"resid/mean": x}, ["a", "a", "b", "b", "neutral", "neutral"]
    )
    assert (
        acts.sites == ["resid"] and acts.positions == ["mean"] and acts.default_position == "mean"
    )
    np.testing.assert_array_equal(acts.by_label("resid", "mean")["b"], x[2:4])


# ---------------------------------------------------------------- directions, similarity
@pytest.fixture(scope="module")
def small(tiny, tmp_path_factory):
    """baseline and natural captured by the tiny llama (resid, attn; mean, last)."""
    root = tmp_path_factory.mktemp("rq1")
    lm = tiny("llama")
    kw = {"sites": ("resid", "attn"), "positions": ("mean", "last"), "progress": False}
    return (
        root,
        ec.extract(lm, "baseline", root / "base", **kw),
        ec.extract(lm, "natural", root / "nat", **kw),
    )


def _shows_itself(res) -> None:
    text = repr(res)
    assert text.startswith(f"<{type(res).__name__}") and "\n" in text
    html = res._repr_html_()
    assert html.startswith("<div>") and "<table>" in html


@pytest.mark.parametrize("method", ["mean_diff", "one_vs_rest"])
def test_directions_save_equals_the_vectors_command(small, capsys, tmp_path, method):
    _, base, _ = small
    code, _, _ = run(capsys, "vectors", "--activations", base.path, "--out", tmp_path / "cli",
                     "--method", method, "--position", "last")  # fmt: skip
    assert code == 0
    vecs = directions(base, method=method, position="last")
    path = vecs.save(tmp_path / "api.safetensors")
    cli = tmp_path / "cli.safetensors"
    assert path.read_bytes() == cli.read_bytes()
    assert path.with_suffix(".json").read_bytes() == cli.with_suffix(".json").read_bytes()
    back = EmotionVectors.load(path)
    assert back.meta() == vecs.meta() and back.emotions == vecs.emotions
    for e in vecs.emotions:
        np.testing.assert_array_equal(back.directions[e], vecs.directions[e])
    assert back.rows() == vecs.rows() and "norm_L0" in vecs.rows()[0]
    _shows_itself(vecs)


def test_directions_from_memory_equal_directions_from_the_folder(small, tiny):
    _, base, _ = small
    mem = ec.extract(tiny("llama"), "baseline", sites=("resid",), positions=("mean",),
                     progress=False)  # fmt: skip
    a, b = directions(mem), directions(base)
    assert a.provenance["activations"] is None
    for e in a.emotions:
        np.testing.assert_array_equal(a.directions[e], b.directions[e])


def test_similarity_save_equals_the_similarity_command(small, capsys, tmp_path):
    from emocircuits.geometry.similarity import SimilarityResult, emotion_similarity

    _, base, _ = small
    code, out, _ = run(capsys, "similarity", "--activations", base.path, "--out",
                       tmp_path / "cli.csv", "--n-boot", 50)  # fmt: skip
    assert code == 0 and "wrote" in out
    res = emotion_similarity(base, n_boot=50)
    assert res.save(tmp_path / "api.csv").read_bytes() == (tmp_path / "cli.csv").read_bytes()
    back = SimilarityResult.load(tmp_path / "api.csv")
    assert (back.method, back.n_boot, back.level) == ("mean_diff", 50, 0.95)
    assert len(back.rows()) == len(res.rows())
    assert back.rows()[0]["reliable"] == res.rows()[0]["reliable"]
    _shows_itself(res)


def test_layer_summary_is_what_summary_prints(small, capsys):
    from emocircuits.geometry.summary import layer_summary

    _, base, _ = small
    s = layer_summary(base, folds=3)
    assert [r["layer"] for r in s.rows()] == base.layers("resid")
    code, out, _ = run(capsys, "summary", base.path, "--folds", 3)
    assert code == 0 and f"{s.rows()[-1]['ncm_std']:.2f}" in out
    _shows_itself(s)


# ------------------------------------------------------------------------ geometry, probe
GEO = {"n_boot": 40, "n_perm": 10, "n_splits": 10, "folds": 3}


def test_analyze_geometry_save_equals_the_geometry_command(small, capsys, tmp_path):
    from emocircuits.geometry.stage import GeometryResult, analyze_geometry

    _, base, nat = small
    flags = [x for k, v in GEO.items() for x in (f"--{k.replace('_', '-')}", v)]
    code, _, _ = run(capsys, "geometry", "--activations", base.path, "--compare", nat.path,
                     "--out", tmp_path / "cli", *flags)  # fmt: skip
    assert code == 0
    res = analyze_geometry(base, compare=nat, **GEO)
    out = res.save(tmp_path / "api")
    assert any((out / "figures").glob("projection-resid-mean-layer*.png"))
    _same_folder(tmp_path / "cli", out, json_ignore={"summary.json": ("seconds",)})
    back = GeometryResult.load(out)
    assert back.summary == json.loads((out / "summary.json").read_text())
    assert back.probes == res.probes and back.tables.keys() == res.tables.keys()
    assert back.rows() == res.rows()
    assert {"layer", "split_half_cos", "cv_logreg", "cv_ncm"} <= res.rows()[1].keys()
    # a loaded result saves the same tables (no projection: it needs the activations)
    again = back.save(tmp_path / "again", figures=False)
    for name in ("similarity.csv", "subspaces.csv", "probes_cv.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    _shows_itself(res)
    assert "<img" in res._repr_html_()


def test_analyze_geometry_takes_an_in_memory_store(tiny):
    from emocircuits.geometry.stage import analyze_geometry

    mem = ec.extract(tiny("gpt2"), "baseline", sites=("resid",), positions=("mean",),
                     progress=False)  # fmt: skip
    res = analyze_geometry(mem, **GEO)
    assert res.summary["activations"] is None and res.rows()


@pytest.mark.parametrize("transfer", [False, True])
def test_probe_save_equals_the_probe_command(small, capsys, tmp_path, transfer):
    from emocircuits.geometry.probes import ProbeResult, probe

    _, base, nat = small
    test_args = ("--test", nat.path) if transfer else ()
    code, _, _ = run(capsys, "probe", "--train", base.path, *test_args, "--out",
                     tmp_path / "cli.json", "--folds", 3, "--quiet")  # fmt: skip
    assert code == 0
    res = probe(base, nat if transfer else None, folds=3)
    path = res.save(tmp_path / "api.json")
    assert path.read_bytes() == (tmp_path / "cli.json").read_bytes()
    back = ProbeResult.load(path)
    assert back.to_json() == res.to_json() and back.rows() == res.rows()
    assert res.rows()[0].keys() == {"layer", "logreg", "ncm"}
    _shows_itself(res)
    assert "<img" in res._repr_html_()

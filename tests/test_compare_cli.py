"""`emocircuits compare` from the command line, on small activation folders written here with
plain numpy/safetensors/json as docs/FORMAT.md describes (no model is run): its help, one
error line and nothing written for every bad input, rows matched by id whatever the order
of the shards or of the manifest, the pilot's `--vectors_dir` spelling for its naive table
(no pickle anywhere), and the provenance and figures of what it writes."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from emocircuits.cli import main

from helpers import one_error_line, run

CLASSES = ("anger", "gratitude", "apology", "neutral")
FAST = ("--quiet", "--n-perm", "60", "--n-perm-heavy", "20", "--k", "5")


def planted(width: int, seed: int, n_per: int = 12, layers: int = 4, classes=CLASSES):
    """Activations ``[n, layers, width]`` with planted class structure: model-independent
    class centres in a hidden 8-d space, read out by a model-specific random matrix."""
    shared = np.random.default_rng(123)
    y = np.repeat(np.array(classes), n_per)
    centres = shared.normal(size=(len(classes), layers, 8)) * 2.0
    z = shared.normal(size=(len(y), layers, 8)) + centres[[classes.index(c) for c in y]]
    rng = np.random.default_rng(seed)
    readout = rng.normal(size=(layers, 8, width))
    x = np.einsum("nlh,lhw->nlw", z, readout) + 0.3 * rng.normal(size=(len(y), layers, width))
    ids = [f"{c}-{i:02d}" for c in classes for i in range(n_per)]
    return x.astype(np.float32), ids, [str(c) for c in y]


def write_folder(path: Path, x, ids, labels, *, shard_order=None, n_shards=2, name=None):
    """An activation folder per docs/FORMAT.md: shards (``rows`` + ``resid/mean``), then
    ``manifest.json`` with the required keys and the provenance ones."""
    path.mkdir(parents=True)
    n, n_layers, width = x.shape
    order = np.arange(n) if shard_order is None else np.asarray(shard_order)
    shards = []
    for k, rows in enumerate(np.array_split(order, n_shards)):
        file = f"shard-{k:05d}.safetensors"
        save_file(
            {"rows": rows.astype(np.int64), "resid/mean": np.ascontiguousarray(x[rows])},
            str(path / file),
        )
        shards.append({"file": file, "n_rows": len(rows)})
    manifest = {
        "format": "emocircuits.activations",
        "version": 1,
        "n_rows": n,
        "ids": list(ids),
        "labels": list(labels),
        "sites": ["resid"],
        "positions": ["mean"],
        "layers": {"resid": list(range(n_layers))},
        "n_layers": n_layers - 1,
        "width": width,
        "model": {"name": name or f"synthetic-{path.name}", "source": "synthetic"},
        "dtype": "float32",
        "dataset": {"source": "planted", "n_rows": n},
        "shards": shards,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """a (width 16), b (width 16), c (width 24): the same 48 stimuli."""
    root = tmp_path_factory.mktemp("cmpcli")
    return {
        "a": write_folder(root / "a", *planted(16, seed=1)),
        "b": write_folder(root / "b", *planted(16, seed=2)),
        "c": write_folder(root / "c", *planted(24, seed=3)),
        "root": root,
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ help


def test_help_mentions_the_nulls_and_the_pilot_spelling(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "usage:" in text
    assert "null" in text and "permutation null" in text
    for flag in ("--activations", "--out", "--n-perm", "--n-perm-heavy", "--match"):
        assert flag in text, flag
    for pilot in ("--vectors_dir", "--models", "--output_dir", "--output_table"):
        assert pilot in text, pilot


# ------------------------------------------------------------------------------ bad input


def _relabelled(root: Path) -> Path:
    x, ids, labels = planted(16, seed=2)
    labels = list(labels)
    labels[ids.index("anger-03")] = "gratitude"
    return write_folder(root / "relabelled", x, ids, labels)


def _other_ids(root: Path) -> Path:
    x, ids, labels = planted(16, seed=2)
    ids = list(ids)
    ids[5] = "someone-else"
    return write_folder(root / "other-ids", x, ids, labels)


def _not_a_folder(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


EXPECTED = {
    "other_ids": r"other-ids: not the same stimuli as .*/a: 1 of its ids missing",
    "relabelled": r"relabelled: row 'anger-03' is labelled 'gratitude' here but 'anger'",
    "single": r"compare needs --activations with at least two folders",
    "site": r"site 'mlp' was not captured here \(sites: resid\)",
    "names": r"--names has 3 names for 2 folders",
    "not_a_folder": r"empty is not an activation folder \(no manifest.json\)",
    "position": r"position 'last' was not captured here",
    "baseline": r"baseline label 'calm' not in the labels",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_input_gets_one_line_and_writes_nothing(capsys, folders, tmp_path, case):
    a, b = folders["a"], folders["b"]
    argv = {
        "other_ids": lambda: ["--activations", a, _other_ids(tmp_path)],
        "relabelled": lambda: ["--activations", a, _relabelled(tmp_path)],
        "single": lambda: ["--activations", a],
        "site": lambda: ["--activations", a, b, "--site", "mlp"],
        "names": lambda: ["--activations", a, b, "--names", "x", "y", "z"],
        "not_a_folder": lambda: ["--activations", a, _not_a_folder(tmp_path)],
        "position": lambda: ["--activations", a, b, "--position", "last"],
        "baseline": lambda: ["--activations", a, b, "--baseline", "calm"],
    }[case]()
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "compare", *argv, "--out", out, *FAST)
    assert code == 2, (stdout, err)
    line = one_error_line(err)
    assert re.search(EXPECTED[case], line), line
    if case in ("other_ids", "relabelled"):  # the message names the offending folder
        bad = argv[2]
        assert line.startswith(f"emocircuits: error: {bad}: "), line
    assert not out.exists()


def test_missing_out_is_one_line(capsys, folders):
    code, _, err = run(capsys, "compare", "--activations", folders["a"], folders["b"], *FAST)
    assert code == 2 and "needs --out" in one_error_line(err)


# --------------------------------------------------------------------- rows matched by id


def test_rows_are_matched_by_id_not_by_position(capsys, folders, tmp_path):
    x, ids, labels = planted(16, seed=2)
    n = len(ids)
    rng = np.random.default_rng(7)
    # the same folder, its shard rows in another order (manifest unchanged)
    shuffled = write_folder(
        tmp_path / "b-shards", x, ids, labels, shard_order=rng.permutation(n), n_shards=3
    )
    # the same stimuli listed in another dataset order in the manifest
    order = rng.permutation(n)
    reordered = write_folder(
        tmp_path / "b-manifest",
        x[order],
        [ids[i] for i in order],
        [labels[i] for i in order],
        shard_order=rng.permutation(n),
    )
    assert [ids[i] for i in order] != ids  # really another order
    tables = {}
    for tag, other in (("plain", folders["b"]), ("shards", shuffled), ("manifest", reordered)):
        out = tmp_path / f"out-{tag}"
        argv = ["--activations", folders["a"], other, "--names", "A", "B", "--out", out]
        code, _, err = run(capsys, "compare", *argv, *FAST, "--no-plots")
        assert code == 0, err
        tables[tag] = {p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))}
        summary = json.loads((out / "summary.json").read_text())
        tables[tag]["pairs"] = json.dumps(summary["pairs"])
    assert sorted(tables["plain"]) == [
        "directions.csv",
        "layer_pairs.csv",
        "maps.csv",
        "naive.csv",
        "pairs",
    ]
    assert tables["shards"] == tables["plain"]
    assert tables["manifest"] == tables["plain"]
    # and the comparison found the planted shared structure (so equality is not trivial)
    rows = read_csv(tmp_path / "out-plain" / "layer_pairs.csv")
    diag = [float(r["cka"]) for r in rows if r["layer_a"] == r["layer_b"]]
    assert min(diag) > 0.5, diag


# ---------------------------------------------------------------------- the pilot spelling


def test_pilot_spelling_writes_the_naive_table_with_its_null(capsys, folders, tmp_path):
    vdir = tmp_path / "vectors"
    for m, key in (("m1", "a"), ("m2", "b"), ("wide", "c")):
        code, _, err = run(
            capsys, "vectors", "--activations", folders[key], "--output", vdir / f"{m}_vectors.pkl"
        )
        assert code == 0 and "never pickle" in err, err
    assert sorted(p.name for p in vdir.iterdir()) == [
        "m1_vectors.json",
        "m1_vectors.safetensors",
        "m2_vectors.json",
        "m2_vectors.safetensors",
        "wide_vectors.json",
        "wide_vectors.safetensors",
    ]
    figs, table = tmp_path / "figs", tmp_path / "tables" / "T.csv"
    argv = ["--vectors_dir", vdir, "--models", "m1", "m2", "--output_dir", figs]
    code, out, err = run(capsys, "compare", *argv, "--output_table", table)
    assert code == 0, err
    rows = read_csv(table)
    assert len(rows) == 3  # one per emotion (anger, gratitude, apology)
    cols = list(rows[0])
    assert cols[:7] == ["emotion", "model_a", "model_b", "mean", "std", "min", "max"]
    for stat in ("mean", "std", "min", "max"):
        assert {f"random_{stat}_lo", f"random_{stat}_hi"} <= set(cols)
    assert "p_random" in cols
    assert {r["emotion"] for r in rows} == {"anger", "gratitude", "apology"}
    for r in rows:
        assert (r["model_a"], r["model_b"]) == ("m1", "m2")
        assert all(r[c] != "" for c in cols), r
        assert -1 <= float(r["min"]) <= float(r["mean"]) <= float(r["max"]) <= 1
        assert float(r["random_mean_lo"]) < 0 < float(r["random_mean_hi"])
        assert 0 <= float(r["p_random"]) <= 1
    assert "random-vector" in out and "coordinate i" in out
    pngs = sorted(p.stem for p in figs.glob("*.png"))
    assert pngs == ["naive-anger", "naive-apology", "naive-gratitude"]
    assert sorted(p.stem for p in figs.glob("*.svg")) == pngs
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))

    # no pair of equal width: nothing to tabulate, one line, nothing written
    table2 = tmp_path / "T2.csv"
    argv = ["--vectors_dir", vdir, "--models", "m1", "wide", "--output_table", table2]
    code, _, err = run(capsys, "compare", *argv)
    assert code == 2 and "no pair of models has the same width" in one_error_line(err)
    assert not table2.exists()
    code, _, err = run(capsys, "compare", "--vectors_dir", vdir, "--models", "m1", "nope")
    assert code == 2 and "nope_vectors.safetensors" in one_error_line(err)


# ------------------------------------------------------------------------------- outputs


def test_outputs_provenance_figures_and_odd_names(capsys, folders, tmp_path):
    # a label and a model name that an HTML/SVG writer must escape
    classes = ("<script>", "gratitude", "a&b", "neutral")
    xa, ids, labels = planted(16, seed=1, classes=classes)
    xc, _, _ = planted(24, seed=3, classes=classes)
    a = write_folder(tmp_path / "odd-a", xa, ids, labels, name="model <b>A</b>")
    c = write_folder(tmp_path / "odd-c", xc, ids, labels, name="model C")
    out = tmp_path / "cmp"
    argv = ["--activations", a, c, "--names", "<script>alert(1)</script>", "c/wide", "--out", out]
    code, stdout, err = run(capsys, "compare", *argv, *FAST, "--seed", "3", "--match", "depth")
    assert code == 0, err
    assert "<script>alert(1)</script> vs c/wide" in stdout
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert s["format"] == "emocircuits.compare"
    assert [m["name"] for m in s["models"]] == ["<script>alert(1)</script>", "c/wide"]
    assert [m["activations"] for m in s["models"]] == [str(a), str(c)]
    assert [m["model"]["name"] for m in s["models"]] == ["model <b>A</b>", "model C"]
    assert [m["width"] for m in s["models"]] == [16, 24]
    assert [m["layers"] for m in s["models"]] == [[0, 1, 2, 3]] * 2
    assert s["models"][0]["dataset"]["source"] == "planted"
    st = s["settings"]
    assert (st["seed"], st["n_perm"], st["n_perm_heavy"], st["k"]) == (3, 60, 20, 5)
    assert (st["method"], st["position"], st["site"], st["match"]) == (
        "one_vs_rest",
        "mean",
        "resid",
        "depth",
    )
    assert (st["n_rows"], st["n_fit"] + st["n_held"]) == (48, 48)
    assert st["per_label"] == {c: 12 for c in classes}
    (pair,) = s["pairs"]
    assert pair["widths"] == [16, 24]
    assert pair["matched_layers"] == {"0": 0, "1": 1, "2": 2, "3": 3}  # same relative depth
    assert not (out / "naive.csv").exists()  # widths differ: no naive table
    emotions = {r["emotion"] for r in read_csv(out / "directions.csv")}
    assert emotions == {"<script>", "gratitude", "a&b"}
    figs = sorted((out / "figures").iterdir())
    pngs = {p.stem for p in figs if p.suffix == ".png"}
    assert pngs and pngs == {p.stem for p in figs if p.suffix == ".svg"}
    assert any(stem.endswith("-cka") for stem in pngs)
    assert all(p.stat().st_size > 0 for p in figs)
    for p in figs:  # file names are safe: no markup, no path separators
        assert "<" not in p.name and ">" not in p.name and p.parent == out / "figures"
    for p in figs:
        if p.suffix == ".svg":
            assert "<script>" not in p.read_text(encoding="utf-8"), p.name

    out2 = tmp_path / "cmp-noplots"
    code, _, err = run(capsys, "compare", "--activations", a, c, "--out", out2, *FAST, "--no-plots")
    assert code == 0, err
    assert not (out2 / "figures").exists()
    assert {p.name for p in out2.iterdir()} == {
        "layer_pairs.csv",
        "maps.csv",
        "directions.csv",
        "summary.json",
    }
    s2 = json.loads((out2 / "summary.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in s2["models"]] == ["odd-a", "odd-c"]  # folder names by default

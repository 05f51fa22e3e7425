"""`emocircuits compare` from the command line, on small activation folders written here with
plain numpy/safetensors/json as docs/FORMAT.md describes (no model is run): its help, one
error line and nothing written for every bad input, rows matched by id whatever the order
of the shards or of the manifest, the pilot's `--vectors_dir` spelling for its naive table
(no pickle anywhere), and the provenance and figures of what it writes."""

from __future__ import annotations

import csv
import dataclasses
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


# ------------------------------------------------------------------------ the Python API


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path; ``summary.json`` without its timings
    (``seconds``: wall-clock per stage, the only field that differs between two runs)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "summary.json":
                s = json.loads(data)
                s.pop("seconds")
                data = json.dumps(s).encode()
            out[str(p.relative_to(folder))] = data
    return out


@pytest.fixture(scope="module")
def tiny_runs(tiny, tmp_path_factory):
    """The baseline preset captured by two tiny random models of different widths."""
    import emocircuits as ec

    root = tmp_path_factory.mktemp("cmp-tiny")
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean", "last"))
    data = ec.load_dataset("baseline")
    return {
        name: ec.extract(tiny(name), data, root / name, spec, progress=False)
        for name in ("llama", "gpt2")
    } | {"root": root}


API_FAST = {"n_perm": 60, "n_perm_heavy": 20, "k": 5}


def test_api_result_saves_what_the_command_writes(capsys, tiny_runs, tmp_path):
    from emocircuits.compare import ComparisonResult, compare_models

    a, b = tiny_runs["llama"], tiny_runs["gpt2"]
    argv = ["--activations", a.path, b.path, "--out", tmp_path / "cli", "--match", "depth"]
    code, stdout, err = run(capsys, "compare", *argv, *FAST, "--position", "last")
    assert code == 0, err
    res = compare_models([a, b], match="depth", position="last", progress=False, **API_FAST)
    assert res.save(tmp_path / "api") == tmp_path / "api"
    cli, api = files(tmp_path / "cli"), files(tmp_path / "api")
    assert any(k.startswith("figures/") and k.endswith(".svg") for k in cli)
    assert sorted(api) == sorted(cli)
    for name in cli:
        assert api[name] == cli[name], name
    # folders instead of stores: the same result
    again = compare_models([a.path, str(b.path)], match="depth", position="last",
                           progress=False, **API_FAST)  # fmt: skip
    assert again.tables == res.tables

    # load: the very values back; saving the loaded result writes the same bytes
    loaded = ComparisonResult.load(tmp_path / "api")
    assert loaded.tables == res.tables and loaded.summary == res.summary
    loaded.save(tmp_path / "again", plots=False)
    for name in ("layer_pairs.csv", "maps.csv", "directions.csv", "summary.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "api" / name).read_bytes()
    assert not (tmp_path / "again" / "figures").exists()

    # the headline table is what the command prints
    rows = res.rows()
    assert [r["measure"] for r in rows] == list(res.summary["pairs"][0]["measures"])
    assert set(rows[0]) == {"pair", "measure", "value", "null_lo", "null_hi", "p", "beyond_chance"}
    for r in rows:
        verdict = "yes" if r["beyond_chance"] else "no"
        assert f"{r['measure']:26s} {r['value']:.3f}" in stdout
        assert re.search(rf"{r['measure']} .* -> {verdict}\n", stdout), r["measure"]
    text = repr(res)
    assert text.startswith("<ComparisonResult: llama vs gpt2: ") and "procrustes_cos" in text
    page = res._repr_html_()
    assert "<table" in page and "<img" in page and "ridge_decoding" in page
    assert repr(loaded) == text


class InMemory:
    """A store without a folder behind it (as ``extract`` without ``out`` returns):
    ``path`` is None, the rest is the folder's."""

    def __init__(self, store):
        self._store, self.path = store, None

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_api_takes_stores_held_in_memory(folders):
    from emocircuits.capture import load_activations
    from emocircuits.compare import compare_models
    from emocircuits.errors import DataError

    a, c = load_activations(folders["a"]), load_activations(folders["c"])
    kw = {"progress": False, "n_perm": 30, "n_perm_heavy": 10, "k": 5}
    on_disk = compare_models([a, c], ["A", "C"], **kw)
    in_memory = compare_models([InMemory(a), InMemory(c)], ["A", "C"], **kw)
    assert in_memory.tables == on_disk.tables
    assert [m["activations"] for m in in_memory.summary["models"]] == [None, None]
    assert in_memory.summary["models"][1]["width"] == 24
    # without names: the models' names
    named = compare_models([InMemory(a), InMemory(c)], **kw)
    assert [m["name"] for m in named.summary["models"]] == ["synthetic-a", "synthetic-c"]
    bad = InMemory(a)
    bad.labels = ["gratitude", *a.labels[1:]]  # one row labelled otherwise
    with pytest.raises(DataError, match=r"^activations of synthetic-a: row 'anger-00'"):
        compare_models([InMemory(a), bad], **kw)


def test_api_rejects_bad_input_before_reading_activations(folders):
    from emocircuits.compare import compare_models
    from emocircuits.errors import DataError

    a, b = folders["a"], folders["b"]
    nowhere = [folders["root"] / "nope-1", folders["root"] / "nope-2"]
    for kw, message in (
        ({"maps": ("bogus",)}, "unknown map 'bogus'"),
        ({"match": "width"}, "unknown layer matching 'width'"),
        ({"names": ["x"]}, "1 names for 2 activation stores"),
    ):
        with pytest.raises(DataError, match=message):
            compare_models(nowhere, **kw)
    with pytest.raises(DataError, match="at least two"):
        compare_models([a])
    with pytest.raises(DataError, match="baseline label 'calm'"):
        compare_models([a, b], baseline="calm", progress=False)


def test_command_defaults_are_the_library_defaults():
    from emocircuits.cli import build_parser
    from emocircuits.commands._common import lib_default
    from emocircuits.compare import compare_models, map_vectors

    args = build_parser().parse_args(["compare"])
    for key in ("site", "position", "method", "baseline", "k", "dim", "n_perm",
                "n_perm_heavy", "match", "maps", "seed"):  # fmt: skip
        assert getattr(args, key) == lib_default(compare_models, key), key
    args = build_parser().parse_args(["map-vectors", "--source", "a", "--target", "b",
                                      "--vectors", "v", "--out", "o"])  # fmt: skip
    assert args.method == lib_default(map_vectors, "method") == "ridge"


def test_api_pilot_result_saves_what_the_command_writes(capsys, folders, tmp_path):
    from emocircuits.capture import load_activations
    from emocircuits.compare import NaiveComparison, compare_pilot_vectors
    from emocircuits.errors import DataError
    from emocircuits.geometry import EmotionVectors, compute_vectors

    vdir = tmp_path / "vectors"
    vecs = {}
    for m, key in (("m1", "a"), ("m2", "b"), ("wide", "c")):
        vecs[m] = compute_vectors(load_activations(folders[key]))
        vecs[m].save(vdir / f"{m}_vectors.safetensors")
    argv = ["--vectors_dir", vdir, "--models", "m1", "m2", "wide", "--out", tmp_path / "cli"]
    code, _, err = run(capsys, "compare", *argv)
    assert code == 0, err
    loaded_vecs = {m: EmotionVectors.load(vdir / f"{m}_vectors.safetensors") for m in vecs}
    res = compare_pilot_vectors(loaded_vecs)
    assert res.save(tmp_path / "api") == tmp_path / "api" / "cross_model_similarity.csv"
    cli, api = files(tmp_path / "cli"), files(tmp_path / "api")
    assert sorted(cli) == sorted(api) and len(cli) == 1 + 2 * 3  # table, 3 emotions x png/svg
    for name in cli:
        assert api[name] == cli[name], name
    table = res.save(tmp_path / "x", table=tmp_path / "t" / "T.csv", plots=False)
    assert table == tmp_path / "t" / "T.csv" and not (tmp_path / "x").exists()

    loaded = NaiveComparison.load(tmp_path / "api")
    assert loaded.rows() == res.rows() == NaiveComparison.load(table).rows()
    assert loaded.figure() is None and res.figure() is not None
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "cross_model_similarity.csv").read_bytes() == cli[
        "cross_model_similarity.csv"
    ]
    assert repr(res).startswith("<NaiveComparison: 3 rows") and "m1" in repr(res)
    assert "<table" in res._repr_html_() and "<img" in res._repr_html_()
    with pytest.raises(DataError, match="no pair of models has the same width"):
        compare_pilot_vectors({m: loaded_vecs[m] for m in ("m1", "wide")})
    with pytest.raises(DataError, match="at least two"):
        compare_pilot_vectors({"m1": loaded_vecs["m1"]})


@pytest.mark.parametrize("method", ["ridge", "procrustes"])
def test_api_map_vectors_saves_what_the_command_writes(capsys, tiny_runs, tmp_path, method):
    from emocircuits.compare import map_vectors
    from emocircuits.geometry import EmotionVectors, compute_vectors

    a, b = tiny_runs["llama"], tiny_runs["gpt2"]
    vfile = compute_vectors(a, method="one_vs_rest").save(tmp_path / "v.safetensors")
    argv = ["--source", a.path, "--target", b.path, "--vectors", vfile, "--method", method]
    code, stdout, err = run(capsys, "map-vectors", *argv, "--out", tmp_path / "cli.safetensors")
    assert code == 0, err
    assert f"into the {len(b.layers('resid'))} layers of {b.path}" in stdout
    got = map_vectors(str(a.path), str(b.path), str(vfile), method=method)
    got.save(tmp_path / "api.safetensors")
    for ext in (".safetensors", ".json"):
        cli = (tmp_path / f"cli{ext}").read_bytes()
        assert (tmp_path / f"api{ext}").read_bytes() == cli, ext
    back = EmotionVectors.load(tmp_path / "api.safetensors")
    assert back.meta() == got.meta() and back.method == "mapped:one_vs_rest"
    for e in got.emotions:
        np.testing.assert_array_equal(back.directions[e], got.directions[e])
        assert back.directions[e].shape == (
            len(b.layers("resid")),
            b.get("resid", "mean").shape[-1],
        )
    # stores and an EmotionVectors object in: the same directions, no file to name
    same = map_vectors(a, b, EmotionVectors.load(vfile), method=method)
    assert same.provenance["mapped_from"] is None
    assert same.provenance["source_activations"] == str(a.path)
    for e in got.emotions:
        np.testing.assert_array_equal(same.directions[e], got.directions[e])


def test_api_map_vectors_rejects_bad_input(tiny_runs, tmp_path):
    from emocircuits.compare import map_vectors
    from emocircuits.errors import DataError
    from emocircuits.geometry import compute_vectors

    a, b = tiny_runs["llama"], tiny_runs["gpt2"]
    vecs = compute_vectors(a)
    with pytest.raises(DataError, match="unknown map 'pca'"):
        map_vectors("nope", "nope", "nope", method="pca")
    narrow = dataclasses.replace(
        vecs, directions={e: d[:, :-1] for e, d in vecs.directions.items()}
    )
    with pytest.raises(DataError, match="is not from the model of"):
        map_vectors(a, b, narrow)  # another width: not the source model's directions
    few = dataclasses.replace(vecs, layers=[-5])
    with pytest.raises(DataError, match="no layer of the vectors matches a layer of"):
        map_vectors(a, b, few)

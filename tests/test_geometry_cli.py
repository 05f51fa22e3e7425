"""The within-model analysis through the command line, on a tiny real model: `geometry`
writes every table, summary and figure; `probe` trains on one folder and tests on another;
`plot` redraws from saved outputs (and takes the pilot's flags); bad input gets one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.tables import read_table

from helpers import one_error_line, run


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory):
    """baseline and natural captured by one tiny model, natural by another one."""
    root = tmp_path_factory.mktemp("geo")
    spec = ec.CaptureSpec(positions=("mean", "last"))
    lm = tiny("llama")
    base = ec.extract(lm, ec.load_dataset("baseline"), root / "base", spec, progress=False)
    nat = ec.extract(lm, ec.load_dataset("natural"), root / "nat", spec, progress=False)
    other = ec.extract(tiny("gpt2"), ec.load_dataset("natural"), root / "o", spec, progress=False)
    return root, base, nat, other


def test_geometry_writes_every_table_summary_and_figure(folders, capsys):
    root, base, nat, _ = folders
    out = root / "geo-out"
    code, stdout, _ = run(
        capsys, "geometry", "--activations", base.path, "--compare", nat.path, "--out", out,
        "--n-boot", 100, "--n-perm", 20, "--n-splits", 20,
    )  # fmt: skip
    assert code == 0 and "wrote" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["main_position"] == "mean" and summary["sites"] == ["resid", "attn", "mlp"]
    assert summary["model"]["model_type"] == "llama" and summary["dataset"]["sha256"]
    n_layers = len(base.layers("resid"))
    sim = read_table(out, "similarity")
    # 3 sites x 2 rules x 3 methods x 3 emotion pairs x layers (resid has one more)
    per_site = {s: len(base.layers(s)) for s in ("resid", "attn", "mlp")}
    assert len(sim) == sum(2 * 3 * 3 * n for n in per_site.values())
    assert {r["method"] for r in sim} == {"mean_diff", "one_vs_rest", "raw_mean"}
    defined = [r for r in sim if not np.isnan(r["cosine"])]  # NaN: below the noise
    assert len(defined) > len(sim) // 2
    assert all(r["ci_low"] <= r["ci_high"] for r in defined)
    stab = read_table(out, "stability")
    assert {r["measure"] for r in stab} == {
        "norm", "bootstrap_self_cos", "split_half_cos", "full_sample_cos_est",
    }  # fmt: skip
    shared = read_table(out, "shared")
    assert {r["measure"] for r in shared} == {"cos_with_global_mean", "raw_cos", "centred_cos"}
    agree = read_table(out, "agreement")
    compared = {r["compared"] for r in agree}
    assert {"method:one_vs_rest", "method:pca", "method:probe", "position:last"} <= compared
    assert any(c.startswith("data:") for c in compared)
    sub = read_table(out, "subspaces")
    layers = [r for r in sub if r["compared"] == "layers" and r["site"] == "resid"]
    assert len(layers) == n_layers**2
    for r in layers:
        assert 0 <= r["overlap"] <= 1 + 1e-6 and 0 < r["p_value"] <= 1
        assert r["analytic_null"] == pytest.approx(3 / base.manifest["width"], rel=1e-4)
        if r["layer_a"] == r["layer_b"]:
            assert r["overlap"] == pytest.approx(1.0, abs=1e-4)
    probes = json.loads((out / "probes_cv.json").read_text())
    assert set(probes["sites"]["resid"]) == {"logreg", "ncm"}
    assert len(probes["sites"]["resid"]["logreg"]) == n_layers
    acc, ci = probes["sites"]["resid"]["ncm"], probes["ci"]["resid"]["ncm"]
    assert all(lo <= a <= hi for lo, a, hi in zip(ci["low"], acc, ci["high"], strict=True))
    assert len(probes["p_value"]["resid"]["logreg"]) == n_layers
    figures = sorted(p.name for p in (out / "figures").iterdir())
    for stem in ("norms-resid-mean", "stability-resid-mean", "distances-resid-mean",
                 "similarity-raw_mean-resid-mean", "shared-component-resid-mean",
                 "subspace-layers-resid", "probes-cv-resid"):  # fmt: skip
        assert f"{stem}.png" in figures and f"{stem}.svg" in figures, figures
    assert any(f.startswith("projection-resid-mean-layer") for f in figures), figures


def test_probe_transfer_json_and_plot(folders, capsys, tmp_path):
    _, base, nat, _ = folders
    out = tmp_path / "probe.json"
    code, stdout, _ = run(
        capsys, "probe", "--train", base.path, "--test", nat.path, "--out", out, "--quiet"
    )
    assert code == 0 and "logreg: best layer" in stdout and "lexical baseline" in stdout
    pj = json.loads(out.read_text())
    assert pj["format"] == "emocircuits.probe" and pj["mode"] == "transfer"
    assert pj["chance"] == 0.25 and pj["n_test"] == 160 and pj["position"] == "mean"
    n_layers = len(base.layers("resid"))
    for m in ("logreg", "ncm"):
        r = pj["methods"][m]
        assert len(r["accuracy"]) == len(r["ci_low"]) == len(r["p_value"]) == n_layers
        acc = np.array(r["accuracy"])
        assert r["best_accuracy"] == acc.max() and r["layer0_accuracy"] == acc[0]
        assert np.all(np.array(r["ci_low"]) <= acc) and np.all(acc <= np.array(r["ci_high"]))
        assert np.array(r["confusion_at_selected"]).sum() == 160
        assert pj["lexical_baseline"][m] == acc[0]  # mean rule: layer 0 is the baseline
    assert pj["provenance"]["test"]["dataset"]["source"] == "natural"
    code, stdout, _ = run(capsys, "plot", out, "--out", tmp_path / "fig")
    assert code == 0 and (tmp_path / "fig" / "probe.png").is_file()
    assert "chance" in (tmp_path / "fig" / "probe.svg").read_text()
    code, _, _ = run(
        capsys, "probe", "--train", base.path, "--test", nat.path, "--out", tmp_path / "raw.json",
        "--no-standardize", "--methods", "ncm", "--quiet",
    )  # fmt: skip
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert code == 0 and raw["settings"]["standardize"] is False and set(raw["methods"]) == {"ncm"}
    # k-fold mode without --test
    code, _, _ = run(capsys, "probe", "--train", base.path, "--out", tmp_path / "cv.json")
    assert code == 0 and json.loads((tmp_path / "cv.json").read_text())["mode"] == (
        "cross_validation"
    )


def test_plot_with_the_pilots_flags_and_a_projection(folders, capsys, tmp_path):
    _, base, _, _ = folders
    code, _, _ = run(
        capsys, "vectors", "--activations_dir", base.path, "--output", tmp_path / "m_vectors.pkl"
    )
    assert code == 0
    code, _, _ = run(
        capsys, "plot", "--vectors_file", tmp_path / "m_vectors.pkl", "--output_dir",
        tmp_path / "plots", "--activations", base.path, "--layer", 1,
    )  # fmt: skip
    assert code == 0
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    for stem in ("m_vectors-norms", "m_vectors-distances", "m_vectors-similarity",
                 "projection-resid-mean-layer1"):  # fmt: skip
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert not list(tmp_path.glob("*.pkl"))


def test_bad_input_gets_one_line(folders, capsys, tmp_path):
    _, base, nat, other = folders
    cases = [
        (("probe", "--train", base.path, "--test", other.path, "--out", tmp_path / "x.json"),
         "another model"),
        (("probe", "--train", base.path, "--test", nat.path, "--position", "emotion_word",
          "--out", tmp_path / "x.json"), "position 'emotion_word' was not captured"),
        (("probe", "--train", base.path, "--out", tmp_path / "x.json", "--methods", "svm"),
         "unknown probe 'svm'"),
        (("geometry", "--activations", base.path, "--out", tmp_path / "g", "--sites", "heads"),
         "site 'heads' was not captured"),
        (("geometry", "--activations", base.path, "--out", tmp_path / "g", "--baseline", "calm"),
         "baseline label 'calm'"),
        (("geometry", "--activations", base.path, "--compare", other.path, "--out",
          tmp_path / "g"), "another model"),
        (("geometry", "--activations", base.path, "--out", tmp_path / "g", "--folds", "60"),
         "has 50 training rows; a probe needs at least 60"),
        (("plot", base.path), "not a geometry folder"),
        (("plot", tmp_path / "missing"), "no such file or folder"),
        (("plot", tmp_path / "v.safetensors", "--activations", base.path, "--layer", "99"),
         "layer 99 out of range"),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in one_error_line(err), (argv, err)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "g").exists()
    assert not (tmp_path / "v-plots").exists()  # nothing drawn before the bad layer was seen


def test_geometry_with_per_emotion_subspaces(folders, capsys):
    root, base, _, _ = folders
    out = root / "geo-within"
    code, _, _ = run(
        capsys, "geometry", "--activations", base.path, "--out", out, "--sites", "resid",
        "--subspace", "within", "--k", 2, "--n-boot", 50, "--n-perm", 10, "--n-splits", 10,
        "--no-plots",
    )  # fmt: skip
    assert code == 0
    sub = read_table(out, "subspaces")
    assert {r["subspace"] for r in sub} == {"gratitude", "anger", "apology"}
    assert {r["k"] for r in sub} == {2} and {r["kind"] for r in sub} == {"within"}
    assert all(r["analytic_null"] == pytest.approx(2 / base.manifest["width"]) for r in sub)
    assert json.loads((out / "summary.json").read_text())["subspace"]["kind"] == "within"
    assert not (out / "figures").exists()


def test_probe_takes_datasets_and_a_model(folders, tiny_dir, capsys, tmp_path):
    """`probe --train PRESET --test FILE --model M` captures both in memory: the same
    numbers as probing the folders `extract` writes."""
    _, base, nat, _ = folders
    model = tiny_dir("llama")
    nat_file = tmp_path / "nat.jsonl"
    nat_file.write_text(ec.load_dataset("natural").to_jsonl())
    out = tmp_path / "p.json"
    code, stdout, _ = run(
        capsys, "probe", "--train", "baseline", "--test", nat_file, "--model", model,
        "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 0 and "logreg: best layer" in stdout
    got = json.loads(out.read_text())
    want = ec.probe(base, nat).to_json()
    assert got["methods"]["logreg"]["accuracy"] == pytest.approx(
        want["methods"]["logreg"]["accuracy"], abs=1e-6
    )
    assert got["lexical_baseline"]["logreg"] == want["lexical_baseline"]["logreg"]
    assert got["provenance"]["train"]["dataset"]["source"] == "baseline"
    assert got["provenance"]["train"]["dataset"]["version"] == "1"
    # a folder and a dataset mix; without --out nothing is written
    code, stdout, _ = run(capsys, "probe", "--train", base.path, "--test", "natural",
                          "--model", model, "--quiet")  # fmt: skip
    assert code == 0 and "wrote" not in stdout


def test_probe_dataset_errors_are_one_line(folders, tiny_dir, capsys, tmp_path):
    _, base, nat, _ = folders
    cases = [
        (("probe", "--train", "nosuch", "--model", tiny_dir("llama")),
         "--train nosuch: not an activation folder, and no such file or preset 'nosuch'"),
        (("probe", "--train", base.path, "--test", nat.path, "--model", "x"),
         "--model is used only for --train/--test datasets"),
        (("probe", "--train", "baseline", "--test", nat.path, "--model", tiny_dir("gpt2")),
         "another model"),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, err = run(capsys, *argv, "--quiet")
        assert code == 2 and message in one_error_line(err), (argv, err)

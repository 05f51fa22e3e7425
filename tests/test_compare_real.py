"""The cross-model comparison (RQ2) on real activations: the `baseline` preset (200 prompts,
4 labels), resid/mean, from SmolLM2-135M (31 resid layers x 576), Gemma 3 270M (19 x 640)
and a random GPT-2 (13 x 768) built here.

- identity, as an outside checker would do it: a rotated and rescaled copy of a folder
  written with plain numpy/safetensors/json (docs/FORMAT.md) compared with the original by
  the CLI gives CKA 1 on the diagonal, mapped directions at cosine 1, identification 100%,
  while the pilot's naive cosine is near 0; every statistic carries its null;
- invariance: every table but the naive one is unchanged (to float32 storage of the
  rotated copy and 6 significant digits; counts to one count) when either model's
  activations are rotated and scaled; the naive table is not;
- SmolLM2 vs Gemma 3: measured similarity far beyond its nulls; three models of different
  widths and depths at once.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from safetensors.numpy import load_file, save_file

import emocircuits as ec
from emocircuits.cli import main
from emocircuits.compare import compare_models, naive_table
from emocircuits.geometry.directions import emotion_directions

from conftest import V, _train_tokenizer

pytestmark = pytest.mark.real
SPEC = ec.CaptureSpec(sites=("resid",), positions=("mean",), batch_size=32)
FAST = {"n_perm": 100, "n_perm_heavy": 30, "progress": False}
SCALE = 3.7


def rotated_copy(src: Path, dst: Path, factor: float, seed: int) -> Path:
    """A copy of an activation folder with every resid/attn/mlp tensor multiplied by
    ``factor`` times a random orthogonal matrix (QR of a Gaussian), written with plain
    numpy, safetensors and json only, as in docs/FORMAT.md."""
    dst.mkdir(parents=True)
    m = json.loads((src / "manifest.json").read_text())
    g = np.random.default_rng(seed).normal(size=(m["width"], m["width"]))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))  # uniformly random (Haar)
    for shard in m["shards"]:
        t = load_file(str(src / shard["file"]))
        out = {
            k: (factor * v.astype(np.float64) @ q).astype(np.float32)
            if k.split("/")[0] in ("resid", "attn", "mlp")
            else v
            for k, v in t.items()
        }
        save_file(out, str(dst / shard["file"]))
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(smollm2, gemma3, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-real")
    data = ec.load_dataset("baseline")
    smol = ec.extract(smollm2, data, root / "smollm2", SPEC, progress=False)
    gem = ec.extract(gemma3, data, root / "gemma3", SPEC, progress=False)
    return {"root": root, "smollm2": smol, "gemma3": gem}


@pytest.fixture(scope="module")
def identity(runs):
    """The CLI on smollm2 and a rotated (x 3.7) copy of it written without emocircuits."""
    root = runs["root"]
    copy = rotated_copy(root / "smollm2", root / "smollm2-rotated", SCALE, seed=1)
    out = root / "identity"
    argv = ["compare", "--activations", root / "smollm2", copy, "--out", out, "--quiet"]
    code = main([str(a) for a in [*argv, "--n-perm", "200", "--n-perm-heavy", "50"]])
    assert code == 0
    return copy, out


@pytest.fixture(scope="module")
def base(runs):
    """smollm2 vs gemma3 through the Python API (the reference for the invariance tests)."""
    return compare_models([runs["smollm2"], runs["gemma3"]], ["smollm2", "gemma3"], **FAST)


# --------------------------------------------------------------------------------- identity


def is_null_column(name: str) -> bool:
    return "null" in name or name.endswith("_p") or name.startswith("random_") or name == "p_random"


def test_identity_with_a_rotated_rescaled_copy_written_without_emocircuits(identity):
    copy, out = identity
    n_layers, emotions = 31, {"anger", "gratitude", "apology"}
    tables = {t: read_csv(out / f"{t}.csv") for t in ("layer_pairs", "maps", "directions")}
    tables["naive"] = read_csv(out / "naive.csv")
    pairs, maps, dirs, naive = (tables[t] for t in ("layer_pairs", "maps", "directions", "naive"))

    # CKA 1 on the diagonal, and every layer matched with itself
    assert len(pairs) == n_layers**2
    diag = [float(r["cka"]) for r in pairs if r["layer_a"] == r["layer_b"]]
    assert len(diag) == n_layers and max(abs(c - 1) for c in diag) <= 1e-4, diag
    matched = [(r["layer_a"], r["layer_b"]) for r in pairs if r["matched"] == "True"]
    assert matched == [(str(i), str(i)) for i in range(n_layers)]

    # mapped directions: cosine 1 through both maps, each compared where it can reach
    # (Procrustes: B's top principal components; ridge: the span of B's 100 fit rows);
    # ``reach`` says how much of B's direction lies there (measured min 0.64 / 0.77)
    assert len(dirs) == 2 * n_layers * 3 and {r["emotion"] for r in dirs} == emotions
    cos = {
        m: np.array([float(r["cos"]) for r in dirs if r["map"] == m])
        for m in ("procrustes", "ridge")
    }
    assert len(cos["procrustes"]) == len(cos["ridge"]) == n_layers * 3
    assert cos["procrustes"].min() >= 0.99, cos["procrustes"].min()
    assert cos["ridge"].min() >= 0.99, cos["ridge"].min()
    reach = np.array([float(r["reach"]) for r in dirs])
    assert reach.min() > 0.5 and reach.max() <= 1 + 1e-9, (reach.min(), reach.max())
    for r in dirs:  # far beyond maps fitted on shuffled pairs
        assert float(r["cos"]) > float(r["shuffle_null_hi"]), r

    # identification 100% at every layer, both maps; Procrustes recovers the map exactly
    assert len(maps) == 2 * n_layers
    for r in maps:
        assert float(r["identification"]) == 1.0, r
        assert r["layer_b"] == r["layer_a"], r
        if r["map"] == "procrustes":
            assert float(r["r2"]) >= 0.999, r
            assert r["decoding"] == r["decoding_within_b"], r  # mapped rows = B's own rows

    # the naive coordinate-wise cosine says "unrelated": near 0, where random vectors fall
    # (measured means -0.026, 0.019, 0.007; random 95% band about +-0.054)
    assert {r["emotion"] for r in naive} == emotions
    for r in naive:
        mean, lo, hi = float(r["mean"]), float(r["random_mean_lo"]), float(r["random_mean_hi"])
        assert abs(mean) < 0.15, r
        assert lo - (hi - lo) / 2 <= mean <= hi + (hi - lo) / 2, r  # band widened by half its width
        assert float(r["max"]) < 0.3 and r["basis"].startswith("coordinate-dependent"), r

    # ridge predicts most held-out prompts better than the mean does, at every layer
    ridge_p = [float(r["r2_p"]) for r in maps if r["map"] == "ridge"]
    assert max(ridge_p) < 0.05, ridge_p

    # every statistic carries its null: every null column of every table is filled
    for name, rows in tables.items():
        cols = [c for c in rows[0] if is_null_column(c)]
        assert cols, name
        for r in rows:
            assert not [v for v in r.values() if v.lower() == "nan"], r
            for c in cols:
                assert r[c] != "", (name, c, r)
                float(r[c])
            if name == "maps" and r["map"] == "ridge":
                # ridge's R^2 reference is the mean predictor (R^2 = 0), tested by a t-test
                assert r["r2_null_lo"] == r["r2_null_hi"] == "0.0" and 0 <= float(r["r2_p"]) <= 1
            if name != "maps":
                assert "" not in r.values(), (name, r)

    summary = json.loads((out / "summary.json").read_text())
    (pair,) = summary["pairs"]
    assert (pair["model_a"], pair["model_b"]) == ("smollm2", "smollm2-rotated")
    assert pair["matched_layers"] == {str(i): i for i in range(n_layers)}
    measures = pair["measures"]
    assert {"cka", "rsa", "mknn", "procrustes_cos", "ridge_cos", "ridge_r2"} <= set(measures)
    for key, h in measures.items():
        assert h["null"] and h["null_mean"] is not None, key
        assert h["p"] is not None and 0 <= h["p"] <= 1, key
        assert len(h["null_95"]) == 2 and None not in h["null_95"], key
        if "label_permuted" in h:
            assert h["label_permuted"]["p"] is not None, key
    assert abs(measures["cka"]["value"] - 1) <= 1e-4
    for key in ("cka", "mknn", "procrustes_cos", "ridge_cos"):
        assert measures[key]["value"] > measures[key]["null_95"][1], key
        assert measures[key]["p"] < 0.05 and measures[key]["beyond_chance"], key
    assert measures["procrustes_identification"]["value"] == 1.0
    assert measures["ridge_identification"]["value"] == 1.0
    assert [m["name"] for m in summary["models"]] == ["smollm2", "smollm2-rotated"]
    assert summary["models"][1]["activations"] == str(copy)
    pngs = {p.stem for p in (out / "figures").glob("*.png")}
    assert pngs and pngs == {p.stem for p in (out / "figures").glob("*.svg")}


def test_the_naive_table_depends_on_coordinates(runs, identity):
    """Identical coordinates give naive cosine 1; the same activations in another basis give
    ~0: the pilot's table measures the basis, not the models."""
    copy, out = identity
    smol, rotated = runs["smollm2"], ec.load_activations(copy)
    x, xr = smol.get("resid", "mean"), rotated.get("resid", "mean")
    # the CLI's naive means are the layer-averaged coordinate-wise cosines
    d = emotion_directions(x, smol.labels, method="one_vs_rest")
    dr = emotion_directions(xr, smol.labels, method="one_vs_rest")
    for r in read_csv(out / "naive.csv"):
        a, b = d[r["emotion"]], dr[r["emotion"]]
        c = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        assert abs(c.mean() - float(r["mean"])) <= 1e-4, r
    few = slice(0, None, 6)  # 6 layers: the random-rotation null is costly over 31
    same = naive_table(
        {"smollm2": {e: v[few] for e, v in d.items()}, "copy": {e: v[few] for e, v in d.items()}}
    )
    turned = naive_table(
        {
            "smollm2": {e: v[few] for e, v in d.items()},
            "rotated": {e: v[few] for e, v in dr.items()},
        }
    )
    assert len(same) == len(turned) == 3
    for s, t in zip(same, turned, strict=True):
        assert s["mean"] == pytest.approx(1.0, abs=1e-6) and s["p_random"] == 0.0, s
        assert abs(t["mean"]) < 0.2 and t["mean"] < s["mean"] - 0.8, t


# ------------------------------------------------------------------------------- invariance


# Tolerances of the invariance tests, derived. The rotated copy is computed in float64 and
# stored in float32: each activation moves by up to 2^-24 (6e-8) of itself. Every statistic
# is computed in float64 from there (the CKA null's one float32 product is within 3e-8 of
# float64), so it moves by a multiple of 2^-24: at most 2e-6 measured over 12 random
# rotations of either model (mapped cosines and ridge R^2 the most; rotating in float64
# without storing moves nothing beyond 1e-13). Tables keep 6 significant digits: one unit
# of the last, <= 1e-5 |u|. Hence 2e-5 + 1e-5 |u| (10x the largest change measured).
# Numbers that count things jump where a count does: a null draw, a neighbour or a nearest
# centroid within float error of a tie flips. On these activations the nearest null draw
# sits 4.7e-5 from its tie (statistics move <= 2e-6), the nearest kNN boundary 1.9e-6 in
# relative distance (distances move <= 2.9e-7), centroid and sign-test ties 35-50x their
# changes: on another machine's activations a flip is plausible, so each such number may
# move by one count.


def _tol(u: float) -> float:
    return 2e-5 + 1e-5 * abs(u)


def _binomial_step(p: float, n: int, q: float) -> float:
    """How far a binomial p-value ``P(X >= k)`` moves when ``k`` moves by one."""
    from scipy.stats import binom

    tails = binom.sf(np.arange(-2, n + 2) - 1, n, q)  # P(X >= k), k = -2 .. n + 1
    i = int(np.argmin(np.abs(tails - p)))
    return float(np.abs(tails[max(i - 1, 0) : i + 2] - tails[i]).max())


def _count_step(table: str, key: str, row: dict) -> float:
    """The jump of table column ``key`` when one count in it flips (0: none can)."""
    heavy, perm = 1 / (FAST["n_perm_heavy"] + 1), 1 / (FAST["n_perm"] + 1)  # one null draw
    procrustes = row.get("map") == "procrustes"
    n_held = row.get("n_held", 100)
    steps = {
        "cka_p": heavy,
        "mknn_p": heavy,
        "rsa_p": 1 / 24,  # exact: 4! relabelings
        "shuffle_p": heavy if procrustes else perm,  # Procrustes refits: n_perm_heavy
        "perm_p": perm,
        "overlap_p": perm,
        "decoding": 1 / n_held,  # one held-out row's nearest centroid
        "decoding_within_b": 1 / n_held,
    }
    if key in steps:
        return steps[key]
    if key.startswith("mknn"):
        return 1 / (200 * 10)  # one neighbour of one of the 200 rows (k = 10)
    if key == "r2_p":  # Procrustes: shuffled refits; ridge: sign test over the held rows
        return heavy if procrustes else _binomial_step(row[key], n_held, 0.5)
    if key == "decoding_p":
        return _binomial_step(row[key], n_held, row["decoding_chance"])
    return 0.0


def _headline_step(name: str, field: str, h: dict) -> float:
    """The same for a summary headline ``name``'s ``field`` (value, null_mean, null_95, p)."""
    if name.endswith("_identification"):
        return 0.0  # exact fractions: an argmax 3e-3 from a tie at the least
    if field == "p" and name.endswith("_decoding"):
        return _binomial_step(h["p"], 100, h["null_mean"])
    if field == "p" and name == "ridge_r2":
        return _binomial_step(h["p"], 100, 0.5)
    if field == "p":
        return 1 / h["n_null"]
    if name == "mknn":
        return 1 / (200 * 10)
    if name.endswith("_decoding") and field == "value":
        return 1 / 100
    return 0.0


def assert_same_comparison(a, b):
    compared = 0
    for t in ("layer_pairs", "maps", "directions"):
        ra, rb = a.tables[t], b.tables[t]
        assert len(ra) == len(rb) > 0, t
        for x, y in zip(ra, rb, strict=True):
            assert list(x) == list(y), t
            for k, u in x.items():
                v = y[k]
                if isinstance(u, float) or isinstance(v, float):
                    assert (u is None) == (v is None), (t, k, x, y)
                    if u is not None:
                        assert abs(u - v) <= _tol(u) + _count_step(t, k, x), (t, k, u, v, x)
                        compared += 1
                else:
                    assert u == v, (t, k, x, y)  # names, layers, matched, map, emotion
    assert compared > 5000  # really compared: every statistic, p-value and null band
    for pa, pb in zip(a.summary["pairs"], b.summary["pairs"], strict=True):
        assert pa["matched_layers"] == pb["matched_layers"]
        assert list(pa["measures"]) == list(pb["measures"])
        for key, h in pa["measures"].items():
            g = pb["measures"][key]
            for field in ("value", "null_mean", "p"):
                if h.get(field) is not None:
                    tol = _tol(h[field]) + _headline_step(key, field, h)
                    assert abs(h[field] - g[field]) <= tol, (key, field, h, g)
            for u, v in zip(h.get("null_95") or [], g.get("null_95") or [], strict=True):
                assert abs(u - v) <= _tol(u) + _headline_step(key, "null_95", h), (key, h, g)
            if "label_permuted" in h:
                lp, lq = h["label_permuted"], g["label_permuted"]
                assert abs(lp["p"] - lq["p"]) <= _tol(lp["p"]) + 1 / lp["n_null"], (key, lp, lq)
                assert abs(lp["null_mean"] - lq["null_mean"]) <= _tol(lp["null_mean"]), (key, lp)


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_every_statistic_is_invariant_to_rotation_and_scale(runs, base, which):
    root = runs["root"]
    factor, seed = {"smollm2": (SCALE, 21), "gemma3": (0.05, 22)}[which]
    turned = ec.load_activations(rotated_copy(root / which, root / f"{which}-turned", factor, seed))
    stores = [
        turned if which == "smollm2" else runs["smollm2"],
        turned if which == "gemma3" else runs["gemma3"],
    ]
    other = compare_models(stores, ["smollm2", "gemma3"], **FAST)
    # the activations really changed
    raw = runs[which].get("resid", "mean")
    assert np.abs(turned.get("resid", "mean") - raw).max() > 0.5 * np.abs(raw).max()
    assert_same_comparison(base, other)


# --------------------------------------------------------------------- smollm2 vs gemma3


def test_smollm2_and_gemma3_share_emotion_geometry_beyond_every_null(base):
    t, s = base.tables, base.summary
    assert "naive" not in t  # widths 576 and 640: no coordinate-wise table
    assert len(t["layer_pairs"]) == 31 * 19
    assert {(r["layer_a"], r["layer_b"]) for r in t["layer_pairs"]} == {
        (a, b) for a in range(31) for b in range(19)
    }
    matched = [(r["layer_a"], r["layer_b"]) for r in t["layer_pairs"] if r["matched"]]
    assert [a for a, _ in matched] == list(range(31))  # one match per smollm2 layer
    (pair,) = s["pairs"]
    assert pair["widths"] == [576, 640]
    ml = pair["matched_layers"]
    assert sorted(ml, key=int) == [str(i) for i in range(31)]
    # measured: embeddings match embeddings, the last smollm2 layer gemma3's last (18)
    assert ml["0"] == 0 and ml["30"] >= 12, ml
    assert len(t["maps"]) == 2 * 31 and len(t["directions"]) == 2 * 31 * 3
    h = pair["measures"]
    # measured (n_perm 100, n_perm_heavy 30): CKA 0.336, null 95% [0.005, 0.020], p 1/31;
    # mutual kNN 0.360 vs [0.053, 0.071]; mapped cosine Procrustes 0.657 / ridge 0.62-0.65
    # vs shuffled pairs [-0.18, 0.15], label-permuted p 0.0099; overlap 0.58 / 0.44-0.48
    # vs [0.30, 0.45] / [0.16, 0.30]; identification 0.91 / 0.96-0.98 (chance 1/3);
    # decoding 0.67 / 0.69-0.70 (chance 0.25)
    assert h["cka"]["value"] > max(0.2, 5 * h["cka"]["null_95"][1]), h["cka"]
    assert h["mknn"]["value"] > max(0.2, 2 * h["mknn"]["null_95"][1]), h["mknn"]
    for key in (
        "cka",
        "mknn",
        "procrustes_cos",
        "ridge_cos",
        "procrustes_overlap",
        "ridge_overlap",
    ):
        assert h[key]["value"] > h[key]["null_95"][1], (key, h[key])
        assert h[key]["p"] < 0.05 and h[key]["beyond_chance"], (key, h[key])
    for key in ("procrustes_cos", "ridge_cos"):
        assert h[key]["value"] > 0.45, (key, h[key])
        assert h[key]["label_permuted"]["p"] < 0.05, (key, h[key])
    for m in ("procrustes", "ridge"):
        assert h[f"{m}_identification"]["value"] >= 0.8, h[f"{m}_identification"]
        assert h[f"{m}_decoding"]["value"] > 0.5 and h[f"{m}_decoding"]["p"] < 1e-6
    assert h["rsa"]["value"] > 0.8, h["rsa"]


# ------------------------------------------------------------------------- three models


@pytest.fixture(scope="module")
def gpt2_run(runs):
    """A random GPT-2 of GPT-2 small's shape (12 layers x 768), with the tests' tokenizer."""
    root = runs["root"]
    tok = _train_tokenizer(bos=False)
    torch.manual_seed(0)
    cfg = T.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=V, n_positions=512)
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = (
        tok.pad_token_id,
        tok.bos_token_id,
        tok.eos_token_id,
    )
    model = T.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(root / "gpt2-model")
    tok.save_pretrained(root / "gpt2-model")
    lm = ec.load_model(root / "gpt2-model")
    return ec.extract(lm, ec.load_dataset("baseline"), root / "gpt2", SPEC, progress=False)


def test_three_models_of_different_widths_and_depths(runs, gpt2_run):
    stores = [runs["smollm2"], runs["gemma3"], gpt2_run]
    res = compare_models(stores, n_perm=50, n_perm_heavy=20, progress=False)
    depth = {"smollm2": 31, "gemma3": 19, "gpt2": 13}
    width = {"smollm2": 576, "gemma3": 640, "gpt2": 768}
    assert [m["name"] for m in res.summary["models"]] == list(depth)
    assert [m["width"] for m in res.summary["models"]] == list(width.values())
    pairs = [(p["model_a"], p["model_b"]) for p in res.summary["pairs"]]
    assert pairs == [("smollm2", "gemma3"), ("smollm2", "gpt2"), ("gemma3", "gpt2")]
    assert "naive" not in res.tables  # no two widths alike
    for p in res.summary["pairs"]:
        a, b = p["model_a"], p["model_b"]
        rows = [r for r in res.tables["layer_pairs"] if (r["model_a"], r["model_b"]) == (a, b)]
        assert len(rows) == depth[a] * depth[b], (a, b)
        assert p["widths"] == [width[a], width[b]]
        assert len(p["matched_layers"]) == depth[a]
        maps = [r for r in res.tables["maps"] if (r["model_a"], r["model_b"]) == (a, b)]
        assert len(maps) == 2 * depth[a]
        assert all(np.isfinite(r["cka"]) for r in rows)
    assert len(res.tables["layer_pairs"]) == 31 * 19 + 31 * 13 + 19 * 13
    # two trained models are more alike than either is with a random network
    # (measured CKA 0.336 vs 0.120 and 0.145)
    cka = {
        (p["model_a"], p["model_b"]): p["measures"]["cka"]["value"] for p in res.summary["pairs"]
    }
    assert cka[("smollm2", "gemma3")] > 1.5 * max(
        cka[("smollm2", "gpt2")], cka[("gemma3", "gpt2")]
    ), cka

"""Emotion directions: a planted direction is recovered by every method; the pilot's
raw-mean artefact shows up as it should; results round-trip; the CLI takes the pilot's flags."""

from __future__ import annotations

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.cli import main
from emocircuits.errors import DataError, EmocircuitsError
from emocircuits.geometry import METHODS, EmotionVectors, compute_vectors, emotion_directions


def planted(n=60, layers=3, width=32, seed=0):
    """Neutral ~ common + noise; emotion = neutral + 4*u_e at every layer (u_e orthonormal)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(layers, width)) * 20  # a large shared component
    u = np.linalg.qr(rng.normal(size=(width, 3)))[0].T  # 3 orthonormal directions
    labels, rows = [], []
    for k, emo in enumerate(["gratitude", "anger", "apology", "neutral"]):
        x = common + rng.normal(size=(n, layers, width))
        if emo != "neutral":
            x = x + 4.0 * u[k]
        rows.append(x)
        labels += [emo] * n
    return np.concatenate(rows), labels, u


@pytest.mark.parametrize("method", ["mean_diff", "one_vs_rest", "pca", "probe"])
def test_every_contrast_method_recovers_a_planted_direction(method):
    x, labels, u = planted(n=120)
    dirs = emotion_directions(x, labels, method=method)
    for k, emo in enumerate(["gratitude", "anger", "apology"]):
        d = dirs[emo] / np.linalg.norm(dirs[emo], axis=-1, keepdims=True)
        cos = d @ u[k]
        # one_vs_rest also points away from the other emotions' directions: cos ~ 0.87
        assert (cos > (0.8 if method == "one_vs_rest" else 0.9)).all(), (method, emo, cos)


def test_mean_diff_equals_hand_computation_and_raw_mean_shows_the_artefact():
    x, labels, _u = planted()
    lab = np.array(labels)
    md = emotion_directions(x, labels, method="mean_diff")["anger"]
    np.testing.assert_allclose(
        md, x[lab == "anger"].mean(0) - x[lab == "neutral"].mean(0), rtol=1e-5, atol=1e-5
    )
    raw = emotion_directions(x, labels, method="raw_mean")
    cos_raw = np.sum(raw["anger"] * raw["gratitude"], -1) / (
        np.linalg.norm(raw["anger"], axis=-1) * np.linalg.norm(raw["gratitude"], axis=-1)
    )
    assert (cos_raw > 0.98).all()  # the pilot's "all 0.99": the shared component
    cd = emotion_directions(x, labels)
    cos_md = np.sum(cd["anger"] * cd["gratitude"], -1) / (
        np.linalg.norm(cd["anger"], axis=-1) * np.linalg.norm(cd["gratitude"], axis=-1)
    )
    assert (np.abs(cos_md) < 0.3).all()  # gone after contrasting with neutral


def test_pca_is_not_centred_and_points_toward_the_emotion():
    x, labels, u = planted(seed=3)
    d = emotion_directions(x, labels, method="pca")["apology"]
    assert (np.sum(d * u[2], -1) > 0).all()  # sign toward the emotion


def test_errors():
    x, labels, _ = planted(n=5)
    with pytest.raises(DataError, match="unknown method 'lda'"):
        emotion_directions(x, labels, method="lda")
    with pytest.raises(DataError, match="baseline label 'calm' not in"):
        emotion_directions(x, labels, baseline="calm")
    assert set(METHODS) == {"mean_diff", "one_vs_rest", "raw_mean", "pca", "probe"}


def test_round_trip_and_cli_with_the_pilots_flags(tiny, tmp_path, capsys):
    lm = tiny("gpt2")
    acts = ec.extract(
        lm,
        ec.load_dataset("baseline"),
        tmp_path / "acts",
        ec.CaptureSpec(positions=("mean",)),
        progress=False,
    )
    vecs = compute_vectors(acts, method="pca")
    path = vecs.save(tmp_path / "v.safetensors")
    back = EmotionVectors.load(path)
    assert back.meta() == vecs.meta() and back.provenance["model"]["model_type"] == "gpt2"
    for emo in vecs.emotions:
        np.testing.assert_array_equal(back.directions[emo], vecs.directions[emo])
        np.testing.assert_array_equal(back.norms[emo], vecs.norms[emo])
        np.testing.assert_allclose(np.linalg.norm(back.directions[emo], axis=-1), 1, rtol=1e-5)
    # the pilot's workflow, with only the program name changed (and never a pickle)
    code = main(
        [
            "vectors",
            "--activations_dir",
            str(tmp_path / "acts"),
            "--output",
            str(tmp_path / "gpt2_vectors.pkl"),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 0 and "never pickle" in err
    assert not (tmp_path / "gpt2_vectors.pkl").exists()
    pilot = EmotionVectors.load(tmp_path / "gpt2_vectors.pkl")  # resolves to .safetensors
    assert pilot.method == "mean_diff" and pilot.emotions == ["gratitude", "anger", "apology"]
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EmocircuitsError, match="not an emocircuits vectors file"):
        EmotionVectors.load(tmp_path / "junk.safetensors")


def test_similarity_csv_with_intervals(tiny, tmp_path, capsys):
    import csv

    lm = tiny("llama")
    ec.extract(
        lm,
        ec.load_dataset("baseline"),
        tmp_path / "acts",
        ec.CaptureSpec(positions=("mean",)),
        progress=False,
    )
    code = main(
        [
            "similarity",
            "--activations_dir",
            str(tmp_path / "acts"),
            "--output_table",
            str(tmp_path / "sim.csv"),
            "--n-boot",
            "200",
        ]
    )
    assert code == 0
    with open(tmp_path / "sim.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * (lm.arch.n_layers + 1)  # 3 emotion pairs x resid layers
    defined = [r for r in rows if r["cosine"] != "nan"]  # NaN: direction below its noise
    assert len(defined) >= len(rows) // 2
    for r in defined:
        assert float(r["ci_low"]) <= float(r["ci_high"])
    for r in rows:
        assert float(r["distance_ci_low"]) <= float(r["distance_ci_high"])
        assert r["method"] == "mean_diff" and r["position"] == "mean"
    capsys.readouterr()

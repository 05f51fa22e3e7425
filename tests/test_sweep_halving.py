"""The sweep of issue 16: successive halving (a short screen, then full length for the
settings it keeps), the tune / held-out split (chosen on one half, reported on the other),
an explicit "none" when no setting passes (saved, and refused by `steer` with what to
widen), and the default path steering with one_vs_rest directions whatever the vectors
file holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.geometry import compute_vectors
from emocircuits.geometry.vectors import EmotionVectors, steering_vectors
from emocircuits.interventions.recommend import recommend, screen, split_prompts
from emocircuits.interventions.settings import settings_path
from emocircuits.interventions.summary import summarize
from emocircuits.interventions.sweep import steer_sweep
from emocircuits.interventions.sweep_result import SweepResult

from helpers import one_error_line, run

PROMPTS = [
    "The meeting moved to Thursday.",
    "I went to the store and",
    "Here is the plan:",
    "The train leaves at noon.",
    "We painted the fence",
    "My neighbour said that",
]
# limits every setting passes: the tiny random model's text has no tone to speak of, so the
# recommendation then is simply the best-ranked setting kept by the screen
OPEN = {"perplexity_ratio": 1e9, "distinct_2_ratio": 0.0, "random_vader_change": 1e9,
        "effect_lo": -1e9}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tiny, tiny_dir, tmp_path_factory):
    lm = tiny("llama")
    root = tmp_path_factory.mktemp("halving")
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean",))
    acts = ec.extract(lm, ec.load_dataset("baseline"), root / "acts", spec, progress=False)
    path = compute_vectors(acts, method="one_vs_rest").save(root / "v.safetensors")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return lm, acts, path, root, str(tiny_dir("llama"))


def test_split_is_deterministic_disjoint_and_covers_every_prompt():
    for n in (2, 5, 20):
        tune, held = split_prompts(n, seed=3)
        assert (tune, held) == split_prompts(n, seed=3)
        assert not set(tune) & set(held) and sorted(tune + held) == list(range(n))
        assert len(tune) == n // 2 and tune == sorted(tune) and held == sorted(held)
    assert split_prompts(20, seed=0) != split_prompts(20, seed=1)
    with pytest.raises(ec.EmocircuitsError, match="at least 2 prompts"):
        split_prompts(1)


def _row(layer, alpha, dv, ppl=1.0, d2=1.0):
    return {"condition": "direction", "emotion": "gratitude", "layer": layer, "alpha": alpha,
            "vader_change": dv, "vader_change_lo": dv - 0.2, "vader_change_hi": dv + 0.2,
            "perplexity_ratio_median": ppl, "perplexity_ratio_mean": ppl,
            "distinct_2_ratio": d2}  # fmt: skip


def test_screen_keeps_the_planted_best_setting_and_puts_fluent_ones_first():
    rows = [_row(la, a, 0.05 * la * a) for la in (3, 6, 9) for a in (0.1, 0.2, 0.4)]
    rows.append(_row(6, 0.3, 0.9))  # the planted best
    rows.append(_row(9, 0.8, 2.0, ppl=3.0))  # larger, but broken text
    rows.append(_row(3, 0.8, 1.5, d2=0.3))  # larger, but loops
    kept = screen(rows, "gratitude", 2)
    assert kept[0] == (6, 0.3) and (9, 0.8) not in kept and (3, 0.8) not in kept
    # with room for every fluent setting, the broken ones come last
    assert screen(rows, "gratitude", len(rows))[-2:] in ([(9, 0.8), (3, 0.8)],
                                                         [(3, 0.8), (9, 0.8)])  # fmt: skip


def test_recommend_says_none_with_the_reason_per_setting():
    none = {"condition": "none", "emotion": None, "layer": None, "alpha": 0.0}
    rand = {"condition": "random", "emotion": None, "layer": 3, "alpha": 0.2, "vader_change": 0.0}
    rows = [none, rand, _row(3, 0.2, 0.1), _row(3, 0.4, 0.5, ppl=2.0)]
    r = recommend(rows, "gratitude")
    assert r.status == "none" and not r.found and (r.layer, r.alpha) == (None, None)
    why = {(c["layer"], c["alpha"]): c["fails"] for c in r.candidates}
    assert any("lower bound" in f for f in why[(3, 0.2)])  # 0.1 - 0.2 <= 0: does nothing
    assert "perplexity" in why[(3, 0.4)] and "no random control" in why[(3, 0.4)]


def test_halving_split_and_held_out_numbers(setup, capsys):
    lm, _, path, root, model_dir = setup
    res = steer_sweep(lm, PROMPTS, path, emotion=["anger", "gratitude"], layer=[1, 2],
                      max_new_tokens=6, screen_tokens=3, n_keep=2, n_verify=2, limits=OPEN,
                      progress=False)  # fmt: skip
    st = res.settings
    tune, held = st["split"]["tune"], st["split"]["held_out"]
    assert (tune, held) == split_prompts(len(PROMPTS), 0)
    rows = res.generations
    # each stage reads only its own half of the prompts
    assert {r["prompt_index"] for r in rows if r["stage"] in ("screen", "tune")} == set(tune)
    assert {r["prompt_index"] for r in rows if r["stage"] == "held_out"} == set(held)
    assert all(r["n_new_tokens"] <= 3 for r in rows if r["stage"] == "screen")
    # the screen saw every setting; full length only the n_keep it kept, and those are the
    # screen's best (recomputed from the saved rows)
    grid = {(la, a) for la in (1, 2) for a in st["alphas"]}
    short = summarize([r for r in rows if r["stage"] == "screen"])
    for e in ("anger", "gratitude"):
        seen = {(r["layer"], r["alpha"]) for r in rows
                if r["stage"] == "screen" and r["emotion"] == e}  # fmt: skip
        full = {(r["layer"], r["alpha"]) for r in rows if r["stage"] == "tune"
                and r["condition"] == "direction" and r["emotion"] == e}  # fmt: skip
        assert seen == grid and len(full) == 2
        assert full == set(screen(short, e, 2, OPEN)) == {tuple(k) for k in st["kept"][e]}
        rec = res.recommendations[e]
        assert (rec.layer, rec.alpha) in full and rec.method == "one_vs_rest"
        # the held-out effect, by hand from the held-out rows only
        at = (rec.layer, rec.alpha)
        base = {r["prompt_index"]: r["vader"] for r in rows
                if r["stage"] == "held_out" and r["condition"] == "none"}  # fmt: skip
        dv = [r["vader"] - base[r["prompt_index"]] for r in rows if r["stage"] == "held_out"
              and r["condition"] == "direction" and r["emotion"] == e
              and (r["layer"], r["alpha"]) == at]  # fmt: skip
        assert len(dv) == len(held)
        want = float(np.mean(dv)) * (-1 if e == "anger" else 1)
        assert rec.held_out["value"] == pytest.approx(want, abs=1e-4)  # rounded to 4 places
        assert rec.held_out["lo"] <= rec.held_out["value"] <= rec.held_out["hi"]
        assert rec.held_out["n_prompts"] == len(held) and rec.held_out["random_draws"] == 2
    # saved and read back, split and held-out numbers included
    out = res.save(root / "sw")
    back = SweepResult.load(out)
    assert back.settings["split"] == st["split"]
    assert back.recommendations["anger"].held_out == res.recommendations["anger"].held_out
    assert {r["stage"] for r in back.summary} == {"screen", "tune", "held_out"}
    assert "held out" in res.recommendation_lines()
    # steer with the saved setting on the held-out prompts writes the sweep's held-out rows
    res.save_recommendations(path)
    (root / "held.txt").write_text("\n".join(PROMPTS[i] for i in held) + "\n")
    code, _, err = run(capsys, "steer", "--model", model_dir, "--vectors", path,
                            "--emotion", "anger", "--prompts", root / "held.txt",
                            "--out", root / "s.jsonl", "--max-new-tokens", "6",
                            "--decoding", "greedy", "--quiet")  # as the sweep  # fmt: skip
    assert code == 0, err
    rec = res.recommendations["anger"]
    s = json.loads((root / "s.summary.json").read_text())
    assert s["settings"]["layers"] == [rec.layer] and "held out" in s["settings"]["source"]
    got = [json.loads(x) for x in (root / "s.jsonl").read_text().splitlines()]
    want = {(held[r["prompt_index"]], r["continuation"]) for r in got
            if r["condition"] == "direction"}  # fmt: skip
    assert want == {(r["prompt_index"], r["continuation"]) for r in rows
                    if r["stage"] == "held_out" and r["condition"] == "direction"
                    and r["emotion"] == "anger"}  # fmt: skip


def test_a_direction_that_does_nothing_gives_none_and_steer_refuses(setup, capsys):
    _, _, path, root, model_dir = setup
    # a push a million times below the typical residual norm changes no greedy token: the
    # direction rows equal `none`, the effect is 0 and its lower bound not above 0
    zpath = EmotionVectors.load(path).save(root / "zero.safetensors")
    out = root / "zero-sweep"
    code, stdout, err = run(capsys, "steer-sweep", "--model", model_dir, "--vectors", zpath,
                            "--emotion", "apology", "--prompts", root / "prompts.txt",
                            "--layer", "1", "2", "--alpha", "1e-7", "1e-6",
                            "--max-new-tokens", "6", "--screen-tokens", "3", "--out", out,
                            "--quiet")  # fmt: skip
    assert code == 0, err
    assert "apology    none: no setting passed the limits" in stdout and "--alpha" in stdout
    saved = json.loads(settings_path(zpath).read_text())
    (entry,) = saved["models"].values()
    rec = entry["emotions"]["apology"]
    assert rec["status"] == "none" and rec["layer"] is None and rec["alpha"] is None
    assert rec["candidates"] and all(c["fails"] for c in rec["candidates"])
    assert json.loads((out / "sweep.json").read_text())["recommended"]["apology"]["layer"] is None
    code, _, err = run(capsys, "steer", "--model", model_dir, "--vectors", zpath, "--emotion",
                       "apology", "--prompts", root / "prompts.txt", "--out",
                       root / "z.jsonl")  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "no apology setting" in line and not (root / "z.jsonl").exists()
    assert all(w in line for w in ("--layer", "--alpha", "--prompts"))
    # an explicit setting still steers
    code, _, err = run(capsys, "steer", "--model", model_dir, "--vectors", zpath, "--emotion",
                       "apology", "--prompts", root / "prompts.txt", "--layer", "1",
                       "--alpha", "0.2", "--max-new-tokens", "4", "--out", root / "z.jsonl",
                       "--quiet")  # fmt: skip
    assert code == 0, err


def test_the_default_path_steers_with_one_vs_rest_directions(setup, capsys):
    _, acts, _, root, model_dir = setup
    # `vectors` with its default method (mean_diff), as a new user makes them
    md = root / "md.safetensors"
    code, _, err = run(capsys, "vectors", "--activations", acts.path, "--out", md)
    assert code == 0, err
    assert EmotionVectors.load(md).method == "mean_diff"
    got, record = steering_vectors(EmotionVectors.load(md), "md")
    want = compute_vectors(acts, method="one_vs_rest")
    assert got.method == "one_vs_rest" and record["rebuilt_from"] == str(acts.path)
    for e in want.emotions:
        np.testing.assert_allclose(got.directions[e], want.directions[e], atol=1e-6)
    out = root / "md-sweep"
    code, stdout, err = run(capsys, "steer-sweep", "--model", model_dir, "--vectors", md,
                            "--emotion", "anger", "--prompts", root / "prompts.txt",
                            "--layer", "1", "--n-alphas", "2", "--max-new-tokens", "4",
                            "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    assert "rebuilt from" in stdout
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["vectors"]["method"] == "one_vs_rest"
    assert meta["settings"]["directions"]["file_method"] == "mean_diff"
    assert meta["recommended"]["anger"]["method"] == "one_vs_rest"
    # vectors of another method whose activations are gone: one line, before any model work
    lone = EmotionVectors.load(md)
    lone.provenance = {**lone.provenance, "activations": str(root / "gone")}
    lpath = lone.save(root / "lone.safetensors")
    code, _, err = run(capsys, "steer-sweep", "--model", model_dir, "--vectors", lpath,
                       "--out", root / "lone-sweep")  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "steer weakly" in line and "--method mean_diff" in line
    assert not (root / "lone-sweep").exists()

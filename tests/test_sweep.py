"""Batched steering conditions, the fluency costs (batched perplexity, KL on neutral text),
the NRC counts, the prompting baseline, the sweep's recommendation rule on a planted table,
the alpha calibration, the settings file, and `steer-sweep` -> `steer` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import emocircuits as ec
from emocircuits.geometry import compute_vectors
from emocircuits.geometry.vectors import EmotionVectors
from emocircuits.interventions import Steer, steering, typical_norms
from emocircuits.interventions.generation import generate, next_token_kl, perplexity
from emocircuits.interventions.run import SteerCondition, run_conditions
from emocircuits.interventions.scorers import nrc_counts
from emocircuits.interventions.settings import (
    load_recommendation,
    save_recommendations,
    settings_path,
)
from emocircuits.interventions.sweep import KL_RANGE, KL_RANGE_WINDOW, calibrate_alphas, recommend

from helpers import one_error_line, run

PROMPTS = ["The meeting moved to Thursday.", "I went to the store and", "Here is the plan:"]


@pytest.fixture(scope="module")
def setup(tiny, tiny_dir, tmp_path_factory):
    lm = tiny("llama")
    root = tmp_path_factory.mktemp("sweep")
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean",))
    acts = ec.extract(lm, ec.load_dataset("baseline"), root / "acts", spec, progress=False)
    vecs = compute_vectors(acts, method="one_vs_rest")
    path = vecs.save(root / "v.safetensors")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return lm, vecs, path, root, str(tiny_dir("llama"))


def test_per_row_steering_equals_steering_each_row_alone(setup):
    lm, vecs, *_ = setup
    v = vecs.directions["anger"][2]
    steers = [[Steer(2, v, 3.0, 10.0)], [], [Steer(1, -v, 2.0, 10.0), Steer(2, v, 1.0, 10.0)]]
    together = generate(lm, PROMPTS, per_row=steers, max_new_tokens=6, batch_size=3)
    alone = [
        generate(lm, [p], steers=s, max_new_tokens=6)[0]
        for p, s in zip(PROMPTS, steers, strict=True)
    ]
    assert together == alone
    assert together[0] != generate(lm, PROMPTS[:1], max_new_tokens=6)[0]
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with (
        pytest.raises(ec.EmocircuitsError, match="per-row steering for 2 rows"),
        torch.no_grad(),
        steering(lm, per_row=steers[:2]),
    ):
        lm.model(**enc)


def test_batched_perplexity_equals_one_at_a_time(setup):
    lm = setup[0]
    ids = generate(lm, PROMPTS, max_new_tokens=5)
    batched = perplexity(lm, PROMPTS, ids, batch_size=3)
    alone = [perplexity(lm, [p], [c], batch_size=1)[0] for p, c in zip(PROMPTS, ids, strict=True)]
    assert batched == pytest.approx(np.array(alone), rel=1e-4)
    assert np.isnan(perplexity(lm, PROMPTS[:1], [[]])[0])


def test_kl_on_neutral_text_by_hand(setup):
    lm, vecs, *_ = setup
    v = vecs.directions["gratitude"][1]
    texts = PROMPTS[:2]
    sets = [[], [Steer(1, v, 1.0, 2.0)], [Steer(1, v, 3.0, 2.0)]]
    kl = next_token_kl(lm, texts, sets, batch_size=2)
    assert kl[0] == pytest.approx(0.0, abs=1e-6)
    want = []
    for text in texts:  # one text, one pass each, no padding
        ids = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            p = torch.log_softmax(lm.model(**ids).logits[0].double(), -1)
            with steering(lm, sets[1]):
                q = torch.log_softmax(lm.model(**ids).logits[0].double(), -1)
        want.append((p.exp() * (p - q)).sum(-1))
    assert kl[1] == pytest.approx(float(torch.cat(want).mean()), rel=1e-3)
    assert kl[2] > kl[1] > 0


def test_nrc_counts_by_hand():
    c = nrc_counts(["I hate this awful, awful delay.", "We are grateful and happy!", ""])
    # hate: anger, disgust, fear, negative, sadness; awful: anger, disgust, fear, negative,
    # sadness; delay: the same five. grateful: positive; happy: anticipation, joy, positive, trust
    assert c["anger"].tolist() == [4, 0, 0]
    assert c["negative"].tolist() == [4, 0, 0]
    assert c["positive"].tolist() == [0, 2, 0]
    assert c["joy"].tolist() == [0, 1, 0]
    assert nrc_counts(["furiously hated"])["anger"].tolist() == [2]  # suffix fallback


def test_prompting_baseline_uses_the_chat_template(setup):
    lm = setup[0]
    tok = lm.tokenizer
    old = getattr(tok, "chat_template", None)
    tok.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    try:
        cond = SteerCondition("prompt", "anger", instruction="Be {feeling}: {prompt}")
        rows = run_conditions(lm, PROMPTS[:2], [SteerCondition("none"), cond], max_new_tokens=4)
        ids = tok("[Be anger: " + PROMPTS[0] + "]", add_special_tokens=False)["input_ids"]
        want = generate(lm, [ids], max_new_tokens=4)[0]
        got = next(r for r in rows if r["condition"] == "prompt" and r["prompt_index"] == 0)
        assert got["continuation"] == tok.decode(want, skip_special_tokens=True)
        assert got["prompt"] == PROMPTS[0] and got["emotion"] == "anger"
    finally:
        tok.chat_template = old


def _row(cond, emotion, layer, alpha, dv, ppl=1.0, d2=1.0, marker=0.0):
    return {"condition": cond, "emotion": emotion, "layer": layer, "alpha": alpha,
            "vader_change": dv, "vader_change_lo": dv - 0.1, "vader_change_hi": dv + 0.1,
            "perplexity_ratio_median": ppl, "perplexity_ratio_mean": ppl,
            "distinct_2_ratio": d2, "marker_apology": marker, "marker_apology_lo": marker - 0.2,
            "marker_apology_hi": marker + 0.2}  # fmt: skip


def test_recommendation_rule_on_a_planted_table():
    table = [
        _row("none", None, None, 0.0, 0.0),
        _row("direction", "anger", 10, 0.1, -0.3),
        _row("direction", "anger", 10, 0.2, -0.6, ppl=1.3),
        _row("direction", "anger", 10, 0.4, -0.9, ppl=2.0),  # too costly
        _row("direction", "anger", 12, 0.2, -0.8, d2=0.5),  # loops
        _row("direction", "anger", 14, 0.2, -0.7),  # the random push moves VADER too
        _row("random", None, 10, 0.1, 0.05),
        _row("random", None, 10, 0.2, -0.1),
        _row("random", None, 10, 0.4, 0.0),
        _row("random", None, 12, 0.2, 0.0),
        _row("random", None, 14, 0.2, -0.3),
        _row("direction", "apology", 10, 0.2, 0.0, marker=0.6),
        _row("direction", "apology", 10, 0.4, 0.0, marker=0.7, ppl=1.6),
    ]
    r = recommend(table, "anger")
    assert (r.layer, r.alpha, r.meets_limits) == (10, 0.2, True)
    assert r.value == pytest.approx(0.6) and r.lo == pytest.approx(0.5)
    a = recommend(table, "apology")
    assert (a.layer, a.alpha, a.effect) == (10, 0.2, "marker_apology")
    bad = recommend([table[0], table[3], table[8]], "anger")
    assert not bad.meets_limits and "perplexity" in bad.reason


def test_settings_file_keeps_other_models_and_refuses_unknown_ones(tmp_path):
    table = [_row("none", None, None, 0.0, 0.0), _row("direction", "anger", 3, 0.2, -0.5),
             _row("random", None, 3, 0.2, 0.0)]  # fmt: skip
    rec = {"anger": recommend(table, "anger")}
    v = tmp_path / "v.safetensors"
    save_recommendations(v, {"revision": "a", "dtype": "float32"}, rec, {"n": 1})
    save_recommendations(v, {"revision": "b", "dtype": "float32"}, rec, {"n": 2})
    data = json.loads(settings_path(v).read_text())
    assert settings_path(v).name == "v.steer.json" and len(data["models"]) == 2
    got = load_recommendation(v, {"revision": "a", "dtype": "float32"}, "anger")
    assert (got["layer"], got["alpha"], got["evidence"]["n"]) == (3, 0.2, 1)
    with pytest.raises(ec.EmocircuitsError, match="no settings for this model"):
        load_recommendation(v, {"revision": "a", "dtype": "bfloat16"}, "anger")
    with pytest.raises(ec.EmocircuitsError, match="no setting for 'joy'"):
        load_recommendation(v, {"revision": "a", "dtype": "float32"}, "joy")


def test_alpha_calibration_spans_the_kl_range(setup):
    lm, vecs, *_ = setup
    s = typical_norms(lm, PROMPTS)
    alphas, kl = calibrate_alphas(lm, vecs, ["anger", "apology"], layer=2, scales=s,
                                  kl_texts=PROMPTS, kl_range=(0.01, 0.2))  # fmt: skip
    assert len(alphas) == 5 and alphas == sorted(alphas)
    ratios = np.array(alphas[1:]) / np.array(alphas[:-1])
    assert ratios == pytest.approx(np.full(4, ratios[0]), rel=0.02)
    probes = sorted(kl)
    got = calibrate_alphas(lm, vecs, ["anger", "apology"], layer=2, scales=s,
                           kl_texts=PROMPTS, kl_range=(0.01, 0.2))[1]  # fmt: skip
    assert got == kl  # deterministic
    # the grid's ends lie between the probes whose KL brackets the range
    lo_i = max(i for i, a in enumerate(probes) if kl[a] <= 0.01 or i == 0)
    assert probes[lo_i] <= alphas[0] * 1.01
    # the default range follows the push: wider for one held for a few tokens
    kw = {"layer": 2, "scales": s, "kl_texts": PROMPTS}
    short = calibrate_alphas(lm, vecs, ["anger"], **kw)[0]
    every = calibrate_alphas(lm, vecs, ["anger"], steer_tokens=None, **kw)[0]
    assert short == calibrate_alphas(lm, vecs, ["anger"], kl_range=KL_RANGE_WINDOW, **kw)[0]
    assert every == calibrate_alphas(lm, vecs, ["anger"], kl_range=KL_RANGE, **kw)[0]
    assert short[-1] > every[-1]


def test_sweep_then_steer_with_the_recommended_setting(setup, capsys):
    path, root, model_dir = setup[2:]
    out = root / "sw"
    code, stdout, err = run(capsys, "steer-sweep", "--model", model_dir, "--vectors", path,
                            "--emotion", "anger", "gratitude", "--prompts",
                            root / "prompts.txt", "--layer", "1", "2", "--max-new-tokens",
                            "4", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    assert "alphas from the data" in stdout and "recommended settings" in stdout
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    meta = json.loads((out / "sweep.json").read_text())
    alphas = meta["settings"]["alphas"]
    # none + (2 emotions + random) x 2 layers x 5 alphas, for each prompt, and 3 more random
    # draws at each setting checked before it was recommended
    checked = {tuple(k) for k in meta["settings"]["random_checked"]}
    assert meta["settings"]["n_verify"] == 4 and 1 <= len(checked) <= 2 * 3
    assert len(rows) == len(PROMPTS) * (1 + 3 * 2 * len(alphas) + 3 * len(checked))
    draws: dict[tuple, list[int]] = {}
    for r in rows:
        if r["condition"] == "random":
            draws.setdefault((r["layer"], r["alpha"]), []).append(r["draw"])
    for key, ds in draws.items():
        want = [0, 1, 2, 3] if key in checked else [0]
        assert sorted(ds) == sorted(want * len(PROMPTS)), key
    for e, rec in meta["recommended"].items():
        pooled = (rec["layer"], rec["alpha"]) in checked
        assert rec["random_draws"] == (4 if pooled else 1), e
    assert (out / "dose-response-anger.png").is_file() and (out / "summary.csv").is_file()
    rec = meta["recommended"]["anger"]
    assert rec["layer"] in (1, 2) and rec["alpha"] in alphas
    assert json.loads(settings_path(path).read_text())["models"]
    # steer without --layer/--alpha uses it (greedy, as the sweep decodes)
    code, stdout, err = run(capsys, "steer", "--model", model_dir, "--vectors", path,
                            "--emotion", "anger", "--prompts", root / "prompts.txt",
                            "--out", root / "s.jsonl", "--max-new-tokens", "4",
                            "--decoding", "greedy", "--quiet")  # fmt: skip
    assert code == 0, err
    s = json.loads((root / "s.summary.json").read_text())
    assert s["settings"]["layers"] == [rec["layer"]] and s["settings"]["alphas"] == [rec["alpha"]]
    assert "recommended by steer-sweep" in s["settings"]["source"]
    # the sweep's default push is held for the first 3 new tokens, and steer takes that over
    assert meta["settings"]["steer_tokens"] == rec["steer_tokens"] == 3
    assert s["settings"]["steer_tokens"] == 3 and "first 3 new tokens" in stdout
    # the recommended direction rows equal the sweep's rows for that setting
    sweep_rows = {(r["prompt_index"], r["continuation"]) for r in rows
                  if r["condition"] == "direction" and r["emotion"] == "anger"
                  and r["layer"] == rec["layer"] and r["alpha"] == rec["alpha"]}  # fmt: skip
    steer_rows = [json.loads(x) for x in (root / "s.jsonl").read_text().splitlines()]
    assert sweep_rows == {(r["prompt_index"], r["continuation"]) for r in steer_rows
                          if r["condition"] == "direction"}  # fmt: skip


def test_sweep_refuses_bad_input(setup, capsys):
    path, root, model_dir = setup[2:]
    out = root / "bad-sweep"
    code, _, err = run(capsys, "steer-sweep", "--model", model_dir, "--vectors", path,
                       "--emotion", "joy", "--out", out)  # fmt: skip
    assert code == 2 and "no 'joy' direction" in one_error_line(err) and not out.exists()
    code, _, err = run(capsys, "steer-sweep", "--model", model_dir, "--vectors", path,
                       "--layer", "77", "--out", out)  # fmt: skip
    assert code == 2 and "layer 77 is not in" in one_error_line(err) and not out.exists()


@pytest.mark.parametrize("method", ["ridge", "procrustes"])
def test_mapped_directions_follow_a_planted_rotation(method):
    from emocircuits.compare.maps import map_directions

    rng = np.random.default_rng(0)
    xa = rng.normal(size=(400, 12)) * np.linspace(3, 1, 12)
    q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    xb = 3.7 * xa @ q + 5.0  # rotated, scaled, shifted
    d = rng.normal(size=(3, 12))
    got = map_directions(xa, xb, d, method=method)
    want = d @ q
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.abs((got * want).sum(1)).min() > 0.999


def test_map_vectors_then_steer_with_the_transferred_direction(setup, tiny, tmp_path, capsys):
    lm, _, path, root, model_dir = setup
    other = tiny("gpt2")
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean",))
    ec.extract(other, ec.load_dataset("baseline"), tmp_path / "b", spec, progress=False)
    va = compute_vectors(ec.load_activations(tmp_path / "b"), method="one_vs_rest")
    va_path = va.save(tmp_path / "va.safetensors")
    out = tmp_path / "mapped.safetensors"
    code, _, err = run(capsys, "map-vectors", "--source", tmp_path / "b", "--target",
                            root / "acts", "--vectors", va_path, "--out", out)  # fmt: skip
    assert code == 0, err
    mapped = EmotionVectors.load(out)
    assert mapped.layers == list(range(lm.arch.n_layers + 1))
    assert mapped.provenance["map"] == "ridge" and mapped.method == "mapped:one_vs_rest"
    code, _, err = run(capsys, "steer", "--model", model_dir, "--vectors", path, "--transfer",
                       out, "--emotion", "anger", "--prompts", root / "prompts.txt",
                       "--out", tmp_path / "t.jsonl", "--layer", "2", "--alpha", "2",
                       "--max-new-tokens", "3", "--quiet")  # fmt: skip
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    conds = {r["condition"] for r in rows}
    assert conds == {"none", "direction", "random", "transfer"}

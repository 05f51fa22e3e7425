"""Sampling with seeds (generation.py), the rows that record it, intervals over prompts x
seeds (summary.py) and the second judge (TextBlob polarity, judge_agreement).

Sampling is the Gumbel-max trick inside ``generate(do_sample=False)``: the tests check
that a row's text does not depend on its batch (sizes 1, 3, 8 and a halving after an
out-of-memory), that seeds reproduce and differ, that a vanishing temperature is greedy,
that top-p keeps only the nucleus, and that the draws follow the warped softmax."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_batching import memory_for

import emocircuits as ec
from emocircuits.errors import DataError
from emocircuits.geometry import compute_vectors
from emocircuits.interventions import Steer, typical_norms
from emocircuits.interventions.generation import (
    Decoding,
    GumbelSampler,
    generate,
    prompt_ids,
    warp,
)
from emocircuits.interventions.run import conditions, run_conditions, steer
from emocircuits.interventions.scorers import score_texts, textblob_polarity
from emocircuits.interventions.summary import judge_agreement, summarize
from emocircuits.models.batching import Batches

from helpers import run

PROMPTS = ["The meeting moved to Thursday.", "I went to the store and", "Here is the plan:",
           "The bus was late again, so", "We met at noon.",
           "The shop opens at nine and"]  # fmt: skip
SAMPLE = Decoding("sample", temperature=1.0, top_p=0.95)
# float32 Gumbel noise: u = torch.rand in {0, 2^-24, ..., 1 - 2^-24}; for u > 0 the noise
# -log(-log u) lies in [-log(24 ln 2), -log(-log(1 - 2^-24))] = [-2.81, 16.64]
NOISE_SPREAD = -math.log(-math.log1p(-(2.0**-24))) + math.log(24 * math.log(2))


def _per_row(lm):
    v = np.random.default_rng(0).normal(size=lm.arch.width).astype(np.float32)
    return [[Steer(2, v, a, 1.0)] for a in (0.0, 1.0, 2.0, 0.5, 0.0, 1.5)]


def test_a_sampled_row_does_not_depend_on_its_batch(tiny):
    lm = tiny("llama")  # adds <bos>: prompts of different lengths, left padding
    rows = _per_row(lm)
    kw = {"per_row": rows, "max_new_tokens": 6, "decoding": SAMPLE, "seeds": 7}
    want = generate(lm, PROMPTS, batch_size=1, **kw)
    assert generate(lm, PROMPTS, batch_size=3, **kw) == want
    assert generate(lm, PROMPTS, batch_size=8, **kw) == want
    b = Batches(8, "steer")
    with memory_for(3) as seen:  # 6 rows fail, halved to 3
        assert generate(lm, PROMPTS, batch_size=b, **kw) == want
    assert seen["failed"] >= 1 and b.provenance["batch_size_used"]["generate"] == 3
    # the same prompt in another order, next to other prompts: the same text
    back = generate(lm, PROMPTS[::-1], per_row=rows[::-1], max_new_tokens=6, decoding=SAMPLE,
                    seeds=7, batch_size=8)  # fmt: skip
    assert back[::-1] == want


def test_seeds_reproduce_and_differ(tiny):
    lm = tiny("gpt2")
    kw = {"max_new_tokens": 8, "decoding": SAMPLE}
    a = generate(lm, PROMPTS, seeds=0, **kw)
    assert generate(lm, PROMPTS, seeds=0, **kw) == a
    b = generate(lm, PROMPTS, seeds=1, **kw)
    assert sum(x != y for x, y in zip(a, b, strict=True)) >= len(PROMPTS) - 1
    # per-row seeds: row i with seed s is the row of a call with seed s for all
    mixed = generate(lm, PROMPTS, seeds=[0, 1, 0, 1, 0, 1], **kw)
    assert mixed == [(a, b)[i % 2][i] for i in range(len(PROMPTS))]
    assert generate(lm, PROMPTS, max_new_tokens=8) != a  # sampling is not greedy
    with pytest.raises(DataError, match="2 seeds for 6 prompts"):
        generate(lm, PROMPTS, seeds=[0, 1], **kw)


def test_a_vanishing_temperature_is_greedy(tiny):
    """With temperature T every logit gap g becomes g / T; once g / T exceeds the spread of
    two float32 Gumbel draws (NOISE_SPREAD) the noise cannot reorder the top token."""
    lm = tiny("gpt2")
    t = 1e-5
    greedy = generate(lm, PROMPTS, max_new_tokens=6)
    cold = generate(lm, PROMPTS, max_new_tokens=6, decoding=Decoding("sample", t, 1.0), seeds=3)
    for p, g in zip(prompt_ids(lm, PROMPTS), greedy, strict=True):  # the premise, checked
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([p + g])).logits[0, len(p) - 1 : -1]
        top2 = logits.topk(2, -1).values
        assert float((top2[:, 0] - top2[:, 1]).min()) > NOISE_SPREAD * t * 1.01
    assert cold == greedy


def test_top_p_keeps_the_nucleus_and_draws_follow_the_softmax():
    """Planted distribution p = (0.5, 0.3, 0.15, 0.05). top_p = 0.75 keeps {0, 1} (the
    tokens outside hold 0.2 <= 0.25), renormalised to (0.625, 0.375); top_p = 1 keeps all.
    N = 6000 independent draws (distinct rows and steps); each count within 4.5 binomial
    standard deviations of N p (a false alarm per count has probability < 1e-5)."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = p.log()
    nucleus = warp(logits[None], Decoding("sample", 1.0, 0.75))[0]
    assert torch.isinf(nucleus[2:]).all() and torch.isfinite(nucleus[:2]).all()

    def draws(dec: Decoding, n_rows: int, steps: int) -> np.ndarray:
        got = []
        sampler = GumbelSampler(dec, [[i] for i in range(n_rows)], [0] * n_rows, start=1)
        for step in range(steps):
            ids = torch.zeros((n_rows, 1 + step), dtype=torch.long)
            got.append(sampler(ids, logits.repeat(n_rows, 1)).argmax(-1).numpy())
        return np.concatenate(got)

    hot = (p.sqrt() / p.sqrt().sum()).numpy()  # temperature 2: p^(1/2), renormalised
    for dec, want in ((Decoding("sample", 1.0, 0.75), np.array([0.625, 0.375, 0, 0])),
                      (Decoding("sample", 1.0, 1.0), p.numpy()),
                      (Decoding("sample", 2.0, 1.0), hot)):  # fmt: skip
        x = draws(dec, 1500, 4)
        n = len(x)
        counts = np.bincount(x, minlength=4)
        sd = np.sqrt(n * want * (1 - want))
        assert (np.abs(counts - n * want) <= 4.5 * sd).all(), (dec, counts, n * want)
        assert counts[want == 0].sum() == 0


def test_decoding_values_are_checked():
    assert Decoding.of(None).record() == "greedy"
    assert Decoding.of("sample", top_p=0.5).record() == {
        "kind": "sample", "temperature": 0.7, "top_p": 0.5}  # fmt: skip
    assert Decoding.of(Decoding.of("sample").record()) == Decoding("sample")
    for bad, match in (({"kind": "beam"}, "decoding must be one of greedy, sample"),
                       ({"kind": "sample", "temperature": 0}, "temperature must be"),
                       ({"kind": "sample", "temperature": float("nan")}, "temperature must be"),
                       ({"kind": "sample", "top_p": 1.5}, "top_p must be"),
                       ({"kind": "sample", "top_p": 0}, "top_p must be")):  # fmt: skip
        with pytest.raises(DataError, match=match):
            Decoding(**bad)


@pytest.fixture(scope="module")
def setup(tiny, tiny_dir, tmp_path_factory):
    lm = ec.load_model(tiny_dir("gpt2"), progress=False)
    root = tmp_path_factory.mktemp("sampling")
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean",))
    acts = ec.extract(lm, ec.load_dataset("baseline"), root / "acts", spec, progress=False)
    vecs = compute_vectors(acts, method="one_vs_rest")
    path = vecs.save(root / "v.safetensors")
    (root / "prompts.txt").write_text("\n".join(PROMPTS[:3]) + "\n")
    return lm, vecs, path, root, str(tiny_dir("gpt2"))


def test_rows_record_their_decoding_and_seed(setup):
    lm, vecs, _, _, _ = setup
    scales = typical_norms(lm, PROMPTS)
    conds = conditions(vecs, "anger", layers=[1], alphas=[1.0], scales=scales)
    prompts = PROMPTS[:3]
    rows = run_conditions(lm, prompts, conds, max_new_tokens=4, decoding=SAMPLE, seeds=(5, 9))
    assert len(rows) == len(conds) * len(prompts) * 2
    assert {r["seed"] for r in rows} == {5, 9}
    assert all(r["decoding"] == {"kind": "sample", "temperature": 1.0, "top_p": 0.95}
               for r in rows)  # fmt: skip
    # a row is generate() of its prompt with its steering and seed, alone
    for r in rows:
        if r["condition"] == "direction":
            ids = generate(lm, [r["prompt"]], steers=conds[1].steers, max_new_tokens=4,
                           decoding=SAMPLE, seeds=r["seed"])[0]  # fmt: skip
            assert r["continuation"] == lm.tokenizer.decode(ids, skip_special_tokens=True)
    greedy = run_conditions(lm, prompts, conds, max_new_tokens=4)
    assert len(greedy) == len(conds) * len(prompts)
    assert {(r["decoding"], r["seed"]) for r in greedy} == {("greedy", None)}
    assert all(-1 <= r["textblob"] <= 1 for r in rows + greedy)
    with pytest.raises(DataError, match="seeds must be distinct"):
        run_conditions(lm, prompts, conds, max_new_tokens=4, decoding=SAMPLE, seeds=(1, 1))


def test_steer_samples_by_default_and_says_so(setup, capsys, tmp_path):
    lm, _, path, root, model_dir = setup
    prompts = str(root / "prompts.txt")
    res = steer(lm, prompts, path, "anger", layer=1, alpha=1.0, max_new_tokens=3,
                n_random=1, progress=False)  # fmt: skip
    st = res.meta["settings"]
    assert st["decoding"] == {"kind": "sample", "temperature": 0.7, "top_p": 0.9}
    assert st["seeds"] == [0, 1, 2] and len(res.generations) == 3 * 3 * 3
    agree = res.meta["judge_agreement"]
    assert agree["settings"]["n"] == 2 and agree["rows"]["n"] == 27  # direction, random
    by = {r["condition"]: r for r in res.summary}
    assert by["direction"]["n"] == 9 and by["direction"]["n_prompts"] == 3
    assert "textblob_change" in by["direction"] and "textblob_change" in res.rows()[1]
    code, stdout, err = run(capsys, "steer", "--model", model_dir, "--vectors", path,
                            "--emotion", "anger", "--prompts", prompts, "--layer", "1",
                            "--alpha", "1.0", "--max-new-tokens", "3", "--n-random", "1",
                            "--decoding", "sample", "--temperature", "1.5", "--top-p", "0.5",
                            "--seeds", "4,2", "--out", tmp_path / "s.jsonl", "--quiet")  # fmt: skip
    assert code == 0, err
    meta = json.loads((tmp_path / "s.summary.json").read_text())
    assert meta["settings"]["decoding"] == {"kind": "sample", "temperature": 1.5, "top_p": 0.5}
    assert meta["settings"]["seeds"] == [4, 2] and "judge_agreement" in meta
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert sorted({r["seed"] for r in rows}) == [2, 4] and len(rows) == 3 * 3 * 2
    assert "VADER and TextBlob" in stdout and "TextBlob" in stdout.splitlines()[0]
    greedy = steer(lm, prompts, path, "anger", layer=1, alpha=1.0, max_new_tokens=3,
                   n_random=1, progress=False, decoding="greedy")  # fmt: skip
    assert greedy.meta["settings"]["decoding"] == "greedy"
    assert greedy.meta["settings"]["seeds"] is None and len(greedy.generations) == 9


@pytest.mark.parametrize(
    "extra, flag",
    [(["--temperature", "0"], "--temperature"), (["--temperature", "hot"], "--temperature"),
     (["--top-p", "1.5"], "--top-p"), (["--top-p", "0"], "--top-p"),
     (["--seeds", "a,b"], "--seeds"), (["--seeds", "1,1"], "--seeds"),
     (["--seeds", "-1"], "--seeds"), (["--decoding", "beam"], "--decoding")],
)  # fmt: skip
def test_cli_refuses_bad_decoding_values_with_one_line(tmp_path, capsys, extra, flag):
    from emocircuits.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["steer", "--vectors", "v.safetensors", "--emotion", "anger", "--out",
              str(tmp_path / "x.jsonl"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"argument {flag}" in err and not (tmp_path / "x.jsonl").exists()


def test_textblob_polarity_on_planted_texts():
    texts = ["Thank you, this is wonderful!", "The bus is at noon.",
             "I hate this, it is terrible.", ""]  # fmt: skip
    got = textblob_polarity(texts)
    assert got[0] == 1.0 and got[1] == 0.0 and got[3] == 0.0
    # "hate" -0.8 and "terrible" -1.0 in TextBlob's lexicon, averaged: -0.9
    assert got[2] == pytest.approx(-0.9)
    assert score_texts(texts)["textblob"].tolist() == got.tolist()


def _rows(values: dict[tuple[str, int, int], float], tb=None) -> list[dict]:
    keys = {"marker_gratitude": 0.0, "marker_apology": 0.0, "marker_anger": 0.0,
            "repetition": 0.0, "perplexity": 2.0, "continuation": "a b c"}  # fmt: skip
    return [{**keys, "prompt_index": i, "seed": s, "condition": c, "emotion": None,
             "layer": None if c == "none" else 1, "alpha": 0.0 if c == "none" else 1.0,
             "vader": v, "textblob": v if tb is None else tb(c, i, s, v)}
            for (c, i, s), v in values.items()]  # fmt: skip


def test_intervals_resample_prompts_with_all_their_seeds():
    """Three seeds that agree exactly add no information: the interval must equal the
    one-seed interval. A bootstrap over rows would narrow it by about sqrt(3)."""
    rng = np.random.default_rng(1)
    per_prompt = rng.normal(size=12)
    one = _rows({(c, i, 0): (0.0 if c == "none" else float(per_prompt[i]))
                 for c in ("none", "direction") for i in range(12)})  # fmt: skip
    three = _rows({(c, i, s): (0.0 if c == "none" else float(per_prompt[i]))
                   for c in ("none", "direction") for i in range(12)
                   for s in range(3)})  # fmt: skip
    a = {r["condition"]: r for r in summarize(one)}["direction"]
    b = {r["condition"]: r for r in summarize(three)}["direction"]
    assert (b["n"], b["n_prompts"], a["n_prompts"]) == (36, 12, 12)
    for key in ("vader", "vader_change", "textblob_change"):
        assert (b[key], b[f"{key}_lo"], b[f"{key}_hi"]) == (a[key], a[f"{key}_lo"], a[f"{key}_hi"])
    # rows as if each were its own prompt: the too-narrow interval the clusters avoid
    flat = [{**r, "prompt_index": 3 * r["prompt_index"] + r["seed"], "seed": None}
            for r in three]  # fmt: skip
    c = {r["condition"]: r for r in summarize(flat)}["direction"]
    ratio = (a["vader_hi"] - a["vader_lo"]) / (c["vader_hi"] - c["vader_lo"])
    assert 1.4 < ratio < 2.1  # sqrt(3) = 1.73, up to the bootstrap's own noise


def test_changes_pair_each_row_with_the_none_row_of_its_seed():
    vals = {("none", 0, 0): 0.1, ("none", 0, 1): -0.3, ("direction", 0, 0): 0.5,
            ("direction", 0, 1): 0.2}  # fmt: skip
    d = {r["condition"]: r for r in summarize(_rows(vals))}["direction"]
    assert d["vader_change"] == pytest.approx(((0.5 - 0.1) + (0.2 + 0.3)) / 2)
    with pytest.raises(DataError, match="no `none` row for prompt 0, seed 2"):
        summarize(_rows({**vals, ("direction", 0, 2): 0.0}))


def test_judge_agreement_by_hand():
    # settings (layer = k): VADER changes 0.4, 0.1, -0.2, -0.5; TextBlob 0.2, -0.1, -0.3, -0.6
    vader = [0.4, 0.1, -0.2, -0.5]
    blob = [0.2, -0.1, -0.3, -0.6]
    rows = _rows({("none", 0, 0): 0.0})
    for k, (v, t) in enumerate(zip(vader, blob, strict=True)):
        rows += [{**rows[0], "condition": "direction", "emotion": "anger", "layer": k,
                  "alpha": 1.0, "vader": v, "textblob": t}]  # fmt: skip
    rows += [{**rows[1], "emotion": "gratitude", "layer": 9, "vader": 0.9, "textblob": -0.9}]
    got = judge_agreement(rows, "anger")
    assert got["settings"] == {"n": 4, "spearman": 1.0, "sign_agreement": 0.75}
    # rows: none and the four settings; ranks (3, 5, 4, 2, 1) vs (4, 5, 3, 2, 1):
    # 1 - 6 * 2 / (5 * 24)
    assert got["rows"] == {"n": 5, "spearman": 0.9}
    every = judge_agreement(rows)  # gratitude's setting too: ranks 5 vs 1 on VADER/TextBlob
    assert every["settings"]["n"] == 5 and every["settings"]["sign_agreement"] == 0.6
    assert every["settings"]["spearman"] == pytest.approx(0.0)
    with pytest.raises(DataError, match="needs rows with"):
        judge_agreement([{k: v for k, v in r.items() if k != "textblob"} for r in rows])


def test_the_decoding_options_default_to_the_librarys():
    import argparse

    from emocircuits.commands import steer as steer_cmd
    from emocircuits.commands._common import lib_default

    sub = argparse.ArgumentParser().add_subparsers()
    steer_cmd.register(sub)
    args = sub.choices["steer"].parse_args(["--vectors", "v", "--out", "o", "--emotion", "x"])
    for name in ("decoding", "temperature", "top_p", "seeds"):
        assert getattr(args, name) == lib_default(steer, name), name
    assert args.decoding == "sample" and args.seeds == (0, 1, 2)
    args = sub.choices["steer"].parse_args(["--vectors", "v", "--out", "o", "--emotion", "x",
                                            "--seeds", "3, 1", "--top-p", "1"])  # fmt: skip
    assert args.seeds == (3, 1) and args.top_p == 1.0

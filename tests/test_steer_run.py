"""A steering run on a tiny model: the conditions, the unsteered rows equal plain greedy
generation, perplexity equals a computation by hand, the summary pairs prompts; the CLI
writes JSONL + summary and refuses bad input with one line, writing nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import emocircuits as ec
from emocircuits.data.dataset import load_prompts
from emocircuits.geometry import compute_vectors
from emocircuits.interventions import Steer, typical_norms
from emocircuits.interventions.generation import generate, perplexity
from emocircuits.interventions.run import steer_prompts
from emocircuits.interventions.summary import summarize

from helpers import one_error_line, run

PROMPTS = ["The meeting moved to Thursday.", "I went to the store and", "Here is the plan:"]


@pytest.fixture(scope="module")
def setup(tiny, tiny_dir, tmp_path_factory):
    lm = tiny("gpt2")
    lm.provenance["folder"] = str(tiny_dir("gpt2"))
    root = tmp_path_factory.mktemp("steer")
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean",))
    acts = ec.extract(lm, ec.load_dataset("baseline"), root / "acts", spec, progress=False)
    vecs = compute_vectors(acts, method="one_vs_rest")
    path = vecs.save(root / "v.safetensors")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return lm, vecs, path, root


def test_rows_conditions_and_the_unsteered_baseline(setup):
    lm, vecs, _, _ = setup
    scales = typical_norms(lm, PROMPTS)
    rows = steer_prompts(lm, PROMPTS, vecs, "anger", layers=[1, 2], alphas=[0.5, 2.0],
                         scales=scales, max_new_tokens=5, batch_size=32,
                         n_random=1)  # fmt: skip
    conds = [(r["condition"], r["layer"], r["alpha"]) for r in rows]
    assert len(rows) == len(PROMPTS) * (1 + 2 * 2 * 2)
    assert conds.count(("none", None, 0.0)) == len(PROMPTS)
    assert conds.count(("direction", 2, 2.0)) == conds.count(("random", 1, 0.5)) == len(PROMPTS)
    # `none` is plain greedy generation, prompt by prompt
    tok = lm.tokenizer
    for r in [r for r in rows if r["condition"] == "none"]:
        enc = tok(r["prompt"], return_tensors="pt")
        kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": tok.pad_token_id}
        with torch.no_grad():
            ids = lm.model.generate(**enc, **kw)[0, enc["input_ids"].shape[1] :].tolist()
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id)]
        assert r["continuation"] == tok.decode(ids, skip_special_tokens=True)
    strong = [
        r["continuation"] for r in rows if r["condition"] == "direction" and r["alpha"] == 2.0
    ]
    plain = [r["continuation"] for r in rows if r["condition"] == "none"]
    assert strong[: len(PROMPTS)] != plain  # a strong push changes the text
    for r in rows:
        assert (-1 <= r["vader"] <= 1 and r["perplexity"] > 0) or r["n_new_tokens"] == 0


def test_perplexity_by_hand_and_summary_pairs_prompts(setup):
    lm = setup[0]
    ids = generate(lm, PROMPTS[:1], max_new_tokens=4)
    p = lm.tokenizer(PROMPTS[0])["input_ids"]
    full = torch.tensor([p + ids[0]])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=full).logits[0], -1)
    nll = -np.mean([float(logp[len(p) - 1 + i, t]) for i, t in enumerate(ids[0])])
    assert perplexity(lm, PROMPTS[:1], ids)[0] == pytest.approx(np.exp(nll), rel=1e-4)
    rows = [
        {"prompt_index": i, "condition": c, "layer": None if c == "none" else 1,
         "alpha": 0.0 if c == "none" else 1.0, "vader": v, "marker_gratitude": 0.0,
         "marker_apology": 0.0, "marker_anger": 0.0, "repetition": 0.0, "perplexity": pp,
         "continuation": "a b"}
        for i, (c, v, pp) in enumerate([("none", 0.1, 2.0), ("none", -0.2, 4.0)])
    ] + [
        {"prompt_index": 0, "condition": "direction", "layer": 1, "alpha": 1.0, "vader": 0.5,
         "marker_gratitude": 1.0, "marker_apology": 0.0, "marker_anger": 0.0,
         "repetition": 0.0, "perplexity": 3.0, "continuation": "a b"},
        {"prompt_index": 1, "condition": "direction", "layer": 1, "alpha": 1.0, "vader": 0.6,
         "marker_gratitude": 0.0, "marker_apology": 0.0, "marker_anger": 0.0,
         "repetition": 0.0, "perplexity": 4.0, "continuation": "a b"},
    ]  # fmt: skip
    s = {r["condition"]: r for r in summarize(rows)}
    assert s["direction"]["vader_change"] == pytest.approx(((0.5 - 0.1) + (0.6 + 0.2)) / 2)
    assert s["direction"]["perplexity_ratio_median"] == pytest.approx((1.5 + 1.0) / 2)
    assert s["direction"]["marker_gratitude"] == pytest.approx(0.5)
    assert s["none"]["vader_change"] == 0.0


def test_a_settings_interval_does_not_depend_on_other_settings_rows():
    """The sweep adds random draws at some settings and compares the others before and
    after: their intervals must not move."""
    rng = np.random.default_rng(0)
    keys = {"marker_gratitude": 0.0, "marker_apology": 0.0, "marker_anger": 0.0,
            "repetition": 0.0, "perplexity": 2.0, "continuation": "a b"}  # fmt: skip
    rows = [{**keys, "prompt_index": i, "condition": c, "layer": layer, "alpha": 1.0,
             "vader": float(rng.normal())}
            for c, layer in (("none", None), ("direction", 1), ("random", 1))
            for i in range(12)]  # fmt: skip
    before = {r["condition"]: r for r in summarize(rows)}
    extra = [{**r, "vader": float(rng.normal())} for r in rows if r["condition"] == "random"]
    after = {r["condition"]: r for r in summarize(extra + rows)}
    assert after["direction"] == before["direction"]
    assert after["random"]["n"] == 24 and after["random"] != before["random"]


def test_cli_writes_jsonl_and_summary(setup, capsys):
    lm, _, path, root = setup
    model_dir = lm.provenance["folder"]
    out = root / "out" / "anger.jsonl"
    code, stdout, err = run(capsys, "steer", "--model", model_dir, "--vectors", path,
                            "--emotion", "anger", "--prompts", root / "prompts.txt",
                            "--out", out, "--layer", "1", "--alpha", "1.0",
                            "--max-new-tokens", "4", "--quiet")  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # none, direction, 4 random draws; sampled (the default) with 3 seeds
    assert len(rows) == (1 + 1 + 4) * len(PROMPTS) * 3
    assert {r["seed"] for r in rows} == {0, 1, 2}
    assert {"prompt", "condition", "layer", "alpha", "continuation", "vader"} <= set(rows[0])
    draws = [r["draw"] for r in rows if r["condition"] == "random"]
    assert sorted(set(draws)) == [0, 1, 2, 3] and len(draws) == 4 * len(PROMPTS) * 3
    rand = {(r["draw"], r["prompt_index"]): r["continuation"] for r in rows
            if r["condition"] == "random" and r["seed"] == 0}  # fmt: skip
    assert len({tuple(rand[d, i] for i in range(len(PROMPTS))) for d in range(4)}) > 1
    summary = {r["condition"]: r for r in json.loads(out.with_suffix(".summary.json")
                                                        .read_text())["summary"]}  # fmt: skip
    assert summary["random"]["n"] == 4 * len(PROMPTS) * 3  # the draws pooled into one row
    assert summary["random"]["n_prompts"] == len(PROMPTS)  # the bootstrap's clusters
    meta = json.loads(out.with_suffix(".summary.json").read_text())
    assert meta["emotion"] == "anger" and meta["settings"]["layers"] == [1]
    assert len(meta["scales"]["values"]) == lm.arch.n_layers + 1
    assert "direction" in stdout and "random" in stdout
    assert meta["settings"]["steer_tokens"] is None and {r["steer_tokens"] for r in rows} == {None}


def test_cli_steer_tokens_holds_the_push_for_the_first_tokens_only(setup, capsys):
    lm, vecs, path, root = setup
    out = root / "out" / "first2.jsonl"
    code, _, err = run(capsys, "steer", "--model", lm.provenance["folder"], "--vectors", path,
                       "--emotion", "anger", "--prompts", root / "prompts.txt", "--out", out,
                       "--layer", "1", "--alpha", "1.0", "--max-new-tokens", "6",
                       "--steer-tokens", "2", "--n-random", "1", "--decoding", "greedy",
                       "--quiet")  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert json.loads(out.with_suffix(".summary.json").read_text())["settings"]["steer_tokens"] == 2
    assert {r["steer_tokens"] for r in rows} == {2}
    # the rows are those of generate() with the same 2-token push
    prompts = load_prompts(root / "prompts.txt")
    meta = json.loads(out.with_suffix(".summary.json").read_text())
    scale = meta["scales"]["values"][1]
    v = vecs.directions["anger"][vecs.layers.index(1)]
    want = generate(lm, prompts, steers=[Steer(1, v, 1.0, scale)], steer_tokens=2, max_new_tokens=6)
    got = {r["prompt_index"]: r["continuation"] for r in rows if r["condition"] == "direction"}
    texts = [lm.tokenizer.decode(w, skip_special_tokens=True) for w in want]
    assert [got[i] for i in range(len(prompts))] == texts


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--emotion", "joy", "--layer", "1", "--alpha", "1"], "no 'joy' direction"),
        (["--emotion", "anger", "--layer", "99", "--alpha", "1"], "layer 99 is not in"),
        (["--emotion", "anger"], "no recommended settings"),
    ],
)
def test_cli_refuses_bad_input_with_one_line(setup, capsys, extra, message):
    _, _, path, root = setup
    out = root / "bad" / "x.jsonl"
    code, _, err = run(capsys, "steer", "--vectors", path, "--prompts", root / "prompts.txt",
                       "--out", out, *extra)  # fmt: skip
    assert code == 2 and message in one_error_line(err) and not out.exists()
    (root / "empty.txt").write_text("\n")
    code, _, err = run(capsys, "steer", "--vectors", path, "--prompts", root / "empty.txt",
                       "--out", out, "--emotion", "anger")  # fmt: skip
    assert code == 2 and "empty.txt:1" in one_error_line(err)


def test_cli_notes_directions_that_are_not_one_vs_rest(setup, capsys, tmp_path):
    lm, _, path, root = setup
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean",))
    acts = ec.extract(lm, ec.load_dataset("baseline"), tmp_path / "a", spec, progress=False)
    md = compute_vectors(acts, method="mean_diff").save(tmp_path / "md.safetensors")
    for vectors, noted in ((md, True), (path, False)):
        code, stdout, err = run(capsys, "steer", "--model", lm.provenance["folder"],
                                "--vectors", vectors, "--emotion", "anger", "--prompts",
                                root / "prompts.txt", "--out", tmp_path / "o.jsonl",
                                "--layer", "1", "--alpha", "1", "--max-new-tokens", "2",
                                "--n-random", "1", "--quiet")  # fmt: skip
        assert code == 0, err
        assert ("holds mean_diff directions" in stdout) is noted


@pytest.mark.parametrize("value", ["0", "few"])
def test_cli_refuses_a_bad_steer_tokens_value(setup, capsys, value):
    from emocircuits.cli import main

    _, _, path, root = setup
    with pytest.raises(SystemExit) as exit_:  # argparse's own errors: one line, status 2
        main(["steer", "--vectors", str(path), "--emotion", "anger", "--out",
              str(root / "bad" / "t.jsonl"), "--steer-tokens", value])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "argument --steer-tokens:" in err and not (root / "bad" / "t.jsonl").exists()

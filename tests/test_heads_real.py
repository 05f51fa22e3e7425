"""Heads and neurons on the real SmolLM2-135M: the contributions rebuild transformers' own
attention and MLP outputs, the logit difference is transformers' own, and a small analysis
gives the expected signs (marker ``real``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emocircuits as ec
from emocircuits.capture.capture import CaptureSpec, capture
from emocircuits.geometry.directions import emotion_directions
from emocircuits.geometry.vectors import EmotionVectors, normalise
from emocircuits.interventions.heads import (
    analyze_heads,
    bias_contributions,
    capture_heads,
    head_contributions,
    write_weights,
)
from emocircuits.interventions.readout import logit_diff, readout, readout_texts

from helpers import close

pytestmark = pytest.mark.real


def _sample(n: int):
    ds = ec.load_dataset("extended")
    seen: dict[str, int] = {}
    out = []
    for e in ds.examples:
        if seen.get(e.emotion, 0) < n:
            seen[e.emotion] = seen.get(e.emotion, 0) + 1
            out.append(e)
    return out


def test_real_heads_rebuild_attention_and_logit_diff_is_transformers(smollm2):
    lm = smollm2
    ex = _sample(2)[:5]
    texts, spans = [e.text for e in ex], [e.emotion_span for e in ex]
    r = readout(lm.tokenizer, "gratitude")
    cap = capture_heads(
        lm, texts, position="mean", spans=spans, readouts={"gratitude": r}, batch_size=5
    )
    ref = capture(lm, texts, CaptureSpec(sites=("attn", "resid"), positions=("mean",)))
    w, eye, L = write_weights(lm.arch), np.eye(lm.arch.width, dtype=np.float32), 6
    attn = head_contributions(cap.z["readout"], w, eye, L).sum(2)
    attn += bias_contributions(cap.attn_scale["readout"], w.o_bias, w.attn_gain, eye, L)
    close(attn, ref["attn/mean"][:, :L], "SmolLM2 heads vs attn")
    close(cap.resid["readout"], ref["resid/mean"], "SmolLM2 resid")
    for i, t in enumerate(readout_texts(texts)):
        with torch.no_grad():
            logits = lm.model(**lm.tokenizer(t, return_tensors="pt")).logits[0, -1]
        assert abs(cap.logit_diff["gratitude"][i] - logit_diff(logits, r)) < 1e-3


def test_real_small_analysis(smollm2):
    lm = smollm2
    ex = _sample(10)
    x = capture(lm, [e.text for e in ex], CaptureSpec(sites=("resid",), positions=("mean",)))
    labels = [e.emotion for e in ex]
    dirs, norms = normalise(emotion_directions(x["resid/mean"], labels, method="one_vs_rest"))
    vecs = EmotionVectors(dirs, norms, list(range(31)), "one_vs_rest", "resid", "mean", "neutral")
    ds = ec.load_dataset("extended")
    res = analyze_heads(
        lm, ds, vecs, layer=15, top_k=(4,), n_random=3, n_ablate=4, n_per_class=10,
        n_boot=200, top_neurons=3, top_prompts=3, batch_size=16,
    )  # fmt: skip
    s = res.summary
    assert s["settings"]["layer"] == 15
    assert s["checks"]["neurons_plus_bias_vs_mlp_max_rel_error"] < 1e-4
    ld = {(r["readout"], r["label"]): r["mean"] for r in res.tables["logit_diff"]}
    # every emotion's feeling words are likelier after its own prompts than after neutral ones
    gaps = [ld[(e, e)] - ld[(e, "neutral")] for e in ("gratitude", "apology", "anger")]
    assert np.mean(gaps) > 0, gaps
    # the emotion directions separate the classes at layer 15
    sep = [r["cohens_d"] for r in res.tables["separation"] if r["layer"] == 15]
    assert min(sep) > 1.0
    # ablating the heads that write the direction most lowers the projection on it
    drops = [
        r["top_drop"]
        for r in res.tables["ablation"]
        if r["metric"] == "projection" and r["ranked_at"] == "mean"
    ]
    assert len(drops) == 3 and np.mean(drops) > 0, drops

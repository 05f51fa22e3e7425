"""Patching and ablation on tiny random models, against cases computed by hand or planted:
pairs have equal token lengths; the recovered fraction is a ratio of means; patching the
last layer at the readout position gives the emotion run's LD and patching a shared token
at the embedding changes nothing; the KV-cache shortcut equals a full forward pass with the
same edit (also with a sliding window shorter than the prompt); batched equals one pair at
a time; ablation leaves no component along the direction at any layer from L on and
nothing changes before; removing the whole space leaves a constant LD and a probe at
chance; the statistics of a hand-made ablation result; the CLI writes its folders and
refuses bad input with one line, writing nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import emocircuits as ec
from emocircuits.capture.hooks import count_hooks, hooked
from emocircuits.errors import DataError
from emocircuits.geometry.probes import fit_probe
from emocircuits.geometry.vectors import EmotionVectors
from emocircuits.interventions import readout as readout_module
from emocircuits.interventions.ablation import (
    AblationRun,
    Condition,
    ablating,
    direction_bases,
    evaluate,
    orthonormal,
    random_bases,
    run_ablation,
    split_rows,
)
from emocircuits.interventions.effects import empirical_p, recovered_fraction, removed_fraction
from emocircuits.interventions.forward import resid_edit_hooks, resume, trace, unembed
from emocircuits.interventions.patch_pairs import match_pairs
from emocircuits.interventions.patch_passes import _patch_fn
from emocircuits.interventions.patching import random_directions, run_patching
from emocircuits.interventions.readout import Readout, logit_diff, readout_texts

from conftest import TINY_CONFIGS
from helpers import close, one_error_line, run

ARCHS = ["gpt2", "llama", "gemma3_text"]  # absolute positions; BOS + RoPE; sliding window 4
EMOTIONS = ("gratitude", "anger")


def _readouts(emotions=EMOTIONS):
    """Planted readouts: a few token ids per emotion (the tiny vocabulary has no feeling
    words as single tokens)."""
    return {
        e: Readout(e, (10 + 7 * i, 11 + 7 * i), (40, 41, 42), (f"w{i}a", f"w{i}b"))
        for i, e in enumerate(emotions)
    }


def _vectors(lm, emotions=EMOTIONS, seed=0):
    rng = np.random.default_rng(seed)
    n = lm.arch.n_layers + 1
    dirs = {}
    for e in emotions:
        d = rng.normal(size=(n, lm.arch.width))
        dirs[e] = d / np.linalg.norm(d, axis=1, keepdims=True)
    norms = {e: np.ones(n) for e in emotions}
    return EmotionVectors(dirs, norms, list(range(n)), "planted", "resid", "mean", "neutral")


def _data(n_per_class=40):
    ds = ec.load_dataset("extended")
    out = []
    for lab in (*EMOTIONS, "neutral"):
        out += [e for e in ds.examples if e.emotion == lab][:n_per_class]
    return [e.text for e in out], [e.emotion for e in out]


# ---------------------------------------------------------------------- pairs, statistics
def test_pairs_have_equal_lengths_and_use_each_neutral_prompt_once():
    labels = ["anger"] * 5 + ["neutral"] * 4 + ["gratitude"] * 2
    lengths = [5, 5, 6, 7, 9, 5, 5, 5, 6, 6, 8]
    pairs, found = match_pairs(labels, lengths, ["anger", "gratitude"], min_pairs=1)
    # anger: length 5 (2 and 3 prompts -> 2 pairs), length 6 (1 and 1 -> 1); 7, 9 unmatched
    # gratitude: length 6 -> 1 pair, length 8 unmatched
    assert found == {"anger": 3, "gratitude": 1}
    for p in pairs:
        assert lengths[p.emotion_row] == lengths[p.neutral_row] == p.n_tokens
        assert labels[p.emotion_row] == p.emotion and labels[p.neutral_row] == "neutral"
    anger = [p for p in pairs if p.emotion == "anger"]
    assert len({p.neutral_row for p in anger}) == len(anger)  # no neutral prompt reused
    few, found2 = match_pairs(labels, lengths, ["anger"], n_pairs=2, min_pairs=1, seed=3)
    assert len(few) == 2 and found2 == {"anger": 3}
    assert match_pairs(labels, lengths, ["anger"], min_pairs=1, seed=3) == match_pairs(
        labels, lengths, ["anger"], min_pairs=1, seed=3
    )
    with pytest.raises(DataError, match="only 1 'gratitude' prompts"):
        match_pairs(labels, lengths, ["gratitude"], min_pairs=2)
    with pytest.raises(DataError, match="no 'joy' prompts"):
        match_pairs(labels, lengths, ["joy"], min_pairs=1)


def test_recovered_fraction_is_a_ratio_of_means_over_the_pairs_that_have_the_cell():
    e = np.array([2.0, 4.0, 1.0])
    n = np.array([0.0, 1.0, 0.0])
    p = np.array([[1.0, 4.0, 0.0], [2.0, np.nan, 1.0], [np.nan] * 3])
    v, lo, hi = recovered_fraction(p, e, n, n_boot=2000, seed=1)
    assert v[0] == pytest.approx((1 + 3 + 0) / (2 + 3 + 1))  # not the mean of 1/2, 1, 0
    assert v[1] == pytest.approx((2 + 1) / (2 + 1))  # pair 2 lacks the position
    assert np.isnan(v[2]) and np.isnan(lo[2]) and np.isnan(hi[2])
    assert lo[0] <= v[0] <= hi[0] and lo[1] == hi[1] == pytest.approx(1.0)
    # every pair recovered exactly: the interval collapses to 1
    v, lo, hi = recovered_fraction(e[None], e, n, n_boot=100)
    assert v[0] == lo[0] == hi[0] == pytest.approx(1.0)


def test_patch_fn_replaces_the_whole_vector_or_only_its_component_along_v():
    rng = np.random.default_rng(0)
    h = torch.tensor(rng.normal(size=(2, 5, 6)), dtype=torch.float32)
    src = torch.tensor(rng.normal(size=(2, 2, 6)), dtype=torch.float32)
    full = _patch_fn(src, slice(1, 3))(h)
    close(full[:, 1:3], src, "full patch")
    close(full[:, [0, 3, 4]], h[:, [0, 3, 4]], "other positions untouched")
    assert not torch.equal(full, h)  # and h itself is not modified in place
    v = torch.tensor(rng.normal(size=6), dtype=torch.float32)
    v = v / v.norm()
    d = _patch_fn(src, slice(1, 3), v)(h)
    # along v: the source's component; orthogonal to v: the original
    close(d[:, 1:3] @ v, src @ v, "component along v")
    close(d[:, 1:3] - (d[:, 1:3] @ v)[..., None] * v, h[:, 1:3] - (h[:, 1:3] @ v)[..., None] * v)
    # v along the difference of one row: directional = full for that row
    u = (src[0, 0] - h[0, 1]) / (src[0, 0] - h[0, 1]).norm()
    close(_patch_fn(src[:1, :1], slice(1, 2), u)(h[:1])[0, 1], src[0, 0], "v = difference")


# ------------------------------------------------------------------------- resumable pass
ALL_ARCHS = sorted(TINY_CONFIGS)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_resumed_rows_equal_the_model_and_edits_equal_hooked_runs(tiny, arch):
    """A resumed copy of a row from any block gives transformers' own logits (left-padded
    batch, any start); an edit on entry equals the same edit by a hook in a full pass."""
    lm = tiny(arch)
    n0 = count_hooks(lm.model)
    texts = readout_texts(["Thank you so much for all of the help today.", "Sorry!",
                           "The bus is late again."])  # fmt: skip
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    inputs = {**enc, "position_ids": pos}
    with torch.no_grad():
        want = lm.model(**inputs).logits[:, -1]
    L = lm.arch.n_layers
    tr = trace(lm, inputs)
    assert len(tr.resid) == L + 1 and count_hooks(lm.model) == n0
    ids = [3, 17, 40, 41]
    close(unembed(lm, tr.resid[L][:, -1], ids), want[:, ids], f"{arch} trace")
    src, start = [2, 0, 1, 0, 2, 1], [0, L, 1, 2, L - 1, 0]
    h = resume(lm, tr, src, start)
    close(unembed(lm, h[:, -1], ids), want[src][:, ids], f"{arch} resumed")
    # an edit entering at layer 2 = the same edit by a hook on block 1's output
    v = torch.randn(lm.arch.width)
    h = resume(lm, tr, [0, 1, 2], [2, 2, 2], enter=lambda i, rows: tr.resid[i][rows] + v)
    with torch.no_grad(), hooked(resid_edit_hooks(lm.arch, {2: lambda x: x + v})):
        hooked_logits = lm.model(**inputs).logits[:, -1]
    close(unembed(lm, h[:, -1], ids), hooked_logits[:, ids], f"{arch} edited")
    part = trace(lm, inputs, stop=2)
    assert part.stop == 2 and count_hooks(lm.model) == n0
    close(part.resid[2], tr.resid[2])


# ------------------------------------------------------------------------------- patching
@pytest.fixture(scope="module")
def patched(tiny):
    texts, labels = _data()
    out = {}
    for arch in ARCHS:
        lm = tiny(arch)
        n0 = count_hooks(lm.model)
        res = run_patching(lm, texts, labels, _vectors(lm), _readouts(), n_pairs=4, n_positions=3,
                    batch_size=4)  # fmt: skip
        assert count_hooks(lm.model) == n0
        out[arch] = (lm, res, texts)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_cases_last_layer_readout_position_and_shared_tokens_at_the_embedding(patched, arch):
    lm, res, _ = patched[arch]
    assert len(res.pairs) == 8 and res.columns == ["body", "-3", "-2", "-1"]
    last, c1 = res.layers.index(lm.arch.n_layers), res.columns.index("-1")
    # the last layer at the readout position: the emotion run's logits, LD recovered = 1
    close(res.full[last, c1], res.ld_emotion, "last layer, position -1")
    # the cue tokens are shared: at the embedding a patch there changes nothing
    assert {"-1", "-2"} <= set(res.column_tokens)
    for col in res.column_tokens:
        close(res.full[0, res.columns.index(col)], res.ld_neutral, f"layer 0, {col}")
        close(res.directional[0, res.columns.index(col)], res.ld_neutral)
    # before the readout position nothing reaches the last layer's readout
    close(res.full[last, res.columns.index("-2")], res.ld_neutral, "last layer, -2")
    assert np.isfinite(res.full).all() and np.isfinite(res.directional_all).all()
    assert not np.allclose(res.full[1], res.ld_neutral)  # something happens in between
    rows = res.table(n_boot=50)
    gaps = {g["emotion"]: g for g in res.gaps(n_boot=50)}
    assert set(gaps) == set(EMOTIONS) and gaps["anger"]["pairs_used"] == 4
    kinds = {(r["kind"], r["position"]) for r in rows}
    assert ("directional", "all") in kinds and ("random", "all") in kinds
    assert ("full", "body") in kinds and ("full", "-1") in kinds
    assert len(rows) == len(EMOTIONS) * len(res.layers) * (2 * len(res.columns) + 2)


def _full_forward_patch(lm, ids_e, ids_n, layer, pos, r):
    """Reference without KV cache or the library's hooks: the emotion run's residual at
    (layer, pos) written into the neutral run by a plain forward hook."""
    blocks = lm.arch.blocks
    with torch.no_grad():
        hs = lm.model(input_ids=ids_e, output_hidden_states=True).hidden_states
    src = hs[layer]  # the input of block `layer` (layer < n_layers)

    def put(h):
        h = h.clone()
        h[:, pos] = src[:, pos]
        return h

    if layer == 0:
        handle = blocks[0].register_forward_pre_hook(
            lambda m, a, kw: ((put(a[0]), *a[1:]), kw) if a else
            (a, {**kw, "hidden_states": put(kw["hidden_states"])}), with_kwargs=True)  # fmt: skip
    else:
        handle = blocks[layer - 1].register_forward_hook(
            lambda m, a, o: (put(o[0]), *o[1:]) if isinstance(o, tuple) else put(o))  # fmt: skip
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids_n).logits[:, -1]
    finally:
        handle.remove()
    return logit_diff(logits, r)


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_shortcut_equals_a_full_forward_pass(patched, arch):
    lm, res, texts = patched[arch]
    full_texts = readout_texts(texts)
    rs = _readouts()
    for k in range(0, len(res.pairs), 3):
        p = res.pairs[k]
        ids = [torch.tensor([lm.tokenizer(full_texts[r])["input_ids"]])
               for r in (p.emotion_row, p.neutral_row)]  # fmt: skip
        t = p.n_tokens
        for layer in (1, 2):
            for col in ("-3", "-1"):
                want = _full_forward_patch(lm, *ids, layer, t + int(col), rs[p.emotion])
                got = res.full[res.layers.index(layer), res.columns.index(col), k]
                assert got == pytest.approx(float(want[0]), abs=1e-4), (layer, col)
            want = _full_forward_patch(lm, *ids, layer, slice(0, t - 3), rs[p.emotion])
            got = res.full[res.layers.index(layer), 0, k]
            assert got == pytest.approx(float(want[0]), abs=1e-4), (layer, "body")


def _hooked_patch(lm, ids_e, ids_n, layer, cols, v, r):
    """Reference: a plain forward pass of the neutral prompt with the library's residual
    edit hook (no trace, no resumed rows)."""
    with torch.no_grad():
        hs = lm.model(input_ids=ids_e, output_hidden_states=True).hidden_states
    src = hs[layer][:, cols]
    with torch.no_grad(), hooked(resid_edit_hooks(lm.arch, {layer: _patch_fn(src, cols, v)})):
        logits = lm.model(input_ids=ids_n).logits[:, -1]
    return float(logit_diff(logits, r)[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_resumed_directional_and_random_patches_equal_a_hooked_forward_pass(patched, arch):
    lm, res, texts = patched[arch]
    full_texts = readout_texts(texts)
    rs, vecs = _readouts(), _vectors(lm)
    rnd = torch.as_tensor(random_directions(lm.arch.width, res.layers, 0), dtype=torch.float32)
    for k in range(0, len(res.pairs), 3):
        p = res.pairs[k]
        ids = [torch.tensor([lm.tokenizer(full_texts[r])["input_ids"]])
               for r in (p.emotion_row, p.neutral_row)]  # fmt: skip
        for layer in (1, 2):
            li = res.layers.index(layer)
            v = torch.as_tensor(vecs.directions[p.emotion][layer], dtype=torch.float32)
            want = _hooked_patch(lm, *ids, layer, slice(None), v, rs[p.emotion])
            assert res.directional_all[li, k] == pytest.approx(want, abs=1e-4)
            want = _hooked_patch(lm, *ids, layer, slice(None), rnd[li], rs[p.emotion])
            assert res.random_all[li, k] == pytest.approx(want, abs=1e-4)
            want = _hooked_patch(lm, *ids, layer, slice(0, p.n_tokens - 3), v, rs[p.emotion])
            assert res.directional[li, 0, k] == pytest.approx(want, abs=1e-4)


def test_batched_equals_one_pair_at_a_time(patched):
    lm, res, texts = patched["llama"]
    _, labels = _data()
    one = run_patching(lm, texts, labels, _vectors(lm), _readouts(), n_pairs=4, n_positions=3,
                batch_size=1)  # fmt: skip
    assert one.pairs == res.pairs
    for a, b in [
        (one.full, res.full),
        (one.directional, res.directional),
        (one.directional_all, res.directional_all),
        (one.random_all, res.random_all),
    ]:
        assert np.allclose(a, b, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_full_patch_of_every_position_at_any_layer_gives_the_emotion_run(tiny, arch):
    lm = tiny(arch)
    n0 = count_hooks(lm.model)
    texts, labels = _data(10)
    ids = [lm.tokenizer(t)["input_ids"] for t in readout_texts(texts)]
    pairs, _ = match_pairs(labels, [len(i) for i in ids], ["anger"], min_pairs=1)
    e = torch.tensor([ids[pairs[0].emotion_row]])
    n = torch.tensor([ids[pairs[0].neutral_row]])
    store = {}
    rec = {x: (lambda h, x=x: store.__setitem__(x, h.clone())) for x in range(lm.arch.n_layers + 1)}
    with torch.no_grad():
        with hooked(resid_edit_hooks(lm.arch, rec)):
            want = lm.model(input_ids=e).logits[:, -1]
        for layer in range(lm.arch.n_layers + 1):
            edit = {layer: _patch_fn(store[layer], slice(None))}
            with hooked(resid_edit_hooks(lm.arch, edit)):
                got = lm.model(input_ids=n).logits[:, -1]
            close(got, want, f"{arch} layer {layer}")
    assert count_hooks(lm.model) == n0
    with pytest.raises(RuntimeError), hooked(resid_edit_hooks(lm.arch, {1: _boom})):
        lm.model(input_ids=n)
    assert count_hooks(lm.model) == n0  # removed after an exception too


def _boom(h):
    raise RuntimeError("boom")


def test_patch_refuses_bad_input(tiny):
    lm = tiny("gpt2")
    texts, labels = _data(10)
    v = _vectors(lm)
    with pytest.raises(DataError, match="no 'joy' direction"):
        run_patching(lm, texts, labels, v, _readouts(), emotions=["joy"])
    with pytest.raises(DataError, match="layer 9 is not in the vectors"):
        run_patching(lm, texts, labels, v, _readouts(), layers=[9])
    with pytest.raises(DataError, match="patching needs at least 500 pairs"):
        run_patching(lm, texts, labels, v, _readouts(), min_pairs=500)


# ------------------------------------------------------------------------------- ablation
def test_orthonormal_removed_fraction_empirical_p_and_split_by_hand():
    q = orthonormal(np.array([[3.0, 0, 0], [1.0, 1.0, 0]]))
    assert np.allclose(q @ q.T, np.eye(2)) and np.allclose(np.abs(q[:, 2]), 0)
    assert removed_fraction(2.0, 0.5) == pytest.approx(0.75)
    assert removed_fraction(1.0, 0.25, 0.25) == pytest.approx(1.0)
    assert np.isnan(removed_fraction(0.2, 0.1, 0.25))  # no above-chance accuracy to remove
    assert empirical_p(0.8, np.array([0.1, 0.9, 0.8, 0.2])) == pytest.approx(3 / 5)
    assert empirical_p(1.0, np.zeros(19)) == pytest.approx(1 / 20)
    tr, ev = split_rows(["a"] * 5 + ["b"] * 5, 3, 2, seed=1)
    assert len(tr) == 6 and len(ev) == 4 and not set(tr) & set(ev)
    with pytest.raises(DataError, match="label 'a' has 5 prompts"):
        split_rows(["a"] * 5 + ["b"] * 9, 4, 2)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["fixed", "per_layer"])
def test_ablation_leaves_no_component_from_layer_l_on_and_nothing_changes_before(tiny, arch, mode):
    lm = tiny(arch)
    n0 = count_hooks(lm.model)
    vecs = _vectors(lm)
    layers = list(range(2, lm.arch.n_layers + 1))
    bases = direction_bases(vecs, ["anger", "gratitude"], layers, from_layer=2, mode=mode)
    texts = ["Thank you so much for the help.", "The bus is late again today.", "Sorry!"]
    spec = ec.CaptureSpec(sites=("resid",), positions=("all",), batch_size=3)
    clean = ec.capture(lm, texts, spec)["resid/all"]
    with ablating(lm, bases):
        abl = ec.capture(lm, texts, spec)["resid/all"]
    close(abl[:, :2], clean[:, :2], "layers before L")
    for layer in layers:
        proj = abl[:, layer] @ bases[layer].T
        assert np.abs(proj).max() < 1e-4 * np.abs(abl[:, layer]).max(), (layer, mode)
    assert np.abs(abl[:, 2] - clean[:, 2]).max() > 1e-3
    assert count_hooks(lm.model) == n0
    with pytest.raises(RuntimeError), ablating(lm, bases):
        raise RuntimeError("inside")
    assert count_hooks(lm.model) == n0


def test_evaluate_equals_one_prompt_at_a_time_and_capture(tiny):
    lm = tiny("llama")
    texts = ["Thank you so much for the help.", "The bus is late again today.", "Sorry!"]
    rs = _readouts()
    ev = evaluate(lm, texts, rs, batch_size=3)
    for i, t in enumerate(readout_texts(texts)):
        with torch.no_grad():
            logits = lm.model(**lm.tokenizer(t, return_tensors="pt")).logits[:, -1]
        for e, r in rs.items():
            assert ev.ld[e][i] == pytest.approx(float(logit_diff(logits, r)[0]), abs=1e-4)
    want = ec.capture(
        lm, readout_texts(texts), ec.CaptureSpec(sites=("resid",), positions=("mean",))
    )
    close(ev.acts, want["resid/mean"], "evaluate's activations = capture's")


def test_removing_the_whole_space_leaves_a_constant_readout(tiny):
    lm = tiny("llama")
    texts, _ = _data(6)
    w = lm.arch.width
    with ablating(lm, {layer: np.eye(w) for layer in range(2, lm.arch.n_layers + 1)}):
        ev = evaluate(lm, texts, _readouts())
    for e in EMOTIONS:
        assert np.ptp(ev.ld[e]) < 1e-5  # every prompt reads the same
    assert np.abs(ev.acts[:, 2:]).max() < 1e-5


def _hand_result():
    """Two classes of 4 prompts; the LD of 'anger' and one probe, under the clean run, the
    anger direction and three random draws."""
    labels = ["anger"] * 4 + ["neutral"] * 4
    conds = [
        Condition("none", "none", "", 0),
        Condition("direction:anger", "direction", "anger", 1),
    ]
    conds += [Condition(f"random1:{k}", "random", "random1", 1, k) for k in range(3)]
    base = np.array([3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0])  # gap 2
    lds = {"none": base, "direction:anger": base - np.r_[[1.5] * 4, [0.0] * 4],  # gap 0.5
           "random1:0": base, "random1:1": base - np.r_[[1.0] * 4, [0.0] * 4],  # gap 1
           "random1:2": base - np.r_[[2.0] * 4, [0.0] * 4]}  # gap 0  # fmt: skip
    ok = {"none": [1] * 8, "direction:anger": [1, 1, 0, 0, 1, 1, 1, 0],
          "random1:0": [1] * 8, "random1:1": [1] * 7 + [0], "random1:2": [1] * 8}  # fmt: skip
    return AblationRun(
        conds, labels, ["anger"], "neutral", [0, 1], 1, 1, "fixed", 0.5,
        {k: {"anger": v} for k, v in lds.items()},
        {k: {"ncm": np.array(v, bool)[:, None].repeat(2, 1)} for k, v in ok.items()},
        {k: {"ncm": float(np.mean(v))} for k, v in ok.items()},
    )  # fmt: skip


def test_ablation_statistics_of_a_hand_made_result():
    res = _hand_result()
    h = res.headline(n_boot=200)["anger"]
    ld = h["ld_gap"]["anger"]
    assert ld["gap_clean"] == 2.0 and ld["gap_ablated"] == 0.5
    assert ld["removed"] == pytest.approx(0.75)  # 1 - 0.5 / 2
    assert ld["null_mean"] == pytest.approx((0 + 0.5 + 1) / 3, abs=1e-6)
    assert ld["p"] == pytest.approx((1 + 1) / 4)  # one draw (removed 1.0) is >= 0.75
    assert ld["ci_low"] == ld["ci_high"] == pytest.approx(0.75)  # no spread within classes
    fixed = h["probe"]["ncm"]["fixed"]
    assert fixed["accuracy_clean"] == 1.0 and fixed["accuracy_ablated"] == 0.625
    assert fixed["removed"] == pytest.approx((1 - 0.625) / (1 - 0.5))
    assert fixed["null_mean"] == pytest.approx((0 + 0.25 + 0) / 3, abs=1e-6)
    assert fixed["p"] == pytest.approx(1 / 4)
    rows = res.ld_table(n_boot=0)
    assert [r["removed"] for r in rows] == [0.0, 0.75, 0.0, 0.5, 1.0]
    probe = [r for r in res.probe_table() if r["condition"] == "direction:anger"]
    assert [r["probe"] for r in probe] == ["fixed", "fixed", "refit"]
    assert probe[0]["recall_anger"] == 0.5


def test_run_ablation_on_a_tiny_model(tiny):
    lm = tiny("gpt2")
    n0 = count_hooks(lm.model)
    texts, labels = _data(12)
    tr, ev = split_rows(labels, 8, 4)
    pick = lambda rows: ([texts[i] for i in rows], [labels[i] for i in rows])  # noqa: E731
    res = run_ablation(lm, _vectors(lm), _readouts(), pick(tr), pick(ev), from_layer=1,
                       n_random=2, folds=2, batch_size=8)  # fmt: skip
    assert count_hooks(lm.model) == n0
    names = [c.name for c in res.conditions]
    assert names[:4] == ["none", "direction:gratitude", "direction:anger", "direction:all"]
    assert sum(c.kind == "random" for c in res.conditions) == 4  # 2 draws of dim 1 and of 2
    h = res.headline(n_boot=20)
    assert set(h) == {"gratitude", "anger", "all"} and h["all"]["dim"] == 2
    assert set(h["all"]["ld_gap"]) == set(EMOTIONS)
    for target in h.values():  # p is None where nothing was above chance to remove
        for m in ("logreg", "ncm"):
            for kind in ("fixed", "refit"):
                q = target["probe"][m][kind]
                assert q["p"] in (None, 0.333333, 0.666667, 1.0)  # 2 draws: 1/3, 2/3 or 1
    # layer 0 is before the ablation: the fixed probe reads the same there
    for r in res.probe_table():
        if r["layer"] == 0 and r["probe"] == "fixed":
            clean = next(q for q in res.probe_table() if q["condition"] == "none"
                         and q["layer"] == 0 and q["method"] == r["method"])  # fmt: skip
            assert r["accuracy"] == clean["accuracy"]
    with pytest.raises(DataError, match="probe layer"):
        run_ablation(lm, _vectors(lm), _readouts(), pick(tr), pick(ev), from_layer=3,
                     probe_layer=2)  # fmt: skip
    with pytest.raises(DataError, match="cannot ablate 'joy'"):
        run_ablation(lm, _vectors(lm), _readouts(), pick(tr), pick(ev), targets=["joy"])


@pytest.mark.parametrize("arch", ["gpt2", "gemma3_text"])
@pytest.mark.parametrize("mode", ["fixed", "per_layer"])
def test_run_ablation_rows_equal_an_evaluation_under_the_ablating_hooks(tiny, arch, mode):
    """Every condition runs as rows resumed from the first ablated layer, each with its own
    subspace: the same logit differences and fixed-probe activations as a whole forward
    pass under :func:`ablating`."""
    lm = tiny(arch)
    texts, labels = _data(12)
    tr, ev = split_rows(labels, 8, 4)
    pick = lambda rows: ([texts[i] for i in rows], [labels[i] for i in rows])  # noqa: E731
    vecs, rs = _vectors(lm), _readouts()
    res = run_ablation(lm, vecs, rs, pick(tr), pick(ev), from_layer=2, mode=mode, n_random=2,
                       methods=("ncm",), folds=2, batch_size=5, rows_per_pass=7)  # fmt: skip
    layers = list(range(2, lm.arch.n_layers + 1))
    ev_texts = pick(ev)[0]
    bases = direction_bases(vecs, list(EMOTIONS), layers, from_layer=2, mode=mode)
    with ablating(lm, bases):
        want = evaluate(lm, ev_texts, rs, batch_size=3)
    clean = evaluate(lm, ev_texts, rs, batch_size=3)
    for e in EMOTIONS:
        close(res.ld["direction:all"][e], want.ld[e], f"{arch} {mode} {e}")
        close(res.ld["none"][e], clean.ld[e])
    probe = fit_probe(evaluate(lm, pick(tr)[0], rs).acts, pick(tr)[1], "ncm")
    y = np.array([probe.classes.index(v) for v in pick(ev)[1]])
    got = res.correct["direction:all"]["ncm"]
    assert np.array_equal(got, probe.predict(want.acts) == y[:, None])


def test_random_bases_fixed_and_per_layer():
    a = random_bases(8, [1, 2], 2, mode="fixed", seed=0)
    b = random_bases(8, [1, 2], 2, mode="per_layer", seed=0)
    assert a[1] is a[2] and a[1].shape == (2, 8) and not np.allclose(b[1], b[2])


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture()
def cli_setup(tiny, tiny_dir, tmp_path, monkeypatch):
    """A tiny gpt2 with readout words that are single tokens in its vocabulary."""
    lm = tiny("gpt2")
    tok = lm.tokenizer
    single = [w for w in ("the", "a", "to", "and", "you", "I", "for", "of", "is", "in", "my", "it")
              if len(tok.encode(" " + w, add_special_tokens=False)) == 1]  # fmt: skip
    assert len(single) >= 6, single
    monkeypatch.setattr(readout_module, "FEELING_WORDS",
                        {"gratitude": tuple(single[:2]), "apology": tuple(single[2:4]),
                         "anger": tuple(single[4:6])})  # fmt: skip
    monkeypatch.setattr(readout_module, "REFERENCE_WORDS", tuple(single[6:]) or ("the",))
    vecs = _vectors(lm, ("gratitude", "apology", "anger"))
    path = vecs.save(tmp_path / "v.safetensors")
    return str(tiny_dir("gpt2")), path, tmp_path


def test_cli_patch_and_ablate_write_their_folders(cli_setup, capsys):
    model, vecs, root = cli_setup
    out = root / "patch"
    code, stdout, err = run(capsys, "patch", "--model", model, "--vectors", vecs,
                            "--data", "baseline", "--emotion", "anger", "gratitude",
                            "--n-pairs", "5", "--n-positions", "2", "--layers", "0,2,3",
                            "--n-boot", "50", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    for f in ("pairs.csv", "patching.csv", "gaps.csv", "summary.json"):
        assert (out / f).is_file(), f
    assert list((out / "figures").glob("*.png"))
    s = json.loads((out / "summary.json").read_text())
    assert s["format"] == "emocircuits.patch" and s["settings"]["layers"] == [0, 2, 3]
    assert s["dataset"]["source"] == "baseline" and s["model"]["model_type"] == "gpt2"
    assert "recovered" in stdout
    out = root / "ablate"
    code, stdout, err = run(capsys, "ablate", "--model", model, "--vectors", vecs,
                            "--data", "baseline", "--from-layer", "2", "--n-random", "2",
                            "--n-train", "10", "--n-eval", "6", "--n-boot", "50",
                            "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    for f in ("ablation_ld.csv", "ablation_probe.csv", "summary.json"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    assert set(s["headline"]) == {"gratitude", "apology", "anger", "all"}
    assert s["settings"]["from_layer"] == 2 and "p" in stdout


def test_cli_fast_budget_fills_the_settings_not_given(cli_setup, capsys):
    model, vecs, root = cli_setup
    out = root / "patch-fast"
    code, _, err = run(capsys, "patch", "--model", model, "--vectors", vecs, "--data",
                       "baseline", "--budget", "fast", "--n-pairs", "4", "--n-boot", "20",
                       "--out", out, "--quiet", "--no-plots")  # fmt: skip
    assert code == 0, err
    st = json.loads((out / "summary.json").read_text())["settings"]
    assert st["budget"] == "fast" and st["n_positions"] == 3 and st["n_pairs_requested"] == 4
    assert st["n_layers"] == 8 and st["layers"] == [0, 1, 2, 3]  # the tiny model has 4
    out = root / "ablate-fast"
    code, _, err = run(capsys, "ablate", "--model", model, "--vectors", vecs, "--data",
                       "baseline", "--budget", "fast", "--from-layer", "2", "--n-random",
                       "3", "--n-boot", "20", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert set(s["headline"]) == {"all"} and s["settings"]["n_random"] == 3
    assert s["settings"]["n_held_out"] == 4 * 10 and s["settings"]["n_train"] == 4 * 32


@pytest.mark.parametrize(
    "cmd, extra, message",
    [
        ("patch", ["--emotion", "joy"], "no 'joy' direction"),
        ("patch", ["--layers", "7"], "layer 7"),
        ("patch", ["--min-pairs", "900"], "patching needs at least 900 pairs"),
        ("ablate", ["--from-layer", "9"], "layer 9 is out of range"),
        ("ablate", ["--targets", "joy"], "cannot ablate 'joy'"),
        ("ablate", ["--n-train", "60"], "the ablation needs 60 for the probes plus 6"),
    ],
)
def test_cli_refuses_bad_input_with_one_line(cli_setup, capsys, cmd, extra, message):
    model, vecs, root = cli_setup
    out = root / "bad"
    small = ["--n-train", "10", "--n-eval", "6"] if cmd == "ablate" else []
    code, _, err = run(capsys, cmd, "--model", model, "--vectors", vecs, "--data", "baseline",
                       "--out", out, "--quiet", *small, *extra)  # fmt: skip
    assert code == 2 and message in one_error_line(err), err
    assert not out.exists()

"""Heads and neurons on tiny random models: the contributions rebuild what transformers
computes (attention and MLP outputs, Gemma's post-norms linearised), ablation hooks do what
they say and go away, and every statistic matches a case computed by hand or planted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import emocircuits as ec
from emocircuits.capture.capture import CaptureSpec, capture
from emocircuits.capture.hooks import count_hooks, hooked
from emocircuits.geometry.directions import emotion_directions
from emocircuits.geometry.vectors import EmotionVectors, normalise
from emocircuits.interventions.heads import (
    Condition,
    ablating_heads,
    ablation_stat,
    analyze_heads,
    bias_contributions,
    capture_heads,
    contrast,
    head_contributions,
    neuron_contributions,
    run_conditions,
    separation,
    write_heads,
    write_weights,
)
from emocircuits.interventions.readout import Readout, logit_diff, readout_texts

from conftest import TINY_CONFIGS
from helpers import close, one_error_line, run

DECOMPOSED = ("gpt2", "gpt_neox_parallel", "gpt_neox_sequential", "llama", "gemma3_text")
ARCHS = sorted(TINY_CONFIGS)


def _prompts(n_per_class: int = 3):
    ds = ec.load_dataset("baseline")
    out, seen = [], {}
    for e in ds.examples:
        if seen.get(e.emotion, 0) < n_per_class:
            seen[e.emotion] = seen.get(e.emotion, 0) + 1
            out.append(e)
    return [e.text for e in out], np.array([e.emotion for e in out]), [e.emotion_span for e in out]


def _mlp_inputs(lm, texts):
    """Each block's MLP down-projection input and output, all tokens of one batch."""
    seen = {}

    def keep(i):
        def fn(module, args, output):
            seen[i] = (args[0].detach().clone(), output.detach().clone())

        return fn

    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    hooks = [(lm.arch.mlp_proj(i), "forward", keep(i)) for i in range(lm.arch.n_layers)]
    with hooked(hooks), torch.no_grad():
        lm.model(**enc)
    return seen


# ------------------------------------------------------------------------ architectures
@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_proj_weight_rebuilds_the_projection(tiny, arch):
    """a @ W.T + b equals the down projection's own output (Conv1D transposed)."""
    lm = tiny(arch)
    texts, _, _ = _prompts(1)
    for i, (a, out) in _mlp_inputs(lm, texts).items():
        w, b = lm.arch.mlp_proj_weight(i)
        assert w.shape == (lm.arch.width, a.shape[-1])
        close((a @ w.T + (0 if b is None else b)).numpy(), out.numpy(), f"{arch} block {i}")


@pytest.mark.parametrize("arch", ARCHS)
def test_post_norm_only_for_gemma2_and_3(tiny, arch):
    lm = tiny(arch)
    has = lm.arch.post_norm(0, "attn") is not None
    assert has == (arch in ("gemma2", "gemma3_text"))
    g = lm.arch.post_norm_gain(0, "mlp")
    assert (g is not None) == has
    if has:  # a zero-initialised Gemma norm weight is a gain of (1 + 0), up to a factor
        close(g.numpy() / g[0].item(), np.ones(lm.arch.width))


# ------------------------------------------------------- contributions = captured sites
def _sites(lm, texts, spans, position):
    spec = CaptureSpec(sites=("resid", "attn", "mlp"), positions=(position,), batch_size=4)
    return capture(lm, texts, spec, spans=spans)


def _whole_writes(lm, cap, p):
    """Heads + bias and neurons + bias, as whole vectors (identity directions)."""
    w, eye, L = write_weights(lm.arch), np.eye(lm.arch.width, dtype=np.float32), lm.arch.n_layers
    attn = head_contributions(cap.z[p], w, eye, L).sum(2) + bias_contributions(
        cap.attn_scale[p], w.o_bias, w.attn_gain, eye, L
    )
    mlp = None
    if p == "readout":
        mlp = np.einsum("nif,iwf->niw", cap.act, w.mlp_proj * w.mlp_gain[..., None])
        mlp += bias_contributions(cap.mlp_scale, w.mlp_bias, w.mlp_gain, eye, L)
    return attn, mlp


@pytest.mark.parametrize("position", ["mean", "last", "emotion_word"])
@pytest.mark.parametrize("arch", DECOMPOSED)
def test_heads_and_neurons_sum_to_the_captured_sites(tiny, arch, position):
    """Summed over heads (neurons), plus bias, the writes equal the captured ``attn``
    (``mlp``) site of the prompt alone, Gemma's post-norms included: the cue appended for
    the readout changes nothing at the prompt's own positions."""
    lm = tiny(arch)
    texts, _, spans = _prompts(2)
    cap = capture_heads(lm, texts, position=position, spans=spans, batch_size=3)
    ref = _sites(lm, texts, spans, position)
    attn, mlp = _whole_writes(lm, cap, "readout")
    close(attn, ref[f"attn/{position}"], f"{arch} heads")
    close(mlp, ref[f"mlp/{position}"], f"{arch} neurons")
    close(cap.resid["readout"], ref[f"resid/{position}"], f"{arch} resid")


@pytest.mark.parametrize("arch", DECOMPOSED)
def test_cue_position_is_the_last_token_of_the_cue_text(tiny, arch):
    lm = tiny(arch)
    texts, _, _ = _prompts(2)
    cap = capture_heads(lm, texts, batch_size=4)
    ref = _sites(lm, readout_texts(texts), None, "last")
    attn, _ = _whole_writes(lm, cap, "cue")
    close(attn, ref["attn/last"])
    close(cap.resid["cue"], ref["resid/last"])


def test_gemma_post_norm_with_a_real_gain(tiny_dir):
    """A non-trivial (1 + w) gain in every post-norm: still an exact sum."""
    lm = ec.load_model(tiny_dir("gemma3_text"))  # a private copy: its norms are changed
    torch.manual_seed(1)
    with torch.no_grad():
        for blk in lm.arch.blocks:
            for norm in (blk.post_attention_layernorm, blk.post_feedforward_layernorm):
                norm.weight.normal_(0, 0.5)
    texts, _, spans = _prompts(2)
    cap = capture_heads(lm, texts, position="mean", spans=spans, batch_size=5)
    ref = _sites(lm, texts, spans, "mean")
    attn, mlp = _whole_writes(lm, cap, "readout")
    close(attn, ref["attn/mean"])
    close(mlp, ref["mlp/mean"])


def test_logit_diff_equals_transformers_unbatched(tiny):
    lm = tiny("llama")
    texts, _, _ = _prompts(2)
    r = Readout("x", (11, 40, 77), (5, 9), ("a", "b", "c"))
    cap = capture_heads(lm, texts, readouts={"x": r}, batch_size=3)
    for i, t in enumerate(readout_texts(texts)):
        enc = lm.tokenizer(t, return_tensors="pt")
        with torch.no_grad():
            want = logit_diff(lm.model(**enc).logits[0, -1], r)
        assert abs(cap.logit_diff["x"][i] - want) < 1e-4


def test_z_mean_is_the_baseline_mean_over_non_first_tokens(tiny):
    lm = tiny("gpt2")
    texts, labels, _ = _prompts(2)
    base = labels == "neutral"
    cap = capture_heads(lm, texts, baseline_rows=base, batch_size=3)
    spec = CaptureSpec(sites=("heads",), positions=("all",))
    allz = capture(lm, [t for t, b in zip(readout_texts(texts), base, strict=True) if b], spec)
    keep = allz["all/pos"] > 0
    close(cap.z_mean, allz["heads/all"][keep].mean(0))


# --------------------------------------------------------------------- planted heads
def test_a_head_with_scaled_output_weights_gets_scaled_contrast(tiny_dir):
    """Planted: head (1, 2)'s output columns x100. Its contrast is exactly 100x (its own
    z is computed before its output projection), block 0 is untouched, and it ranks first."""
    texts, labels, _ = _prompts(4)
    v = np.random.default_rng(0).normal(size=64).astype(np.float32)
    v /= np.linalg.norm(v)

    def contrasts(lm):
        cap = capture_heads(lm, texts, batch_size=4)
        hc = head_contributions(cap.z["readout"], write_weights(lm.arch), v, 2)
        return contrast(hc, labels, "anger", n_boot=50).value

    lm = ec.load_model(tiny_dir("llama"))
    before = contrasts(lm)
    d = lm.arch.head_dim
    with torch.no_grad():
        lm.arch.o_proj(1).weight[:, 2 * d : 3 * d] *= 100.0
    sign = np.sign(before[1, 2])
    after = contrasts(lm)
    close(after[1, 2], 100 * before[1, 2])
    close(after[0], before[0])
    flat = (sign * after).ravel()
    assert int(np.argmax(flat)) == 1 * lm.arch.n_heads + 2


def test_a_neuron_with_scaled_output_weights_gets_scaled_contrast(tiny_dir):
    """Planted: neuron 7 of block 1 writes x100; its contrast is exactly 100x and first."""
    texts, labels, _ = _prompts(4)
    v = np.random.default_rng(0).normal(size=64).astype(np.float32)
    v /= np.linalg.norm(v)

    def contrasts(lm):
        cap = capture_heads(lm, texts, batch_size=4)
        nc = neuron_contributions(cap.act, write_weights(lm.arch), v, 2)
        return contrast(nc, labels, "gratitude", n_boot=50).value

    lm = ec.load_model(tiny_dir("gpt2"))
    before = contrasts(lm)
    with torch.no_grad():
        lm.arch.mlp_proj(1).weight[7, :] *= 100.0  # Conv1D: [in, out], row = neuron
    after = contrasts(lm)
    close(after[1, 7], 100 * before[1, 7])
    close(after[0], before[0])
    assert int(np.argmax(np.sign(before[1, 7]) * after.ravel())) == after.shape[1] + 7


# ------------------------------------------------------------------------ ablation
def test_ablating_heads_writes_the_values_where_asked_and_cleans_up(tiny):
    lm = tiny("llama")
    L, H, d = lm.arch.n_layers, lm.arch.n_heads, lm.arch.head_dim
    values = np.random.default_rng(0).normal(size=(L, H, d)).astype(np.float32)
    enc = lm.tokenizer(["Thank you so much for the help."], return_tensors="pt")
    s = enc["input_ids"].shape[1]
    where = torch.ones(1, s, dtype=torch.bool)
    where[0, 0] = False
    seen = {}

    def keep(module, args, kwargs):
        seen["z"] = args[0].detach().clone().view(1, s, H, d)

    n0 = count_hooks(lm.model)
    with torch.no_grad():
        with hooked([(lm.arch.o_proj(1), "pre", keep)]):
            lm.model(**enc)
        plain = seen["z"].clone()
        with (
            ablating_heads(lm, [(1, 2)], values, where),
            hooked([(lm.arch.o_proj(1), "pre", keep)]),
        ):
            assert count_hooks(lm.model) == n0 + 2
            lm.model(**enc)
    z = seen["z"][0].numpy()
    close(z[1:, 2], np.broadcast_to(values[1, 2], (s - 1, d)))
    close(z[0], plain[0, 0].numpy())  # the first position is kept
    close(z[:, [0, 1, 3]], plain[0][:, [0, 1, 3]].numpy())  # other heads of the block too
    assert count_hooks(lm.model) == n0
    with pytest.raises(RuntimeError), ablating_heads(lm, [(0, 0)]):
        raise RuntimeError("boom")
    assert count_hooks(lm.model) == n0


def test_ablating_one_head_of_the_last_parallel_block_removes_its_direct_write(tiny):
    """Planted exact case: in a parallel block the MLP does not read the attention output,
    so mean-ablating head h of block R-1 moves resid R along v by exactly
    (z_h - mean z_h) @ W_h.T . v at the readout positions."""
    lm = tiny("gpt_neox_parallel")
    texts, labels, _ = _prompts(3)
    R, h = 3, 1
    v = np.random.default_rng(1).normal(size=lm.arch.width).astype(np.float32)
    v /= np.linalg.norm(v)
    cap = capture_heads(lm, texts, baseline_rows=labels == "neutral", batch_size=4)
    rows = tuple(range(len(texts)))
    res = run_conditions(
        lm, texts, [Condition((), rows), Condition(((R - 1, h),), rows)], position="mean",
        layer=R, directions=v[:, None], readouts=[None], values=cap.z_mean, batch_size=5,
    )  # fmt: skip
    drop = res[0]["projection"][:, 0] - res[1]["projection"][:, 0]
    w = write_weights(lm.arch)
    direct = head_contributions(cap.z["readout"], w, v, R)[:, R - 1, h]
    mean_write = head_contributions(cap.z_mean[None], w, v, R)[0, R - 1, h]
    close(drop, direct - mean_write)
    close(res[0]["projection"][:, 0], cap.resid["readout"][:, R] @ v)
    assert np.isnan(res[0]["logit_diff"]).all()


def test_run_conditions_mixes_conditions_in_one_batch_like_separate_runs(tiny):
    lm = tiny("gpt2")
    texts, _, _ = _prompts(2)
    v = np.random.default_rng(2).normal(size=(lm.arch.width, 2)).astype(np.float32)
    r = Readout("x", (3, 4), (5,), ("a", "b"))
    conds = [Condition((), (0, 1, 2)), Condition(((0, 1), (2, 3)), (1, 2, 3))]
    kw = {"position": "last", "layer": 2, "directions": v, "readouts": [r, r], "values": None}
    mixed = run_conditions(lm, texts, conds, batch_size=8, **kw)
    for c, cond in enumerate(conds):
        alone = run_conditions(lm, texts, [cond], batch_size=1, **kw)[0]
        for m in ("logit_diff", "projection"):
            close(mixed[c][m], alone[m])


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox_parallel", "llama", "gemma3_text"])
def test_run_conditions_equal_a_whole_forward_pass_under_the_ablation_hooks(tiny, arch):
    """Rows resumed from their first ablated block, many conditions in one left-padded
    batch: the logit difference of one unpadded prompt run whole under ablating_heads."""
    lm = tiny(arch)
    texts, labels, _ = _prompts(2)
    cap = capture_heads(lm, texts, baseline_rows=labels == "neutral", batch_size=4)
    v = np.random.default_rng(3).normal(size=(lm.arch.width, 1)).astype(np.float32)
    r = Readout("x", (3, 4), (5, 9), ("a", "b"))
    rows = tuple(range(len(texts)))
    conds = [Condition(((1, 0), (2, 1)), rows), Condition(((0, 2),), rows[::2]),
             Condition((), rows[1::3])]  # fmt: skip
    kw = {"position": "mean", "layer": 2, "directions": v, "readouts": [r]}
    res = run_conditions(lm, texts, conds, values=cap.z_mean, batch_size=3, rows_per_pass=5, **kw)
    for c, cond in enumerate(conds):
        for k, row in enumerate(cond.rows):
            enc = lm.tokenizer(readout_texts([texts[row]]), return_tensors="pt")
            where = torch.ones(enc["input_ids"].shape, dtype=torch.bool)
            where[0, 0] = False  # every position but the first
            with torch.no_grad(), ablating_heads(lm, list(cond.heads), cap.z_mean, where):
                logits = lm.model(**enc).logits[:, -1]
            want = float(logit_diff(logits, r)[0])
            assert res[c]["logit_diff"][k, 0] == pytest.approx(want, abs=1e-4), (arch, c, k)


# ------------------------------------------------------------------------ statistics
def test_contrast_planted_and_by_hand():
    rng = np.random.default_rng(0)
    labels = np.array(["a"] * 30 + ["neutral"] * 20 + ["b"] * 5)
    x = np.zeros((55, 2))
    x[labels == "a"] = [3.0, -1.0]
    x[labels == "neutral"] = [1.0, 1.0]
    c = contrast(x, labels, "a", n_boot=200)
    close(c.value, [2.0, -2.0])
    close(c.lo, c.value)
    close(c.hi, c.value)  # no noise: the interval collapses
    assert (c.n_emotion, c.n_baseline) == (30, 20)
    noisy = x + rng.normal(size=x.shape)
    c = contrast(noisy, labels, "a", n_boot=2000, seed=3)
    want = noisy[labels == "a"].mean(0) - noisy[labels == "neutral"].mean(0)
    close(c.value, want)
    se = np.sqrt(noisy[labels == "a"].var(0, ddof=1) / 30 + noisy[labels == "neutral"].var(0) / 20)
    assert np.all(np.abs((c.hi - c.lo) / (2 * 1.96 * se) - 1) < 0.15)  # ~ the normal interval
    with pytest.raises(ec.EmocircuitsError):
        contrast(x, labels, "zzz")


def test_separation_by_hand():
    proj = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 1.0 + 1e-9]])
    d = separation(proj, ["e", "e", "n", "n"], "e", "n")
    close(d[0], 2.0 / np.sqrt(1.0))  # means 2 and 0, variances 2 and 0 -> pooled 1
    assert d[1] < -1e6  # almost no spread: a huge separation, not a crash


def test_ablation_stat_by_hand():
    base = np.array([2.0, 4.0])
    top = np.array([0.0, 1.0])  # drops 2 and 3: mean 2.5
    random = np.array([[2.0, 4.0], [1.0, 1.0], [0.0, 0.0], [2.0, 3.0]])  # 0, 2, 3, 0.5
    s = ablation_stat(base, top, random, n_boot=500)
    assert s.top_drop == 2.5
    assert s.random_mean == pytest.approx((0 + 2 + 3 + 0.5) / 4)
    assert s.p == pytest.approx((1 + 1) / 5)  # one draw (3.0) beats 2.5
    assert 2.0 <= s.top_lo <= s.top_hi <= 3.0
    assert s.n_random == 4


# ------------------------------------------------------------------ the whole analysis
def _vectors(lm, data="baseline", n=6):
    ds = ec.load_dataset(data)
    texts, labels, _ = [], [], None
    seen = {}
    for e in ds.examples:
        if seen.get(e.emotion, 0) < n:
            seen[e.emotion] = seen.get(e.emotion, 0) + 1
            texts.append(e.text)
            labels.append(e.emotion)
    x = capture(lm, texts, CaptureSpec(sites=("resid",), positions=("mean",)))["resid/mean"]
    dirs, norms = normalise(emotion_directions(x, labels, method="one_vs_rest"))
    layers = list(range(lm.arch.n_layers + 1))
    return EmotionVectors(dirs, norms, layers, "one_vs_rest", "resid", "mean", "neutral")


@pytest.fixture(scope="module")
def small_result(tiny):
    lm = tiny("llama")
    vecs = _vectors(lm)
    res = analyze_heads(
        lm, ec.load_dataset("baseline"), vecs, top_k=(1, 2), n_random=4, n_ablate=3,
        n_per_class=6, n_boot=100, top_neurons=4, top_prompts=3, batch_size=8,
    )  # fmt: skip
    return lm, vecs, res


def test_analysis_tables_add_up(small_result):
    lm, _, res = small_result
    t, s = res.tables, res.summary
    R, H = s["settings"]["layer"], lm.arch.n_heads
    assert 1 <= R <= lm.arch.n_layers
    for e in ("gratitude", "anger", "apology"):
        for pos in ("mean", "cue"):
            heads = [r for r in t["heads"] if r["emotion"] == e and r["position"] == pos]
            assert len(heads) == R * H
            assert sorted(r["rank"] for r in heads) == list(range(1, R * H + 1))
            top = min(heads, key=lambda r: r["rank"])
            assert top["contrast"] == max(r["contrast"] for r in heads)
            comp = {
                (r["component"], r["layer"]): r["contrast"]
                for r in t["components"]
                if r["emotion"] == e and r["position"] == pos
            }
            total = comp.pop(("total", R))
            assert sum(comp.values()) == pytest.approx(total, abs=1e-3)
            attn = sum(v for (c, _), v in comp.items() if c == "attn")
            heads_sum = sum(r["contrast"] for r in heads)
            assert heads_sum == pytest.approx(attn, abs=1e-3)  # no bias in llama
        neurons = [r for r in t["neurons"] if r["emotion"] == e]
        assert [r["rank"] for r in neurons] == [1, 2, 3, 4]
        assert all(r["contrast"] >= neurons[-1]["contrast"] for r in neurons)
        for r in neurons:  # contributions are linear in the activation
            assert r["emotion_mean"] == pytest.approx(
                r["act_emotion_mean"] * r["write_on_v"], abs=1e-4
            )
            shown = [
                p for p in t["neuron_prompts"]
                if p["emotion"] == e and p["rank"] == r["rank"] and p["ranked_by"] == "activation"
            ]  # fmt: skip
            assert [p["text"] for p in shown] == r["top_prompts"].split(" | ")
            assert [p["activation"] for p in shown] == sorted(
                (p["activation"] for p in shown), reverse=True
            )
    assert s["checks"]["neurons_plus_bias_vs_mlp_max_rel_error"] < 1e-4
    sep = [r for r in t["separation"] if r["layer"] == R]
    assert len(sep) == 3


def test_analysis_layer_is_the_best_separated(small_result):
    _, _, res = small_result
    by_layer: dict[int, float] = {}
    for r in res.tables["separation"]:
        if r["layer"] >= 1:
            by_layer[r["layer"]] = by_layer.get(r["layer"], 0.0) + r["cohens_d"] / 3
    assert res.summary["settings"]["layer"] == max(by_layer, key=by_layer.get)


def test_analysis_ablation_rows(small_result):
    _, _, res = small_result
    rows = res.tables["ablation"]
    # the tiny tokenizer splits every feeling word: the projection only
    assert {r["metric"] for r in rows} == {"projection"}
    assert len(rows) == 3 * 2 * 2  # emotions x rankings x k
    for r in rows:
        assert 0 < r["p"] <= 1
        assert r["n_random"] == 4 and r["n_prompts"] == 3
        assert r["random_lo"] <= r["random_mean"] <= r["random_hi"]
        assert len(r["heads"].split()) == r["k"]
    assert res.summary["readout"]["anger"] is None


def test_write_and_plot(small_result, tmp_path):
    from emocircuits.plots.heads import plot_heads

    _, _, res = small_result
    out = write_heads(res, tmp_path / "h")
    for name in ("heads", "components", "neurons", "neuron_prompts", "ablation", "summary"):
        assert any(p.stem == name for p in out.iterdir()), name
    assert json.loads((out / "summary.json").read_text())["format"] == "emocircuits.heads"
    paths = plot_heads(out)
    assert {p.name for p in paths} >= {"heads-mean.png", "heads-cue.png", "ablation.png"}


# ------------------------------------------------------------------------------- CLI
def _save_vectors(lm, path, **change):
    vecs = _vectors(lm)
    for k, v in change.items():
        setattr(vecs, k, v)
    return vecs.save(path)


def test_cli_heads_writes_a_folder(tiny, tiny_dir, tmp_path, capsys):
    lm = tiny("gpt2")
    vec = _save_vectors(lm, tmp_path / "v.safetensors")
    out = tmp_path / "heads"
    code, stdout, err = run(
        capsys, "heads", "--model", tiny_dir("gpt2"), "--vectors", vec, "--data", "baseline",
        "--emotion", "anger", "--top-k", "1", "2", "--n-random", "3", "--n-ablate", "2",
        "--n-per-class", "4", "--n-boot", "50", "--layer", "2", "--quiet", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["layer"] == 2
    assert summary["settings"]["emotions"] == ["anger"]
    assert summary["vectors"]["file"] == str(vec)
    assert (out / "figures" / "heads-mean.png").is_file()
    assert "anger" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--emotion", "joy"], "joy"),
        (["--layer", "0"], "layer"),
        (["--layer", "9"], "layer"),
        (["--data", "nope.jsonl"], "nope"),
        (["--baseline", "calm"], "calm"),
    ],
)
def test_cli_heads_bad_input_one_line_nothing_written(tiny, tmp_path, capsys, args, message):
    lm = tiny("gpt2")
    vec = _save_vectors(lm, tmp_path / "v.safetensors")
    out = tmp_path / "heads"
    base = ["heads", "--model", "unused", "--vectors", vec, "--out", out, "--data", "baseline"]
    code, _, err = run(capsys, *base, *args)
    assert code == 2
    assert message in one_error_line(err)
    assert not out.exists()


def test_cli_heads_argparse_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "heads", "--vectors", "v.safetensors", "--out", tmp_path, "--top-k", "0")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "argument --top-k: must be >= 1, got 0" in err


def test_cli_heads_refuses_vectors_of_another_site(tiny, tmp_path, capsys):
    lm = tiny("gpt2")
    vec = _save_vectors(lm, tmp_path / "v.safetensors", site="mlp")
    code, _, err = run(
        capsys, "heads", "--vectors", vec, "--data", "baseline", "--out", tmp_path / "o"
    )
    assert code == 2 and "resid" in one_error_line(err)
    assert not (tmp_path / "o").exists()

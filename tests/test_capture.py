"""Captured activations equal transformers' own outputs, for every supported architecture,
position rule and padding side; the block decomposition holds; hooks always go away."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emocircuits as ec
from emocircuits.capture.capture import (
    CaptureSpec,
    capture,
    iter_capture,
    plan_batches,
    token_lengths,
)
from emocircuits.capture.hooks import count_hooks, hooked
from emocircuits.errors import CaptureError

from conftest import TINY_CONFIGS
from helpers import close, reference

ARCHS = sorted(TINY_CONFIGS)
RULES = ("last", "mean", "emotion_word_first", "emotion_word_last", "emotion_word_mean", "all")


def _rows(n: int = 11):
    ds = ec.load_dataset("baseline")
    picked = [e for i, e in enumerate(ds.examples) if i % 17 == 0][:n]
    return [e.text for e in picked], [e.emotion_span for e in picked]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("arch", ARCHS)
def test_resid_equals_hidden_states(tiny, arch, padding_side):
    lm = tiny(arch)
    texts, spans = _rows()
    spec = CaptureSpec(sites=("resid",), positions=RULES, batch_size=4, padding_side=padding_side)
    got = capture(lm, texts, spec, spans=spans)
    L = lm.arch.n_layers
    assert got["resid/last"].shape == (len(texts), L + 1, lm.arch.width)
    tok_rows = got["all/row"]
    for r, (text, span) in enumerate(zip(texts, spans, strict=True)):
        h, ref = reference(lm, text, span)
        for rule, want in ref.items():
            close(got[f"resid/{rule}"][r, :L], want[:L], f"{arch} {rule} row {r}")
        # the `all` rule: every token; the last layer after the final norm equals HF's last
        mine = got["resid/all"][tok_rows == r]
        close(mine[:, :L], h[:L].transpose(1, 0, 2))
        normed = lm.arch.final_norm(torch.from_numpy(mine[:, L])).detach().numpy()
        close(normed, h[L])


@pytest.mark.parametrize("arch", ARCHS)
def test_block_is_input_plus_attention_plus_mlp(tiny, arch):
    """resid[i+1] = resid[i] + attn[i] + mlp[i] (sequential and parallel blocks alike)."""
    lm = tiny(arch)
    texts, spans = _rows(6)
    got = capture(lm, texts, CaptureSpec(positions=("last", "mean")), spans=spans)
    for pos in ("last", "mean"):
        r, a, m = (got[f"{s}/{pos}"] for s in ("resid", "attn", "mlp"))
        close(r[:, 1:], r[:, :-1] + a + m)
    assert lm.arch.parallel == (arch == "gpt_neox_parallel")


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_recompose_attention_projection(tiny, arch):
    """Per-head z through the output projection sums to the projection's real output."""
    lm = tiny(arch)
    texts, _ = _rows(5)
    seen: dict[int, torch.Tensor] = {}

    def keep(layer):
        def fn(module, args, output):
            seen[layer] = output[0] if isinstance(output, tuple) else output

        return fn

    spec = CaptureSpec(sites=("heads",), positions=("all",), batch_size=8)
    with hooked([(lm.arch.o_proj(i), "forward", keep(i)) for i in range(lm.arch.n_layers)]):
        got = capture(lm, texts, spec)
    z = got["heads/all"]  # [tokens, L, H, d]
    assert z.shape[1:] == (lm.arch.n_layers, lm.arch.n_heads, lm.arch.head_dim)
    for layer in range(lm.arch.n_layers):
        w, b = lm.arch.o_proj_weight(layer)
        d = lm.arch.head_dim
        parts = [
            z[:, layer, h] @ w[:, h * d : (h + 1) * d].T.numpy() for h in range(lm.arch.n_heads)
        ]
        total = sum(parts) + (0 if b is None else b.numpy())
        # one batch, rows in the capture's length-sorted order: map each token back to it
        order = plan_batches(token_lengths(lm, texts), 8)[0]
        slot = np.argsort(order)[got["all/row"]]
        left_pad = (
            (
                1
                - lm.tokenizer([texts[i] for i in order], padding=True, return_tensors="pt")[
                    "attention_mask"
                ]
            )
            .sum(1)
            .numpy()
        )
        left_pad = left_pad if lm.tokenizer.padding_side == "left" else 0 * left_pad
        ref = seen[layer].numpy()[slot, got["all/pos"] + left_pad[slot]]
        close(total, ref)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3_text"])
def test_batch_size_and_padding_side_do_not_change_results(tiny, arch):
    lm = tiny(arch)
    texts, spans = _rows(16)
    rules = tuple(r for r in RULES if r != "all")
    runs = [
        capture(lm, texts, CaptureSpec(positions=rules, batch_size=b, padding_side=p), spans=spans)
        for b, p in [(1, "right"), (16, "right"), (16, "left"), (5, "left")]
    ]
    for other in runs[1:]:
        for key, v in runs[0].items():
            close(other[key], v, key)


def test_layers_subset_and_negative_numbers(tiny):
    lm = tiny("llama")
    texts, _ = _rows(4)
    full = capture(lm, texts, CaptureSpec(sites=("resid", "mlp"), positions=("last",)))
    part = capture(
        lm, texts, CaptureSpec(sites=("resid", "mlp"), positions=("last",), layers=(1, -1))
    )
    np.testing.assert_array_equal(part["resid/last"], full["resid/last"][:, [1, 3]])
    np.testing.assert_array_equal(part["mlp/last"], full["mlp/last"][:, [1, 2]])
    early = capture(lm, texts, CaptureSpec(sites=("resid",), positions=("last",), layers=(1,)))
    np.testing.assert_array_equal(early["resid/last"], full["resid/last"][:, [1]])
    with pytest.raises(CaptureError, match="out of range"):
        capture(lm, texts, CaptureSpec(sites=("resid",), layers=(4,)))


def test_no_hooks_left_after_capture_error_or_early_stop(tiny):
    lm = tiny("gpt2")
    texts, spans = _rows(8)
    before = count_hooks(lm.model)
    capture(lm, texts, CaptureSpec(positions=("last", "mean")), spans=spans)
    assert count_hooks(lm.model) == before

    def boom(module, args, output):
        raise RuntimeError("failure in the middle of a forward pass")

    with hooked([(lm.arch.blocks[1], "forward", boom)]):
        with pytest.raises(RuntimeError, match="middle of a forward"):
            capture(lm, texts, CaptureSpec(sites=("resid", "attn", "mlp", "heads")))
        assert count_hooks(lm.model) == before + 1  # only the test's own hook
    assert count_hooks(lm.model) == before

    it = iter_capture(lm, texts, CaptureSpec(batch_size=2))
    next(it)
    assert count_hooks(lm.model) > before
    it.close()  # a consumer that stops early
    assert count_hooks(lm.model) == before


def test_model_is_not_modified(tiny):
    lm = tiny("llama")
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    capture(lm, _rows(3)[0], CaptureSpec(sites=("resid", "attn", "mlp", "heads")))
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_unknown_rule_and_site(tiny):
    lm = tiny("gpt2")
    with pytest.raises(CaptureError, match="unknown position rule"):
        capture(lm, ["hi there"], CaptureSpec(positions=("middle",)))
    with pytest.raises(CaptureError, match="unknown site"):
        capture(lm, ["hi there"], CaptureSpec(sites=("resid", "ffn")))

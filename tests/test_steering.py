"""Steering adds exactly ``alpha * s * v`` to the residual stream at the chosen layer, works
with ``generate`` and its KV cache (the same tokens as decoding without a cache), batched
as unbatched, only at new tokens when asked, and always removes itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emocircuits.capture.capture import CaptureSpec, capture
from emocircuits.capture.hooks import count_hooks
from emocircuits.errors import CaptureError
from emocircuits.interventions import Steer, steering, typical_norms

from helpers import close

ARCHS = ["gpt2", "llama", "gemma3_text"]
TEXTS = ["Thank you so much for the help.", "The bus is late again today.", "Sorry!"]


def _vector(lm, seed=0):
    return np.random.default_rng(seed).normal(size=lm.arch.width)


@pytest.mark.parametrize("arch", ARCHS)
def test_steered_layer_output_is_h_plus_alpha_s_v(tiny, arch):
    lm = tiny(arch)
    n0 = count_hooks(lm.model)  # transformers may keep its own output-recording hooks
    spec = CaptureSpec(sites=("resid",), positions=("all",), batch_size=3)
    plain = capture(lm, TEXTS, spec)["resid/all"]
    v = _vector(lm)
    layer = 2
    with steering(lm, [Steer(layer=layer, vector=v, alpha=0.5, scale=3.0)]):
        steered = capture(lm, TEXTS, spec)["resid/all"]
    want = plain[:, layer] + 0.5 * 3.0 * v / np.linalg.norm(v)
    close(steered[:, layer], want, f"{arch} steered layer")
    close(steered[:, :layer], plain[:, :layer], "layers before are untouched")
    assert np.abs(steered[:, layer + 1] - plain[:, layer + 1]).max() > 1e-3  # it propagates
    assert count_hooks(lm.model) == n0


def _greedy_without_cache(lm, text, steers, n):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad(), steering(lm, steers):
        for _ in range(n):
            logits = lm.model(input_ids=ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    return ids[0].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_with_kv_cache_equals_decoding_without_it(tiny, arch):
    lm = tiny(arch)
    n0 = count_hooks(lm.model)
    scale = float(typical_norms(lm, TEXTS)[1])
    steers = [Steer(layer=1, vector=_vector(lm, 1), alpha=2.0, scale=scale)]
    for text in TEXTS[:2]:
        enc = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad(), steering(lm, steers):
            out = lm.model.generate(**enc, max_new_tokens=6, do_sample=False, use_cache=True,
                                    pad_token_id=lm.tokenizer.pad_token_id)  # fmt: skip
        assert out[0].tolist() == _greedy_without_cache(lm, text, steers, 6)
        plain = lm.model.generate(**enc, max_new_tokens=6, do_sample=False,
                                  pad_token_id=lm.tokenizer.pad_token_id)  # fmt: skip
        assert plain[0].tolist() != out[0].tolist()  # the steering did something
    assert count_hooks(lm.model) == n0


def test_batched_generation_equals_one_prompt_at_a_time(tiny):
    lm = tiny("llama")
    steers = [Steer(layer=2, vector=_vector(lm, 2), alpha=1.5, scale=typical_norms(lm, TEXTS)[2])]
    tok = lm.tokenizer
    tok.padding_side = "left"
    kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.no_grad(), steering(lm, steers):
        enc = tok(TEXTS, return_tensors="pt", padding=True)
        batch = lm.model.generate(**enc, **kw)[:, enc["input_ids"].shape[1] :]
        for i, text in enumerate(TEXTS):
            one = tok(text, return_tensors="pt")
            single = lm.model.generate(**one, **kw)[0, one["input_ids"].shape[1] :]
            assert batch[i].tolist() == single.tolist(), text


def test_new_tokens_only_leaves_the_prompt_alone(tiny):
    lm = tiny("gpt2")
    steers = [Steer(layer=1, vector=_vector(lm, 3), alpha=3.0, scale=typical_norms(lm, TEXTS)[1])]
    enc = lm.tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        plain = lm.model(**enc).logits
        with steering(lm, steers, where="new"):
            prompt_only = lm.model(**enc).logits  # a prefill: no cache yet
            out = lm.model.generate(**enc, max_new_tokens=4, do_sample=False,
                                    pad_token_id=lm.tokenizer.pad_token_id)  # fmt: skip
        with steering(lm, steers, where="all"):
            out_all = lm.model.generate(**enc, max_new_tokens=4, do_sample=False,
                                        pad_token_id=lm.tokenizer.pad_token_id)  # fmt: skip
    close(prompt_only.numpy(), plain.numpy(), "prefill untouched with where='new'")
    # the first new token comes from the unsteered prefill
    assert out[0, enc["input_ids"].shape[1]] == plain[0, -1].argmax()
    assert out.shape == out_all.shape
    assert out[0, enc["input_ids"].shape[1]] != out_all[0, enc["input_ids"].shape[1]]


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_first_k_tokens_only_equals_pushing_those_positions_without_a_cache(tiny, arch):
    """``steer_tokens=K``: the prompt and the inputs that write new tokens 1..K are pushed, later
    positions are not (they still attend to the pushed ones); checked against decoding
    without a cache and a plain hook that pushes exactly those positions."""
    lm = tiny(arch)
    n0 = count_hooks(lm.model)
    layer, scale = 2, float(typical_norms(lm, TEXTS)[2])
    v = _vector(lm, 4)
    delta = torch.tensor(2.0 * scale * v / np.linalg.norm(v), dtype=lm.dtype)
    steers = [Steer(layer=layer, vector=v, alpha=2.0, scale=scale)]
    n_new, k = 6, 3
    kw = {"max_new_tokens": n_new, "do_sample": False, "output_scores": True,
          "return_dict_in_generate": True, "pad_token_id": lm.tokenizer.pad_token_id}  # fmt: skip
    for text in TEXTS[:2]:
        enc = lm.tokenizer(text, return_tensors="pt")
        n_prompt = enc["input_ids"].shape[1]
        with torch.no_grad():
            with steering(lm, steers, steer_tokens=k):
                out = lm.model.generate(**enc, **kw)
            with steering(lm, steers):
                full = lm.model.generate(**enc, **kw)

            def push_first(module, args, output, n_prompt=n_prompt):
                h = output[0] if isinstance(output, tuple) else output
                h = h.clone()
                h[:, : n_prompt + k - 1] += delta
                return (h, *output[1:]) if isinstance(output, tuple) else h

            ids, want = out.sequences[:, :n_prompt], []
            handle = lm.arch.blocks[layer - 1].register_forward_hook(push_first)
            try:
                for _ in range(n_new):
                    want.append(lm.model(input_ids=ids, use_cache=False).logits[0, -1])
                    ids = torch.cat([ids, want[-1].argmax().view(1, 1)], 1)
            finally:
                handle.remove()
        assert out.sequences[0].tolist() == ids[0].tolist(), text
        got = torch.stack([s[0] for s in out.scores]).numpy()
        close(got, torch.stack(want).numpy(), f"{arch} next-token logits, first {k} pushed")
        pushed = torch.stack([s[0] for s in full.scores]).numpy()
        close(got[:k], pushed[:k], "the first k tokens are written as under a full push")
        if out.sequences[0, : n_prompt + k].tolist() == full.sequences[0, : n_prompt + k].tolist():
            assert np.abs(got[k] - pushed[k]).max() > 1e-3  # and then it lets go
    assert count_hooks(lm.model) == n0
    for bad in (0, -1):  # 0 would silently push nothing
        with pytest.raises(CaptureError, match=">= 1"), steering(lm, steers, steer_tokens=bad):
            pass


def test_hooks_go_away_after_an_exception_and_bad_input_is_refused(tiny):
    lm = tiny("gpt2")
    n0 = count_hooks(lm.model)
    enc = lm.tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        before = lm.model(**enc).logits
        with pytest.raises(RuntimeError), steering(lm, [Steer(1, _vector(lm), 1.0)]):
            assert count_hooks(lm.model) == n0 + 2
            raise RuntimeError("boom")
        assert count_hooks(lm.model) == n0
        close(lm.model(**enc).logits.numpy(), before.numpy(), "model unchanged")
    bad = [
        (Steer(1, np.ones(3), 1.0), "values, the model"),
        (Steer(99, _vector(lm), 1.0), "layer"),
        (Steer(1, np.zeros(lm.arch.width), 1.0), "zero"),
    ]
    for steer, message in bad:
        with pytest.raises(CaptureError, match=message), steering(lm, [steer]):
            pass
    assert count_hooks(lm.model) == n0


def test_typical_norms_are_median_token_norms_without_the_first_token(tiny):
    lm = tiny("llama")
    s = typical_norms(lm, TEXTS)
    norms = []
    for text in TEXTS:
        enc = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hs = lm.model(**enc, output_hidden_states=True).hidden_states
        h = torch.stack(hs[:-1], 0)[:, 0].numpy()  # [L, seq, W], before the final norm
        norms.append(np.linalg.norm(h[:, 1:], axis=-1))  # first token (BOS / sink) left out
    want = np.median(np.concatenate(norms, 1), axis=1)
    close(s[: len(want)], want, "typical norms")

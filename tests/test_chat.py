"""Chat templates (``chat="user"`` / ``"assistant"``, ``system``): position rules and
emotion-word spans land on the text's own tokens inside the template (checked by decoding
and against transformers' own ``apply_chat_template`` ids and hidden states) for ChatML
(SmolLM2), a Llama-3 and a Gemma-2 template (no system role: folded into the user turn);
steering a templated prompt is a plain hook adding the vector on the same positions; the
prompting baseline, settings keys, study hashes and bad input."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import emocircuits as ec
from emocircuits.capture.capture import CaptureSpec, capture
from emocircuits.capture.chat import FOLDED, chat_format
from emocircuits.errors import CaptureError, ModelError
from emocircuits.geometry.vectors import EmotionVectors
from emocircuits.interventions import Steer, steering
from emocircuits.interventions.generation import generate, generate_text, next_token_kl
from emocircuits.interventions.run import (
    INSTRUCTION,
    SteerCondition,
    encode,
    run_conditions,
    steer,
)

from helpers import close, one_error_line, run

# public templates, as the models ship them
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content "
    "%}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
    "not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must "
    "alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == "
    "'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% "
    "endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}"
    "{% endif %}"
)
RULES = ("last", "end", "mean", "emotion_word_first", "emotion_word_last", "emotion_word_mean")
SYSTEM = "You answer briefly."


def _rows():
    """Texts with one- and many-token emotion words, and neutral ones (no word)."""
    ds = ec.load_dataset("extended").examples
    words = [e for e in ds if e.emotion_word and " " in e.emotion_word][:2]
    words += [e for e in ds if e.emotion_word and " " not in e.emotion_word][:2]
    words += [e for e in ds if e.emotion == "neutral"][:2]
    return [e.text for e in words], [e.emotion_span for e in words]


def _templated(name, template):
    """A fresh tiny model (its own tokenizer) with ``template`` as its chat template."""

    def make(tiny_dir):
        lm = ec.load_model(tiny_dir(name), progress=False)
        lm.tokenizer.chat_template = template
        return lm

    return make


def _messages(chat, text, system, fold):
    msgs = [] if system is None or fold else [{"role": "system", "content": system}]
    lead = f"{system}\n\n" if system is not None and fold else ""
    if chat == "user":
        return [*msgs, {"role": "user", "content": lead + text}]
    return [*msgs, {"role": "user", "content": lead}, {"role": "assistant", "content": text}]


def _reference(lm, chat, text, span, system=None, fold=False):
    """Independently of the library: the ids transformers' ``apply_chat_template`` gives, the
    text's and the word's tokens found by decoding token by token (no offset mapping), and
    the hidden states of one unpadded pass of the full model."""
    tok = lm.tokenizer
    kw = {"add_generation_prompt": chat == "user", "continue_final_message": chat != "user"}
    msgs = _messages(chat, text, system, fold)
    rendered = tok.apply_chat_template(msgs, tokenize=False, **kw)
    ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"]
    ids = list(ids[0] if ids and isinstance(ids[0], list) else ids)
    dec = lambda x: tok.decode(x, clean_up_tokenization_spaces=False)  # noqa: E731
    assert dec(ids) == rendered
    ends = [len(dec(ids[: i + 1])) for i in range(len(ids))]
    starts = [0, *ends[:-1]]
    t0 = rendered.rindex(text)

    def overlapping(lo, hi):
        return [i for i in range(len(ids)) if ends[i] > starts[i] and starts[i] < hi
                and ends[i] > lo]  # fmt: skip

    own = overlapping(t0, t0 + len(text))
    word = [] if span is None else overlapping(t0 + span[0], t0 + span[1])
    with torch.no_grad():
        hs = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    h = torch.stack(hs, 0)[:, 0].numpy()
    last = own[-1]
    return (
        ids,
        own,
        word,
        h,
        {
            "last": h[:, last],
            "end": h[:, len(ids) - 1],
            "mean": h[:, own].mean(1),  # every token of the text: it does not start the sequence
            "emotion_word_first": h[:, word[0]] if word else h[:, last],
            "emotion_word_last": h[:, word[-1]] if word else h[:, last],
            "emotion_word_mean": h[:, word].mean(1) if word else h[:, last],
        },
    )


def _check_capture(lm, chat, system=None, fold=False, padding_side="left"):
    texts, spans = _rows()
    spec = CaptureSpec(sites=("resid",), positions=(*RULES, "all"), batch_size=4,
                       padding_side=padding_side, chat=chat, system=system)  # fmt: skip
    got = capture(lm, texts, spec, spans=spans)
    L = lm.arch.n_layers
    for r, (text, span) in enumerate(zip(texts, spans, strict=True)):
        ids, own, word, _, ref = _reference(lm, chat, text, span, system, fold)
        assert got["all/token"][got["all/row"] == r].tolist() == ids  # transformers' ids
        # the selected tokens, decoded, are the text and the word
        assert lm.tokenizer.decode([ids[i] for i in own]).strip() == text
        if span is not None:
            w = text[span[0] : span[1]]
            assert lm.tokenizer.decode([ids[i] for i in word]).strip().endswith(w.split()[-1])
            first, lastw = got["meta/span/emotion_word_mean"][r]
            assert (first, lastw) == (word[0], word[-1])
        assert got["meta/span/last"][r].tolist() == [own[-1]] * 2
        assert got["meta/span/end"][r].tolist() == [len(ids) - 1] * 2
        assert got["meta/span/mean"][r].tolist() == [own[0], own[-1]]
        assert got["meta/n_tokens"][r] == len(own)
        for rule, want in ref.items():
            close(got[f"resid/{rule}"][r, :L], want[:L], f"{chat} {rule} row {r}")
    return got


@pytest.mark.real
@pytest.mark.parametrize("chat", ["user", "assistant"])
def test_chatml_positions_land_on_the_text(smollm2, chat):
    got = _check_capture(smollm2, chat, SYSTEM, padding_side="right")
    plain = capture(smollm2, _rows()[0], CaptureSpec(sites=("resid",), positions=("last",)))
    # the template changes what the model reads: not the raw-text activations
    assert np.abs(got["resid/last"][:, 5] - plain["resid/last"][:, 5]).max() > 1e-2
    if chat == "assistant":  # the reply is left open: the text ends the input
        assert (got["meta/span/last"] == got["meta/span/end"]).all()


@pytest.mark.parametrize("chat", ["user", "assistant"])
def test_llama3_template_positions_land_on_the_text(tiny_dir, chat):
    lm = _templated("llama", LLAMA3)(tiny_dir)
    _check_capture(lm, chat, SYSTEM, padding_side="left")
    fmt = chat_format(lm, chat, SYSTEM)
    assert fmt.system_role == "system" and fmt.prefix.startswith("<bos><|start_header_id|>")
    ids, _ = fmt.encode(lm.tokenizer, "Thanks.")
    assert ids.count(lm.tokenizer.bos_token_id) == 1  # the template's BOS, not a second one


def test_gemma2_template_folds_the_system_prompt_into_the_user_turn(tiny_dir):
    lm = _templated("gemma", GEMMA2)(tiny_dir)
    fmt = chat_format(lm, "user", SYSTEM)
    assert fmt.system_role == FOLDED
    assert fmt.prefix == f"<bos><start_of_turn>user\n{SYSTEM}\n\n"
    assert fmt.suffix == "<end_of_turn>\n<start_of_turn>model\n"
    _check_capture(lm, "user", SYSTEM, fold=True, padding_side="right")
    _check_capture(lm, "assistant", None, padding_side="left")


def test_manifest_and_plan_record_the_template(tiny_dir, tmp_path):
    lm = _templated("llama", LLAMA3)(tiny_dir)
    ds = ec.load_dataset("baseline")
    spec = CaptureSpec(sites=("resid",), positions=("last", "end"), layers=(1,))
    raw = ec.extract(lm, ds, tmp_path / "raw", spec, progress=False)
    assert raw.manifest["capture"]["chat"] is None
    plan = json.loads((tmp_path / "raw" / "plan.json").read_text())
    assert "chat" not in plan["spec"]  # raw plans are what they were before chat existed
    acts = ec.extract(lm, ds, tmp_path / "chat", sites=("resid",), positions=("last", "end"),
                      layers=(1,), chat="user", system=SYSTEM, progress=False)  # fmt: skip
    rec = acts.manifest["capture"]["chat"]
    assert rec["chat"] == "user" and rec["system"] == SYSTEM
    assert rec["template_sha256"] == hashlib.sha256(LLAMA3.encode()).hexdigest()
    assert "template" in acts.manifest["capture"]["mean_excludes"]
    last, end = acts.get("resid", "last"), acts.get("resid", "end")
    assert np.abs(last - end).max() > 1e-3  # the answer position is not the text's last
    with pytest.raises(CaptureError, match=r"spec\.chat"):  # another mode: not a resume
        ec.extract(lm, ds, tmp_path / "chat", sites=("resid",), positions=("last", "end"),
                   layers=(1,), chat="assistant", progress=False)  # fmt: skip


def _hand_greedy(lm, ids, delta, layer, n_pushed, n_new):
    """Greedy decoding without a cache, a plain forward hook adding ``delta`` at the first
    ``n_pushed`` positions of block ``layer - 1``'s output."""

    def push(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[:, :n_pushed] += delta
        return (h, *output[1:]) if isinstance(output, tuple) else h

    x = torch.tensor([ids])
    handle = lm.arch.blocks[layer - 1].register_forward_hook(push)
    try:
        with torch.no_grad():
            for _ in range(n_new):
                nxt = lm.model(input_ids=x, use_cache=False).logits[0, -1].argmax()
                x = torch.cat([x, nxt.view(1, 1)], 1)
            hs = lm.model(input_ids=x, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    return x[0, len(ids) :].tolist(), torch.stack(hs, 0)[:, 0]


@pytest.mark.parametrize("chat", ["user", "assistant"])
def test_steering_a_templated_prompt_is_a_hook_on_the_same_positions(tiny_dir, chat):
    lm = _templated("llama", LLAMA3)(tiny_dir)
    prompts = ["The meeting moved to Thursday, so", "Here is the plan for the week:"]
    v = np.random.default_rng(0).normal(size=lm.arch.width)
    layer, k, n_new = 2, 2, 5
    st = Steer(layer, v, 1.5, 8.0)
    delta = torch.tensor(1.5 * 8.0 * v / np.linalg.norm(v), dtype=lm.dtype)
    got = generate(lm, prompts, steers=[st], steer_tokens=k, max_new_tokens=n_new,
                   batch_size=2, chat=chat, system=SYSTEM)  # fmt: skip
    plain = generate(lm, prompts, max_new_tokens=n_new, chat=chat, system=SYSTEM)
    assert got != plain  # the push did something
    for p, g in zip(prompts, got, strict=True):
        msgs = _messages(chat, p, SYSTEM, fold=False)
        kw = {"add_generation_prompt": chat == "user", "continue_final_message": chat != "user"}
        ids = lm.tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)
        ids = list(ids["input_ids"])
        # the whole templated input and the inputs of the first k - 1 decoding steps
        want, h_hand = _hand_greedy(lm, ids, delta, layer, len(ids) + k - 1, n_new)
        assert g == want[: len(g)]
        assert len(g) == n_new or want[len(g)] == lm.tokenizer.eos_token_id
        # and the hidden states after the pushed layer (where transformers records the
        # residual at `layer` depends on its own hooks): the library's push on the same
        # positions, and without a push they differ
        full = torch.tensor([ids + want])
        n = len(ids) + k - 1
        with torch.no_grad():
            with steering(lm, [st]):
                hs = torch.stack(lm.model(input_ids=full, output_hidden_states=True)
                                 .hidden_states, 0)[layer + 1 :, 0]  # fmt: skip
            h0 = torch.stack(lm.model(input_ids=full, output_hidden_states=True)
                             .hidden_states, 0)[layer + 1 :, 0]  # fmt: skip
        close(hs[:, :n].numpy(), h_hand[layer + 1 :, :n].numpy(), f"{chat} pushed")
        assert (h0[:, :n] - hs[:, :n]).abs().max() > 1e-2
    # generate_text: the reply only, decoded from the same ids
    with steering(lm, [st], steer_tokens=k):
        text = generate_text(lm, prompts[0], max_new_tokens=n_new, chat=chat, system=SYSTEM)
    assert text == lm.tokenizer.decode(got[0], skip_special_tokens=True)


def test_scoring_reads_only_the_reply_and_the_prompting_baseline_follows_the_mode(tiny_dir):
    lm = _templated("llama", LLAMA3)(tiny_dir)
    prompts = ["The meeting moved to Thursday, so"]
    conds = [SteerCondition("none"), SteerCondition("prompt", "anger", instruction=INSTRUCTION)]
    for chat in ("user", "assistant"):
        rows = run_conditions(lm, prompts, conds, max_new_tokens=4, chat=chat)
        new = generate(lm, prompts, max_new_tokens=4, chat=chat)[0]
        assert rows[0]["continuation"] == lm.tokenizer.decode(new, skip_special_tokens=True)
        assert "<|" not in rows[0]["continuation"] and rows[0]["n_new_tokens"] == len(new)
        text = lm.tokenizer.decode(encode(lm, prompts[0], conds[1], chat))
        ask = "In your reply, express anger."
        if chat == "user":  # the user's message, then the request
            assert text.endswith(f"user<|end_header_id|>\n\n{prompts[0]}\n\n{ask}<|eot_id|>"
                                 "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip
        else:  # the request is the user turn, the reply starts with the prompt
            assert text.endswith(f"{ask}<|eot_id|><|start_header_id|>assistant"
                                 f"<|end_header_id|>\n\n{prompts[0]}")  # fmt: skip


def test_kl_in_chat_mode_is_over_the_texts_own_tokens(tiny_dir):
    lm = _templated("llama", LLAMA3)(tiny_dir)
    texts = ["The bus is late again today.", "Here is the plan:"]
    v = np.random.default_rng(1).normal(size=lm.arch.width)
    sets = [[], [Steer(1, v, 1.0, 8.0)]]
    kl = next_token_kl(lm, texts, sets, chat="assistant")
    assert kl[0] == pytest.approx(0.0, abs=1e-6)
    want = []
    fmt = chat_format(lm, "assistant")
    for t in texts:  # one text at a time, the template's positions left out
        ids, own = fmt.encode(lm.tokenizer, t)
        x = torch.tensor([ids])
        with torch.no_grad():
            p = torch.log_softmax(lm.model(input_ids=x).logits[0].double(), -1)
            with steering(lm, sets[1]):
                q = torch.log_softmax(lm.model(input_ids=x).logits[0].double(), -1)
        want.append(((p.exp() * (p - q)).sum(-1))[torch.tensor(own)])
    assert kl[1] == pytest.approx(float(torch.cat(want).mean()), rel=1e-3)


def test_steer_records_the_chat_mode_and_looks_settings_up_per_mode(tiny_dir, tmp_path):
    from emocircuits.interventions.settings import load_recommendation, save_recommendations
    from emocircuits.interventions.sweep import Recommendation

    lm = _templated("llama", LLAMA3)(tiny_dir)
    n = lm.arch.n_layers + 1
    d = np.random.default_rng(2).normal(size=(n, lm.arch.width))
    vecs = EmotionVectors({"anger": d / np.linalg.norm(d, axis=1, keepdims=True)},
                          {"anger": np.ones(n)}, list(range(n)), "one_vs_rest", "resid",
                          "mean", "neutral")  # fmt: skip
    res = steer(lm, ["The meeting moved to Thursday, so"], vecs, "anger", layer=2, alpha=0.5,
                max_new_tokens=3, n_random=1, chat="assistant", system=SYSTEM,
                progress=False)  # fmt: skip
    st = res.meta["settings"]
    assert st["chat"] == "assistant" and st["system"] == SYSTEM
    assert st["chat_template"]["template_sha256"] == hashlib.sha256(LLAMA3.encode()).hexdigest()
    assert {r["condition"] for r in res.generations} == {"none", "prompt", "direction", "random"}
    path = vecs.save(tmp_path / "v.safetensors")
    rec = Recommendation("anger", 2, 0.5, "all", "-vader_change", 0.1, 0.0, 0.2, 1.0, 1.0, 1.0,
                         0.1, 0.0, 4, True)  # fmt: skip
    save_recommendations(path, lm.provenance, {"anger": rec}, {"chat": "user", "system": None})
    assert load_recommendation(path, lm.provenance, "anger", chat="user")["alpha"] == 0.5
    with pytest.raises(ec.EmocircuitsError, match="--chat assistant"):
        load_recommendation(path, lm.provenance, "anger", chat="assistant")
    with pytest.raises(ec.EmocircuitsError, match="no settings for this model"):
        load_recommendation(path, lm.provenance, "anger")


def test_bad_chat_input_is_one_clear_line(tiny, tiny_dir, capsys, tmp_path):
    from emocircuits.cli import main

    lm = tiny("llama")  # no chat template
    with pytest.raises(ModelError, match=r"needs a chat template.*leave chat unset"):
        capture(lm, ["Hi."], CaptureSpec(chat="user"))
    with pytest.raises(ModelError, match="needs a chat template"):
        generate_text(lm, "Hi.", chat="assistant")
    with pytest.raises(CaptureError, match="unknown chat mode 'bot'"):
        ec.extract(lm, "baseline", chat="bot", progress=False)
    with pytest.raises(CaptureError, match="system prompt needs a chat mode"):
        generate(lm, ["Hi."], system="Be nice.")
    base = ["extract", "--model", tiny_dir("llama"), "--data", "baseline", "--out"]
    code, _, err = run(capsys, *base, tmp_path / "a", "--chat", "user", "--quiet")
    assert code == 2 and "has none (a base model?)" in one_error_line(err)
    assert not (tmp_path / "a").exists()  # refused before any file was made
    code, _, err = run(capsys, *base, tmp_path / "b", "--system", "Be nice.", "--quiet")
    assert code == 2 and "system prompt needs a chat mode" in one_error_line(err)
    with pytest.raises(SystemExit) as exit_:  # argparse's own error: one line, status 2
        main([str(a) for a in [*base, tmp_path / "c", "--chat", "bot"]])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "error: argument --chat: invalid choice: 'bot'" in err


def test_study_takes_chat_and_keeps_unset_hashes(tmp_path):
    from emocircuits.study.config import load_config
    from emocircuits.study.stages import _hashed, plan_study

    out = {"out": str(tmp_path), "models": ["smollm2-135m"], "data": ["baseline"],
           "analyses": ["geometry", "steer"], "causal_data": "baseline"}  # fmt: skip
    base = load_config(None, {"study": out})
    assert base.stage_options("capture")["chat"] is None
    assert "chat" not in _hashed(base.stage_options("capture"))
    chat = load_config(None, {"study": out, "extract": {"chat": "assistant"},
                              "steer-sweep": {"chat": "user", "system": SYSTEM}})  # fmt: skip
    a, b = plan_study(base), plan_study(chat)
    assert all(x.hash != y.hash for x, y in zip(a, b, strict=True))  # all read the capture
    with pytest.raises(ec.EmocircuitsError, match="chat"):
        load_config(None, {"study": out, "extract": {"chat": "bot"}})

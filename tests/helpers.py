"""Reference computations shared by the tests (independent of the library's capture)."""

from __future__ import annotations

import numpy as np
import torch


def close(got, want, msg=""):
    """float32 agreement: max |got - want| <= 1e-5 * max(1, max |want|)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape, msg)
    tol = 1e-5 * max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= tol, f"{msg}: max error {err:.3g} > {tol:.3g}"


def reference(lm, text, span):
    """Per-rule activations computed independently from one unpadded forward pass of the
    full causal LM with ``output_hidden_states`` (resid layers 0..L-1; hidden_states[L] is
    after the final norm)."""
    enc = lm.tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    h = torch.stack(hs, 0)[:, 0].numpy()  # [L+1, s, w]
    special, offsets = enc["special_tokens_mask"], enc["offset_mapping"]
    content = [i for i in range(len(special)) if not special[i]]
    mean_idx = content[1:] if len(content) > 1 else content
    word = []
    if span is not None:
        word = [
            i
            for i in content
            if offsets[i][1] > offsets[i][0] and offsets[i][0] < span[1] and offsets[i][1] > span[0]
        ]
    last = len(special) - 1
    return h, {
        "last": h[:, last],
        "mean": h[:, mean_idx].mean(1),
        "emotion_word_first": h[:, word[0]] if word else h[:, last],
        "emotion_word_last": h[:, word[-1]] if word else h[:, last],
        "emotion_word_mean": h[:, word].mean(1) if word else h[:, last],
    }


def run(capsys, *argv):
    """Run the CLI in-process: ``(exit code, stdout, stderr)``."""
    from emocircuits.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The CLI's promise for bad input: one line, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("emocircuits: error: ")
    return lines[0]

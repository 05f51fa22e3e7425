"""The command line: useful output, and for every bad input one line naming the problem and
where, exit status 2, no traceback, nothing written half-way."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.cli import main

from helpers import one_error_line, run


def test_data_commands(capsys, tmp_path):
    code, out, _ = run(capsys, "data", "list")
    assert code == 0 and "extended" in out and "natural" in out and "anger 354" in out
    code, out, _ = run(capsys, "data", "show", "ja", "-n", "3")
    assert code == 0 and "ja-gra-01" in out
    code, out, _ = run(capsys, "data", "export", "baseline", "--out", tmp_path / "b.jsonl")
    assert code == 0 and ec.load_dataset(tmp_path / "b.jsonl").counts()["anger"] == 50
    code, out, err = run(capsys, "data", "export", "baseline", "--out", tmp_path / "b.jsonl")
    assert code == 2 and "exists" in one_error_line(err)
    code, out, _ = run(capsys, "data", "validate", tmp_path / "b.jsonl", "--baseline", "neutral")
    assert code == 0 and "OK, 200 rows" in out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"text": "hi", "emotion": "anger"}\n{"text": "x"\n', "bad.jsonl:2: not valid JSON"),
        (
            '{"text": "hi", "emotion": "anger", "emotion_word": "mad"}\n',
            "bad.jsonl:1: emotion_word 'mad' does not occur in text",
        ),
        (
            '{"id": 1, "text": "a", "emotion": "anger"}\n'
            '{"id": 1, "text": "b", "emotion": "anger"}\n',
            "bad.jsonl:2: duplicate id '1'",
        ),
        (
            '{"text": "a", "emotion": "anger"}\n{"text": "b", "emotion": "neutral"}\n'
            '{"text": "c", "emotion": "neutral"}\n',
            "bad.jsonl:1: label 'anger' has 1 example",
        ),
    ],
)
def test_validate_and_extract_report_bad_files(capsys, tmp_path, content, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    code, _, err = run(capsys, "data", "validate", bad, "--min-per-class", "2")
    assert code == 2 and expected in one_error_line(err)
    out = tmp_path / "out"
    code, _, err = run(capsys, "extract", "--data", bad, "--out", out)
    assert code == 2 and expected in one_error_line(err)
    assert not out.exists()


def test_extract_bad_arguments(capsys, tiny_dir, tmp_path):
    model = tiny_dir("gpt2")
    out = tmp_path / "o"
    base = ["extract", "--model", model, "--data", "baseline", "--out", out, "--quiet"]
    cases = [
        (["--layers", "40"], "layer 40 is out of range for site 'resid'"),
        (["--positions", "last,middle"], "unknown position rule 'middle'"),
        (["--sites", "resid,ffn"], "unknown site 'ffn'"),
    ]
    for extra, expected in cases:
        code, _, err = run(capsys, *base, *extra)
        assert code == 2 and expected in one_error_line(err), err
        assert not out.exists()
    with pytest.raises(SystemExit) as exit_:  # argparse's own errors: also one line, status 2
        main([str(a) for a in base] + ["--batch-size", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "emocircuits extract: error: argument --batch-size: must be >= 1, got 0" in err


def test_extract_bad_models(capsys, tmp_path):
    out = tmp_path / "o"
    base = ["extract", "--data", "baseline", "--out", out, "--quiet", "--model"]
    code, _, err = run(capsys, *base, "no-such-org/no-such-model")
    assert code == 2 and "cannot find model 'no-such-org/no-such-model'" in one_error_line(err)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really" * 10)
    code, _, err = run(capsys, *base, broken)
    assert code == 2 and "broken.gguf: not a readable GGUF file" in one_error_line(err)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, _, err = run(capsys, *base, bert)
    line = one_error_line(err)
    assert code == 2 and "unsupported architecture 'bert'; supported: gemma" in line
    assert "To add one" in line
    assert not out.exists()


def test_extract_then_summary(capsys, tiny_dir, tmp_path):
    out = tmp_path / "acts"
    args = ["extract", "--model", tiny_dir("llama"), "--data", "baseline", "--out", out]
    args += ["--quiet", "--positions", "last,mean"]
    code, stdout, _ = run(capsys, *args)
    assert code == 0 and "200 rows" in stdout
    code, stdout, _ = run(capsys, "summary", out, "--position", "mean")
    flat = " ".join(stdout.split())  # rich wraps the caption at the terminal width
    assert code == 0 and "NCM raw" in flat and "NCM std" in flat and "(chance 0.25)" in flat
    assert len([ln for ln in stdout.splitlines() if ln.startswith("│")]) == 4  # layers 0-3
    # same arguments again: nothing to do; other settings: refused, nothing lost
    code, _, _ = run(capsys, *args)
    assert code == 0
    before = ec.load_activations(out).get("resid", "mean")
    code, _, err = run(capsys, *args, "--dtype", "bfloat16")
    assert code == 2 and "dtype" in one_error_line(err) and "--overwrite" in err
    np.testing.assert_array_equal(ec.load_activations(out).get("resid", "mean"), before)
    code, _, err = run(capsys, "summary", tmp_path)
    assert code == 2 and "not an activation folder" in one_error_line(err)


def test_real_process_exit_status_and_help(tmp_path):
    """The installed entry point, as a user runs it."""
    env = dict(os.environ)
    r = subprocess.run(
        [sys.executable, "-m", "emocircuits", "extract", "--help"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0 and "--positions" in r.stdout and "emotion_word" in r.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello", "emotion": "anger"}\nnot json\n')
    r = subprocess.run(
        [sys.executable, "-m", "emocircuits", "data", "validate", str(bad)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr.strip()
        == f"emocircuits: error: {bad}:2: not valid JSON (Expecting value at column 1)"
    )


def test_a_file_without_emotion_words_extracts_with_the_default_rules(capsys, tiny_dir, tmp_path):
    """A held-out file often has only text and emotion: the default rules that need an
    emotion word are dropped with a note; asking for one explicitly is an error."""
    data = tmp_path / "heldout.jsonl"
    rows = [{"text": f"sentence number {i} here", "emotion": e} for i, e in
            enumerate(["anger", "neutral"] * 4)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["extract", "--model", tiny_dir("gpt2"), "--data", data, "--quiet"]
    code, _, err = run(capsys, *base, "--out", tmp_path / "a")
    assert code == 0 and "note: " in err and "capturing last, mean" in err
    assert ec.load_activations(tmp_path / "a").positions == ["last", "mean"]
    code, _, err = run(capsys, *base, "--out", tmp_path / "b", "--positions", "emotion_word")
    assert code == 2 and "no row of" in one_error_line(err)
    assert not (tmp_path / "b").exists()

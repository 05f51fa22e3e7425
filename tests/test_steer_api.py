"""The steering API: ``steer`` and ``steer_sweep`` save exactly what ``emocircuits steer`` and
``steer-sweep`` write, results load back, show themselves, ``steering(lm, vecs, emotion,
layer=, alpha=)`` is the push ``steer`` makes, the CLI's defaults are the library's, and no
call leaves a hook behind."""

from __future__ import annotations

import re

import pytest

import emocircuits as ec
from emocircuits.capture.hooks import count_hooks
from emocircuits.commands._common import lib_default
from emocircuits.geometry import compute_vectors
from emocircuits.interventions.generation import generate_text
from emocircuits.interventions.run import SteerResult, steer
from emocircuits.interventions.steering import steering, steering_scales
from emocircuits.interventions.sweep import SweepResult, steer_sweep

from helpers import run

PROMPTS = ["The meeting moved to Thursday.", "I went to the store and", "Here is the plan:"]
SWEEP = {"emotion": "anger", "layer": 2, "n_alphas": 2, "n_verify": 2, "max_new_tokens": 3}
SWEEP_ARGV = ["--emotion", "anger", "--layer", "2", "--n-alphas", "2", "--n-verify", "2",
              "--max-new-tokens", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tiny, tiny_dir, tmp_path_factory):
    # the model as the command loads it (other test modules annotate tiny("gpt2")'s provenance)
    lm = ec.load_model(tiny_dir("gpt2"), progress=False)
    root = tmp_path_factory.mktemp("steer-api")
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean",))
    acts = ec.extract(lm, ec.load_dataset("baseline"), root / "acts", spec, progress=False)
    vecs = compute_vectors(acts, method="one_vs_rest")
    path = vecs.save(root / "v.safetensors")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return lm, vecs, str(path), root, str(tiny_dir("gpt2"))


def _same_svg(a, b):
    """SVG figures equal but for the date matplotlib writes into their metadata."""
    date = re.compile(rb"<dc:date>[^<]*</dc:date>")
    assert date.sub(b"", a.read_bytes()) == date.sub(b"", b.read_bytes()), a.name


def test_steer_saves_what_the_command_writes(setup, capsys, tmp_path):
    lm, _, path, root, model_dir = setup
    n0 = count_hooks(lm.model)
    prompts = str(root / "prompts.txt")
    code, stdout, err = run(capsys, "steer", "--model", model_dir, "--vectors", path,
                            "--emotion", "anger", "--prompts", prompts, "--layer", "1", "2",
                            "--alpha", "1.0", "--max-new-tokens", "4", "--n-random", "2",
                            "--out", tmp_path / "cli.jsonl", "--quiet")  # fmt: skip
    assert code == 0, err
    res = steer(lm, prompts, path, "anger", layer=[1, 2], alpha=1.0, max_new_tokens=4,
                n_random=2)  # fmt: skip
    assert count_hooks(lm.model) == n0
    out = res.save(tmp_path / "lib.jsonl")
    for a, b in ((tmp_path / "cli.jsonl", out),
                 (tmp_path / "cli.summary.json", tmp_path / "lib.summary.json")):  # fmt: skip
        assert a.read_bytes() == b.read_bytes(), a.name
    assert res.table() in stdout  # the printed table is the library's
    # load round trip: the same files again
    back = SteerResult.load(out)
    assert back.generations == res.generations and back.summary == res.summary
    back.save(tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()
    assert (tmp_path / "again.summary.json").read_bytes() == (
        tmp_path / "lib.summary.json"
    ).read_bytes()
    # shows itself: one headline row per condition and setting
    text = repr(back)
    assert text.startswith("<SteerResult: anger on") and "direction" in text
    assert len(back.rows()) == len(back.summary) == 1 + 2 * 2  # none; direction, random x 2
    assert "<table" in back._repr_html_()
    with pytest.raises(ec.EmocircuitsError, match=r"no .* \(written by"):
        SteerResult.load(tmp_path / "missing.jsonl")


def test_steer_sweep_saves_what_the_command_writes(setup, capsys, tmp_path):
    lm, vecs, path, root, model_dir = setup
    n0 = count_hooks(lm.model)
    prompts = str(root / "prompts.txt")
    code, stdout, err = run(capsys, "steer-sweep", "--model", model_dir, "--vectors", path,
                            "--prompts", prompts, *SWEEP_ARGV, "--out", tmp_path / "cli",
                            "--quiet")  # fmt: skip
    assert code == 0, err
    saved = (root / "v.steer.json").read_bytes()
    res = steer_sweep(lm, prompts, path, **SWEEP)
    assert count_hooks(lm.model) == n0
    out = res.save(tmp_path / "lib")
    settings_file = res.save_recommendations()
    for name in ("rows.jsonl", "summary.csv", "dose-response-anger.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (out / name).read_bytes(), name
    _same_svg(tmp_path / "cli" / "dose-response-anger.svg", out / "dose-response-anger.svg")
    cli_json = (tmp_path / "cli" / "sweep.json").read_text()
    # the same but for the folder it was written to
    assert cli_json.replace(str(tmp_path / "cli"), str(out)) == (out / "sweep.json").read_text()
    assert settings_file.read_bytes() == saved.replace(
        str(tmp_path / "cli").encode(), str(out).encode()
    )
    assert res.recommendation_lines() in stdout
    # load round trip
    back = SweepResult.load(out)
    assert back.recommendations == res.recommendations and back.generations == res.generations
    back.save(tmp_path / "again")
    for name in ("rows.jsonl", "summary.csv", "dose-response-anger.png"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    again = (tmp_path / "again" / "sweep.json").read_text()
    assert again.replace(str(tmp_path / "again"), str(out)) == (out / "sweep.json").read_text()
    # shows itself, with the dose-response figure
    assert repr(back).startswith("<SweepResult: 1 emotions x 1 layers x 2 alphas")
    assert back.rows()[0]["emotion"] == "anger" and len(back.figure().axes) == 3
    html = back._repr_html_()
    assert "<table" in html and "data:image/png;base64" in html
    # the tiny random model's directions do nothing: no setting passed, and steer with
    # setting= that sweep refuses it (the same explicit none as the saved file)
    assert not res.recommendations["anger"].found
    with pytest.raises(ec.EmocircuitsError, match="no anger setting within its limits"):
        steer(lm, PROMPTS, vecs, "anger", setting=res, max_new_tokens=3)
    # with limits every setting passes, steer with setting= uses the recommended setting
    open_limits = {"perplexity_ratio": 1e9, "distinct_2_ratio": 0.0,
                   "random_vader_change": 1e9, "effect_lo": -1e9}  # fmt: skip
    res = steer_sweep(lm, PROMPTS, path, limits=open_limits, **SWEEP)
    rec = res.recommendations["anger"]
    held = [PROMPTS[i] for i in res.settings["split"]["held_out"]]
    st = steer(lm, held, vecs, "anger", setting=res, max_new_tokens=3, n_random=1,
               decoding="greedy")  # as the sweep decodes  # fmt: skip
    assert st.meta["settings"]["layers"] == [rec.layer]
    assert st.meta["settings"]["alphas"] == [rec.alpha]
    assert st.meta["settings"]["steer_tokens"] == rec.steer_tokens == 3
    assert st.meta["settings"]["source"].startswith("recommended by steer-sweep")
    sweep_rows = {(r["prompt_index"], r["continuation"]) for r in res.generations
                  if r["stage"] == "held_out" and r["condition"] == "direction"}  # fmt: skip
    index = res.settings["split"]["held_out"]
    assert sweep_rows == {(index[r["prompt_index"]], r["continuation"]) for r in st.generations
                          if r["condition"] == "direction"}  # fmt: skip
    assert count_hooks(lm.model) == n0


def test_steering_with_vectors_is_the_push_steer_makes(setup):
    lm, vecs, *_ = setup
    n0 = count_hooks(lm.model)
    res = steer(lm, PROMPTS, vecs, "anger", layer=2, alpha=1.5, max_new_tokens=5, n_random=1,
                decoding="greedy")  # fmt: skip
    want = {r["prompt_index"]: r["continuation"] for r in res.generations
            if r["condition"] == "direction"}  # fmt: skip
    assert res.meta["vectors"]["file"] is None  # given as an object
    with steering(lm, vecs, "anger", layer=2, alpha=1.5):
        got = generate_text(lm, PROMPTS, max_new_tokens=5)
        one = generate_text(lm, PROMPTS[0], max_new_tokens=5)
    assert got == [want[i] for i in range(len(PROMPTS))] and one == want[0]
    assert generate_text(lm, PROMPTS[0], max_new_tokens=5) != one  # the push went away
    assert res.meta["scales"]["values"] == [round(float(v), 4) for v in steering_scales(lm)]
    # hooks go away after an exception, and bad input is refused before any hook
    with pytest.raises(RuntimeError), steering(lm, vecs, "anger", layer=2, alpha=1.0):
        assert count_hooks(lm.model) > n0
        raise RuntimeError("boom")
    for kw, message in (({"layer": 99, "alpha": 1.0}, "layer 99"), ({"layer": 2}, "alpha=")):
        with pytest.raises(ec.EmocircuitsError, match=message), steering(lm, vecs, "anger", **kw):
            pass
    with pytest.raises(ec.EmocircuitsError, match="no 'joy' direction"):
        steer(lm, PROMPTS, vecs, "joy", layer=2, alpha=1.0)
    with pytest.raises(ec.EmocircuitsError, match="no layer/alpha given"):
        steer(lm, PROMPTS, vecs, "anger")  # no file to find a recommendation next to
    with pytest.raises(ec.EmocircuitsError, match="non-empty"):
        steer(lm, [], vecs, "anger", layer=2, alpha=1.0)
    assert count_hooks(lm.model) == n0


def test_the_commands_defaults_are_the_librarys():
    import argparse

    from emocircuits.commands import steer as steer_cmd
    from emocircuits.commands import steer_sweep as sweep_cmd

    sub = argparse.ArgumentParser().add_subparsers()
    steer_cmd.register(sub)
    sweep_cmd.register(sub)
    subs = sub.choices
    for command, fn in (("steer", steer), ("steer-sweep", steer_sweep)):
        args = subs[command].parse_args(["--vectors", "v", "--out", "o", "--emotion", "anger"])
        for name in ("max_new_tokens", "batch_size", "where", "steer_tokens", "seed"):
            assert getattr(args, name) == lib_default(fn, name), (command, name)
        assert not args.no_prompt_baseline and lib_default(fn, "prompt_baseline")
    assert lib_default(steer, "n_random") == 4 and lib_default(steer, "batch_size") == 64
    assert lib_default(steer_sweep, "steer_tokens") == 3
    args = subs["steer-sweep"].parse_args(["--vectors", "v"])
    for name in ("n_layers", "n_alphas", "n_prompts", "n_verify"):
        assert getattr(args, name) == lib_default(steer_sweep, name), name

"""The causal stages as library calls (``patch``, ``ablate``, ``heads``): each result's
``save`` writes what the command writes (byte for byte; only ``summary.json``'s
``seconds``, the run time, may differ), ``load`` reads it back, results show themselves,
budgets resolve in the library, inputs are checked before the model is used, and no hook
is left on the model, also after an exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_heads import _save_vectors
from test_patching import _vectors

from emocircuits.capture.hooks import count_hooks
from emocircuits.errors import EmocircuitsError
from emocircuits.interventions import readout as readout_module
from emocircuits.interventions.ablate_stage import AblationResult, ablate
from emocircuits.interventions.budgets import (
    ABLATE_BUDGETS,
    HEADS_BUDGETS,
    PATCH_BUDGETS,
    budget_table,
    resolve_budget,
)
from emocircuits.interventions.heads import HeadsResult, heads
from emocircuits.interventions.patch_stage import PatchResult, patch

from helpers import run


@pytest.fixture()
def setup(tiny, tiny_dir, tmp_path, monkeypatch):
    """A tiny gpt2 with readout words that are single tokens in its vocabulary."""
    lm = tiny("gpt2")
    tok = lm.tokenizer
    single = [w for w in ("the", "a", "to", "and", "you", "I", "for", "of", "is", "in", "my", "it")
              if len(tok.encode(" " + w, add_special_tokens=False)) == 1]  # fmt: skip
    monkeypatch.setattr(readout_module, "FEELING_WORDS",
                        {"gratitude": tuple(single[:2]), "apology": tuple(single[2:4]),
                         "anger": tuple(single[4:6])})  # fmt: skip
    monkeypatch.setattr(readout_module, "REFERENCE_WORDS", tuple(single[6:]) or ("the",))
    path = _vectors(lm, ("gratitude", "apology", "anger")).save(tmp_path / "v.safetensors")
    return lm, str(tiny_dir("gpt2")), str(path), tmp_path


def _same_folders(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert any(f.suffix == ".png" for f in files)
    for f in files:
        if f.name == "summary.json":
            sa, sb = (json.loads((x / f).read_text()) for x in (a, b))
            sa.pop("seconds"), sb.pop("seconds")
            assert sa == sb
        elif f.suffix != ".svg":  # SVG embeds the time it was drawn
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


def _round_trip(res, cls, folder: Path, tmp: Path) -> None:
    back = cls.load(folder)
    assert back.rows() == res.rows() and back.summary == json.loads(
        (folder / "summary.json").read_text()
    )
    again = back.save(tmp, plots=False)
    for name in cls.table_names:
        if (folder / f"{name}.csv").is_file():
            assert (again / f"{name}.csv").read_bytes() == (folder / f"{name}.csv").read_bytes()
    assert (again / "summary.json").read_bytes() == (folder / "summary.json").read_bytes()
    text = repr(back)
    assert text.startswith(f"<{cls.__name__}:") and str(len(back.rows())) in text
    page = back._repr_html_()
    assert "<table" in page and "<img" in page


def test_patch_saves_what_the_command_writes(setup, capsys):
    _, model, vecs, root = setup
    opts = ["--data", "baseline", "--emotion", "anger", "gratitude", "--n-pairs", "5",
            "--n-positions", "2", "--layers", "0,2,-1", "--n-boot", "50"]  # fmt: skip
    code, _, err = run(capsys, "patch", "--model", model, "--vectors", vecs, *opts,
                       "--out", root / "cli", "--quiet")  # fmt: skip
    assert code == 0, err
    res = patch(model, "baseline", vecs, emotion=["anger", "gratitude"], n_pairs=5,
                n_positions=2, layers=[0, 2, -1], n_boot=50)  # fmt: skip
    assert isinstance(res, PatchResult) and res.run is not None
    res.save(root / "lib")
    _same_folders(root / "cli", root / "lib")
    assert len(res.figure_paths) == len(list((root / "lib" / "figures").iterdir()))
    _round_trip(res, PatchResult, root / "lib", root / "again")
    assert res.rows()[0]["emotion"] == "anger" and res.figure() is not None


def test_ablate_saves_what_the_command_writes(setup, capsys):
    _, model, vecs, root = setup
    code, _, err = run(capsys, "ablate", "--model", model, "--vectors", vecs, "--data",
                       "baseline", "--from-layer", "2", "--n-random", "2", "--n-train", "10",
                       "--n-eval", "6", "--n-boot", "50", "--out", root / "cli",
                       "--quiet")  # fmt: skip
    assert code == 0, err
    res = ablate(model, "baseline", vecs, from_layer=2, n_random=2, n_train=10, n_eval=6,
                 n_boot=50)  # fmt: skip
    assert isinstance(res, AblationResult)
    res.save(root / "lib")
    _same_folders(root / "cli", root / "lib")
    _round_trip(res, AblationResult, root / "lib", root / "again")
    assert {r["target"] for r in res.rows()} == {"gratitude", "apology", "anger", "all"}


def test_heads_saves_what_the_command_writes(tiny, tiny_dir, tmp_path, capsys):
    lm = tiny("gpt2")
    vec = str(_save_vectors(lm, tmp_path / "v.safetensors"))
    model = str(tiny_dir("gpt2"))
    code, _, err = run(
        capsys, "heads", "--model", model, "--vectors", vec, "--data", "baseline",
        "--emotion", "anger", "--top-k", "1", "2", "--n-random", "3", "--n-ablate", "2",
        "--n-per-class", "4", "--n-boot", "50", "--layer", "2", "--quiet",
        "--out", tmp_path / "cli",
    )  # fmt: skip
    assert code == 0, err
    res = heads(model, "baseline", vec, emotion=["anger"], top_k=[1, 2], n_random=3,
                n_ablate=2, n_per_class=4, n_boot=50, layer=2)  # fmt: skip
    assert isinstance(res, HeadsResult)
    res.save(tmp_path / "lib")
    _same_folders(tmp_path / "cli", tmp_path / "lib")
    _round_trip(res, HeadsResult, tmp_path / "lib", tmp_path / "again")
    assert res.rows()[0]["emotion"] == "anger" and res.rows()[0]["top_head"].startswith("L")


def test_save_without_plots_writes_tables_only(setup):
    lm, _, vecs, root = setup
    res = patch(lm, "baseline", vecs, emotion=["anger"], n_pairs=5, n_positions=1,
                layers=[0, 3], n_boot=20)  # fmt: skip
    out = res.save(root / "tables", plots=False)
    assert not (out / "figures").exists() and res.figure_paths == []
    assert {p.name for p in out.iterdir()} == {"pairs.csv", "gaps.csv", "patching.csv",
                                               "summary.json"}  # fmt: skip


def test_budgets_resolve_in_the_library_and_explicit_settings_win(setup):
    assert budget_table("patch") is PATCH_BUDGETS and budget_table("ablate") is ABLATE_BUDGETS
    assert budget_table("heads") is HEADS_BUDGETS and budget_table("steer") is None
    assert resolve_budget("heads", "fast", {"n_random": 7})["n_random"] == 7
    assert resolve_budget("heads", "fast", {})["top_k"] == HEADS_BUDGETS["fast"]["top_k"]
    with pytest.raises(EmocircuitsError, match="unknown budget"):
        resolve_budget("patch", "huge", {})
    lm, _, vecs, _ = setup
    res = patch(lm, "baseline", vecs, emotion=["anger"], budget="fast", n_pairs=4, n_boot=20)
    st = res.summary["settings"]
    assert st["budget"] == "fast" and st["n_positions"] == 3 and st["n_pairs_requested"] == 4


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda v: patch("no-such-model", "baseline", v, emotion=["joy"]), "no 'joy' direction"),
        (lambda v: patch("no-such-model", "baseline", v, baseline="calm"), "no 'calm' prompts"),
        (lambda v: ablate("no-such-model", "baseline", v, targets=["joy"]), "cannot ablate"),
        (lambda v: ablate("no-such-model", "baseline", v, n_train=60, n_eval=6), "needs 60"),
        (lambda v: heads("no-such-model", "baseline", v, layer=0), "layer"),
        (lambda v: heads("no-such-model", "nope.jsonl", v), "nope"),
    ],
)
def test_bad_input_is_refused_before_the_model_loads(setup, call, message):
    _, _, vecs, _ = setup
    with pytest.raises(EmocircuitsError, match=message):
        call(vecs)  # a model name that does not exist: loading it would fail differently


def _fail_on_call(module: torch.nn.Module, n: int):
    """A forward hook that raises on the n-th call (the test's own, removed by the test)."""
    calls = {"n": 0}

    def hook(mod, args, output):
        calls["n"] += 1
        if calls["n"] >= n:
            raise RuntimeError("stop here")

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("stage", ["patch", "ablate", "heads"])
def test_no_hooks_remain_after_a_call_or_an_exception(setup, stage):
    lm, _, vecs, _ = setup
    before = count_hooks(lm.model)
    calls = {
        "patch": lambda: patch(lm, "baseline", vecs, emotion=["anger"], n_pairs=5,
                               n_positions=1, layers=[0, 2], n_boot=10),
        "ablate": lambda: ablate(lm, "baseline", vecs, targets=["all"], from_layer=2,
                                 n_random=1, n_train=6, n_eval=4, n_boot=10),
        "heads": lambda: heads(lm, "baseline", vecs, emotion=["anger"], top_k=[1],
                               n_random=2, n_ablate=2, n_per_class=4, n_boot=10, layer=2),
    }  # fmt: skip
    calls[stage]()
    assert count_hooks(lm.model) == before
    handle = _fail_on_call(lm.arch.blocks[-1], 3)
    try:
        with pytest.raises(RuntimeError, match="stop here"):
            calls[stage]()
        assert count_hooks(lm.model) == before + 1  # only the test's own
    finally:
        handle.remove()
    assert count_hooks(lm.model) == before

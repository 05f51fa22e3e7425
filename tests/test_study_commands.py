"""A study stage's folder is what the stand-alone command writes with the same settings.

The study calls the library functions the commands call (study/calls.py); this checks the
promise end to end: for every stage of the tiny study (capture, geometry with its vectors,
compare, steer, patch, ablate, heads), the command is run with the options recorded in the
stage's ``stage.json`` and its folder is compared file by file with the stage's. Only the
study's own files (``stage.json``, ``log.txt``), the run time in ``summary.json`` and the
SVGs' drawing time may differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from emocircuits.interventions import readout as readout_module

from helpers import run
from study_fixture import _single_token_words, study_dir  # noqa: F401  (the fixture)

pytestmark = pytest.mark.real

#: study-only files, not written by a command
STUDY_FILES = {"stage.json", "log.txt"}
#: options the commands take as several values (nargs="+"); other lists are comma-separated
SEVERAL = {"layer", "alpha", "emotion", "top_k"}


def _argv(options: dict) -> list[str]:
    """A stage's recorded options as the command's arguments."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            items = [str(v) for v in value]
            argv += [flag, *items] if key in SEVERAL else [flag, ",".join(items)]
        else:
            argv += [flag, str(value)]
    return argv


def _stages(out: Path) -> dict[str, dict]:
    """stage key -> its stage.json, with the folder it describes under ``"dir"``."""
    doc = json.loads((out / "study.json").read_text())
    found = {}
    for s in doc["stages"]:
        man = json.loads((out / s["dir"] / "stage.json").read_text())
        found[s["key"]] = {**man, "dir": out / s["dir"]}
    return found


def _files(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


def _same(stage: Path, command: Path, only: set[Path] | None = None) -> None:
    """The stage's files (less the study's own) equal the command's, byte for byte."""
    mine = {f for f in _files(stage) if f.name not in STUDY_FILES}
    theirs = _files(command)
    if only is None:
        assert mine == theirs, (sorted(mine ^ theirs), stage)
    else:
        assert only <= mine and only <= theirs, (only - mine, only - theirs)
        mine = only
    for f in sorted(mine):
        # a result records where it was written: each folder's own path reads the same
        a, b = ((d / f).read_bytes().replace(str(d).encode(), b"OUT") for d in (stage, command))
        if f.name == "summary.json":
            sa, sb = json.loads(a), json.loads(b)
            sa.pop("seconds", None), sb.pop("seconds", None)
            assert sa == sb, f
        elif f.suffix != ".svg":  # an SVG records when it was drawn
            assert a == b, (stage / f, command / f)


@pytest.fixture(scope="module")
def stages(study_dir):  # noqa: F811  (the imported fixture)
    return _stages(study_dir)


@pytest.fixture(autouse=True)
def one_thread():
    """The study fixture runs its models on one thread; the commands must too, or the
    float sums of a forward pass come out in another order (different last digits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def feeling_words(stages, monkeypatch):
    """The one-token stand-ins for the feeling words that the study ran with."""
    model = next(s["identity"]["model"]["folder"] for s in stages.values() if s["model"])
    words = _single_token_words(Path(model))
    feeling = {"gratitude": tuple(words[:2]), "apology": tuple(words[2:4]),
               "anger": tuple(words[4:6])}  # fmt: skip
    monkeypatch.setattr(readout_module, "FEELING_WORDS", feeling)
    monkeypatch.setattr(readout_module, "REFERENCE_WORDS", tuple(words[6:]) or ("the",))


def _options(stage: dict, call: str) -> dict:
    return next(c["options"] for c in stage["calls"] if c["call"] == call)


def _input(stage: dict, kind: str) -> Path:
    return Path(next(v["dir"] for k, v in stage["inputs"].items() if k.startswith(kind + "/")))


def test_capture_stage_is_what_extract_writes(stages, tmp_path, capsys):
    st = stages["capture/tiny-llama.baseline"]
    code, _, err = run(capsys, "extract", "--model", st["model"], "--data", st["data"],
                       *_argv(_options(st, "extract")), "--out", tmp_path / "x",
                       "--quiet")  # fmt: skip
    assert code == 0, err
    shards = {f for f in _files(st["dir"]) if f.suffix == ".safetensors"}
    assert shards
    # the manifest records when and how long; the shards and the plan are the data
    _same(st["dir"], tmp_path / "x", only=shards | {Path("plan.json")})


def test_geometry_stage_is_what_geometry_and_vectors_write(stages, tmp_path, capsys):
    st = stages["geometry/tiny-gpt2.baseline"]
    acts = _input(st, "capture")
    out = tmp_path / "g"
    code, _, err = run(capsys, "geometry", "--activations", acts,
                       *_argv(_options(st, "analyze_geometry")), "--out", out)  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, "vectors", "--activations", acts,
                       *_argv(_options(st, "directions")), "--out",
                       out / "vectors.safetensors")  # fmt: skip
    assert code == 0, err
    _same(st["dir"], out)


def test_compare_stage_is_what_compare_writes(stages, tmp_path, capsys):
    st = stages["compare/baseline"]
    acts = [Path(v["dir"]) for v in st["inputs"].values()]
    names = [k.split("/")[1].rsplit(".", 1)[0] for k in st["inputs"]]
    code, _, err = run(capsys, "compare", "--activations", *acts, "--names", *names,
                       *_argv(_options(st, "compare_models")), "--out", tmp_path / "c",
                       "--quiet")  # fmt: skip
    assert code == 0, err
    _same(st["dir"], tmp_path / "c")


def test_steer_stage_is_what_steer_sweep_writes(stages, tmp_path, capsys):
    st = stages["steer/tiny-llama"]
    out = tmp_path / "s"
    out.mkdir()
    # the study keeps the vectors, and so their recommended settings, inside the stage
    vecs = out / "vectors.safetensors"
    shutil.copy(_input(st, "geometry") / "vectors.safetensors", vecs)
    code, _, err = run(capsys, "steer-sweep", "--model", st["model"], "--vectors", vecs,
                       *_argv(_options(st, "steer_sweep")), "--out", out,
                       "--quiet")  # fmt: skip
    assert code == 0, err
    _same(st["dir"], out)


@pytest.mark.parametrize("stage", ["patch", "ablate", "heads"])
def test_causal_stages_are_what_their_commands_write(stages, feeling_words, stage, tmp_path,
                                                     capsys):  # fmt: skip
    st = stages[f"{stage}/tiny-gpt2"]
    vecs = _input(st, "geometry") / "vectors.safetensors"
    code, _, err = run(capsys, stage, "--model", st["model"], "--vectors", vecs, "--data",
                       st["data"], *_argv(_options(st, stage)), "--out", tmp_path / stage,
                       "--quiet")  # fmt: skip
    assert code == 0, err
    _same(st["dir"], tmp_path / stage)

"""A small finished study folder, written by the real runner (`emocircuits run`'s
:func:`run_study`) on two tiny random models, every analysis on.

Settings are the smallest that still give every table and figure: the ``baseline``
preset, few resamples, 4-token continuations. The logit-difference readout needs feeling
words that are one token: the tiny tokenizer has none, so frequent one-token words stand
in for them while the study runs (as in tests/test_patching.py). The steering prompts
include one that must come out escaped in the report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# a prompt that must come out escaped in the report (steering examples show the prompts)
HOSTILE = "<script>alert(1)</script> Tell me about the weather"
PROMPTS = [HOSTILE, "The meeting moved to Thursday.", "I went to the store and"]
ANALYSES = ("geometry", "compare", "steer", "patch", "ablate", "heads")
_BUILT: dict[str, Path] = {}


def _single_token_words(model_dir: Path) -> list[str]:
    """Frequent words the tiny tokenizer keeps as one token (the readout needs them)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    words = ("the", "a", "to", "and", "you", "I", "for", "of", "is", "in", "my", "it")
    return [w for w in words if len(tok.encode(" " + w, add_special_tokens=False)) == 1]


def study_settings(out: Path, models: list[Path], prompts: Path, analyses=ANALYSES) -> dict:
    """The overrides (as `--set` or a config file would give them) of the tiny study."""
    return {
        "study": {"models": [str(m) for m in models], "data": ["baseline"],
                  "causal_data": "baseline", "out": str(out), "analyses": list(analyses),
                  "mlflow": False},
        "extract": {"positions": ["mean"], "sites": ["resid"]},
        "geometry": {"n_boot": 30, "n_splits": 10, "n_perm": 20, "folds": 3},
        "compare": {"n_perm": 30, "n_perm_heavy": 10, "k": 5},
        "steer-sweep": {"prompts": str(prompts), "layer": [2], "alpha": [0.25, 1.0],
                        "max_new_tokens": 4},
        "patch": {"n_pairs": 4, "n_positions": 2, "layers": "0-3", "n_boot": 30},
        "ablate": {"from_layer": 2, "n_random": 2, "n_train": 10, "n_eval": 6, "n_boot": 30},
        "heads": {"top_k": [1, 2], "n_random": 3, "n_ablate": 2, "n_per_class": 6,
                  "n_boot": 30, "top_neurons": 3, "top_prompts": 2},
    }  # fmt: skip


def build_study(out: Path, models: dict[str, Path], analyses=ANALYSES) -> Path:
    """Run the tiny study into ``out``. ``models`` maps a short name to a model folder (the
    name becomes the folder's label through a symlink). About 25 s on 2 cores."""
    import torch

    from emocircuits.interventions import readout as readout_module
    from emocircuits.study.config import load_config
    from emocircuits.study.runner import run_study

    out.mkdir(parents=True, exist_ok=True)
    links = []
    for name, folder in models.items():
        link = out.parent / name
        if not link.exists():
            link.symlink_to(folder, target_is_directory=True)
        links.append(link)
    prompts = out.parent / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    words = _single_token_words(next(iter(models.values())))
    feeling = {"gratitude": tuple(words[:2]), "apology": tuple(words[2:4]),
               "anger": tuple(words[4:6])}  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a busy machine
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(readout_module, "FEELING_WORDS", feeling)
            mp.setattr(readout_module, "REFERENCE_WORDS", tuple(words[6:]) or ("the",))
            cfg = load_config(None, study_settings(out, links, prompts, analyses))
            res = run_study(cfg, progress=False, tracking=False)
    finally:
        torch.set_num_threads(threads)
    assert not res.failed, res.failed
    return out


@pytest.fixture(scope="session")
def study_dir(tiny_dir, tmp_path_factory) -> Path:
    """A finished study of two tiny models (built once per test session; do not modify it:
    copy it first)."""
    if "dir" not in _BUILT:
        models = {"tiny-llama": tiny_dir("llama"), "tiny-gpt2": tiny_dir("gpt2")}
        _BUILT["dir"] = build_study(tmp_path_factory.mktemp("study") / "out", models)
    return _BUILT["dir"]

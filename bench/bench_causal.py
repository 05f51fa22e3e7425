"""The causal analyses (RQ4: `heads`, `patch`, `ablate`) against plain forward passes in
the same run, with the settings a whole-study run uses (``--settings fast``, the library's
``budget="fast"``) or the CLI defaults (``--settings default``).

The baseline is a plain forward pass of the LM (with its LM head, last position only, as
the code before this benchmark ran every intervention) over 64 evenly spaced
cue-appended `extended` prompts, timed (best of 3) right before and right after each
analysis. An analysis' cost is reported three ways, in **prompt-forward equivalents**
(how many plain forward passes of one prompt cost as much):

- ``work``: the tokens every transformer block processed during the analysis (counted by a
  pre-hook on each block) over those of one plain forward pass of an average prompt;
  exact and independent of the machine (it leaves out the LM head and everything else);
- ``cpu``: this process's CPU seconds over the baseline's CPU seconds per prompt (moves
  little when other processes compete for the cores);
- ``wall``: wall seconds over the baseline's wall seconds per prompt.

Every timed call also reports how many cores other processes used meanwhile.

    python bench/bench_causal.py                               # smollm2-135m, fast
    python bench/bench_causal.py --model gemma3-270m
    python bench/bench_causal.py --settings default --analyses heads,ablate
    git archive <old commit> src | tar -x -C /tmp/before       # the code before, too:
    python bench/bench_causal.py --before /tmp/before/src      # same process, same model

With ``--before`` the older checkout's ``heads.py``, ``patching.py`` and ``ablation.py``
are loaded under other names (they import everything else from this checkout) and run on
the same model right after this checkout's, each between two baselines.

The directions are one_vs_rest vectors (position ``mean``, resid) from ``--n-vectors``
prompts per class of `extended`, or ``--vectors FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import CPU_PER_WALL, FOREIGN, Meter, cpu_model, finish, spread

ROOT = Path(__file__).resolve().parents[1]
if "EMOCIRCUITS_CACHE" not in os.environ and (ROOT / ".cache" / "emocircuits").is_dir():
    os.environ["EMOCIRCUITS_CACHE"] = str(ROOT / ".cache" / "emocircuits")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import emocircuits as ec  # noqa: E402
from emocircuits.capture.capture import (  # noqa: E402
    CaptureSpec,
    capture,
    plan_batches,
    token_lengths,
    tokenize,
)
from emocircuits.capture.hooks import hooked  # noqa: E402
from emocircuits.geometry.directions import emotion_directions  # noqa: E402
from emocircuits.geometry.vectors import EmotionVectors, normalise  # noqa: E402
from emocircuits.interventions.readout import readout, readout_texts  # noqa: E402

EMOTIONS = ("gratitude", "apology", "anger")
# Explicit settings (the code before this benchmark has no budgets): "fast" must equal the
# library's budget "fast" (checked when the library has one), "default" the CLI defaults.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "fast": {
        "heads": {"top_k": (2, 8), "n_random": 39, "n_ablate": 4, "n_per_class": 32},
        "patch": {"n_pairs": 12, "n_positions": 3, "n_layers": 8},
        "ablate": {"n_train": 32, "n_eval": 10, "n_random": 39, "targets": ("all",)},
    },
    "default": {
        "heads": {"top_k": (1, 2, 4, 8), "n_random": 50, "n_ablate": 12, "n_per_class": None},
        "patch": {"n_pairs": 24, "n_positions": 6, "n_layers": None},
        "ablate": {"n_train": 80, "n_eval": 40, "n_random": 20, "targets": None},
    },
}


def _library_budget(analysis: str, name: str) -> dict[str, Any] | None:
    """The library's named settings, or None where the code has none (before budgets)."""
    try:
        if analysis == "heads":
            from emocircuits.interventions.heads import HEADS_BUDGETS as b
        elif analysis == "patch":
            from emocircuits.interventions.patching import PATCH_BUDGETS as b
        else:
            from emocircuits.interventions.ablation import ABLATE_BUDGETS as b
    except ImportError:
        return None
    return b.get(name)


def _vectors(lm: Any, ds: Any, n: int) -> EmotionVectors:
    ex, seen = [], {}
    for e in ds.examples:
        if seen.get(e.emotion, 0) < n:
            seen[e.emotion] = seen.get(e.emotion, 0) + 1
            ex.append(e)
    x = capture(lm, [e.text for e in ex], CaptureSpec(sites=("resid",), positions=("mean",)))
    dirs, norms = normalise(
        emotion_directions(x["resid/mean"], [e.emotion for e in ex], method="one_vs_rest")
    )
    layers = list(range(lm.arch.n_layers + 1))
    return EmotionVectors(dirs, norms, layers, "one_vs_rest", "resid", "mean", "neutral")


def _plain(lm: Any, texts: list[str], batch_size: int = 16) -> None:
    """What every intervention pass cost before: the LM with its head, last position."""
    device = lm.arch.base_model.device
    for rows in plan_batches(token_lengths(lm, texts), batch_size):
        _, inputs = tokenize(lm, [texts[i] for i in rows], [None] * len(rows),
                             padding_side="left")  # fmt: skip
        with torch.inference_mode():
            lm.model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False,
                     logits_to_keep=1)  # fmt: skip


MODULES = {"heads": "heads", "patch": "patching", "ablate": "ablation"}


def _modules(before: Path | None) -> dict[str, dict[str, Any]]:
    """The analysis modules of this checkout ("after") and, with ``before`` (a ``src``
    folder of an older checkout), the same files of that one loaded under other names, so
    both run in one process on one loaded model (they import everything else from here)."""
    import importlib
    import importlib.util

    out: dict[str, dict[str, Any]] = {"after": {}}
    for analysis, name in MODULES.items():
        out["after"][analysis] = importlib.import_module(f"emocircuits.interventions.{name}")
    if before is not None:
        out["before"] = {}
        for analysis, name in MODULES.items():
            path = before / "emocircuits" / "interventions" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(f"_before_{name}", path)
            assert spec is not None and spec.loader is not None, path
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            out["before"][analysis] = mod
    return out


def _run(
    analysis: str, mod: Any, lm: Any, ds: Any, vecs: EmotionVectors, st: dict[str, Any]
) -> dict:
    """One analysis (``mod``: its module) with explicit settings; returns a few numbers
    that show it worked (and agree between the code before and after)."""
    if analysis == "heads":
        res = mod.analyze_heads(lm, ds, vecs, n_boot=1000, **st)
        a = [r for r in res.tables["ablation"] if r["metric"] == "projection"]
        return {"layer": res.summary["settings"]["layer"], "seconds": res.summary["seconds"],
                "ablation_rows": len(res.tables["ablation"]),
                "mean_top_drop_projection": round(float(np.mean([r["top_drop"] for r in a])), 4),
                "p_values": [r["p"] for r in a]}  # fmt: skip
    rs = {e: readout(lm.tokenizer, e) for e in EMOTIONS}
    if analysis == "patch":
        st = dict(st)
        n = st.pop("n_layers") or len(vecs.layers)  # explicit layers: the code before has none
        layers = [vecs.layers[i] for i in np.unique(np.linspace(0, len(vecs.layers) - 1, n)
                                                    .round().astype(int))]  # fmt: skip
        res = mod.patch(lm, ds.texts, ds.labels, vecs, rs, layers=layers, **st)
        rows = res.table(n_boot=1000)
        best = {}
        for e in EMOTIONS:
            d = [r["recovered"] for r in rows if r["emotion"] == e and r["kind"] == "directional"
                 and r["position"] == "all" and r["recovered"] is not None]  # fmt: skip
            best[e] = round(max(d), 4)
        return {"layers": len(layers), "pairs": len(res.pairs),
                "forward_passes": res.settings["forward_passes"],
                "best_directional_all": best}  # fmt: skip
    st = dict(st)
    tr, ev = mod.split_rows(ds.labels, st.pop("n_train"), st.pop("n_eval"), seed=0)

    def pick(rows: np.ndarray) -> tuple[list[str], list[str]]:
        return [ds.texts[i] for i in rows], [ds.labels[i] for i in rows]

    res = mod.run_ablation(lm, vecs, rs, pick(tr), pick(ev), **st)
    h = res.headline(n_boot=1000)
    removed = {e: round(g["removed"], 4) for e, g in h["all"]["ld_gap"].items()}
    return {"conditions": len(res.conditions), "removed_all": removed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--settings", choices=sorted(SETTINGS), default="fast")
    p.add_argument("--analyses", default="heads,patch,ablate")
    p.add_argument(
        "--before", type=Path, default=None, help="src folder of an older checkout (run too)"
    )
    p.add_argument("--vectors", default=None, help="vectors file (default: computed here)")
    p.add_argument("--n-vectors", type=int, default=40, help="prompts per class for them")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print(f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, {args.model}; "
          f"settings {args.settings}; before: {args.before or '-'}", flush=True)  # fmt: skip
    lm = ec.load_model(args.model, progress=False)
    ds = ec.load_dataset("extended")
    mods = _modules(args.before)
    t0 = time.perf_counter()
    vecs = EmotionVectors.load(args.vectors) if args.vectors else _vectors(lm, ds, args.n_vectors)
    print(f"vectors ready in {time.perf_counter() - t0:.1f} s", flush=True)
    ref = readout_texts([ds.texts[i] for i in spread(len(ds.texts), 64)])  # evenly spaced
    _plain(lm, ref[:16])  # warm-up
    results: dict[str, Any] = {"model": args.model, "settings": args.settings,
                               "before": str(args.before), "analyses": {}}  # fmt: skip
    work = {"tokens": 0}

    def count(module: Any, a: Any, kwargs: dict[str, Any]) -> None:
        h = a[0] if a else kwargs["hidden_states"]
        work["tokens"] += int(h.shape[0]) * int(h.shape[1])

    counting = [(blk, "pre", count) for blk in lm.arch.blocks]
    ref_tokens = float(np.mean(token_lengths(lm, ref))) * lm.arch.n_layers  # one prompt

    def baseline() -> tuple[float, float, float]:
        """Wall and CPU seconds per prompt (best of 3), cores used by others."""
        best: Meter | None = None
        for _ in range(3):
            with Meter() as m:
                _plain(lm, ref)
            if best is None or m.wall < best.wall:
                best = m
        assert best is not None
        return best.wall / len(ref), best.wall * best.cpu_per_wall / len(ref), best.foreign

    for analysis in args.analyses.split(","):
        st = SETTINGS[args.settings][analysis]
        lib = _library_budget(analysis, args.settings)
        if lib is not None and {k: tuple(v) if isinstance(v, list) else v
                                for k, v in lib.items()} != st:  # fmt: skip
            print(f"WARNING: {analysis} settings {st} differ from the library's {lib}")
        results["analyses"][analysis] = {"settings": st}
        prev = baseline()
        for code, ms in mods.items():  # baseline, after, baseline, before, baseline
            work["tokens"] = 0
            with Meter() as m, hooked(counting):
                info = _run(analysis, ms[analysis], lm, ds, vecs, st)
            nxt = baseline()
            CPU_PER_WALL.append(m.cpu_per_wall)
            FOREIGN.append(m.foreign)
            wall_pp, cpu_pp = (prev[0] + nxt[0]) / 2, (prev[1] + nxt[1]) / 2
            cpu = m.wall * m.cpu_per_wall
            r = {"seconds": round(m.wall, 1), "cpu_seconds": round(cpu, 1),
                 "equivalents": {"work": round(work["tokens"] / ref_tokens),
                                 "cpu": round(cpu / cpu_pp), "wall": round(m.wall / wall_pp)},
                 "baseline_ms_per_prompt": {"wall": round(1000 * wall_pp, 1),
                                            "cpu": round(1000 * cpu_pp, 1)},
                 "baseline_drift": round(nxt[0] / prev[0], 3),
                 "other_cores": round(max(m.foreign, prev[2], nxt[2]), 2),
                 "cpu_per_wall": round(m.cpu_per_wall, 2), "check": info}  # fmt: skip
            results["analyses"][analysis][code] = r
            prev = nxt
            eq = r["equivalents"]
            print(f"{analysis:7s} {code:6s} {m.wall:6.1f} s wall, {cpu:6.1f} s cpu = "
                  f"prompt-forwards: work {eq['work']}, cpu {eq['cpu']}, wall {eq['wall']} "
                  f"(plain {1000 * wall_pp:.0f} ms/prompt wall, {1000 * cpu_pp:.0f} cpu; "
                  f"drift {r['baseline_drift']:.2f}; others used up to "
                  f"{r['other_cores']:.2f} cores)\n        {json.dumps(info, default=str)}",
                  flush=True)  # fmt: skip
        if "before" in mods:
            a, b = (results["analyses"][analysis][c]["equivalents"] for c in ("after", "before"))
            ratio = {k: round(b[k] / max(a[k], 1), 2) for k in a}
            results["analyses"][analysis]["before_over_after"] = ratio
            print(f"        before / after: {ratio}", flush=True)
    finish(results, args.threads, t_start, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

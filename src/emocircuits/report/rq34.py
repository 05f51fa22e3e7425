"""RQ3 (steering changes the tone, from the steer stages) and RQ4 (heads, neurons, patching
and ablation): each stage's block of numbers, tables and figures, and the one-line answer
computed from the blocks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emocircuits.interventions.steering import describe_push
from emocircuits.report.data import (
    ALPHA,
    Block,
    Est,
    Null,
    Number,
    Source,
    StageRef,
    Table,
    _ci,
    _count,
    _f,
    _figures,
    _guard,
    _json,
    _num,
    _source,
    _verdict,
)
from emocircuits.tables import read_table


# ------------------------------------------------------------------------------------ RQ3
def _steer(ref: StageRef, study: dict[str, Any]) -> Block:
    s = _json(ref.path / "sweep.json")
    vec = s.get("vectors") or {}
    src = _source(ref, study, site=vec.get("site"), position=vec.get("position"),
                  method=vec.get("method"))  # fmt: skip
    title = f"{ref.model or ref.label}"
    return _guard(ref, src, title, lambda: _steer_block(ref, s, src, title))


def _steer_block(ref: StageRef, s: dict[str, Any], src: Source, title: str) -> Block:
    b = Block(title, src.at("sweep.json"))
    rec = s.get("recommended") or {}
    st = s.get("settings") or {}
    split = st.get("split") or {}
    n_held = len(split.get("held_out") or [])
    rows, results = [], []
    for e, r in rec.items():
        lim = r.get("limits") or {}
        method = r.get("method") or (s.get("vectors") or {}).get("method")
        if r.get("layer") is None:  # an explicit none: no setting passed the limits
            results.append((e, Est(None), False))
            tried = r.get("candidates") or []
            b.numbers.append(Number(
                f"{e}: no setting passed the limits", Est(None),
                note=f"{len(tried)} settings tried at full length ({method} directions); "
                "a wider sweep (more layers or alphas, more prompts) may find one",
            ))  # fmt: skip
            rows.append({"emotion": e, "method": method, "layer": None, "alpha": None,
                         "effect": r.get("effect"), "tune [95% CI]": Est(None),
                         "held out [95% CI]": Est(None), "perplexity ratio": None,
                         "distinct-2 ratio": None, "random VADER change": None,
                         "within limits": False,
                         "reason": "no setting passed the limits"})  # fmt: skip
            continue
        tune = Est(_num(r.get("value")), _num(r.get("lo")), _num(r.get("hi")))
        h = r.get("held_out") or {}
        held = Est(_num(h.get("value")), _num(h.get("lo")), _num(h.get("hi")))
        ok = bool(r.get("meets_limits"))
        quoted = held if held.value is not None else tune  # sweeps before the split: tune only
        steers = ok and quoted.lo is not None and quoted.lo > 0
        results.append((e, quoted, steers))
        rand = _num(h.get("random_vader_change", r.get("random_vader_change")))
        where = f"{n_held} held-out prompts" if held.value is not None else "the tune prompts"
        b.numbers.append(Number(
            f"{e}: {r.get('effect')} at layer {r.get('layer')}, alpha {r.get('alpha')} "
            f"({method} directions), on {where}", quoted,
            Null(f"random direction at the same setting (VADER change; limit "
                 f"{lim.get('random_vader_change', '?')})", rand),
            note=("chosen on the other prompts, within the fluency limits" if ok
                  else f"outside the limits: {r.get('reason')}")
            + f"; on the tune prompts {_ci(tune)}; alpha x typical residual norm",
        ))  # fmt: skip
        rows.append({"emotion": e, "method": method, "layer": r.get("layer"),
                     "alpha": _num(r.get("alpha")), "effect": r.get("effect"),
                     "tune [95% CI]": tune, "held out [95% CI]": held,
                     "perplexity ratio": _num(h.get("perplexity_ratio_median",
                                                    r.get("perplexity_ratio_median"))),
                     "distinct-2 ratio": _num(h.get("distinct_2_ratio",
                                                    r.get("distinct_2_ratio"))),
                     "random VADER change": rand, "within limits": ok,
                     "reason": r.get("reason") or ""})  # fmt: skip
    screen = st.get("screen_tokens")
    b.tables.append(Table(
        "Recommended setting per emotion: chosen on the tune prompts, reported on the held-out "
        "prompts", rows, src.at("sweep.json"),
        f"Layers {st.get('layers')}, alphas {st.get('alphas')}, {st.get('n_prompts', '?')} "
        f"prompts split {len(split.get('tune') or [])} tune / {n_held} held out (seeded), "
        + (f"every setting screened with {screen} new tokens and the best "
           f"{st.get('n_keep')} per emotion at " if screen else "")
        + f"{st.get('max_new_tokens', '?')} new tokens, {st.get('decoding', 'greedy')}, "
        f"pushed at {describe_push(st.get('steer_tokens'), st.get('where', 'all'))}. "
        "Effect: VADER change from unsteered (gratitude; anger: its negative) or the share of "
        "continuations with apology markers. The choice: the largest lower 95% bound on the "
        "tune prompts above 0, within the fluency limits, with the random directions moving "
        "VADER by less than the limit; none if no setting passed. Fluency ratios and the "
        "random direction: held out.",
    ))  # fmt: skip
    prompt_rows = [r for r in s.get("summary") or [] if r.get("condition") == "prompt"]
    if prompt_rows:
        b.tables.append(Table(
            "Prompting baseline (an instruction to express the emotion"
            + (", held-out prompts)" if n_held else ")"),
            [{"emotion": r.get("emotion"),
              "VADER change": Est(_num(r.get("vader_change")), _num(r.get("vader_change_lo")),
                                  _num(r.get("vader_change_hi"))),
              "perplexity ratio": _num(r.get("perplexity_ratio_median"))} for r in prompt_rows],
            src.at("sweep.json", method="prompt"),
        ))  # fmt: skip
    ex = _examples(ref.path / "rows.jsonl", rec)
    if ex:
        b.tables.append(Table(
            "Example continuations at the recommended settings (greedy; held-out prompts where "
            "run there)", ex,
            src.at("rows.jsonl"),
            "none: unsteered; direction: the emotion's direction; random: a random direction "
            "of the same norm at the same layer.",
        ))  # fmt: skip
    b.figures = _figures(ref, b.source, [
        (f"dose-response-{e}.png", f"Dose-response: {e}") for e in rec
    ])  # fmt: skip
    b.facts = {"results": results}
    return b


def _examples(path: Path, rec: dict[str, Any], n: int = 3) -> list[dict[str, Any]]:
    """Continuations at each recommended setting: from the held-out prompts where the sweep
    ran it there, else from the full-length tune rows (never the short screen)."""
    if not path.is_file():
        return []
    every = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    out = []
    for e, r in rec.items():
        at = (r.get("layer"), r.get("alpha"))
        if at[0] is None:
            continue

        def here(x: dict[str, Any], e: str = e, at: tuple = at) -> bool:
            return x["condition"] == "none" or (
                x["condition"] in ("direction", "random") and (x["layer"], x["alpha"]) == at
                and (x["condition"] == "random" or x["emotion"] == e))  # fmt: skip

        rows = [x for x in every if x.get("stage") == "held_out" and here(x)]
        if not any(x["condition"] == "direction" for x in rows):
            rows = [x for x in every if x.get("stage", "tune") == "tune" and here(x)]
        for i in sorted({x["prompt_index"] for x in rows})[:n]:
            pick = {x["condition"]: x for x in rows if x["prompt_index"] == i}
            if "direction" in pick:
                out.append({"emotion": e, "prompt": pick["direction"]["prompt"],
                            **{c: pick[c]["continuation"] if c in pick else ""
                               for c in ("none", "direction", "random")}})  # fmt: skip
    return out


def _rq3(blocks: list[Block]) -> tuple[str, str]:
    res = [(b.title, e, est, ok) for b in blocks if b.facts for e, est, ok in b.facts["results"]]
    if not res:
        return "not run", "No steering results to answer from."
    k = _count(ok for *_, ok in res)
    detail = ", ".join(f"{e} {_ci(est) if est.value is not None else 'no setting passed'} ({m})"
                       for m, e, est, _ in res)  # fmt: skip
    verdict = _verdict([(k, len(res))])
    return verdict, (
        f"{verdict.capitalize()}: at the setting chosen on the tune prompts, the direction "
        f"changes the tone on the held-out prompts (95% interval above 0, within the fluency "
        f"limits and with the random direction moving VADER by less than the limit) for {k} "
        f"of {len(res)} emotion × model pairs: {detail}."
    )


# ------------------------------------------------------------------------------------ RQ4
def _vec_source(ref: StageRef, study: dict[str, Any], s: dict[str, Any]) -> Source:
    vec = s.get("vectors") or {}
    data = s.get("data") or s.get("dataset") or {}
    src = _source(ref, study, site=vec.get("site"), position=vec.get("position"),
                  method=vec.get("method"))  # fmt: skip
    if data.get("sha256"):
        src.data_sha256 = data["sha256"]
    return src


def _vectors_stage(
    ref: StageRef, study: dict[str, Any], what: str, block: Callable[..., Block]
) -> Block:
    """A stage run with a vectors file (heads, patch, ablate): its summary.json read by
    ``block(ref, summary, source, title)``, titled ``what: model``."""
    s = _json(ref.path / "summary.json")
    src = _vec_source(ref, study, s)
    title = f"{what}: {ref.model or ref.label}"
    return _guard(ref, src, title, lambda: block(ref, s, src, title))


def _heads(ref: StageRef, study: dict[str, Any]) -> Block:
    return _vectors_stage(ref, study, "Heads and neurons", _heads_block)


def _heads_block(ref: StageRef, s: dict[str, Any], src: Source, title: str) -> Block:
    b = Block(title, src.at("summary.json"))
    st = s.get("settings") or {}
    pos = st.get("position") or src.position or "mean"
    b.notes.append(f"Readout layer {st.get('layer')} ({st.get('layer_choice', '')}).")
    top_rows = []
    for e, h in (s.get("headline") or {}).items():
        for rank, t in enumerate(h.get("top_heads", [])[:3], 1):
            top_rows.append({"emotion": e, "rank": rank, "head": t["name"],
                             "contrast": Est(t["contrast"], t.get("lo"), t.get("hi")),
                             "share of total": _num(t.get("share"))})  # fmt: skip
    if top_rows:
        b.tables.append(Table(
            f"Top heads by direct contribution to the direction (position {pos})", top_rows,
            src.at("summary.json"),
            "Contrast: emotion prompts minus neutral prompts of the head's write projected on "
            "the unit direction, 95% bootstrap interval; share: of the total contrast.",
        ))  # fmt: skip
    results = []
    if (ref.path / "ablation.csv").is_file():
        abl = read_table(ref.path, "ablation")
        kmax = max((int(r["k"]) for r in abl), default=0)
        rows = []
        for r in abl:
            if int(r["k"]) != kmax or r["ranked_at"] != pos:
                continue
            est = Est(r["top_drop"], _num(r["top_lo"]), _num(r["top_hi"]))
            null = Null(f"{r['n_random']} random sets of {kmax} heads", _num(r["random_mean"]),
                        _num(r["random_lo"]), _num(r["random_hi"]))  # fmt: skip
            p = _num(r["p"])
            results.append((r["emotion"], r["metric"], p is not None and p < ALPHA))
            b.numbers.append(Number(
                f"{r['emotion']}: drop in {r['metric']} after ablating the top {kmax} heads",
                est, null, p, note=f"share of the gap {_f(_num(r['share_of_gap']))}",
            ))  # fmt: skip
            rows.append({"emotion": r["emotion"], "metric": r["metric"], "k": kmax,
                         "heads": r["heads"], "drop [95% CI]": est,
                         "random mean": null.value, "random 95%": Est(None, null.lo, null.hi),
                         "p": p, "share of gap": _num(r["share_of_gap"])})  # fmt: skip
        b.tables.append(Table(
            f"Mean-ablating the top {kmax} heads against random head sets", rows,
            src.at("ablation.csv"),
            "p = (1 + #random sets with at least the same drop) / (1 + sets).",
        ))  # fmt: skip
    if (ref.path / "neurons.csv").is_file():
        neu = [r for r in read_table(ref.path, "neurons") if int(r["rank"]) <= 3]
        b.tables.append(Table(
            "Top MLP neurons and the prompts that activate them most",
            [{"emotion": r["emotion"], "rank": r["rank"],
              "neuron": f"L{r['layer']}N{r['neuron']}",
              "contrast": Est(r["contrast"], _num(r["lo"]), _num(r["hi"])),
              "write on v": _num(r["write_on_v"]), "top labels": str(r["top_labels"]),
              "top prompts": str(r["top_prompts"])} for r in neu],
            src.at("neurons.csv"),
            "Prompts joined by ' | '. A positive contrast can come from a neuron active on "
            "neutral prompts that writes against the direction (write on v < 0).",
        ))  # fmt: skip
    b.figures = _figures(ref, b.source, [
        (f"heads-{pos}.png", f"Direct contribution of every head (position {pos})"),
        ("heads-cue.png", "Direct contribution of every head (at the cue)"),
        ("ablation.png", "Top-k head ablation against random heads"),
    ])  # fmt: skip
    b.facts = {"heads": results}
    return b


def _patch(ref: StageRef, study: dict[str, Any]) -> Block:
    return _vectors_stage(ref, study, "Activation patching", _patch_block)


def _patch_block(ref: StageRef, s: dict[str, Any], src: Source, title: str) -> Block:
    b = Block(title, src.at("summary.json"))
    rows, results = [], []
    for e, h in (s.get("headline") or {}).items():
        gap = Est(_num(h.get("gap")), _num(h.get("gap_ci_low")), _num(h.get("gap_ci_high")))
        d = h.get("directional_all_positions") or {}
        rec = Est(_num(d.get("recovered")), _num(d.get("ci_low")), _num(d.get("ci_high")))
        gap_ok = gap.lo is not None and gap.lo > 0
        results.append((e, gap_ok and rec.lo is not None and rec.lo > 0, gap_ok))
        b.numbers.append(Number(
            f"{e}: share of the logit-difference gap recovered by patching only the "
            f"direction's component (all positions, best layer {d.get('best_layer')})", rec,
            Null("a random direction at that layer", _num(d.get("random_at_best_layer"))),
            note=f"gap {_ci(gap)} over {h.get('pairs_used')} pairs"
            + ("" if gap_ok else " — its interval reaches 0: fractions of it are unreliable"),
        ))  # fmt: skip
        rows.append({"emotion": e, "gap [95% CI]": gap, "pairs": h.get("pairs_used"),
                     "directional: best layer": d.get("best_layer"),
                     "recovered [95% CI]": rec,
                     "random direction there": _num(d.get("random_at_best_layer")),
                     "full patch at readout ≥ ½ from layer":
                         h.get("full_readout_position_first_layer_ge_half"),
                     "body alone ≥ ½ up to layer":
                         h.get("full_body_last_layer_ge_half")})  # fmt: skip
    b.tables.append(Table(
        "Recovered fraction of the logit-difference gap", rows, src.at("summary.json"),
        "Emotion runs patched into length-matched neutral runs. The best layer is chosen on "
        "these pairs (optimistic); the random direction is the control.",
    ))  # fmt: skip
    first = list(s.get("headline") or {})[:1]
    b.figures = _figures(ref, b.source, [
        ("directional-by-layer.png", "Directional patching of every position, by layer"),
        *((f"patching-{e}.png", f"Patching heatmaps: {e}") for e in first),
    ])  # fmt: skip
    b.facts = {"patch": results}
    return b


def _ablate(ref: StageRef, study: dict[str, Any]) -> Block:
    return _vectors_stage(ref, study, "Direction ablation", _ablate_block)


def _ablate_block(ref: StageRef, s: dict[str, Any], src: Source, title: str) -> Block:
    b = Block(title, src.at("summary.json"))
    st = s.get("settings") or {}
    rows, results = [], []
    for target, h in (s.get("headline") or {}).items():
        for e, g in (h.get("ld_gap") or {}).items():
            est = Est(_num(g.get("removed")), _num(g.get("ci_low")), _num(g.get("ci_high")))
            n95 = g.get("null_95") or [None, None]
            null = Null(f"{h.get('n_random')} random subspaces of dimension {h.get('dim')}",
                        _num(g.get("null_mean")), _num(n95[0]), _num(n95[1]))  # fmt: skip
            p = _num(g.get("p"))
            own = target == e
            if own or (target == "all" and e not in (s.get("headline") or {})):
                what = "its direction" if own else "the span of all emotions' directions"
                results.append((e, p is not None and p < ALPHA))
                b.numbers.append(Number(
                    f"{e}: share of the logit-difference gap removed by projecting {what} "
                    f"out (layers {st.get('from_layer')}+)", est, null, p,
                    note=f"gap {_f(_num(g.get('gap_clean')))} → {_f(_num(g.get('gap_ablated')))}",
                ))  # fmt: skip
            rows.append({"target": target, "measure": f"LD gap {e}", "clean":
                         _num(g.get("gap_clean")), "ablated": _num(g.get("gap_ablated")),
                         "removed [95% CI]": est, "null mean": null.value,
                         "null 95%": Est(None, null.lo, null.hi), "p": p})  # fmt: skip
        for mth, kinds in (h.get("probe") or {}).items():
            for kind, g in kinds.items():
                n95 = g.get("null_95") or [None, None]
                rows.append({"target": target, "measure": f"{mth} probe ({kind})",
                             "clean": _num(g.get("accuracy_clean")),
                             "ablated": _num(g.get("accuracy_ablated")),
                             "removed [95% CI]": Est(_num(g.get("removed"))),
                             "null mean": _num(g.get("null_mean")),
                             "null 95%": Est(None, _num(n95[0]), _num(n95[1])),
                             "p": _num(g.get("p"))})  # fmt: skip
    b.tables.append(Table(
        "Projecting directions out: share removed, against random directions", rows,
        src.at("summary.json"),
        f"mode {st.get('mode')}, from layer {st.get('from_layer')}, probe layer "
        f"{st.get('probe_layer')}, chance {s.get('chance')}. Probe: share of the above-chance "
        "accuracy removed. Clean and ablated: the gap (LD) or the accuracy (probes).",
    ))  # fmt: skip
    b.figures = _figures(ref, b.source, [
        ("ablation-effects-logreg.png", "Removed fractions against random directions"),
        ("ablation-probe-logreg.png", "Probe accuracy by layer, clean and ablated"),
    ])  # fmt: skip
    b.facts = {"ablate": results}
    return b


def _rq4(blocks: list[Block]) -> tuple[str, str]:
    heads = [r for b in blocks for r in b.facts.get("heads", [])]
    patch = [r for b in blocks for r in b.facts.get("patch", [])]
    abl = [r for b in blocks for r in b.facts.get("ablate", [])]
    if not (heads or patch or abl):
        return "not run", "No head, patching or ablation results to answer from."
    parts, hits = [], []
    if heads:
        ld = [ok for _, m, ok in heads if m == "logit_diff"]
        pr = [ok for _, m, ok in heads if m == "projection"]
        txt = "ablating the top heads lowers "
        bits = []
        if ld:
            bits.append(f"the logit difference more than random head sets (p < {ALPHA}) for "
                        f"{_count(ld)} of {len(ld)} emotion × model pairs")  # fmt: skip
            hits.append((_count(ld), len(ld)))
        if pr:
            bits.append(f"the projection on the direction for {_count(pr)} of {len(pr)}")
            hits.append((_count(pr), len(pr)))
        parts.append(txt + ", and ".join(bits))
    if patch:
        k = _count(ok for _, ok, _ in patch)
        bad = _count(not g for *_, g in patch)
        note = f" ({bad} with a gap whose interval reaches 0)" if bad else ""
        parts.append(
            "patching only the direction's component recovers part of the logit-difference "
            f"gap (interval above 0) for {k} of {len(patch)}{note}"
        )
        hits.append((k, len(patch)))
    if abl:
        k = _count(ok for _, ok in abl)
        parts.append(f"projecting the direction (or all directions' span) out removes more "
                     f"of the gap than random subspaces (p < {ALPHA}) for {k} of "
                     f"{len(abl)}")  # fmt: skip
        hits.append((k, len(abl)))
    verdict = _verdict(hits)
    return verdict, f"{verdict.capitalize()}: " + "; ".join(parts) + "."

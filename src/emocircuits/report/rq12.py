"""RQ1 (stable per-layer directions, from the geometry stages) and RQ2 (similarity across
models, from the compare stages): each stage's block of numbers, tables and figures, and
the one-line answer computed from the blocks."""

from __future__ import annotations

import math
from typing import Any

from emocircuits.report.data import (
    ALPHA,
    EMOTION_MEASURES,
    STABLE,
    UNREADABLE,
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
    _mean,
    _num,
    _source,
    _verdict,
)
from emocircuits.tables import read_table


# ------------------------------------------------------------------------------------ RQ1
def _geometry(ref: StageRef, study: dict[str, Any]) -> Block | None:
    if not (ref.path / "summary.json").is_file():
        return None  # vectors only: the geometry analysis was switched off
    s = _json(ref.path / "summary.json")
    pos = s.get("main_position") or "mean"
    src = _source(ref, study, site="resid", position=pos, method="mean_diff")
    title = f"{ref.model or ref.label} on {ref.data or '?'}"
    return _guard(ref, src, title, lambda: _geometry_block(ref, study, s, pos, src, title))


def _geometry_block(ref: StageRef, study: dict[str, Any], s: dict[str, Any], pos: str,
                    src: Source, title: str) -> Block:  # fmt: skip
    b = Block(title, src)
    width = (((study.get("provenance") or {}).get("models") or {}).get(ref.model or "") or {}
             ).get("width")  # fmt: skip
    stab = [r for r in read_table(ref.path, "stability")
            if r["site"] == "resid" and r["position"] == pos and r["method"] == "mean_diff"
            and r["measure"] == "split_half_cos"]  # fmt: skip
    layers = sorted({int(r["layer"]) for r in stab})
    emotions = list(dict.fromkeys(r["emotion"] for r in stab))
    split = None
    if layers:
        mid = layers[len(layers) // 4 : 3 * len(layers) // 4 + 1]
        rows = [r for r in stab if r["layer"] in mid]
        split = Est(_mean(r["value"] for r in rows), _mean(r["lo"] for r in rows),
                    _mean(r["hi"] for r in rows))  # fmt: skip
        band = 1.96 / math.sqrt(width) if width else None
        b.numbers.append(Number(
            f"split-half cosine of mean_diff directions, layers {mid[0]}-{mid[-1]} "
            "(mean over emotions and layers)", split,
            Null("two random directions (95%)", 0.0, -band, band) if band else None,
            interval="2.5-97.5% over random halves",
            note=f"stable from {STABLE} on",
        ))  # fmt: skip
        b.tables.append(Table(
            "Split-half cosine of each emotion's mean_diff direction, by layer",
            [{"layer": layer, **{e: Est(r["value"], r["lo"], r["hi"]) for e in emotions
                                 for r in stab if r["layer"] == layer and r["emotion"] == e}}
             for layer in layers],
            src.at("stability.csv"),
            "Cosine of directions from two random halves of the prompts; interval: 2.5-97.5% "
            "over splits. 1 = the same direction from any half.",
        ))  # fmt: skip
    probes = _json(ref.path / "probes_cv.json") if (ref.path / "probes_cv.json").is_file() else {}
    best: dict[str, dict[str, Any]] = {}
    if "resid" in (probes.get("sites") or {}):
        chance = _num(probes.get("chance"))
        plist = probes["layers"]["resid"]
        rows: list[dict[str, Any]] = [{"layer": layer} for layer in plist]
        for mth, acc in probes["sites"]["resid"].items():
            ci = probes["ci"]["resid"][mth]
            pv = probes["p_value"]["resid"][mth]
            for i, row in enumerate(rows):
                row[f"{mth} accuracy"] = Est(acc[i], ci["low"][i], ci["high"][i])
                row[f"{mth} p"] = pv[i]
            i = max(range(len(acc)), key=lambda j: acc[j])
            best[mth] = {"layer": plist[i], "est": Est(acc[i], ci["low"][i], ci["high"][i]),
                         "p": pv[i], "layer0": Est(acc[0], ci["low"][0], ci["high"][0]),
                         "chance": chance}  # fmt: skip
            b.numbers.append(Number(
                f"{probes.get('folds', 'k')}-fold {mth} probe accuracy at its best layer "
                f"({plist[i]})", best[mth]["est"], Null("chance (most frequent class)", chance),
                p=pv[i], interval="95% Wilson interval",
                note=f"layer 0 (lexical baseline): {_ci(best[mth]['layer0'])}; the best layer "
                "is chosen on the same folds (optimistic)",
            ))  # fmt: skip
        b.tables.append(Table(
            f"{probes.get('folds', 'k')}-fold probe accuracy by layer (chance {_f(chance)})",
            rows, src.at("probes_cv.json", method="logreg, ncm"),
            "95% Wilson intervals; p: one-sided binomial test against chance. Layer 0 is the "
            "embedding output (the lexical baseline).",
        ))  # fmt: skip
    head = s.get("headline") or {}
    if "raw_mean_cos_median" in head:
        b.numbers.append(Number(
            "raw class means: median cosine between classes (the pilot's measure)",
            Est(_num(head["raw_mean_cos_median"])),
            note=f"after removing the global mean: {_f(_num(head.get('centred_mean_cos_median')))}"
            " — the raw similarity is the component every prompt shares",
        ))  # fmt: skip
    try:
        sub = [r for r in read_table(ref.path, "subspaces")
               if r["site"] == "resid" and r["position"] == pos and r["compared"] == "layers"
               and r["layer_b"] == r["layer_a"] + 1]  # fmt: skip
    except UNREADABLE:
        sub = []
    if sub:
        b.tables.append(Table(
            "Overlap of the emotion subspaces of adjacent layers",
            [{"layers": f"{r['layer_a']}→{r['layer_b']}", "overlap": r["overlap"],
              "null mean": r["null_mean"], "null 95%": r["null_95"], "p": r["p_value"],
              "random k/d": r["analytic_null"], "k": r["k"]} for r in sub],
            src.at("subspaces.csv", method=f"{sub[0].get('kind', 'between')} subspaces"),
            "Mean cos² of the principal angles; null: labels permuted (mean and 95th "
            "percentile); random k/d: the expected overlap of random subspaces.",
        ))  # fmt: skip
    b.figures = _figures(ref, src, [
        (f"stability-resid-{pos}.png", "Split-half stability by layer"),
        ("probes-cv-resid.png", "k-fold probe accuracy by layer"),
        (f"shared-component-resid-{pos}.png", "The shared component of raw class means"),
        ("subspace-layers-resid.png", "Emotion subspace overlap between layers"),
    ])  # fmt: skip
    main = best.get("logreg") or next(iter(best.values()), None)
    b.facts = {
        "split": split.value if split else None,
        "stable": bool(split and split.value is not None and split.value >= STABLE),
        "decodable": bool(main and main["est"].lo is not None and main["chance"] is not None
                          and main["est"].lo > main["chance"]),
        "beyond_layer0": bool(main and main["layer"] != 0 and main["est"].lo is not None
                              and main["layer0"].value is not None
                              and main["est"].lo > main["layer0"].value),
    }  # fmt: skip
    return b


def _rq1(blocks: list[Block]) -> tuple[str, str]:
    runs = [b for b in blocks if b.facts]
    n = len(runs)
    if not n:
        return "not run", "No geometry results to answer from."
    s = _count(b.facts["stable"] for b in runs)
    d = _count(b.facts["decodable"] for b in runs)
    z = _count(b.facts["beyond_layer0"] for b in runs)
    detail = ", ".join(f"{b.title}: {_f(b.facts['split'])}" for b in runs)
    verdict = _verdict([(s, n), (z, n)])
    if d == 0:
        verdict = "no"
    return verdict, (
        f"{verdict.capitalize()}: mean_diff directions are stable (split-half cosine ≥ {STABLE} "
        f"at the middle layers) in {s} of {n} runs ({detail}); a k-fold probe beats chance in "
        f"{d} of {n} and beats the layer-0 (lexical) baseline in {z} of {n}."
    )


# ------------------------------------------------------------------------------------ RQ2
def _kind(measure: str) -> str:
    return "emotion" if measure.split("_")[-1] in EMOTION_MEASURES else "general"


def _compare(ref: StageRef, study: dict[str, Any]) -> list[Block]:
    s = _json(ref.path / "summary.json")
    st = s.get("settings") or {}
    src = _source(ref, study, site=st.get("site"), position=st.get("position"),
                  method=st.get("method"))  # fmt: skip
    out = []
    for pair in s.get("pairs") or []:
        a, bname = pair["model_a"], pair["model_b"]
        title = f"{a} vs {bname} on {ref.data or ref.label}"
        out.append(_guard(ref, src, title,
                          lambda p=pair, t=title: _pair_block(ref, p, src, t)))  # fmt: skip
    return out


def _pair_block(ref: StageRef, pair: dict[str, Any], src: Source, title: str) -> Block:
    a, b_ = pair["model_a"], pair["model_b"]
    blk = Block(title, src.at("summary.json", model=f"{a}, {b_}"))
    rows = []
    emo = gen = emo_hit = gen_hit = cannot = 0
    for name, m in (pair.get("measures") or {}).items():
        kind = _kind(name)
        p = _num(m.get("p"))
        hit = bool(m.get("beyond_chance", p is not None and p < ALPHA))
        null95 = m.get("null_95") or [None, None]
        null = Null(str(m.get("null", "")), _num(m.get("null_mean")), _num(null95[0]),
                    _num(null95[1]))  # fmt: skip
        if kind == "emotion":
            emo += 1
            emo_hit += hit
            cannot += (not hit) and (_num(m.get("min_p")) or 0) >= ALPHA
        else:
            gen += 1
            gen_hit += hit
        blk.numbers.append(Number(f"{name} ({kind})", Est(_num(m.get("value"))), null, p,
                                  note=str(m.get("statistic", ""))))  # fmt: skip
        rows.append({"measure": name, "kind": kind, "value": _num(m.get("value")),
                     "null": null.what, "null mean": null.value,
                     "null 95%": Est(None, null.lo, null.hi), "p": p,
                     "beyond chance": hit})  # fmt: skip
        lp = m.get("label_permuted")
        if lp:
            l95 = lp.get("null_95") or [None, None]
            rows.append({"measure": f"{name} vs label-permuted", "kind": kind,
                         "value": _num(lp.get("value")), "null": str(lp.get("null", "")),
                         "null mean": _num(lp.get("null_mean")),
                         "null 95%": Est(None, _num(l95[0]), _num(l95[1])),
                         "p": _num(lp.get("p")),
                         "beyond chance": bool(lp.get("beyond_chance"))})  # fmt: skip
    blk.tables.append(Table(
        "Every measure with its null (each is invariant to rotating either model)", rows,
        src.at("summary.json", model=f"{a}, {b_}"),
        f"beyond chance: p < {ALPHA}. Grid measures: mean over {a}'s layers of the best layer "
        f"of {b_}; the null applies the same choice to every replicate.",
    ))  # fmt: skip
    naive = ref.path / "naive.csv"
    if naive.is_file():
        nrows = [r for r in read_table(ref.path, "naive")
                 if r["model_a"] == a and r["model_b"] == b_]  # fmt: skip
        if nrows:
            blk.tables.append(Table(
                "The pilot's coordinate-wise cosines, beside what a random rotation gives",
                [{"emotion": r["emotion"], "mean cosine": r["mean"],
                  "min..max over layers": Est(None, r["min"], r["max"]),
                  "random rotation: mean (95%)": Est(None, r["random_mean_lo"],
                                                     r["random_mean_hi"]),
                  "p (random rotation)": r["p_random"],
                  "two random vectors (95%)": Est(None, r["random_vector_lo"],
                                                  r["random_vector_hi"])}
                 for r in nrows],
                src.at("naive.csv", model=f"{a}, {b_}", method="raw coordinates (pilot)"),
                "Coordinate-dependent: not a similarity between models. Shown only to put the "
                "pilot's '≈ 0' next to its null.",
            ))  # fmt: skip
    stem = f"{a}_vs_{b_}"
    blk.figures = _figures(ref, blk.source, [
        (f"{stem}-cka.png", "Linear CKA between every pair of layers"),
        (f"{stem}-procrustes-cosines.png", "cos(W v_A, v_B) per emotion, Procrustes map"),
        (f"{stem}-ridge-cosines.png", "cos(W v_A, v_B) per emotion, ridge map"),
        (f"{stem}-identification.png", "Identification of each emotion by layer"),
    ])  # fmt: skip
    blk.facts = {"emo": emo, "emo_hit": emo_hit, "gen": gen, "gen_hit": gen_hit,
                 "cannot": cannot}  # fmt: skip
    return blk


def _rq2(blocks: list[Block]) -> tuple[str, str]:
    runs = [b for b in blocks if b.facts]
    if not runs:
        return "not run", "No comparison results to answer from."
    parts = []
    for b in runs:
        f = b.facts
        extra = (f"; {f['cannot']} of the others cannot reach p < {ALPHA} with this many "
                 "emotions" if f["cannot"] else "")  # fmt: skip
        parts.append(f"{b.title}: {f['emo_hit']} of {f['emo']} emotion measures and "
                     f"{f['gen_hit']} of {f['gen']} general ones{extra}")  # fmt: skip
    hits = [(b.facts["emo_hit"], b.facts["emo"]) for b in runs]
    if all(k * 2 > n for k, n in hits):
        verdict = "yes"
    elif all(k == 0 for k, _ in hits):
        verdict = "no"
    else:
        verdict = "partly"
    return verdict, (
        f"{verdict.capitalize()}: emotion geometry is shared beyond chance (p < {ALPHA}, "
        f"rotation-invariant measures with permutation nulls) by " + "; ".join(parts) + "."
    )

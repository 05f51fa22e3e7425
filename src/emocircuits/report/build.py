"""Read a finished study folder into small dataclasses for the report (no model is run).

:func:`collect` reads ``OUT/study.json`` and the saved outputs of each stage it lists
(``stages/<stage>/<label>-<hash12>/``, finished when ``stage.json`` is there) and returns a
:class:`ReportData`: one :class:`Section` per research question with its key numbers (each
with its interval and its null), tables (lists of dicts), figures (PNG paths), the pilot's
claim beside ours, and a one-line answer computed from the numbers; then the provenance.
Every table and figure carries a :class:`Source` naming the stage, model, data, site,
position and method it came from. A stage that is switched off or unfinished gives a
section that says so.

>>> data = collect("runs/study")  # doctest: +SKIP
>>> [(s.id, s.verdict) for s in data.sections]  # doctest: +SKIP
[('rq1', 'partly'), ('rq2', 'yes'), ('rq3', 'partly'), ('rq4', 'partly')]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emocircuits.errors import EmocircuitsError, ReportError
from emocircuits.geometry.analysis import read_table
from emocircuits.interventions.steering import describe_push
from emocircuits.report.pilot import PILOT, PilotClaim

STUDY_FILE = "study.json"
STAGE_FILES = ("stage.json",)  # written last by the runner: the folder is finished
ALPHA = 0.05
"""Significance level of every 'beyond chance' count in the answers."""
STABLE = 0.9
"""Split-half cosine at the middle layers from which directions count as stable (the
threshold `emocircuits geometry` prints its warning below)."""

QUESTIONS = {
    "rq1": ("RQ1: stable per-layer directions",
            "Do emotions appear as stable per-layer directions?"),
    "rq2": ("RQ2: similarity across models",
            "How similar are the same emotion's directions and subspaces across models?"),
    "rq3": ("RQ3: steering changes the tone",
            "Does adding a direction change the tone of what the model writes?"),
    "rq4": ("RQ4: heads, neurons and causal tests",
            "Do particular attention heads or MLP units carry emotion, and do the directions "
            "matter causally?"),
}  # fmt: skip
STAGES_OF = {"rq1": ("geometry",), "rq2": ("compare",), "rq3": ("steer",),
             "rq4": ("heads", "patch", "ablate")}  # fmt: skip
EMOTION_MEASURES = ("rsa", "cos", "identification", "overlap", "decoding")
# what a stage folder with missing, malformed or unexpected files raises while being read
UNREADABLE = (OSError, ValueError, KeyError, TypeError, IndexError, EmocircuitsError)


# ------------------------------------------------------------------------------ dataclasses
@dataclass(frozen=True)
class Est:
    """A value with an optional interval ``[lo, hi]``.

    >>> Est(0.5, 0.4, 0.6).has_interval
    True
    """

    value: float | None
    lo: float | None = None
    hi: float | None = None

    @property
    def has_interval(self) -> bool:
        return _finite(self.lo) and _finite(self.hi)


@dataclass(frozen=True)
class Null:
    """What a number is compared with: a description, its mean and its 95% range."""

    what: str
    value: float | None = None
    lo: float | None = None
    hi: float | None = None


@dataclass
class Source:
    """Where a table or figure came from (all paths relative to the study folder)."""

    stage: str
    label: str
    dir: str
    file: str = ""
    model: str | None = None
    data: str | None = None
    data_sha256: str | None = None
    site: str | None = None
    position: str | None = None
    method: str | None = None

    def at(self, file: str, **change: Any) -> Source:
        """The same source for another file (and optionally another method, ...)."""
        return Source(**{**self.__dict__, "file": file, **change})

    def describe(self) -> str:
        """One line: stage, model, data (hash), site, position, method, file."""
        parts = [f"stage {self.stage} ({self.label})"]
        if self.model:
            parts.append(f"model {self.model}")
        if self.data:
            sha = f" (sha256 {self.data_sha256[:12]}…)" if self.data_sha256 else ""
            parts.append(f"data {self.data}{sha}")
        for k in ("site", "position", "method"):
            if getattr(self, k):
                parts.append(f"{k} {getattr(self, k)}")
        parts.append(f"{self.dir}/{self.file}" if self.file else self.dir)
        return " · ".join(parts)


@dataclass
class Number:
    """A key number: its estimate (with interval), its null and p-value."""

    label: str
    est: Est
    null: Null | None = None
    p: float | None = None
    interval: str = "95% CI"
    note: str = ""


@dataclass
class Table:
    """A small table: rows are flat dicts with the same keys (cells: str, number, Est)."""

    title: str
    rows: list[dict[str, Any]]
    source: Source
    note: str = ""

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []


@dataclass
class Figure:
    """A PNG written by a stage."""

    title: str
    path: Path
    source: Source


@dataclass
class Block:
    """What one stage folder contributes to a section."""

    title: str
    source: Source
    numbers: list[Number] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what the answer is computed from


@dataclass
class Section:
    """One research question: the answer, our numbers, the pilot's claim."""

    id: str
    title: str
    question: str
    verdict: str  # "yes", "partly", "no" or "not run"
    answer: str
    blocks: list[Block]
    missing: list[str]
    pilot: PilotClaim


@dataclass
class StageRef:
    """One stage as study.json lists it."""

    stage: str
    label: str
    rel: str
    path: Path
    model: str | None
    data: str | None
    hash: str
    cached: bool
    seconds: float | None
    finished: bool
    meta: dict[str, Any]


@dataclass
class Provenance:
    """Models, datasets, versions, stages and configuration of the study."""

    models: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    versions: dict[str, str]
    stages: list[dict[str, Any]]
    config: dict[str, Any]
    started: str | None
    finished: str | None
    seconds: float | None
    failed: list[dict[str, Any]] | None = None


@dataclass
class ReportData:
    """Everything the HTML page shows."""

    out_dir: Path
    title: str
    sections: list[Section]
    provenance: Provenance
    notes: list[str] = field(default_factory=list)

    def section(self, id: str) -> Section:
        """The section of one research question (``"rq1"`` ... ``"rq4"``)."""
        return next(s for s in self.sections if s.id == id)


# ---------------------------------------------------------------------------------- helpers
def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> float | None:
    """A finite float, or None (missing, NaN, '')."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    return float(v) if _finite(v) else None


def _mean(vals: Iterable[Any]) -> float | None:
    xs = [x for x in (_num(v) for v in vals) if x is not None]
    return sum(xs) / len(xs) if xs else None


def _json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _figure(ref: StageRef, src: Source, name: str, title: str) -> Figure | None:
    for rel in (name, f"figures/{name}"):
        if (ref.path / rel).is_file():
            return Figure(title, ref.path / rel, src.at(rel))
    return None


def _figures(ref: StageRef, src: Source, wanted: Iterable[tuple[str, str]]) -> list[Figure]:
    return [f for name, title in wanted if (f := _figure(ref, src, name, title)) is not None]


def _count(items: Iterable[bool]) -> int:
    return sum(bool(x) for x in items)


def _verdict(hits: Iterable[tuple[int, int]]) -> str:
    """'yes' if every part holds for all, 'no' if none holds anywhere, else 'partly'."""
    hits = [(k, n) for k, n in hits if n]
    if not hits:
        return "not run"
    if all(k == n for k, n in hits):
        return "yes"
    if all(k == 0 for k, _ in hits):
        return "no"
    return "partly"


def _f(v: float | None, d: int = 2) -> str:
    """A number in an answer sentence (``n/a`` if missing; never ``-0.00``)."""
    if v is None:
        return "n/a"
    s = f"{v + 0.0:.{d}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def _ci(e: Est, d: int = 2) -> str:
    return f"{_f(e.value, d)} [{_f(e.lo, d)}, {_f(e.hi, d)}]" if e.has_interval else _f(e.value, d)


# ------------------------------------------------------------------------------ the stages
def _stages(out: Path, study: dict[str, Any]) -> list[StageRef]:
    refs = []
    for s in study.get("stages") or []:
        if not isinstance(s, dict):
            continue
        rel = str(s.get("dir", ""))
        path = (out / rel).resolve()
        meta: dict[str, Any] = {}
        finished = False
        for name in STAGE_FILES:
            if (path / name).is_file():
                finished = True
                try:
                    meta = _json(path / name)
                except (OSError, ValueError):
                    meta = {}
        refs.append(StageRef(
            stage=str(s.get("stage", "")), label=str(s.get("label", "")), rel=rel, path=path,
            model=s.get("model"), data=s.get("data"), hash=str(s.get("hash", "")),
            cached=bool(s.get("cached")), seconds=_num(s.get("seconds")), finished=finished,
            meta=meta,
        ))  # fmt: skip
    return refs


def _source(ref: StageRef, study: dict[str, Any], **kw: Any) -> Source:
    sha = ((study.get("provenance") or {}).get("datasets") or {}).get(ref.data or "", {})
    prov = ref.meta.get("provenance") or {}
    vec = prov.get("vectors") or {}
    base = {"model": ref.model, "data": ref.data,
            "data_sha256": (sha or {}).get("sha256") or prov.get("data_sha256"),
            "site": vec.get("site"), "position": vec.get("position"),
            "method": vec.get("method")}  # fmt: skip
    base.update({k: v for k, v in kw.items() if v is not None})
    return Source(ref.stage, ref.label, ref.rel, **base)


def _analyses(study: dict[str, Any]) -> list[str] | None:
    cfg = study.get("config") or {}
    for where in (cfg.get("study") or {}, cfg):
        if isinstance(where.get("analyses"), list):
            return [str(a) for a in where["analyses"]]
    return None


def failures(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The failed stages of ``study.json``: ``[{"stage": key, "error": why}, ...]``."""
    f = study.get("failed") or []
    return [f] if isinstance(f, dict) and "stage" in f else [x for x in f if isinstance(x, dict)]


def _missing(stage: str, refs: list[StageRef], study: dict[str, Any], need: str) -> str | None:
    """Why a stage has nothing to show, or None if it has."""
    mine = [r for r in refs if r.stage == stage]
    if any(r.finished for r in mine):
        return None
    for failed in failures(study):
        if str(failed.get("stage", "")).startswith(f"{stage}/"):
            return f"`{failed['stage']}` failed: {failed.get('error', 'no message')}."
    on = _analyses(study)
    if mine:
        return (f"`{stage}` is listed in study.json but did not finish "
                f"({', '.join(r.rel for r in mine)} has no stage.json).")  # fmt: skip
    if on is not None and stage not in on:
        return (f"`{stage}` is switched off in this study's configuration (analyses: "
                f"{', '.join(on) or 'none'}), so {need} is not answered here.")  # fmt: skip
    return f"No `{stage}` stage in this study (not run or not finished): {need} is not answered."


def _guard(ref: StageRef, src: Source, title: str, fn: Callable[[], Block]) -> Block:
    """A stage whose outputs cannot be read gives a block saying so, not a crash."""
    try:
        return fn()
    except UNREADABLE as e:
        what = f"{type(e).__name__}: {e}"
        return Block(title, src, notes=[f"could not read the outputs in {ref.rel} ({what})"])


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
    rows, results = [], []
    for e, r in rec.items():
        est = Est(_num(r.get("value")), _num(r.get("lo")), _num(r.get("hi")))
        ok = bool(r.get("meets_limits"))
        steers = ok and est.lo is not None and est.lo > 0
        results.append((e, est, steers))
        lim = r.get("limits") or {}
        b.numbers.append(Number(
            f"{e}: {r.get('effect')} at layer {r.get('layer')}, alpha {r.get('alpha')}", est,
            Null(f"random direction at the same setting (VADER change; limit "
                 f"{lim.get('random_vader_change', '?')})", _num(r.get("random_vader_change"))),
            note=("within the fluency limits" if ok else f"outside the limits: {r.get('reason')}")
            + "; alpha x typical residual norm",
        ))  # fmt: skip
        rows.append({"emotion": e, "layer": r.get("layer"), "alpha": _num(r.get("alpha")),
                     "effect": r.get("effect"), "value [95% CI]": est,
                     "perplexity ratio": _num(r.get("perplexity_ratio_median")),
                     "distinct-2 ratio": _num(r.get("distinct_2_ratio")),
                     "KL (nats/token)": _num(r.get("kl")),
                     "random VADER change": _num(r.get("random_vader_change")),
                     "within limits": ok, "reason": r.get("reason") or ""})  # fmt: skip
    st = s.get("settings") or {}
    b.tables.append(Table(
        "Recommended setting per emotion (largest lower 95% bound within the limits)", rows,
        src.at("sweep.json"),
        f"Layers {st.get('layers')}, alphas {st.get('alphas')}, {st.get('n_prompts', '?')} "
        f"prompts, {st.get('max_new_tokens', '?')} new tokens, {st.get('decoding', 'greedy')}, "
        f"pushed at {describe_push(st.get('steer_tokens'), st.get('where', 'all'))}. "
        "Effect: VADER change from unsteered (gratitude; anger: its negative) or the share of "
        "continuations with apology markers.",
    ))  # fmt: skip
    prompt_rows = [r for r in s.get("summary") or [] if r.get("condition") == "prompt"]
    if prompt_rows:
        b.tables.append(Table(
            "Prompting baseline (an instruction to express the emotion)",
            [{"emotion": r.get("emotion"),
              "VADER change": Est(_num(r.get("vader_change")), _num(r.get("vader_change_lo")),
                                  _num(r.get("vader_change_hi"))),
              "perplexity ratio": _num(r.get("perplexity_ratio_median"))} for r in prompt_rows],
            src.at("sweep.json", method="prompt"),
        ))  # fmt: skip
    ex = _examples(ref.path / "rows.jsonl", rec)
    if ex:
        b.tables.append(Table(
            "Example continuations at the recommended settings (greedy)", ex,
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
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    out = []
    for e, r in rec.items():
        at = (r.get("layer"), r.get("alpha"))
        for i in sorted({x["prompt_index"] for x in rows})[:n]:
            pick = {x["condition"]: x for x in rows if x["prompt_index"] == i and (
                x["condition"] == "none"
                or (x["condition"] == "direction" and x["emotion"] == e
                    and (x["layer"], x["alpha"]) == at)
                or (x["condition"] == "random" and (x["layer"], x["alpha"]) == at))}  # fmt: skip
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
    detail = ", ".join(f"{e} {_ci(est)} ({m})" for m, e, est, _ in res)
    verdict = _verdict([(k, len(res))])
    return verdict, (
        f"{verdict.capitalize()}: at the recommended setting the direction changes the tone "
        f"(95% interval above 0, within the fluency limits and with the random direction "
        f"moving VADER by less than the limit) for {k} of {len(res)} emotion × model "
        f"pairs: {detail}."
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


def _heads(ref: StageRef, study: dict[str, Any]) -> Block:
    s = _json(ref.path / "summary.json")
    src = _vec_source(ref, study, s)
    title = f"Heads and neurons: {ref.model or ref.label}"
    return _guard(ref, src, title, lambda: _heads_block(ref, s, src, title))


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
    s = _json(ref.path / "summary.json")
    src = _vec_source(ref, study, s)
    title = f"Activation patching: {ref.model or ref.label}"
    return _guard(ref, src, title, lambda: _patch_block(ref, s, src, title))


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
    s = _json(ref.path / "summary.json")
    src = _vec_source(ref, study, s)
    title = f"Direction ablation: {ref.model or ref.label}"
    return _guard(ref, src, title, lambda: _ablate_block(ref, s, src, title))


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


# ------------------------------------------------------------------------------- collect
def _provenance(study: dict[str, Any], refs: list[StageRef]) -> Provenance:
    prov = study.get("provenance") or {}
    models = []
    for name, m in (prov.get("models") or {}).items():
        arch = m.get("architecture")
        models.append({"model": name, "id": m.get("id"), "revision": m.get("revision"),
                       "dtype": m.get("dtype"),
                       "architecture": arch.get("model_type") if isinstance(arch, dict)
                       else arch,
                       "layers": m.get("n_layers"), "width": m.get("width"),
                       "source": m.get("source") or "", "note": m.get("note") or ""})  # fmt: skip
    datasets = [{"data": name, "sha256": d.get("sha256"), "rows": d.get("n"),
                 "labels": ", ".join(f"{k} {v}" for k, v in (d.get("labels") or {}).items())}
                for name, d in (prov.get("datasets") or {}).items()]  # fmt: skip
    stages = [{"stage": r.stage, "label": r.label, "model": r.model or "", "data": r.data or "",
               "folder": r.rel, "hash": r.hash[:12], "reused": r.cached,
               "seconds": r.seconds, "finished": r.finished} for r in refs]  # fmt: skip
    return Provenance(models, datasets, {str(k): str(v) for k, v in
                                         (prov.get("versions") or {}).items()},
                      stages, study.get("config") or {}, study.get("started"),
                      study.get("finished"), _num(study.get("seconds")),
                      failures(study))  # fmt: skip


BUILDERS: dict[str, Callable[[StageRef, dict[str, Any]], Block | list[Block] | None]] = {
    "geometry": _geometry, "compare": _compare, "steer": _steer, "heads": _heads,
    "patch": _patch, "ablate": _ablate,
}  # fmt: skip
ANSWERS: dict[str, Callable[[list[Block]], tuple[str, str]]] = {
    "rq1": _rq1, "rq2": _rq2, "rq3": _rq3, "rq4": _rq4,
}  # fmt: skip
NEEDS = {"geometry": "RQ1", "compare": "RQ2", "steer": "RQ3",
         "heads": "the head and neuron part of RQ4", "patch": "the patching part of RQ4",
         "ablate": "the ablation part of RQ4"}  # fmt: skip


def collect(out_dir: str | os.PathLike[str]) -> ReportData:
    """Read a finished (or partly finished) study folder into a :class:`ReportData`.

    Raises :class:`~emocircuits.errors.ReportError` if ``out_dir`` has no readable
    ``study.json``; a stage that is missing, unfinished or unreadable becomes a note in its
    section.
    """
    out = Path(out_dir)
    path = out / STUDY_FILE
    if not out.is_dir():
        raise ReportError(f"no such folder {out}")
    if not path.is_file():
        raise ReportError(f"no {STUDY_FILE} in {out} (not a study folder? run `emocircuits run`)")
    try:
        study = _json(path)
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read {path}: {e}") from None
    if not isinstance(study, dict):
        raise ReportError(f"{path} is not a study description (a JSON object)")
    refs = _stages(out, study)
    sections = []
    for rq, (title, question) in QUESTIONS.items():
        blocks: list[Block] = []
        missing: list[str] = []
        for stage in STAGES_OF[rq]:
            why = _missing(stage, refs, study, NEEDS[stage])
            if why:
                missing.append(why)
            for ref in refs:
                if ref.stage == stage and ref.finished:
                    got = _read(ref, study)
                    blocks += got if isinstance(got, list) else [got] if got else []
        if rq == "rq1" and not blocks and not missing:
            missing.append(
                "The geometry stages saved vectors only: the geometry analysis is "
                "switched off in this study's configuration, so RQ1 is not answered."
            )
        verdict, answer = ANSWERS[rq](blocks)
        sections.append(Section(rq, title, question, verdict, answer, blocks, missing, PILOT[rq]))
    prov = _provenance(study, refs)
    notes = []
    for f in prov.failed or []:
        notes.append(f"Stage {f.get('stage')} failed ({f.get('error')}); the stages that "
                     "needed it did not run.")  # fmt: skip
    if not prov.finished:
        notes.append("The study has not finished (study.json has no end time): the report "
                     "shows the stages finished so far.")  # fmt: skip
    models = [m["model"] for m in prov.models] or sorted({r.model for r in refs if r.model})
    data = [d["data"] for d in prov.datasets] or sorted({r.data for r in refs if r.data})
    title = f"Emotion directions study: {', '.join(models) or 'no models'}"
    title += f" on {', '.join(data)}" if data else ""
    return ReportData(out, title, sections, prov, notes)


def _read(ref: StageRef, study: dict[str, Any]) -> Block | list[Block] | None:
    """One finished stage's blocks; an unreadable folder gives a block that says so."""
    try:
        return BUILDERS[ref.stage](ref, study)
    except UNREADABLE as e:
        src = _source(ref, study)
        return Block(f"{ref.stage}: {ref.label}", src,
                     notes=[f"could not read the outputs in {ref.rel} ({type(e).__name__}: "
                            f"{e})"])  # fmt: skip

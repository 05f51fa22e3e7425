"""The study report from a real (tiny) study folder: collect reads what the stages saved,
the page is self-contained and escapes every piece of dataset text, missing or broken
stages become notes, intervals are formatted as [lo, hi], and each answer follows the
numbers (planted outputs flip it)."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import emocircuits as ec
from emocircuits.errors import EmocircuitsError, ReportError
from emocircuits.report import collect, render, write_report
from emocircuits.report.build import Est, Null
from emocircuits.report.html import PNG_MAGIC, fmt_cell, fmt_est, fmt_num, fmt_p

from study_fixture import HOSTILE, study_dir  # noqa: F401  (the fixture)

RQS = ("rq1", "rq2", "rq3", "rq4")


@pytest.fixture()
def study(study_dir, tmp_path):  # noqa: F811
    """A copy of the study that a test may change."""
    return Path(shutil.copytree(study_dir, tmp_path / "study"))


def stage_dir(root: Path, stage: str, label: str | None = None) -> Path:
    doc = json.loads((root / "study.json").read_text())
    dirs = [s["dir"] for s in doc["stages"] if s["stage"] == stage
            and (label is None or s["label"] == label)]  # fmt: skip
    assert dirs, (stage, label)
    return root / dirs[0]


def edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def edit_csv(path: Path, fn) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        fn(r)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------------------------- collect
def test_collect_reads_every_stage_with_its_provenance(study_dir):  # noqa: F811
    data = collect(study_dir)
    assert [s.id for s in data.sections] == list(RQS)
    n_blocks = {"rq1": 2, "rq2": 1, "rq3": 2, "rq4": 6}  # 2 models, 1 pair, 3 causal stages
    for s in data.sections:
        assert s.verdict in ("yes", "partly", "no") and s.answer and not s.missing, s.id
        assert len(s.blocks) == n_blocks[s.id], s.id
        for b in s.blocks:
            assert not [n for n in b.notes if "could not read" in n], b.notes
            assert b.numbers and b.tables and b.figures, b.title
            for t in b.tables:
                assert t.rows and (study_dir / t.source.dir / t.source.file).is_file()
                assert t.source.stage in ("geometry", "compare", "steer", "heads", "patch",
                                          "ablate") and t.source.data == "baseline"  # fmt: skip
            for f in b.figures:
                assert f.path.is_file() and f.path.read_bytes().startswith(PNG_MAGIC)
    geo = data.section("rq1").blocks[0].source
    assert (geo.model, geo.site, geo.position) == ("tiny-llama", "resid", "mean")
    assert geo.data_sha256 == ec.load_dataset("baseline").sha256
    steer = data.section("rq3").blocks[0].source
    assert (steer.method, steer.position) == ("one_vs_rest", "mean")
    prov = data.provenance
    assert {m["model"] for m in prov.models} == {"tiny-llama", "tiny-gpt2"}
    assert all(m["revision"].startswith("sha256:") and m["dtype"] == "float32"
               for m in prov.models)  # fmt: skip
    assert prov.datasets[0]["sha256"] == ec.load_dataset("baseline").sha256
    assert {"torch", "transformers", "numpy", "python"} <= set(prov.versions)
    assert len(prov.stages) == 13 and all(s["finished"] for s in prov.stages)


def test_key_numbers_are_the_saved_ones(study_dir):  # noqa: F811
    data = collect(study_dir)
    geo = stage_dir(study_dir, "geometry", "tiny-llama.baseline")
    probes = json.loads((geo / "probes_cv.json").read_text())
    acc = probes["sites"]["resid"]["logreg"]
    i = acc.index(max(acc))
    n = next(n for n in data.section("rq1").blocks[0].numbers if "logreg" in n.label)
    assert n.est == Est(acc[i], probes["ci"]["resid"]["logreg"]["low"][i],
                        probes["ci"]["resid"]["logreg"]["high"][i])  # fmt: skip
    assert n.p == probes["p_value"]["resid"]["logreg"][i] and n.null.value == 0.25
    cmp = json.loads((stage_dir(study_dir, "compare") / "summary.json").read_text())
    cka = cmp["pairs"][0]["measures"]["cka"]
    n = next(n for n in data.section("rq2").blocks[0].numbers if n.label.startswith("cka"))
    assert (n.est.value, n.p, n.null.value) == (cka["value"], cka["p"], cka["null_mean"])
    assert (n.null.lo, n.null.hi) == tuple(cka["null_95"])
    sweep = json.loads((stage_dir(study_dir, "steer", "tiny-gpt2") / "sweep.json").read_text())
    rec = sweep["recommended"]["gratitude"]
    n = data.section("rq3").blocks[1].numbers[0]
    h = rec["held_out"] or {}  # the held-out effect is quoted, not the tune one it was chosen on
    want = Est(None) if rec["layer"] is None else Est(h["value"], h["lo"], h["hi"])
    assert n.label.startswith("gratitude") and n.est == want


def test_collect_refuses_what_is_not_a_study(tmp_path):
    with pytest.raises(ReportError, match=r"no study\.json in"):
        collect(tmp_path)
    with pytest.raises(ReportError, match="no such folder"):
        collect(tmp_path / "nope")
    (tmp_path / "study.json").write_text("{not json")
    with pytest.raises(ReportError, match="cannot read") as e:
        collect(tmp_path)
    assert isinstance(e.value, EmocircuitsError) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- the page
def test_page_is_self_contained_with_four_sections(study):
    data = collect(study)
    path = write_report(study)
    assert path == study / "report.html" and not list(study.glob(".report.html*"))
    html = path.read_text("utf-8")
    assert html == render(data)
    for rq in RQS:
        assert re.search(rf'<section id="{rq}">\s*<h2>RQ\d: ', html), rq
    assert 'id="summary"' in html and 'id="provenance"' in html
    text = re.sub(r'src="data:image/png;base64,[^"]*"', "", html)
    assert not re.search(r"https?:|//|www\.", text.replace("</", "")), "an external URL"
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    blocks = [*data.datasets, *(b for s in data.sections for b in s.blocks)]
    assert len(srcs) == sum(len(b.figures) for b in blocks) > 10
    figures = [f.path for b in blocks for f in b.figures]
    wide = [p for p in figures if (lambda im: im.width > 2 * im.height)(Image.open(p))]
    assert html.count('<figure class="wide">') == len(wide) >= 6  # 6 dose-response figures
    for src in srcs:
        head, b64 = src.split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(b64).startswith(PNG_MAGIC)
    # every table and figure says where it came from
    assert html.count('class="src">from stage ') >= sum(
        1 + len(b.tables) for s in data.sections for b in s.blocks
    )
    # the pilot's claims are next to ours
    assert "0.9861" in html and "0.13-0.15" in html and "k/d" in html


def test_dataset_text_is_escaped(study):
    # a neuron's top prompt and a continuation with markup and a control character
    heads = stage_dir(study, "heads", "tiny-llama")
    edit_csv(heads / "neurons.csv",
             lambda r: r.update(top_prompts='<img src=x onerror="alert(2)"> & co'))  # fmt: skip
    rows = stage_dir(study, "steer", "tiny-llama") / "rows.jsonl"
    lines = [json.loads(x) for x in rows.read_text().splitlines()]
    # the examples show the recommended setting: plant one the sweep ran (the tiny model's
    # own sweep finds none)
    d = next(x for x in lines if x["condition"] == "direction" and x["stage"] == "tune")

    def plant(s):
        s["recommended"][d["emotion"]].update(layer=d["layer"], alpha=d["alpha"])

    edit_json(rows.parent / "sweep.json", plant)
    for x in lines:
        x["continuation"] = "</td><b>bold</b>\x0b"
    rows.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    html = render(collect(study))
    assert HOSTILE.startswith("<script>alert(1)</script>")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Tell me about the weather" in html
    assert "<script>" not in html and "alert(1)</script>" not in html
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt; &amp; co" in html
    assert "onerror=" not in html.replace("onerror=&#34;", "")
    assert "&lt;/td&gt;&lt;b&gt;bold&lt;/b&gt;\\x0b" in html and "<b>bold</b>" not in html
    assert "\x0b" not in html


# ------------------------------------------------------------------------ missing stages
def test_a_stage_switched_off_gives_a_section_saying_so(study):
    def drop(doc):
        doc["stages"] = [s for s in doc["stages"] if s["stage"] != "steer"]
        doc["config"]["study"]["analyses"].remove("steer")

    edit_json(study / "study.json", drop)
    shutil.rmtree(study / "stages" / "steer")
    data = collect(study)
    rq3 = data.section("rq3")
    assert rq3.verdict == "not run" and not rq3.blocks
    assert len(rq3.missing) == 1 and "switched off" in rq3.missing[0]
    assert all(data.section(r).blocks for r in ("rq1", "rq2", "rq4"))
    html = render(data)
    rq3_html = html[html.index('<section id="rq3">') : html.index('<section id="rq4">')]
    assert "<h2>RQ3" in rq3_html and "switched off" in rq3_html and "<img" not in rq3_html
    assert "The pilot said" in rq3_html


def test_unfinished_absent_and_broken_stages_become_notes(study):
    (stage_dir(study, "patch", "tiny-llama") / "stage.json").unlink()  # unfinished
    (stage_dir(study, "heads", "tiny-gpt2") / "summary.json").write_text("{broken")

    def drop(doc):  # ablate absent, with no configuration saying why
        doc["stages"] = [s for s in doc["stages"] if s["stage"] != "ablate"]
        del doc["config"]["study"]["analyses"]
        doc["finished"] = None

    edit_json(study / "study.json", drop)
    geo = stage_dir(study, "geometry", "tiny-gpt2.baseline")
    (geo / "stability.csv").unlink()
    data = collect(study)
    rq4 = data.section("rq4")
    titles = [b.title for b in rq4.blocks]
    assert "Activation patching: tiny-gpt2" in titles
    assert "Activation patching: tiny-llama" not in titles  # not finished: not read
    broken = [b for b in rq4.blocks if b.title.startswith("heads")]
    assert len(broken) == 1 and "could not read" in broken[0].notes[0]
    assert any("No `ablate` stage" in m for m in rq4.missing)
    assert rq4.verdict in ("yes", "partly", "no")  # answered from what is there
    rq1 = data.section("rq1").blocks
    assert any("could not read" in n for n in rq1[1].notes) and not rq1[0].notes
    assert any("has not finished" in n for n in data.notes)
    html = render(data)
    assert "could not read" in html and "has not finished" in html


def test_geometry_switched_off_leaves_rq1_unanswered(study):
    for geo in (study / "stages" / "geometry").iterdir():
        for p in geo.iterdir():
            if p.name not in ("stage.json", "vectors.safetensors", "vectors.json"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    rq1 = collect(study).section("rq1")
    assert rq1.verdict == "not run" and "switched off" in rq1.missing[0]


# --------------------------------------------------------------------------- formatting
def test_numbers_and_intervals_are_formatted_for_reading():
    assert fmt_est(Est(0.12345, 0.1, 0.2)) == "0.123 [0.100, 0.200]"
    assert fmt_est(Est(12.345, 10.04, 15)) == "12.3 [10.0, 15.0]"
    assert fmt_est(Est(-0.0, -1e-6, 0.0123)) == "0.000 [0.000, 0.012]"
    assert fmt_num(-0.0) == "0.000" and fmt_num(-0.5) == "-0.500"
    assert fmt_est(Est(None, -0.2, 0.3)) == "[-0.200, 0.300]"
    assert fmt_est(Est(0.5, float("nan"), 0.7)) == "0.500"
    assert fmt_est(Null("x", 0.004, 0.0012, 0.0071)) == "0.0040 [0.0012, 0.0071]"
    assert fmt_num(float("nan")) == "n/a" and fmt_num(3) == "3" and fmt_num(True) == "yes"
    assert fmt_num(1234.5) == "1,234" and fmt_num(0.00451) == "0.0045"
    assert fmt_p(3.2e-9) == "3.2e-09" and fmt_p(0.04999) == "0.050" and fmt_p(None) == "n/a"
    assert fmt_cell(0.04999, "p") == "0.050" and fmt_cell(0.04999, "value") == "0.050"
    assert fmt_cell(1e-5, "p (random rotation)") == "1.0e-05"
    assert fmt_cell(None, "x") == "–" and fmt_cell("a<b", "x") == "a<b"  # escaped later


def test_rendered_tables_show_intervals_as_brackets(study_dir):  # noqa: F811
    html = render(collect(study_dir))
    cells = re.findall(r'<td class="num">(-?\d[\d.]* \[[^\]]+\])</td>', html)
    assert len(cells) > 50
    for c in cells:
        _, lo, hi = (float(x) for x in re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", c))
        assert lo <= hi, c
        assert len({len(x.split(".")[-1]) for x in re.findall(r"-?\d+\.\d+", c)}) <= 1, c


# ------------------------------------------------------------- answers follow the numbers
def test_rq1_answer_flips_with_stability_and_probes(study):
    assert collect(study).section("rq1").verdict == "no"  # noisy tiny random models
    for geo in (study / "stages" / "geometry").iterdir():
        edit_csv(geo / "stability.csv", lambda r: r.update(value="0.97", lo="0.95", hi="0.99"))

        def strong(p):
            for m in ("logreg", "ncm"):
                p["sites"]["resid"][m] = [0.3, 0.6, 0.95, 0.9]
                p["ci"]["resid"][m] = {"low": [0.25, 0.5, 0.9, 0.85],
                                       "high": [0.35, 0.7, 0.98, 0.95]}  # fmt: skip
                p["p_value"]["resid"][m] = [0.1, 1e-5, 1e-30, 1e-25]

        edit_json(geo / "probes_cv.json", strong)
    rq1 = collect(study).section("rq1")
    assert rq1.verdict == "yes" and "in 2 of 2 runs" in rq1.answer
    assert "0.97" in rq1.answer and "layer-0 (lexical) baseline in 2 of 2" in rq1.answer
    edit_csv(next((study / "stages" / "geometry").iterdir()) / "stability.csv",
             lambda r: r.update(value="0.5"))  # fmt: skip
    rq1 = collect(study).section("rq1")
    assert rq1.verdict == "partly" and "in 1 of 2 runs" in rq1.answer


def test_rq2_answer_flips_with_the_measures(study):
    path = stage_dir(study, "compare") / "summary.json"

    def plant(beyond: bool):
        def fn(s):
            for m in s["pairs"][0]["measures"].values():
                m["beyond_chance"], m["p"] = beyond, 0.001 if beyond else 0.5

        return fn

    edit_json(path, plant(True))
    rq2 = collect(study).section("rq2")
    assert rq2.verdict == "yes" and "9 of 9 emotion measures and 4 of 4 general" in rq2.answer
    edit_json(path, plant(False))
    rq2 = collect(study).section("rq2")
    assert rq2.verdict == "no" and "0 of 9 emotion measures" in rq2.answer


def test_rq3_answer_flips_with_the_recommended_effect(study):
    def plant(lo: float, ok: bool):
        def fn(s):
            for r in s["recommended"].values():
                r.update(layer=1, alpha=0.5, value=0.9, lo=0.8, hi=1.0, meets_limits=ok,
                         held_out={"value": 0.4, "lo": lo, "hi": 0.6})  # fmt: skip

        return fn

    for folder in (study / "stages" / "steer").iterdir():
        edit_json(folder / "sweep.json", plant(0.2, True))
    rq3 = collect(study).section("rq3")
    assert rq3.verdict == "yes" and "for 6 of 6" in rq3.answer and "0.40 [0.20, 0.60]" in rq3.answer
    first = next((study / "stages" / "steer").iterdir())
    edit_json(first / "sweep.json", plant(0.2, False))  # outside the fluency limits
    assert collect(study).section("rq3").verdict == "partly"
    for folder in (study / "stages" / "steer").iterdir():
        edit_json(folder / "sweep.json", plant(-0.1, True))  # interval reaches 0
    assert collect(study).section("rq3").verdict == "no"

    def nothing(s):
        for r in s["recommended"].values():
            r.update(layer=None, alpha=None, status="none", meets_limits=False)

    edit_json(first / "sweep.json", nothing)  # an explicit none: said, and counted as no
    rq3 = collect(study).section("rq3")
    assert rq3.verdict == "no" and "no setting passed" in rq3.answer
    assert any("no setting passed" in n.label for b in rq3.blocks for n in b.numbers)


def test_rq4_answer_flips_with_the_causal_tests(study):
    def set_all(p: float, lo: float):
        for folder in (study / "stages" / "heads").iterdir():
            edit_csv(folder / "ablation.csv", lambda r: r.update(p=str(p)))
        for folder in (study / "stages" / "patch").iterdir():

            def fn(s):
                for h in s["headline"].values():
                    h.update(gap=1.0, gap_ci_low=lo, gap_ci_high=2.0)
                    h["directional_all_positions"].update(recovered=0.5, ci_low=lo, ci_high=0.8)

            edit_json(folder / "summary.json", fn)
        for folder in (study / "stages" / "ablate").iterdir():

            def fn2(s):
                for h in s["headline"].values():
                    for g in h["ld_gap"].values():
                        g["p"] = p

            edit_json(folder / "summary.json", fn2)

    set_all(0.01, 0.2)
    rq4 = collect(study).section("rq4")
    assert rq4.verdict == "yes", rq4.answer
    assert "for 6 of 6 emotion × model pairs" in rq4.answer
    set_all(0.5, -0.1)
    rq4 = collect(study).section("rq4")
    assert rq4.verdict == "no", rq4.answer
    assert "for 0 of 6 (6 with a gap whose interval reaches 0)" in rq4.answer


# --------------------------------------------------------------------------- the library API
def test_build_report_writes_what_the_report_command_writes(study, capsys):
    """`ec.build_report(dir)` is `emocircuits report dir`: the same page, byte for byte (the
    page holds no time of its own making: started and finished are the study's)."""
    from emocircuits.report import build_report

    from helpers import run

    code, out, _ = run(capsys, "report", study)
    assert code == 0 and out == f"wrote {study / 'report.html'}\n"
    by_cli = (study / "report.html").read_bytes()
    (study / "report.html").unlink()
    assert build_report(study) == study / "report.html"
    assert (study / "report.html").read_bytes() == by_cli
    assert write_report(study) == study / "report.html"  # the earlier name


def test_the_study_result_of_a_report_folder(study_dir):  # noqa: F811
    """The study folder behind a report reads back as a `StudyResult` (rows: the stages)."""
    from emocircuits.study import StudyResult

    res = StudyResult.load(study_dir)
    assert res.report == study_dir / "report.html" and res.failed == {}
    assert {r["stage"] for r in res.rows()} >= {"patch/tiny-llama", "compare/baseline"}
    assert "patch/tiny-llama" in repr(res) and "<table" in res._repr_html_()

"""The report's Datasets section: the audit of every dataset the study used, computed when
the report is built, saved under OUT/audits/ and reused, refused for data whose bytes
are not the ones the study used, and escaped in the page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import emocircuits as ec
from emocircuits.geometry.audit import AuditResult
from emocircuits.report import collect, render

from study_fixture import study_dir  # noqa: F401  (the fixture)


@pytest.fixture()
def study(study_dir, tmp_path):  # noqa: F811
    return Path(shutil.copytree(study_dir, tmp_path / "study"))


def test_every_dataset_of_the_study_is_audited(study):
    data = collect(study)
    sha = ec.load_dataset("baseline").sha256
    [block] = data.datasets
    assert block.title == "baseline (version 1)"
    assert block.source.data == "baseline" and block.source.data_sha256 == sha
    folder = study / "audits" / f"baseline-{sha[:12]}"
    saved = AuditResult.load(folder)
    bow = next(n for n in block.numbers if n.label.startswith("bag-of-words"))
    assert bow.est.value == saved.bow["accuracy"] and bow.null.value == 0.25
    assert len(block.numbers) == 1 + len(saved.trivial)
    # baseline's neutral rows are less often first person: the audit says so
    assert any("first person" in n for n in block.notes), block.notes
    assert {f.path.name for f in block.figures} == {"features.png", "giveaway_words.png"}
    assert all(f.path.is_file() for f in block.figures)
    html = render(data)
    assert '<section id="datasets">' in html and 'href="#datasets"' in html
    assert saved.sha256 == sha and saved.provenance["dataset"]["version"] == "1"
    prov = {d["data"]: d for d in data.provenance.datasets}
    assert prov["baseline"]["version"] == "1"


def test_the_saved_audit_is_reused_and_its_text_escaped(study):
    collect(study)
    sha = ec.load_dataset("baseline").sha256
    path = study / "audits" / f"baseline-{sha[:12]}" / "audit.json"
    doc = json.loads(path.read_text())
    doc["duplicates"] = [
        {
            "jaccard": 0.9,
            "id_a": "x1",
            "label_a": "anger",
            "id_b": "x2",
            "label_b": "neutral",
            "same_label": False,
            "text_a": "<script>alert(1)</script> hi",
            "text_b": "hi",
        }
    ]
    path.write_text(json.dumps(doc))
    data = collect(study)  # reads the saved audit (it is not recomputed)
    [block] = data.datasets
    assert any(t.title.startswith("Near-duplicate") for t in block.tables)
    html = render(data)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; hi" in html


def test_data_changed_since_the_study_gives_a_note_not_an_audit(study):
    doc = json.loads((study / "study.json").read_text())
    doc["provenance"]["datasets"]["baseline"]["sha256"] = "0" * 64
    (study / "study.json").write_text(json.dumps(doc))
    [block] = collect(study).datasets
    assert not block.numbers and not block.tables
    assert "has changed since the study ran" in block.notes[0]
    assert not (study / "audits" / "baseline-000000000000").exists()

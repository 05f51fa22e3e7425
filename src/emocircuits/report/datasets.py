"""The report's "Datasets" section: the audit (:func:`~emocircuits.geometry.audit.audit_dataset`)
of every dataset the study used, computed when the report is built.

Why here and not as a study stage: the audit runs no model and takes about a second per
dataset, less than reading a cached stage's bookkeeping; its only input is the dataset's
bytes, which ``study.json`` identifies by sha256. So each dataset is found again by the
name the study used (a preset or a file), checked against that sha256 (a changed or
missing file gives a note, never an audit of other data), audited against the study's
other dataset (the one its directions are tested on, for leaks between them), and saved to
``OUT/audits/<name>-<sha12>/`` (``audit.json``, tables, figures), which later rebuilds of
the report reuse.

>>> blocks = dataset_blocks(Path("runs/study"), study)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emocircuits.errors import EmocircuitsError
from emocircuits.report.data import Block, Est, Figure, Null, Number, Source, Table

AUDITS = "audits"


def _label(name: str) -> str:
    p = Path(name)
    return p.stem if p.suffix == ".jsonl" else name.replace("/", "_")


def _load_or_audit(out: Path, name: str, sha: str, against: str | None) -> tuple[Any, Path]:
    """The saved audit of this dataset's bytes, or a new one (saved)."""
    from emocircuits._version import __version__
    from emocircuits.data import load_dataset
    from emocircuits.geometry.audit import AuditResult, audit_dataset

    folder = out / AUDITS / f"{_label(name)}-{sha[:12]}"
    if (folder / "audit.json").is_file():
        try:
            res = AuditResult.load(folder)
            other = (res.against or {}).get("source")
            if res.provenance.get("emocircuits") == __version__ and other == against:
                return res, folder
        except EmocircuitsError:
            pass
    ds = load_dataset(name)
    if ds.sha256 != sha:
        raise EmocircuitsError(
            f"{name} has changed since the study ran (sha256 {ds.sha256[:12]}…, the study "
            f"used {sha[:12]}…): no audit shown; re-run the study or restore the file"
        )
    res = audit_dataset(ds, against=against)
    try:
        res.save(folder)
    except OSError:  # a read-only study folder: show the audit without its figures
        folder = Path()
    return res, folder


def dataset_blocks(out: Path, study: dict[str, Any]) -> list[Block]:
    """One block per dataset of ``study.json``'s provenance: its audit's key numbers
    (bag-of-words probe against chance; each trivial feature), tables, figures and
    warnings; a dataset that cannot be audited gives a block that says why."""
    datasets = (study.get("provenance") or {}).get("datasets") or {}
    names = list(datasets)
    blocks = []
    for name in names:
        d = datasets[name] or {}
        sha = str(d.get("sha256") or "")
        others = [n for n in names if n != name]
        src = Source("audit", _label(name), AUDITS, data=name, data_sha256=sha or None)
        title = f"{name}" + (f" (version {d['version']})" if d.get("version") else "")
        try:
            res, folder = _load_or_audit(out, name, sha, others[0] if others else None)
        except (EmocircuitsError, OSError, ValueError) as e:
            blocks.append(Block(title, src, notes=[f"no audit of {name}: {e}"]))
            continue
        rel = str(folder.relative_to(out)) if folder != Path() else AUDITS
        src = Source("audit", _label(name), rel, data=name, data_sha256=sha or None)
        blocks.append(_block(res, src, title, folder))
    return blocks


def _block(res: Any, src: Source, title: str, folder: Path) -> Block:
    from emocircuits.geometry.audit import TRIVIAL_MARGIN

    b = Block(title, src.at("audit.json"))
    chance = Null("chance (most frequent class)", res.chance)
    bow = res.bow
    b.numbers.append(
        Number(
            f"bag-of-words probe ({bow['folds']}-fold, {bow['vocabulary']} tokens)",
            Est(bow["accuracy"], bow["ci_low"], bow["ci_high"]),
            chance,
            interval="95% Wilson interval",
            note="what the words alone give: a probe on the model's activations should beat it "
            "on text written differently, not only here",
        )
    )
    for t in res.trivial:
        b.numbers.append(
            Number(
                f"'{t['description']}' alone ({bow['folds']}-fold lookup classifier)",
                Est(t["accuracy"], t["ci_low"], t["ci_high"]),
                chance,
                interval="95% Wilson interval",
                note=(
                    f"WARNING: gives away {t['gives_away']} (AUC {t['auc']:.2f})"
                    if t["warning"]
                    else f"gives away {t['gives_away']} at most (AUC {t['auc']:.2f})"
                ),
            )
        )
    b.notes = [f"Warning: {w}." for w in res.warnings] or [
        f"No warnings: no trivial feature alone classifies {TRIVIAL_MARGIN:.2f} above chance, "
        "no near-duplicates, classes balanced."
    ]
    per_class = [{"": "rows", **{c: res.counts[c] for c in res.classes}}]
    per_class += [{"": f["description"], **{c: f[c] for c in res.classes}} for f in res.features]
    b.tables.append(
        Table(
            "Per class: rows, mean length in words, share of rows with each feature",
            per_class,
            src.at("features.csv"),
            "A feature whose share differs much between classes can let a probe pass without "
            "the emotion.",
        )
    )
    b.tables.append(
        Table(
            "Give-away tokens: the 5 with the largest log-odds z per class",
            [
                {
                    "class": w["class"],
                    "rank": w["rank"],
                    "token": w["token"],
                    "z": w["z"],
                    "in class": w["count_in_class"],
                    "elsewhere": w["count_elsewhere"],
                    "share of class rows": w["share_of_class_rows"],
                }
                for w in res.words
                if w["rank"] <= 5
            ],
            src.at("giveaway_words.csv"),
            "Log-odds ratio with an informative Dirichlet prior (Monroe et al. 2008), each class "
            "against the others; |z| > 1.96 is beyond chance for one token.",
        )
    )
    dups = [
        {
            "overlap": d["jaccard"],
            "row a": f"{d['id_a']} ({d['label_a']})",
            "text a": d["text_a"],
            "row b": f"{d['id_b']} ({d['label_b']})",
            "text b": d["text_b"],
        }
        for d in res.duplicates
    ]
    if dups:
        b.tables.append(Table("Near-duplicate rows within the set", dups, src.at("duplicates.csv")))
    if res.duplicates_against:
        other = (res.against or {}).get("source")
        b.tables.append(
            Table(
                f"Rows that nearly duplicate rows of {other}",
                [
                    {
                        "overlap": d["jaccard"],
                        "row": f"{d['id_a']} ({d['label_a']})",
                        "text": d["text_a"],
                        f"row of {other}": f"{d['id_b']} ({d['label_b']})",
                        f"text of {other}": d["text_b"],
                    }
                    for d in res.duplicates_against
                ],
                src.at("duplicates_against.csv"),
            )
        )
    if folder != Path():
        for name, what in (
            ("features", "Surface features per class"),
            ("giveaway_words", "Give-away tokens per class"),
        ):
            path = folder / "figures" / f"{name}.png"
            if path.is_file():
                b.figures.append(Figure(what, path, src.at(f"figures/{name}.png")))
    b.facts = {"warnings": len(res.warnings), "bow": bow["accuracy"]}
    return b


def audit_summary(blocks: list[Block]) -> str:
    """One sentence for the report's summary."""
    done = [b for b in blocks if b.facts]
    if not done:
        return "No dataset could be audited."
    warned = [b.title for b in done if b.facts["warnings"]]
    return f"{len(done)} dataset{'s' * (len(done) != 1)} audited; " + (
        f"warnings for {', '.join(warned)}." if warned else "no warnings."
    )

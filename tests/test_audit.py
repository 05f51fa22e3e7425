"""The dataset audit: every statistic on planted data (a give-away punctuation mark must
warn, planted duplicates must be found, a planted give-away word must rank first, random
labels must give chance), the log-odds z-score against a hand computation, save/load, the
HTML, and `emocircuits data audit` with its errors."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.cli import main
from emocircuits.errors import DataError
from emocircuits.geometry.audit import (
    TRIVIAL_MARGIN,
    AuditResult,
    audit_dataset,
    log_odds,
    near_duplicates,
    tokens,
)

LABELS = ("gratitude", "anger", "apology", "neutral")
VOCAB = [f"w{i}" for i in range(400)]


def random_rows(n_per_class: int = 40, seed: int = 0, words: int = 9) -> list[dict]:
    """Rows of random words from one shared vocabulary: nothing tells the classes apart."""
    rng = np.random.default_rng(seed)
    rows = []
    for lab in LABELS:
        for i in range(n_per_class):
            text = " ".join(rng.choice(VOCAB, size=words, replace=False))
            rows.append({"id": f"{lab[:3]}-{i:03d}", "text": text, "emotion": lab})
    return rows


def write(tmp_path: Path, rows: list[dict], name: str = "d.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return p


# ---------------------------------------------------------------------------- null set
def test_random_labels_give_chance_and_no_warning(tmp_path):
    res = audit_dataset(write(tmp_path, random_rows()))
    assert res.counts == dict.fromkeys(LABELS, 40) and res.chance == 0.25
    assert res.warnings == []
    assert not any(t["warning"] for t in res.trivial)
    assert res.bow["ci_low"] <= 0.25 + 0.05 and res.bow["accuracy"] < 0.4, res.bow
    assert res.duplicates == []
    # the give-away words of random rows are not significant
    assert max(w["z"] for w in res.words) < 4


# ------------------------------------------------------------------- trivial features
def test_every_anger_row_ending_with_bang_warns(tmp_path):
    rows = random_rows()
    for r in rows:
        if r["emotion"] == "anger":
            r["text"] += "!"
    res = audit_dataset(write(tmp_path, rows))
    bang = next(t for t in res.trivial if t["feature"] == "exclaim")
    assert bang["warning"] and bang["gives_away"] == "anger" and bang["auc"] == 1.0
    # anger rows all right, the others one class of three: 0.25 + 0.25 / 3 ... 0.5
    assert 0.45 <= bang["accuracy"] <= 0.55
    assert bang["above_chance"] >= TRIVIAL_MARGIN
    assert any("has !" in w and "anger" in w for w in res.warnings)
    feat = next(f for f in res.features if f["feature"] == "exclaim")
    assert feat["anger"] == 1.0 and feat["neutral"] == 0.0 and feat["spread"] == 1.0
    # "!" is then anger's first give-away token
    first = next(w for w in res.words if w["class"] == "anger" and w["rank"] == 1)
    assert first["token"] == "!" and first["share_of_class_rows"] == 1.0
    # the others stay quiet
    assert [t["feature"] for t in res.trivial if t["warning"]] == ["exclaim"]


def test_a_weak_difference_does_not_warn(tmp_path):
    """Neutral asks a question twice as often as the others: real, but small."""
    rows = random_rows(60)
    rng = np.random.default_rng(3)
    for r in rows:
        if rng.random() < (0.4 if r["emotion"] == "neutral" else 0.2):
            r["text"] += "?"
    res = audit_dataset(write(tmp_path, rows))
    q = next(t for t in res.trivial if t["feature"] == "question")
    assert not q["warning"] and q["above_chance"] < TRIVIAL_MARGIN


@pytest.mark.parametrize(
    ("feature", "edit"),
    [
        ("words", lambda t: " ".join(t.split()[:3])),
        ("lower_start", lambda t: t),  # random words start lowercase: others get capitals
        ("all_caps", lambda t: t + " WTF"),
        ("emoji", lambda t: t + " 🙂"),
        ("first_person", lambda t: "my " + t),
        ("ellipsis", lambda t: t + "..."),
        ("question", lambda t: t + "?"),
    ],
)
def test_each_trivial_feature_planted_in_one_class_warns(tmp_path, feature, edit):
    rows = random_rows()
    for r in rows:
        if r["emotion"] == "apology":
            r["text"] = edit(r["text"])
        elif feature == "lower_start":
            r["text"] = r["text"].capitalize()
    res = audit_dataset(write(tmp_path, rows))
    t = next(t for t in res.trivial if t["feature"] == feature)
    assert t["warning"] and t["gives_away"] == "apology", t


# ------------------------------------------------------------------------- duplicates
def test_planted_duplicates_are_found_within_and_against(tmp_path):
    rows = random_rows()
    rows[5]["text"] = rows[3]["text"]  # exact copy, same label
    rows[100]["text"] = rows[7]["text"] + " w999"  # near copy, another label
    res = audit_dataset(write(tmp_path, rows))
    pairs = {(d["id_a"], d["id_b"]): d for d in res.duplicates}
    assert set(pairs) == {(rows[3]["id"], rows[5]["id"]), (rows[7]["id"], rows[100]["id"])}
    assert pairs[rows[3]["id"], rows[5]["id"]]["jaccard"] == 1.0
    near = pairs[rows[7]["id"], rows[100]["id"]]
    assert near["jaccard"] == 0.9 and not near["same_label"]
    assert any(
        "2 near-duplicate pairs" in w and "1 with different labels" in w for w in res.warnings
    )
    other = [
        {"id": "h1", "text": rows[42]["text"].upper(), "emotion": "anger"},
        {"id": "h2", "text": "something else entirely here", "emotion": "neutral"},
    ]
    res = audit_dataset(write(tmp_path, rows), against=write(tmp_path, other, "h.jsonl"))
    assert [(d["id_a"], d["id_b"]) for d in res.duplicates_against] == [(rows[42]["id"], "h1")]
    assert any("not held out" in w for w in res.warnings)


def test_near_duplicates_threshold_and_scripts():
    texts = ["the cat sat on the mat", "the cat sat on a mat", "dogs bark loudly"]
    assert near_duplicates(texts) == [(0, 1, 0.833)]  # 5 shared words of 6
    assert near_duplicates(texts, threshold=0.9) == []
    # unspaced scripts compare character bigrams
    ja = [
        "昨日は駅まで送ってくれてありがとう",
        "昨日は駅まで送ってくれてありがとう！",
        "会議の時間が変わりました",
    ]
    assert [p[:2] for p in near_duplicates(ja)] == [(0, 1)]


# ------------------------------------------------------------------------ give-away words
def test_planted_giveaway_word_ranks_first(tmp_path):
    rows = random_rows()
    rng = np.random.default_rng(1)
    for r in rows:
        if r["emotion"] == "gratitude" or (r["emotion"] == "neutral" and rng.random() < 0.1):
            r["text"] = r["text"] + " banana"
    res = audit_dataset(write(tmp_path, rows))
    grat = [w for w in res.words if w["class"] == "gratitude"]
    assert grat[0]["token"] == "banana" and grat[0]["z"] > 5
    assert (
        grat[0]["count_in_class"] == 40
        and grat[0]["count_elsewhere"]
        == Counter(r["emotion"] for r in rows if r["text"].endswith("banana"))["neutral"]
    )
    neutral_top = [w["token"] for w in res.words if w["class"] == "neutral"][:5]
    assert "banana" not in neutral_top
    # a word in every gratitude row makes the bag of words decode gratitude
    assert res.bow["accuracy"] > 0.3


def test_log_odds_matches_the_formula():
    counts = {"a": Counter({"x": 8, "y": 2}), "b": Counter({"x": 2, "y": 8})}
    lo = log_odds(counts, prior_size=10.0)
    # alpha_w = 10 * f_w = 5 for both words; a0 = 10; n_a = n_b = 10
    d = math.log((8 + 5) / (10 + 10 - 8 - 5)) - math.log((2 + 5) / (10 + 10 - 2 - 5))
    z = d / math.sqrt(1 / (8 + 5) + 1 / (2 + 5))
    assert lo["a"]["x"] == pytest.approx((d, z))
    assert lo["b"]["x"] == pytest.approx((-d, -z))


def test_tokens_keep_punctuation_and_emoji():
    assert tokens("ty <3 ... wait WHAT?! 😂") == ["ty", "<3", "...", "wait", "what", "?", "!", "😂"]


# --------------------------------------------------------------------------- baselines
def test_bag_of_words_decodes_planted_words_and_balance_warns(tmp_path):
    rows = random_rows()
    for r in rows:
        r["text"] += f" {r['emotion']}word"
    rows += [
        {
            "id": f"extra{i}",
            "text": " ".join(VOCAB[i : i + 8]) + " neutralword",
            "emotion": "neutral",
        }
        for i in range(30)
    ]
    res = audit_dataset(write(tmp_path, rows))
    assert res.bow["ci_low"] > 0.9
    assert res.chance == pytest.approx(70 / 190, abs=1e-4)
    assert any("unbalanced" in w for w in res.warnings)


def test_layer0_probe_with_a_model(tmp_path, tiny):
    rows = random_rows(20)
    for r in rows:
        if r["emotion"] == "anger":
            r["text"] += " angry furious"
    lm = tiny("llama")
    res = audit_dataset(write(tmp_path, rows), lm)
    assert res.layer0["accuracy"] > 0.4 and res.layer0["model"] == lm.provenance["name"]
    assert res.provenance["model"]["name"] == lm.provenance["name"]
    # the same number as the probe's layer 0 on the same folds
    acts = ec.extract(
        lm, write(tmp_path, rows), sites=("resid",), positions=("mean",), progress=False
    )
    pr = ec.probe(acts, folds=5)
    assert res.layer0["accuracy"] == pytest.approx(pr.results["logreg"]["accuracy"][0], abs=0.03)


def test_too_few_rows_and_one_label(tmp_path):
    with pytest.raises(DataError, match="label 'anger' has 3 rows; a 5-fold audit"):
        audit_dataset(
            write(
                tmp_path,
                [r for r in random_rows() if r["emotion"] != "anger"] + random_rows(3)[3:6],
            )
        )
    with pytest.raises(DataError, match="one label only"):
        audit_dataset(write(tmp_path, [{"text": "a b", "emotion": "x"}] * 1))


# ---------------------------------------------------------------------- save, load, html
def test_save_load_and_html_escape(tmp_path):
    rows = random_rows()
    rows[1]["text"] = "<script>alert(1)</script> " + rows[0]["text"]
    res = audit_dataset(write(tmp_path, rows), against="natural")
    out = res.save(tmp_path / "audit")
    names = {p.name for p in out.iterdir()}
    assert {
        "audit.json",
        "balance.csv",
        "features.csv",
        "trivial_features.csv",
        "giveaway_words.csv",
        "duplicates.csv",
        "duplicates_against.csv",
        "figures",
    } <= names
    assert (out / "figures" / "features.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "figures" / "giveaway_words.svg").is_file()
    back = AuditResult.load(out)
    assert back.to_json() == json.loads(json.dumps(res.to_json()))
    html = back._repr_html_()
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "AuditResult" in repr(back) and "gratitude" in repr(back)
    assert res.duplicates[0]["text_a"] == rows[0]["text"]  # the hostile row is shown
    (tmp_path / "other.json").write_text('{"format": "emocircuits.probe"}')
    with pytest.raises(DataError, match="not an emocircuits audit"):
        AuditResult.load(tmp_path / "other.json")
    with pytest.raises(DataError, match="cannot read the audit"):
        AuditResult.load(out / "balance.csv")


def test_preset_audit_names_version():
    res = audit_dataset("baseline")
    assert res.version == "1" and res.provenance["dataset"]["version"] == "1"
    assert "v1" in res.title()


# -------------------------------------------------------------------------------- CLI
def test_cli_audit(tmp_path, capsys):
    rows = random_rows()
    for r in rows:
        if r["emotion"] == "anger":
            r["text"] += "!"
    p = write(tmp_path, rows)
    assert (
        main(
            [
                "data",
                "audit",
                str(p),
                "--against",
                "natural",
                "--out",
                str(tmp_path / "a"),
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "warning: trivial feature 'has !'" in out and "bag-of-words probe" in out
    assert "0 against natural" in out
    assert AuditResult.load(tmp_path / "a").n_rows == 160


def test_cli_audit_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "emotion": "anger"}\n{"text": oops}\n')
    assert main(["data", "audit", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"emocircuits: error: {bad}:2: not valid JSON (Expecting value at column 10)"]
    assert main(["data", "audit", "nosuchpreset"]) == 2
    assert "no such file or preset 'nosuchpreset'" in capsys.readouterr().err


def test_cli_audit_with_a_model(tmp_path, tiny_dir, capsys):
    p = write(tmp_path, random_rows(10))
    assert main(["data", "audit", str(p), "--model", str(tiny_dir("llama")), "--quiet",
                 "--folds", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "layer-0 probe (" in out and "(3-fold," in out

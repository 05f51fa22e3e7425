"""Datasets: the shipped presets are valid, varied and free of near-duplicates; every bad
file is reported as file:line."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter

import pytest

import emocircuits as ec
from emocircuits.data import parse_jsonl
from emocircuits.errors import DataError

LABELS = {"gratitude", "anger", "apology", "neutral"}


@pytest.mark.parametrize(
    ("name", "per_class", "lang"),
    [("baseline", 50, "en"), ("extended", 200, "en"), ("ja", 50, "ja")],
)
def test_presets(name, per_class, lang):
    ds = ec.load_dataset(name)
    counts = ds.counts()
    assert set(counts) == LABELS
    assert all(c >= per_class for c in counts.values())
    if name != "extended":
        assert set(counts.values()) == {per_class}
    for e in ds.examples:
        assert e.lang == lang
        if e.emotion != "neutral":
            assert e.emotion_word and e.emotion_word in e.text, e.id
    # the last character must not give the class away: every class mixes endings
    for label in LABELS:
        ends = Counter(e.text.rstrip()[-1] in ".。" for e in ds.examples if e.emotion == label)
        assert ends[False] >= 0.2 * counts[label], (name, label, ends)


def _units(text: str) -> set[str]:
    words = re.findall(r"[a-z']+", text.lower())
    return set(words) if words else {text[i : i + 2] for i in range(len(text) - 1)}


def test_no_near_duplicates_within_or_across_presets():
    rows = [(n, e) for n in ("baseline", "extended", "ja") for e in ec.load_dataset(n).examples]
    units = [(n, e, _units(e.text)) for n, e in rows]
    close = [
        (a[1].id, b[1].id)
        for a, b in itertools.combinations(units, 2)
        if len(a[2] & b[2]) / len(a[2] | b[2]) >= 0.6
    ]
    assert close == []


def test_implied_emotion_and_matched_neutral_in_extended():
    ds = ec.load_dataset("extended")
    implied = Counter(e.emotion for e in ds.examples if e.style == "implied")
    for label in ("gratitude", "anger", "apology"):
        assert implied[label] >= 40
    first_person = lambda e: bool(re.match(r"(?i)\W*(i|i'm|i've|we|you|your|my|our)\b", e.text))  # noqa: E731
    share = {
        lab: sum(map(first_person, [e for e in ds.examples if e.emotion == lab])) / ds.counts()[lab]
        for lab in LABELS
    }
    assert abs(share["neutral"] - sum(share.values()) / 4) < 0.15, share


BAD = [
    (b'{"text": "hi", "emotion": "anger"}\n{"text": oops}\n', 2, "not valid JSON"),
    (b'{"text": "hi", "emotion": "anger"}\n["a list"]\n', 2, "expected a JSON object"),
    (b'{"text": "hi"}\n', 1, "missing required field 'emotion'"),
    (b'{"text": "  ", "emotion": "anger"}\n', 1, "field 'text' is empty"),
    (b'{"text": "hi", "emotion": ""}\n', 1, "field 'emotion' is empty"),
    (b'{"text": "hi", "emotion": 3.5}\n', 1, "must be a string"),
    (
        b'{"text": "I am so angry", "emotion": "anger", "emotion_word": "furious"}\n',
        1,
        "emotion_word 'furious' does not occur in text",
    ),
    (
        b'{"id": "a", "text": "x", "emotion": "anger"}\n\n'
        b'{"id": "a", "text": "y", "emotion": "n"}\n',
        3,
        "duplicate id 'a' (first at line 1)",
    ),
    (b"", 1, "no examples"),
    (b'{"text": "caf\xe9", "emotion": "anger"}\n', 1, "not UTF-8"),
]


@pytest.mark.parametrize(("raw", "line", "message"), BAD)
def test_bad_files_name_file_and_line(raw, line, message):
    with pytest.raises(DataError) as err:
        parse_jsonl(raw, "d.jsonl")
    assert str(err.value).startswith(f"d.jsonl:{line}: ")
    assert message in str(err.value)


def test_too_few_examples_and_missing_baseline(tmp_path):
    p = tmp_path / "few.jsonl"
    rows = [{"text": f"thanks {i}", "emotion": "gratitude"} for i in range(3)]
    rows.insert(1, {"text": "grr", "emotion": "anger"})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"{p}:2: label 'anger' has 1 example; at least 2"):
        ec.load_dataset(p, min_per_class=2)
    with pytest.raises(DataError, match="baseline label 'neutral' not found"):
        ec.load_dataset(p, baseline="neutral")
    ds = ec.load_dataset(p)  # any labels work when nothing more is asked
    assert ds.counts() == {"gratitude": 3, "anger": 1}


def test_unknown_fields_kept_and_round_trip(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(
        json.dumps(
            {
                "text": "Sorry!",
                "emotion": "apology",
                "emotion_word": "Sorry",
                "speaker": "Ann",
                "split": "test",
            },
            ensure_ascii=False,
        )
        + "\n"
    )
    ds = ec.load_dataset(p)
    e = ds.examples[0]
    assert e.extra == {"speaker": "Ann"} and e.split == "test" and e.id == "line1"
    assert e.emotion_span == (0, 5)
    assert json.loads(ds.to_jsonl()) == {
        "id": "line1",
        "text": "Sorry!",
        "emotion": "apology",
        "emotion_word": "Sorry",
        "split": "test",
        "speaker": "Ann",
    }


def test_unknown_preset():
    with pytest.raises(DataError, match=r"no such file or preset 'basline' \(presets: baseline"):
        ec.load_dataset("basline")


# ------------------------------------------------------------------ versions, everyday
def test_every_preset_has_a_version_matching_its_content():
    """A preset's version changes when its content does: each shipped file's sha256 is
    the one its declared version records, and no two versions share content."""
    import hashlib

    from emocircuits.data import preset_index, preset_version, presets

    index = preset_index()
    assert set(index) == set(presets())
    for name, path in presets().items():
        entry = index[name]
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["versions"][entry["version"]] == sha, f"{name}: bump its version"
        assert list(entry["versions"])[-1] == entry["version"], name
        assert len(set(entry["versions"].values())) == len(entry["versions"]), name
        assert entry["role"] in ("pilot", "train", "held-out") and entry["about"]
        ds = ec.load_dataset(name)
        assert ds.version == entry["version"] == preset_version(name, ds.sha256)
        assert ds.provenance()["version"] == entry["version"]
    assert index["baseline"]["role"] == "pilot"


def test_a_file_has_no_preset_version(tmp_path):
    p = tmp_path / "baseline.jsonl"
    p.write_bytes(ec.presets()["baseline"].read_bytes())  # same bytes, but not the preset
    ds = ec.load_dataset(p)
    assert ds.version is None and ds.provenance()["version"] is None


def test_everyday_presets_are_balanced_and_varied():
    train, held = ec.load_dataset("everyday"), ec.load_dataset("everyday_heldout")
    assert train.counts() == dict.fromkeys(("gratitude", "anger", "apology", "neutral"), 400)
    assert held.counts() == dict.fromkeys(("gratitude", "anger", "apology", "neutral"), 100)
    for ds in (train, held):
        for e in ds.examples:
            assert e.lang == "en" and e.style in ("explicit", "implied", "neutral"), e.id
            assert (e.style == "neutral") == (e.emotion == "neutral"), e.id
            assert bool(e.emotion_word) == (e.style == "explicit"), e.id
        # every register is used by every class (no register gives a class away)
        regs = {lab: {e.extra["register"] for e in ds.examples if e.emotion == lab}
                for lab in LABELS}  # fmt: skip
        assert len(set.intersection(*regs.values())) >= 8, regs
        styles = Counter(e.style for e in ds.examples if e.emotion != "neutral")
        assert abs(styles["explicit"] - styles["implied"]) <= 0.1 * sum(styles.values())


def test_everyday_has_no_trivial_giveaway_and_no_leak():
    """The audit of the training preset: no surface feature alone classifies it, no
    near-duplicates within it or against its held-out split and the other presets."""
    from emocircuits.geometry.audit import audit_dataset, near_duplicates

    res = audit_dataset("everyday", against="everyday_heldout")
    assert res.warnings == [], res.warnings
    assert res.duplicates == [] and res.duplicates_against == []
    train = ec.load_dataset("everyday").texts
    for other in ("everyday_heldout", "extended", "natural", "baseline"):
        assert near_duplicates(train, ec.load_dataset(other).texts) == [], other
    held = ec.load_dataset("everyday_heldout").texts
    for other in ("extended", "natural", "baseline"):
        assert near_duplicates(held, ec.load_dataset(other).texts) == [], other


def test_presets_and_files_combine_with_plus(tmp_path):
    a, b = ec.load_dataset("extended"), ec.load_dataset("everyday")
    both = ec.load_dataset("extended+everyday")
    assert both.ids == a.ids + b.ids and both.version == "1+1"
    assert both.source == "extended+everyday"
    assert (
        both.sha256
        == __import__("hashlib")
        .sha256(ec.presets()["extended"].read_bytes() + ec.presets()["everyday"].read_bytes())
        .hexdigest()
    )
    p = tmp_path / "mine.jsonl"
    p.write_text('{"id": "m1", "text": "thx!!", "emotion": "gratitude"}\n')
    mixed = ec.load_dataset(f"baseline+{p}")
    assert len(mixed) == 201 and mixed.version is None
    with pytest.raises(DataError, match="id 'base-gra-01' of baseline also occurs in baseline"):
        ec.load_dataset("baseline+baseline")
    with pytest.raises(DataError, match="no such file or preset 'nope'"):
        ec.load_dataset("baseline+nope")
    with pytest.raises(DataError, match="empty part"):
        ec.load_dataset("baseline+")

"""Audit a labelled dataset before trusting a probe trained on it: what, other than the
emotion, could tell its classes apart?

:func:`audit_dataset` measures, per class: balance; surface features (length in words,
``?``, ``!``, ``...``, a lowercase start, an all-caps word, an emoji, first person);
near-duplicate rows (within the set, and against a second set, e.g. the held-out one);
the words that give each class away (the log-odds ratio with an informative Dirichlet
prior of Monroe, Colaresi & Quinn 2008, with z-scores); and two baselines: a bag-of-words
probe and, given a model, the layer-0 lexical probe (mean-pooled embedding output), both by
stratified k-fold with a Wilson interval. A warning is raised for every trivial feature
that, alone, classifies the rows well above chance (:data:`TRIVIAL_MARGIN`).

>>> res = audit_dataset("extended")                                   # doctest: +SKIP
>>> res.warnings[:1], res.bow["accuracy"]                             # doctest: +SKIP
>>> res.save("runs/audit-extended")                                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from emocircuits.data.dataset import Dataset, load_dataset
from emocircuits.errors import DataError
from emocircuits.geometry.probes import cross_validated, stratified_folds, wilson_interval
from emocircuits.results import Result, html_table, text_table

TRIVIAL_MARGIN = 0.10
"""A trivial feature warns when, alone, its k-fold accuracy is at least this much above
chance (and its interval's lower end above chance). Why 0.10: the margins a probe is judged
by here are of that size (the best layer over the layer-0 baseline: 0.12-0.15 on the
``natural`` set), so one surface cue worth as much could account for such a margin; and a
cue that real text does not share does not transfer (a set whose every anger row ends with
``!`` gives +0.25 on four balanced classes; a class that merely uses ``?`` twice as often
as the others gives about +0.05)."""

IMBALANCE = 1.5
"""Largest over smallest class from which the balance warns (accuracy against the
majority share is then harder to read)."""

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_EMOTICON = r"<3|[:;]-?[()DPp](?![\w])|\bx[dD]\b"
_EMOJI_CHARS = (
    "\U0001f000-\U0001faff\u2600-\u27bf\u2b50\u2b55\u2190-\u21ff\u2300-\u23ff\u2764\ufe0f"
)
_EMOJI = re.compile(f"(?:{_EMOTICON}|[{_EMOJI_CHARS}])")
_TOKEN = re.compile(f"{_EMOTICON}|[{_EMOJI_CHARS}]|" + r"\w+(?:['’]\w+)*|\.\.\.|…|[!?]")
_FIRST = re.compile(
    r"(?i)\b(?:i|i'm|im|i've|ive|i'd|i'll|me|my|mine|myself|we|we're|we've|we'll|us|our|"
    r"ours|ourselves)\b"
)
_LETTER = re.compile(r"[^\W\d_]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def _all_caps(text: str) -> bool:
    return any(len(w) >= 2 and w.isalpha() and w.isupper() for w in _WORD.findall(text))


def _lower_start(text: str) -> bool:
    m = _LETTER.search(text)
    return bool(m and m.group().islower())


FEATURES: dict[str, tuple[str, Callable[[str], float]]] = {
    "words": ("length in words", lambda t: float(len(_WORD.findall(t)))),
    "question": ("has ?", lambda t: float("?" in t)),
    "exclaim": ("has !", lambda t: float("!" in t)),
    "ellipsis": ("has ... or …", lambda t: float("..." in t or "…" in t)),
    "lower_start": ("starts lowercase", lambda t: float(_lower_start(t))),
    "all_caps": ("has an ALL-CAPS word", lambda t: float(_all_caps(t))),
    "emoji": ("has an emoji or <3 :)", lambda t: float(bool(_EMOJI.search(t)))),
    "first_person": ("first person (I, my, we...)", lambda t: float(bool(_FIRST.search(t)))),
}
"""The trivial features: name -> (what it is, text -> value). ``words`` is a count, the
others are 0/1 per row."""


def tokens(text: str) -> list[str]:
    """Lowercased words, ``!``, ``?``, ``...``, emoji and emoticons of a text (what the
    give-away words and the bag-of-words probe count).

    >>> tokens("Thanks SO much!! <3 ...")
    ['thanks', 'so', 'much', '!', '!', '<3', '...']
    """
    return [t.lower() for t in _TOKEN.findall(text)]


def feature_matrix(texts: Sequence[str]) -> np.ndarray:
    """``[n, F]`` values of :data:`FEATURES` per text (columns in that order).

    >>> feature_matrix(["wow!!", "Is it?"]).tolist()[0][:3]
    [1.0, 0.0, 1.0]
    """
    return np.array([[fn(t) for _, fn in FEATURES.values()] for t in texts], dtype=np.float64)


# -------------------------------------------------------------------------- give-away words
def log_odds(
    counts: dict[str, Counter], *, prior_size: float = 500.0
) -> dict[str, dict[str, tuple[float, float]]]:
    """Log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008,
    eq. 22 and 24) of every token, each class against all the others: ``{class: {token:
    (delta, z)}}``. The prior is the whole set's token frequencies scaled to
    ``prior_size`` pseudo-counts (``alpha_w = prior_size * f_w``), so that rare tokens are
    shrunk towards no difference and z grows with the evidence.

    >>> c = {"a": Counter({"x": 30, "the": 30}), "b": Counter({"y": 30, "the": 30})}
    >>> [round(v, 2) for v in log_odds(c, prior_size=10)["a"]["x"]], log_odds(c)["a"]["the"]
    ([3.15, 4.8], (0.0, 0.0))
    """
    classes = list(counts)
    vocab = sorted(set().union(*counts.values()))
    if not vocab:
        return {c: {} for c in classes}
    y = np.array([[counts[c].get(w, 0) for w in vocab] for c in classes], dtype=np.float64)
    total = y.sum(0)
    big_n = total.sum()
    alpha = prior_size * total / big_n
    a0 = alpha.sum()
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for i, c in enumerate(classes):
        yc, yr = y[i], total - y[i]
        nc, nr = yc.sum(), big_n - yc.sum()
        delta = np.log((yc + alpha) / (nc + a0 - yc - alpha)) - np.log(
            (yr + alpha) / (nr + a0 - yr - alpha)
        )
        z = delta / np.sqrt(1.0 / (yc + alpha) + 1.0 / (yr + alpha))
        out[c] = {w: (float(d), float(s)) for w, d, s in zip(vocab, delta, z, strict=True)}
    return out


def giveaway_words(ds: Dataset, *, top: int = 15, prior_size: float = 500.0) -> list[dict]:
    """Per class, the ``top`` tokens with the largest log-odds z-score against the other
    classes (:func:`log_odds`), with their counts and the share of the class's rows that
    contain them."""
    classes = list(ds.counts())
    toks = [tokens(t) for t in ds.texts]
    counts = {c: Counter() for c in classes}
    docs = {c: Counter() for c in classes}
    for lab, tk in zip(ds.labels, toks, strict=True):
        counts[lab].update(tk)
        docs[lab].update(set(tk))
    lo = log_odds(counts, prior_size=prior_size)
    n = ds.counts()
    rows = []
    for c in classes:
        best = sorted(lo[c].items(), key=lambda kv: (-kv[1][1], kv[0]))[:top]
        for rank, (w, (d, z)) in enumerate(best, 1):
            rest = sum(counts[o][w] for o in classes if o != c)
            rows.append(
                {
                    "class": c,
                    "rank": rank,
                    "token": w,
                    "z": round(z, 3),
                    "log_odds": round(d, 3),
                    "count_in_class": counts[c][w],
                    "count_elsewhere": rest,
                    "share_of_class_rows": round(docs[c][w] / n[c], 3),
                }
            )
    return rows


# --------------------------------------------------------------------------- near-duplicates
def _units(text: str) -> frozenset[str]:
    """Lowercased words; character bigrams for text without spaces between words."""
    if _CJK.search(text):
        t = re.sub(r"\s+", "", text.lower())
        return frozenset(t[i : i + 2] for i in range(len(t) - 1)) or frozenset([t])
    words = _WORD.findall(text.lower())
    return frozenset(words) if words else frozenset([text.strip().lower()])


def _unit_matrix(unit_sets: Sequence[frozenset[str]], vocab: dict[str, int]) -> Any:
    from scipy import sparse

    rows, cols = [], []
    for i, s in enumerate(unit_sets):
        for u in s:
            if u in vocab:
                rows.append(i)
                cols.append(vocab[u])
    data = np.ones(len(rows), dtype=np.float32)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(unit_sets), len(vocab)))


def near_duplicates(
    texts_a: Sequence[str], texts_b: Sequence[str] | None = None, *, threshold: float = 0.6
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, jaccard)`` of texts whose sets of words (character bigrams for
    unspaced scripts) overlap by at least ``threshold`` (Jaccard): within ``texts_a``
    (``i < j``) or, with ``texts_b``, between the two. Sorted by overlap, largest first.

    >>> near_duplicates(["thanks so much for the help", "thanks so much for your help", "no"])
    [(0, 1, 0.714)]
    """
    sa = [_units(t) for t in texts_a]
    sb = sa if texts_b is None else [_units(t) for t in texts_b]
    vocab: dict[str, int] = {}
    for s in (*sa, *sb):
        for u in s:
            vocab.setdefault(u, len(vocab))
    a, b = _unit_matrix(sa, vocab), _unit_matrix(sb, vocab)
    size_a = np.asarray(a.sum(1)).ravel()
    size_b = np.asarray(b.sum(1)).ravel()
    out = []
    block = 512
    for start in range(0, a.shape[0], block):
        inter = (a[start : start + block] @ b.T).toarray()
        union = size_a[start : start + block, None] + size_b[None, :] - inter
        jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        ii, jj = np.nonzero(jac >= threshold - 1e-9)
        for i, j in zip(ii + start, jj, strict=True):
            if texts_b is None and j <= i:
                continue
            out.append((int(i), int(j), round(float(jac[i - start, j]), 3)))
    return sorted(out, key=lambda t: (-t[2], t[0], t[1]))


# ----------------------------------------------------------------------- trivial features
def _lookup_cv(values: np.ndarray, y: np.ndarray, fold: np.ndarray, binary: bool) -> float:
    """k-fold accuracy of the one-feature classifier: bin the feature (0/1, or the training
    folds' quintiles for a count) and predict the training majority class of each bin."""
    correct = 0
    n_classes = int(y.max()) + 1
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        if binary:
            btr, bte = values[tr].astype(int), values[te].astype(int)
        else:
            edges = np.unique(np.quantile(values[tr], [0.2, 0.4, 0.6, 0.8]))
            btr, bte = np.digitize(values[tr], edges), np.digitize(values[te], edges)
        overall = int(np.bincount(y[tr], minlength=n_classes).argmax())
        table = {}
        for b in np.unique(btr):
            table[int(b)] = int(np.bincount(y[tr][btr == b], minlength=n_classes).argmax())
        pred = np.array([table.get(int(b), overall) for b in bte])
        correct += int((pred == y[te]).sum())
    return correct / len(y)


def _auc(values: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``values`` for ``positive`` rows (ties count half)."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    r = rankdata(values)
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def trivial_features(
    ds: Dataset, *, folds: int = 5, seed: int = 0, level: float = 0.95
) -> tuple[list[dict], list[dict]]:
    """``(rates, trivial)``: per feature of :data:`FEATURES`, its mean per class
    (``rates``), and how well it alone classifies the rows (``trivial``: k-fold accuracy
    of a one-feature lookup classifier, its Wilson interval, chance, and the class it gives
    away most with that class's one-vs-rest AUC)."""
    classes = list(ds.counts())
    y = np.array([classes.index(v) for v in ds.labels])
    x = feature_matrix(ds.texts)
    fold = stratified_folds(y, folds, seed)
    chance = float(np.bincount(y).max() / len(y))
    rates, trivial = [], []
    for k, (name, (what, _)) in enumerate(FEATURES.items()):
        v = x[:, k]
        row: dict[str, Any] = {"feature": name, "description": what}
        means = [float(v[y == c].mean()) for c in range(len(classes))]
        row |= {c: round(m, 3) for c, m in zip(classes, means, strict=True)}
        row["spread"] = round(max(means) - min(means), 3)
        rates.append(row)
        acc = _lookup_cv(v, y, fold, binary=name != "words")
        lo, hi = (float(b) for b in wilson_interval(np.array(acc), len(y), level))
        aucs = {c: _auc(v, y == i) for i, c in enumerate(classes)}
        who = max(aucs, key=lambda c: abs(aucs[c] - 0.5))
        warn = acc >= chance + TRIVIAL_MARGIN and lo > chance
        trivial.append(
            {
                "feature": name,
                "description": what,
                "accuracy": round(acc, 4),
                "ci_low": round(lo, 4),
                "ci_high": round(hi, 4),
                "chance": round(chance, 4),
                "above_chance": round(acc - chance, 4),
                "gives_away": who,
                "auc": round(aucs[who], 3),
                "warning": bool(warn),
            }
        )
    return rates, trivial


# -------------------------------------------------------------------------------- probes
def bag_of_words(ds: Dataset, *, min_df: int = 2) -> np.ndarray:
    """``[n, 1, V]`` presence (0/1) of each token (:func:`tokens`) that occurs in at least
    ``min_df`` rows: the bag-of-words features (the vocabulary is chosen without labels).

    >>> bag_of_words(load_dataset("baseline")).shape[:2]
    (200, 1)
    """
    toks = [set(tokens(t)) for t in ds.texts]
    df = Counter(w for s in toks for w in s)
    vocab = {w: i for i, w in enumerate(sorted(w for w, n in df.items() if n >= min_df))}
    x = np.zeros((len(ds), 1, max(len(vocab), 1)), dtype=np.float32)
    for i, s in enumerate(toks):
        for w in s:
            if w in vocab:
                x[i, 0, vocab[w]] = 1.0
    return x


def _cv_result(acc: float, n: int, chance: float, level: float, **extra: Any) -> dict[str, Any]:
    lo, hi = (float(b) for b in wilson_interval(np.array(acc), n, level))
    return {
        "accuracy": round(float(acc), 4),
        "ci_low": round(lo, 4),
        "ci_high": round(hi, 4),
        "chance": round(chance, 4),
        **extra,
    }


# ------------------------------------------------------------------------------- result
@dataclass(repr=False)
class AuditResult(Result):
    """What :func:`audit_dataset` found. ``rows()`` is one row per class (size, surface
    features, the top give-away tokens); the other tables are attributes; ``warnings`` are
    the findings that should change how a probe trained or tested on the set is read.
    ``save(folder)`` writes ``audit.json`` (everything), one CSV per table and two figures
    (what ``emocircuits data audit --out folder`` writes)."""

    command: ClassVar[str] = "data audit"

    source: str
    sha256: str
    version: str | None
    n_rows: int
    classes: list[str]
    counts: dict[str, int]
    chance: float
    features: list[dict[str, Any]]
    trivial: list[dict[str, Any]]
    words: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    against: dict[str, Any] | None
    duplicates_against: list[dict[str, Any]]
    bow: dict[str, Any]
    layer0: dict[str, Any] | None
    warnings: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def balance(self) -> list[dict[str, Any]]:
        """Rows per class and their share."""
        return [
            {"class": c, "rows": self.counts[c], "share": round(self.counts[c] / self.n_rows, 4)}
            for c in self.classes
        ]

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for b in self.balance():
            c = b["class"]
            r: dict[str, Any] = dict(b)
            for f in self.features:
                r[f["feature"]] = f[c]
            top = [w["token"] for w in self.words if w["class"] == c][:3]
            r["give-away tokens"] = " ".join(top)
            rows.append(r)
        return rows

    def title(self) -> str:
        ver = f" v{self.version}" if self.version else ""
        b = self.bow
        base = f"bag-of-words {b['accuracy']:.2f} [{b['ci_low']:.2f}, {b['ci_high']:.2f}]"
        if self.layer0:
            base += f", layer 0 {self.layer0['accuracy']:.2f}"
        n = len(self.warnings)
        return (
            f"AuditResult: {self.source}{ver}, {self.n_rows} rows, chance {self.chance:.2f}, "
            f"{base}; {n} warning{'s' * (n != 1)}"
        )

    def __repr__(self) -> str:
        warn = "".join(f"\n  ! {w}" for w in self.warnings)
        return f"<{self.title()}>\n{text_table(self.rows())}{warn}"

    def figure(self) -> Any:
        """Surface features per class."""
        from emocircuits.plots.audit import feature_rates

        return feature_rates(self.features, self.classes, title=f"surface features · {self.source}")

    def words_figure(self) -> Any:
        """The tokens that give each class away."""
        from emocircuits.plots.audit import giveaway_words as fig

        return fig(self.words, self.classes, title=f"give-away tokens · {self.source}")

    def _repr_html_(self) -> str:
        import html

        from emocircuits.results import figure_html

        warn = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
        top5 = [w for w in self.words if w["rank"] <= 5]
        dup = [
            {k: d[k] for k in ("jaccard", "id_a", "label_a", "text_a", "id_b", "label_b", "text_b")}
            for d in self.duplicates
        ]
        base = [{"baseline": "bag of words", **self.bow}]
        if self.layer0:
            base.append({"baseline": "layer 0", **self.layer0})
        parts = [
            f"<div><p><b>{html.escape(self.title())}</b></p>",
            f"<ul>{warn}</ul>" if warn else "<p>No warnings.</p>",
            html_table(self.rows()),
            "<p>Baselines (k-fold)</p>" + html_table(base),
            "<p>Each trivial feature alone</p>" + html_table(self.trivial),
            "<p>Give-away tokens (top 5 per class)</p>" + html_table(top5, max_rows=40),
            f"<p>Near-duplicate pairs ({len(dup)})</p>" + html_table(dup),
            figure_html(self.figure()),
            "</div>",
        ]
        return "".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The content of ``audit.json``."""
        return {
            "format": "emocircuits.audit",
            "version": 1,
            "dataset": {
                "source": self.source,
                "sha256": self.sha256,
                "version": self.version,
                "n_rows": self.n_rows,
                "counts": self.counts,
            },
            "classes": self.classes,
            "chance": self.chance,
            "features": self.features,
            "trivial_features": self.trivial,
            "giveaway_words": self.words,
            "duplicates": self.duplicates,
            "against": self.against,
            "duplicates_against": self.duplicates_against,
            "bag_of_words": self.bow,
            "layer0": self.layer0,
            "warnings": self.warnings,
            "settings": self.settings,
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``audit.json``, the tables as CSV and ``figures/`` (features, give-away
        tokens; PNG and SVG) into folder ``path``; returns it."""
        from emocircuits.plots.common import save_figure
        from emocircuits.tables import write_tables

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_figure(self.figure(), out / "figures" / "features")
        save_figure(self.words_figure(), out / "figures" / "giveaway_words")
        tables = {
            "balance": self.balance(),
            "features": self.features,
            "trivial_features": self.trivial,
            "giveaway_words": self.words,
            "duplicates": self.duplicates,
        }
        if self.against is not None:
            tables["duplicates_against"] = self.duplicates_against
        return write_tables(out, tables, {"audit.json": self.to_json()})

    @classmethod
    def load(cls, path: str | Path) -> AuditResult:
        """Read a folder written by :meth:`save` (or ``emocircuits data audit --out``)."""
        p = Path(path)
        f = p / "audit.json" if p.is_dir() else p
        try:
            d = json.loads(f.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the audit ({e})", where=str(f)) from None
        if not isinstance(d, dict) or d.get("format") != "emocircuits.audit":
            raise DataError("not an emocircuits audit file", where=str(f))
        ds = d["dataset"]
        return cls(
            ds["source"],
            ds["sha256"],
            ds.get("version"),
            ds["n_rows"],
            d["classes"],
            ds["counts"],
            d["chance"],
            d["features"],
            d["trivial_features"],
            d["giveaway_words"],
            d["duplicates"],
            d.get("against"),
            d.get("duplicates_against") or [],
            d["bag_of_words"],
            d.get("layer0"),
            d["warnings"],
            d.get("settings") or {},
            d.get("provenance") or {},
        )


def _as_dataset(data: Dataset | str | Path, what: str) -> Dataset:
    if isinstance(data, Dataset):
        return data
    ds = load_dataset(data)
    if len(ds.counts()) < 2:
        raise DataError(f"the {what} set {ds.source} has one label only; an audit compares classes")
    return ds


def _dup_rows(pairs: list[tuple[int, int, float]], a: Dataset, b: Dataset) -> list[dict]:
    ea, eb = a.examples, b.examples
    return [
        {
            "jaccard": s,
            "id_a": ea[i].id,
            "label_a": ea[i].emotion,
            "id_b": eb[j].id,
            "label_b": eb[j].emotion,
            "same_label": ea[i].emotion == eb[j].emotion,
            "text_a": ea[i].text,
            "text_b": eb[j].text,
        }
        for i, j, s in pairs
    ]


def audit_dataset(
    data: Dataset | str | Path,
    lm: Any = None,
    *,
    against: Dataset | str | Path | None = None,
    folds: int = 5,
    seed: int = 0,
    level: float = 0.95,
    duplicate_threshold: float = 0.6,
    top_words: int = 15,
    prior_size: float = 500.0,
    bow_c: float = 1.0,
    c: float = 0.1,
    batch_size: int = 16,
) -> AuditResult:
    """Audit a dataset (a :class:`Dataset`, preset name or JSONL path): balance, surface
    features per class, near-duplicates (within; and against ``against``), give-away
    tokens, the bag-of-words probe and, with ``lm`` (a loaded model or a model name), the
    layer-0 lexical probe; ``warnings`` say what could let a probe pass without the
    emotion.

    ``folds``/``seed``: the stratified k-fold of every baseline; ``duplicate_threshold``:
    Jaccard overlap of word sets from which two rows count as near-duplicates;
    ``prior_size``: pseudo-counts of the log-odds prior; ``bow_c``: inverse L2 strength of
    the bag-of-words probe (0/1 features), ``c`` that of the layer-0 probe (z-scored
    features, as ``probe``'s default).

    >>> res = audit_dataset("everyday", against="everyday_heldout")  # doctest: +SKIP
    >>> [t["feature"] for t in res.trivial if t["warning"]]          # doctest: +SKIP
    []
    """
    ds = _as_dataset(data, "audited")
    other = None if against is None else _as_dataset(against, "--against")
    counts = ds.counts()
    if min(counts.values()) < folds:
        low = min(counts, key=counts.get)
        raise DataError(
            f"label {low!r} has {counts[low]} rows; a {folds}-fold audit needs "
            f"at least {folds} per label",
            where=ds.source,
        )
    classes = list(counts)
    chance = max(counts.values()) / len(ds)
    rates, trivial = trivial_features(ds, folds=folds, seed=seed, level=level)
    words = giveaway_words(ds, top=top_words, prior_size=prior_size)
    dups = _dup_rows(near_duplicates(ds.texts, threshold=duplicate_threshold), ds, ds)
    dups_against: list[dict] = []
    against_info = None
    if other is not None:
        pairs = near_duplicates(ds.texts, other.texts, threshold=duplicate_threshold)
        dups_against = _dup_rows(pairs, ds, other)
        against_info = other.provenance()
    x = bag_of_words(ds)
    acc = cross_validated(x, ds.labels, "logreg", k=folds, seed=seed, c=bow_c, standardize=False)[0]
    bow = _cv_result(
        acc,
        len(ds),
        chance,
        level,
        folds=folds,
        vocabulary=int(x.shape[2]),
        c=bow_c,
        features="0/1 presence of tokens in >= 2 rows",
    )
    layer0 = None
    model_prov = None
    if lm is not None:
        from emocircuits.capture import extract
        from emocircuits.models import load_model

        if isinstance(lm, str | Path):
            lm = load_model(str(lm), progress=False)
        store = extract(
            lm,
            ds,
            sites=("resid",),
            positions=("mean",),
            layers=(0,),
            batch_size=batch_size,
            progress=False,
        )
        x0 = store.get("resid", "mean")
        acc0 = cross_validated(x0, ds.labels, "logreg", k=folds, seed=seed, c=c)[0]
        model_prov = {k: lm.provenance.get(k) for k in ("name", "source", "revision")}
        layer0 = _cv_result(
            acc0,
            len(ds),
            chance,
            level,
            folds=folds,
            c=c,
            model=model_prov.get("name"),
            features="layer-0 residual, mean over content tokens, z-scored",
        )
    warnings = []
    for t in trivial:
        if t["warning"]:
            warnings.append(
                f"trivial feature '{t['description']}' alone classifies {t['accuracy']:.2f} "
                f"[{t['ci_low']:.2f}, {t['ci_high']:.2f}] of rows ({folds}-fold; chance "
                f"{chance:.2f}, warning from chance + {TRIVIAL_MARGIN:.2f}); it gives away "
                f"{t['gives_away']} (one-vs-rest AUC {t['auc']:.2f})"
            )
    if max(counts.values()) >= IMBALANCE * min(counts.values()):
        sizes = ", ".join(f"{k} {v}" for k, v in counts.items())
        warnings.append(
            f"classes are unbalanced ({sizes}): read accuracies against the "
            f"majority share {chance:.2f}"
        )
    if dups:
        clash = sum(not d["same_label"] for d in dups)
        warnings.append(
            f"{len(dups)} near-duplicate pair{'s' * (len(dups) != 1)} within the "
            f"set (word overlap >= {duplicate_threshold}), {clash} with different "
            "labels: k-fold accuracy is inflated by them"
        )
    if dups_against:
        warnings.append(
            f"{len(dups_against)} row{'s' * (len(dups_against) != 1)} nearly "
            f"duplicate rows of {other.source} (word overlap >= "
            f"{duplicate_threshold}): a test on it is not held out"
        )
    from emocircuits._version import __version__

    settings = {
        "folds": folds,
        "seed": seed,
        "level": level,
        "duplicate_threshold": duplicate_threshold,
        "top_words": top_words,
        "prior_size": prior_size,
        "bow_c": bow_c,
        "c": c,
        "trivial_margin": TRIVIAL_MARGIN,
        "imbalance": IMBALANCE,
    }
    prov = {
        "dataset": ds.provenance(),
        "against": against_info,
        "model": model_prov,
        "emocircuits": __version__,
    }
    return AuditResult(
        ds.source,
        ds.sha256,
        ds.version,
        len(ds),
        classes,
        counts,
        round(chance, 4),
        rates,
        trivial,
        words,
        dups,
        against_info,
        dups_against,
        bow,
        layer0,
        warnings,
        settings,
        prov,
    )

"""Emotion-labelled prompt sets: JSONL schema, validation and the shipped presets.

Each shipped preset has a version (``presets/presets.json``: its version, the sha256 of
every version it has had, and what it is for); a preset's version changes whenever its
content does, and ``Dataset.version`` and the provenance of everything made from it name it.

One JSON object per line. Required: ``text``, ``emotion``. Optional: ``id``,
``emotion_word`` (a substring of ``text``; its first occurrence is used), ``lang``,
``split``, ``style``. Unknown fields are kept in :attr:`Example.extra`. Every load runs
the same checks; a problem raises :class:`~emocircuits.errors.DataError` naming file:line.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from emocircuits.errors import DataError

BASELINE_LABEL = "neutral"
PRESET_INDEX = "presets.json"
KNOWN_FIELDS = ("id", "text", "emotion", "emotion_word", "lang", "split", "style")


@dataclass(frozen=True)
class Example:
    """One labelled prompt. ``line`` is its 1-based line number in the source file."""

    id: str
    text: str
    emotion: str
    line: int
    emotion_word: str | None = None
    lang: str | None = None
    split: str | None = None
    style: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def emotion_span(self) -> tuple[int, int] | None:
        """Character span ``(start, end)`` of the emotion word in ``text``, or None."""
        if not self.emotion_word:
            return None
        start = self.text.find(self.emotion_word)
        return start, start + len(self.emotion_word)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "text": self.text, "emotion": self.emotion}
        for k in ("emotion_word", "lang", "split", "style"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d | self.extra


@dataclass(frozen=True)
class Dataset:
    """A validated prompt set. ``sha256`` hashes the file's bytes (its provenance);
    ``version`` is a shipped preset's version (None for other files)."""

    examples: tuple[Example, ...]
    source: str
    sha256: str
    version: str | None = None

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]

    @property
    def labels(self) -> list[str]:
        return [e.emotion for e in self.examples]

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    def counts(self) -> dict[str, int]:
        """Examples per label, in first-seen order."""
        return dict(Counter(self.labels))

    def provenance(self) -> dict[str, Any]:
        """Source, sha256, preset version (None for a file) and number of rows."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "version": self.version,
            "n_rows": len(self),
        }

    def to_jsonl(self) -> str:
        return "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in self.examples)


def presets() -> dict[str, Path]:
    """Shipped preset names and their files.

    >>> sorted(presets())
    ['baseline', 'everyday', 'everyday_heldout', 'extended', 'ja', 'natural']
    """
    root = files("emocircuits.data").joinpath("presets")
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".jsonl")}


def preset_index() -> dict[str, dict[str, Any]]:
    """What each shipped preset is: ``{name: {"version", "versions", "role", "about"}}``
    (``versions`` maps every version the preset has had to its sha256; the current one is
    ``version``).

    >>> preset_index()["baseline"]["role"]
    'pilot'
    """
    root = files("emocircuits.data").joinpath("presets")
    return json.loads(root.joinpath(PRESET_INDEX).read_text("utf-8"))["presets"]


def preset_version(name: str, sha256: str) -> str | None:
    """The version of preset ``name`` whose content has this sha256, or None (not a
    shipped preset, or content no version of it had).

    >>> preset_version("baseline", load_dataset("baseline").sha256)
    '1'
    """
    entry = preset_index().get(name) or {}
    return next((v for v, h in (entry.get("versions") or {}).items() if h == sha256), None)


def neutral_prompts(split: str = "tune") -> list[str]:
    """The shipped open-ended neutral prompts for steering (``presets/steer_prompts.txt``,
    40 of them): ``"tune"`` the first 20 (what ``steer-sweep`` chooses its settings on),
    ``"check"`` the other 20 (held out, to see the chosen settings on prompts they were not
    chosen on), ``"all"``.

    >>> len(neutral_prompts("tune")), len(neutral_prompts("check"))
    (20, 20)
    """
    root = files("emocircuits.data").joinpath("presets")
    lines = [x.strip() for x in root.joinpath("steer_prompts.txt").read_text("utf-8").splitlines()]
    lines = [x for x in lines if x]
    splits = {"tune": lines[:20], "check": lines[20:], "all": lines}
    if split not in splits:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(splits)}")
    return splits[split]


def resolve(name_or_path: str | Path) -> Path:
    """A preset name or a file path -> the file. Unknown names get a clear error."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    table = presets()
    if str(name_or_path) in table:
        return table[str(name_or_path)]
    if p.exists():
        raise DataError(f"{p} is not a file")
    raise DataError(
        f"no such file or preset {str(name_or_path)!r} (presets: {', '.join(sorted(table))})"
    )


def _field(obj: dict[str, Any], key: str, where: str, *, required: bool) -> str | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise DataError(f"missing required field {key!r}", where=where)
        return None
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise DataError(f"field {key!r} must be a string, got {type(v).__name__}", where=where)
    v = str(v)
    if not v.strip():
        if required or key == "emotion_word":
            raise DataError(f"field {key!r} is empty", where=where)
        return None
    return v


def parse_jsonl(raw: bytes, source: str) -> list[Example]:
    """Parse and check JSONL bytes; every problem names ``source:line``."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError("not UTF-8 text", where=f"{source}:{line}") from None
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg} at column {e.colno})", where=where) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", where=where)
        text_ = _field(obj, "text", where, required=True)
        emotion = _field(obj, "emotion", where, required=True)
        assert text_ is not None and emotion is not None
        ew = _field(obj, "emotion_word", where, required=False)
        if ew is not None and ew not in text_:
            raise DataError(f"emotion_word {ew!r} does not occur in text", where=where)
        id_ = _field(obj, "id", where, required=False) or f"line{n}"
        if id_ in seen:
            raise DataError(f"duplicate id {id_!r} (first at line {seen[id_]})", where=where)
        seen[id_] = n
        opt = {k: _field(obj, k, where, required=False) for k in ("lang", "split", "style")}
        extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
        examples.append(Example(id_, text_, emotion, n, ew, extra=extra, **opt))
    if not examples:
        raise DataError("no examples (the file is empty)", where=f"{source}:1")
    return examples


def check_counts(
    examples: list[Example] | tuple[Example, ...],
    source: str,
    *,
    min_per_class: int = 1,
    baseline: str | None = None,
) -> None:
    """Every label needs ``min_per_class`` examples; ``baseline`` (if given) must exist."""
    first_line: dict[str, int] = {}
    for e in examples:
        first_line.setdefault(e.emotion, e.line)
    counts = Counter(e.emotion for e in examples)
    for label, c in counts.items():
        if c < min_per_class:
            raise DataError(
                f"label {label!r} has {c} example{'s' * (c != 1)}; at least {min_per_class} "
                "are needed for this analysis",
                where=f"{source}:{first_line[label]}",
            )
    if baseline is not None and baseline not in counts:
        raise DataError(
            f"baseline label {baseline!r} not found (labels: {', '.join(counts)})",
            where=source,
        )


def load_dataset(
    name_or_path: str | Path,
    *,
    min_per_class: int = 1,
    baseline: str | None = None,
) -> Dataset:
    """Load and validate a preset or a JSONL file; ``"a+b"`` (names or paths joined by
    ``+``) is their rows together, in that order (sha256 of the files' bytes one after the
    other; version ``"1+1"`` when every part is a preset).

    >>> ds = load_dataset("baseline")
    >>> ds.counts()["anger"], len(ds)
    (50, 200)
    >>> len(load_dataset("extended+everyday")), load_dataset("extended+everyday").version
    (3025, '1+1')
    """
    p = Path(name_or_path).expanduser()
    if "+" in str(name_or_path) and not p.is_file():
        return _combined(str(name_or_path), min_per_class=min_per_class, baseline=baseline)
    path = resolve(name_or_path)
    raw = path.read_bytes()
    is_preset = str(name_or_path) in presets() and not Path(name_or_path).expanduser().is_file()
    source = str(name_or_path) if is_preset else str(path)
    examples = parse_jsonl(raw, source)
    check_counts(examples, source, min_per_class=min_per_class, baseline=baseline)
    sha = hashlib.sha256(raw).hexdigest()
    version = preset_version(source, sha) if is_preset else None
    return Dataset(tuple(examples), source, sha, version)


def _combined(name: str, *, min_per_class: int, baseline: str | None) -> Dataset:
    """The rows of the ``+``-joined parts of ``name``, in order (ids must stay unique)."""
    parts = [x.strip() for x in name.split("+")]
    if any(not x for x in parts):
        raise DataError(f"empty part in {name!r} (join preset names or files with '+')")
    examples: list[Example] = []
    raw = b""
    versions = []
    seen: dict[str, str] = {}
    for part in parts:
        ds = load_dataset(part)
        raw += resolve(part).read_bytes()
        versions.append(ds.version)
        for e in ds.examples:
            if e.id in seen:
                raise DataError(f"id {e.id!r} of {part} also occurs in {seen[e.id]}; the parts "
                                "of a combined dataset need distinct ids", where=name)  # fmt: skip
            seen[e.id] = part
        examples += ds.examples
    check_counts(examples, name, min_per_class=min_per_class, baseline=baseline)
    version = "+".join(versions) if all(v is not None for v in versions) else None  # type: ignore[arg-type]
    return Dataset(tuple(examples), name, hashlib.sha256(raw).hexdigest(), version)


def load_prompts(path: str | Path) -> list[str]:
    """Prompts to continue: a ``.txt`` file (one per non-empty line) or JSONL objects with a
    ``text`` field (a dataset file works; other fields are ignored). Problems name
    ``file:line``.

    >>> load_prompts("prompts.txt")[:1]  # doctest: +SKIP
    ['The meeting was moved to Thursday.']
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no prompt file {p}")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", where=str(p)) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix != ".jsonl":
            out.append(line.strip())
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"not valid JSON ({e.msg} at column {e.colno})", where=f"{p}:{n}"
            ) from None
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("text"), str)
            or not obj["text"].strip()
        ):
            raise DataError("expected an object with a non-empty string 'text'", where=f"{p}:{n}")
        out.append(obj["text"])
    if not out:
        raise DataError("no prompts (the file is empty)", where=f"{p}:1")
    return out

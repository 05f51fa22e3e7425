"""Activation folders: safetensors shards + a JSON manifest (format: docs/FORMAT.md).

Writing streams (one shard at a time, memory stays flat), is atomic (a shard appears under
its final name only when complete) and resumable (``plan.json`` fixes the shards; a re-run
with the same settings skips the shards already written). ``manifest.json`` is written
last: a folder without it is an unfinished extraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from emocircuits.errors import CaptureError, StorageError
from emocircuits.results import Result

FORMAT = "emocircuits.activations"
FORMAT_VERSION = 1


def is_token_key(key: str) -> bool:
    """Arrays of the ``all`` rule have one row per token, not per prompt."""
    return key.endswith("/all") or key.startswith("all/")


def problem(e: BaseException) -> str:
    """The problem in an OS or safetensors error, without the library's prefixes."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = re.sub(r"^Error while (de)?serializing( header)?: (I/O error: )?", "", str(e))
    return re.sub(r" \(os error \d+\)$", "", text) or type(e).__name__


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an OS failure while writing ``path`` (disk full, read-only, no permission) into
    a :class:`StorageError` that names the file.

    >>> with writing("runs/x/summary.json"):  # doctest: +SKIP
    ...     atomic_write_json(Path("runs/x/summary.json"), {})
    """
    try:
        yield
    except (OSError, SafetensorError) as e:
        raise StorageError(f"cannot write {path}: {problem(e)}") from None


@contextmanager
def reading(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failure to read a saved file (missing, truncated, corrupt) into a
    :class:`StorageError` that names the file."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        hint = "" if isinstance(e, OSError) else " (truncated or corrupt; re-create it)"
        raise StorageError(f"cannot read {path}: {problem(e)}{hint}") from None


@contextmanager
def open_safetensors(path: str | os.PathLike[str]) -> Iterator[Any]:
    """``safe_open(path, framework="numpy")`` whose failures name the file in one line
    (every reader of a saved ``.safetensors`` file goes through it).

    >>> with open_safetensors("runs/x/shard-00000.safetensors") as f:  # doctest: +SKIP
    ...     rows = f.get_tensor("rows")
    """
    with reading(path), safe_open(path, framework="numpy") as f:
        yield f


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename; a
    failure (disk full, ...) leaves no temporary file and raises a :class:`StorageError`."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def atomic_save_safetensors(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write a ``.safetensors`` file atomically (temporary name in the same folder, then a
    rename): a failure leaves nothing behind and raises a :class:`StorageError`."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def save_shard(path: Path, arrays: dict[str, np.ndarray], k: int) -> None:
    """Write shard ``k`` atomically (temporary name, then rename).

    Its header metadata is one key holding JSON: the safetensors writer orders several
    metadata keys as a hash map does (differently in every process), and one key keeps the
    file, and the checksum the manifest records, the same from run to run.
    """
    meta = {"emocircuits": json.dumps({"format": FORMAT, "shard": k})}
    atomic_save_safetensors(path, arrays, meta)


def save_weights(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write ``weights.safetensors`` (the o_proj weights saved with heads) atomically."""
    atomic_save_safetensors(path, tensors)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with reading(path), open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


class ActivationStore(Result):
    """Captured activations, read from a folder (lazily) or held in memory: one type, so
    every analysis takes either. ``extract(lm, data)`` returns one in memory,
    ``extract(lm, data, out=...)`` or :func:`load_activations` one on disk; :meth:`save`
    writes an in-memory store as the folder ``emocircuits extract --out`` writes.

    >>> acts = load_activations("runs/baseline-smollm2")  # doctest: +SKIP
    >>> acts.get("resid", "last").shape      # [n_rows, n_layers + 1, width]  # doctest: +SKIP
    (200, 31, 576)
    >>> acts.labels[:2], acts.ids[:2]        # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: Path | None = Path(path)
        self._shards: list[dict[str, np.ndarray]] | None = None  # in memory: the shards
        self._weights: dict[str, np.ndarray] | None = None
        self._plan: dict[str, Any] | None = None
        mf = self.path / "manifest.json"
        if not mf.is_file():
            if (self.path / "plan.json").is_file():
                raise CaptureError(
                    f"{self.path} is an unfinished extraction (no manifest.json); re-run the "
                    "same `emocircuits extract` command to resume it"
                )
            raise CaptureError(f"{self.path} is not an activation folder (no manifest.json)")
        try:
            self.manifest: dict[str, Any] = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise CaptureError(f"broken manifest ({e.msg})", where=f"{mf}:{e.lineno}") from None
        if self.manifest.get("format") != FORMAT:
            raise CaptureError(f"{mf} is not an {FORMAT} manifest")
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def from_shards(
        cls,
        shards: list[dict[str, np.ndarray]],
        manifest: dict[str, Any],
        *,
        weights: dict[str, np.ndarray] | None = None,
        plan: dict[str, Any] | None = None,
    ) -> ActivationStore:
        """An in-memory store: ``shards`` are what the shard files would hold (each with a
        ``rows`` array of dataset row indices), ``manifest`` what ``manifest.json`` would
        (its shard entries name the files :meth:`save` writes)."""
        self = cls.__new__(cls)
        self.path, self._shards, self._weights, self._plan = None, shards, weights, plan
        self.manifest, self._cache = manifest, {}
        return self

    @classmethod
    def from_arrays(
        cls,
        arrays: dict[str, np.ndarray],
        labels: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        layers: dict[str, list[int]] | None = None,
        model: dict[str, Any] | None = None,
        dataset: dict[str, Any] | None = None,
    ) -> ActivationStore:
        """An in-memory store from ``{"site/position": [n, layers, width]}`` arrays (as
        :func:`~emocircuits.capture.capture` returns) and the row labels; for arrays made
        elsewhere and for tests.

        >>> x = np.zeros((4, 2, 3), np.float32)
        >>> acts = ActivationStore.from_arrays({"resid/last": x}, ["a", "a", "b", "b"])
        >>> acts.get("resid", "last").shape, acts.layers("resid")
        ((4, 2, 3), [0, 1])
        >>> acts.by_label("resid", "last")["b"].shape
        (2, 2, 3)
        """
        labels = list(labels)
        n = len(labels)
        keys = [k for k in arrays if "/" in k and not k.startswith("meta/")]
        sites = list(dict.fromkeys(k.split("/", 1)[0] for k in keys if not k.startswith("all/")))
        positions = list(
            dict.fromkeys(k.split("/", 1)[1] for k in keys if not k.startswith("all/"))
        )
        for k in keys:
            if not is_token_key(k) and len(arrays[k]) != n:
                raise CaptureError(f"{k} has {len(arrays[k])} rows, labels {n}")
        layers = layers or {s: list(range(arrays[f"{s}/{positions[0]}"].shape[1])) for s in sites}
        first = arrays[f"{sites[0]}/{positions[0]}"]
        shard = {k: np.asarray(v) for k, v in arrays.items()} | {"rows": np.arange(n)}
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": dict(model or {}),
            "dataset": dict(dataset or {}),
            "n_layers": first.shape[1] - ("resid" in sites),
            "width": first.shape[-1],
            "sites": sites,
            "positions": positions,
            "layers": layers,
            "n_rows": n,
            "ids": list(ids) if ids is not None else [str(i) for i in range(n)],
            "labels": labels,
            "shards": [{"file": shard_name(0), "n_rows": n, "sha256": None}],
        }
        return cls.from_shards([shard], manifest)

    @property
    def in_memory(self) -> bool:
        """True when the arrays are held in memory (no folder behind them)."""
        return self._shards is not None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the activation folder (``plan.json``, shards, ``weights.safetensors`` with
        heads, ``manifest.json`` last): the files ``emocircuits extract --out`` writes for
        the same settings. A store read from a folder is copied. Returns the folder."""
        out = Path(path)
        if out.exists() and any(out.iterdir()):
            raise CaptureError(f"{out} exists and is not empty (never overwritten)")
        if self._shards is None:
            import shutil

            assert self.path is not None
            shutil.copytree(self.path, out, dirs_exist_ok=True)
            return out
        out.mkdir(parents=True, exist_ok=True)
        if self._plan is not None:
            atomic_write_json(out / "plan.json", self._plan)
        manifest = json.loads(json.dumps(self.manifest))
        for k, (shard, entry) in enumerate(zip(self._shards, manifest["shards"], strict=True)):
            file = out / entry["file"]
            save_shard(file, shard, k)
            entry["sha256"] = file_sha256(file)
        if self._weights:
            save_weights(out / "weights.safetensors", self._weights)
        atomic_write_json(out / "manifest.json", manifest)
        return out

    @property
    def ids(self) -> list[str]:
        return list(self.manifest["ids"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def positions(self) -> list[str]:
        return list(self.manifest["positions"])

    @property
    def default_position(self) -> str:
        """The rule analyses read unless told otherwise: ``mean`` when captured (mean-pooled
        content tokens: the most robust readout), else the first captured."""
        return "mean" if "mean" in self.positions else self.positions[0]

    def layers(self, site: str) -> list[int]:
        """Layer numbers along axis 1 of ``get(site, ...)``."""
        return list(self.manifest["layers"][site])

    command: ClassVar[str] = "extract"

    def title(self) -> str:
        m = self.manifest
        where = "in memory" if self.path is None else str(self.path)
        return (
            f"ActivationStore({where!r}, model={m['model'].get('name')!r}, "
            f"rows={m['n_rows']}, sites={m['sites']}, positions={m['positions']})"
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per label: how many rows the store holds of it."""
        return [{"label": k, "rows": v} for k, v in Counter(self.labels).items()]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ActivationStore:
        """Open a finished activation folder (:func:`load_activations`)."""
        return cls(path)

    @property
    def where(self) -> str:
        """The folder, or ``<memory>`` (for messages)."""
        return "<memory>" if self.path is None else str(self.path)

    def _read(self, key: str) -> np.ndarray:
        if key in self._cache:
            return self._cache[key]
        n_shards = len(self.manifest["shards"])
        parts = [self._read_raw(k, key) for k in range(n_shards)]
        cat = np.concatenate(parts)
        if is_token_key(key):
            rr = np.concatenate([self._read_raw(k, "all/row") for k in range(n_shards)])
            pp = np.concatenate([self._read_raw(k, "all/pos") for k in range(n_shards)])
            out = cat[np.lexsort((pp, rr))]
        else:
            r = np.concatenate([self._read_raw(k, "rows") for k in range(n_shards)])
            inv = np.empty(len(r), dtype=np.int64)
            inv[r] = np.arange(len(r))
            out = cat[inv]
        self._cache[key] = out
        return out

    def _read_raw(self, k: int, key: str) -> np.ndarray:
        """Array ``key`` of shard ``k`` as stored (batch order)."""
        if self._shards is not None:
            if key not in self._shards[k]:
                raise CaptureError(f"{key!r} was not captured")
            return self._shards[k][key]
        assert self.path is not None
        with open_safetensors(self.path / self.manifest["shards"][k]["file"]) as f:
            if key not in f.keys():  # noqa: SIM118 - safe_open has no __contains__
                raise CaptureError(f"{key!r} is not in {self.path}")
            return f.get_tensor(key)

    def get(self, site: str, position: str) -> np.ndarray:
        """Activations ``[n_rows, n_layers(+1 for resid), width]`` in dataset order
        (``heads``: ``[n_rows, n_layers, n_heads, head_dim]``; ``all``: rows are tokens,
        see :meth:`token_index`)."""
        if site not in self.sites:
            raise CaptureError(
                f"site {site!r} was not captured here (sites: {', '.join(self.sites)})",
                where=self.where,
            )
        if position not in self.positions:
            raise CaptureError(
                f"position {position!r} was not captured here "
                f"(positions: {', '.join(self.positions)})",
                where=self.where,
            )
        return self._read(f"{site}/{position}")

    def token_index(self) -> dict[str, np.ndarray]:
        """For the ``all`` rule: dataset row, token position and token id of each token."""
        return {k: self._read(f"all/{k}") for k in ("row", "pos", "token")}

    def spans(self, position: str) -> np.ndarray:
        """``[n_rows, 2]`` first and last token position read by a rule (-1: fallback)."""
        return self._read(f"meta/span/{position}")

    def n_tokens(self) -> np.ndarray:
        """Content tokens (not special, not padding) per row."""
        return self._read("meta/n_tokens")

    def o_proj(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Attention output projection ``(W [width, n_heads*head_dim], bias)`` of a layer
        (saved with ``heads``): head h adds ``z_h @ W[:, h*d:(h+1)*d].T`` to the output."""
        bias = f"o_proj.{layer}.bias"
        if self._shards is not None:
            if not self._weights:
                raise CaptureError("these activations have no o_proj weights (capture heads)")
            return self._weights[f"o_proj.{layer}.weight"], self._weights.get(bias)
        assert self.path is not None
        path = self.path / "weights.safetensors"
        if not path.is_file():
            raise CaptureError(f"{self.path} has no weights.safetensors (capture with heads)")
        with open_safetensors(path) as f:
            return f.get_tensor(f"o_proj.{layer}.weight"), (
                f.get_tensor(bias) if bias in f.keys() else None  # noqa: SIM118
            )

    def by_label(self, site: str, position: str) -> dict[str, np.ndarray]:
        """``{label: [n_label, layers, width]}`` for the given site and position."""
        x, labels = self.get(site, position), np.array(self.labels)
        return {lab: x[labels == lab] for lab in dict.fromkeys(self.labels)}


def as_store(acts: ActivationStore | str | os.PathLike[str]) -> ActivationStore:
    """A store as given, or the folder ``acts`` opened (what every analysis accepts).

    >>> as_store("runs/baseline-smollm2").labels[:2]  # doctest: +SKIP
    """
    return acts if isinstance(acts, ActivationStore) else ActivationStore(acts)


def load_activations(path: str | os.PathLike[str]) -> ActivationStore:
    """Open a finished activation folder written by ``emocircuits extract``.

    >>> load_activations("runs/baseline-smollm2").get("resid", "mean")  # doctest: +SKIP
    """
    return ActivationStore(path)

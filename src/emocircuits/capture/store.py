"""Activation folders: safetensors shards + a JSON manifest (format: docs/FORMAT.md).

Writing streams (one shard at a time, memory stays flat), is atomic (a shard appears under
its final name only when complete) and resumable (``plan.json`` fixes the shards; a re-run
with the same settings skips the shards already written). ``manifest.json`` is written
last: a folder without it is an unfinished extraction.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from emocircuits.errors import CaptureError

FORMAT = "emocircuits.activations"
FORMAT_VERSION = 1


def is_token_key(key: str) -> bool:
    """Arrays of the ``all`` rule have one row per token, not per prompt."""
    return key.endswith("/all") or key.startswith("all/")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
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


def save_shard(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write one shard atomically (temporary name, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


class ActivationStore:
    """A finished activation folder, read lazily.

    >>> acts = load_activations("runs/baseline-smollm2")  # doctest: +SKIP
    >>> acts.get("resid", "last").shape      # [n_rows, n_layers + 1, width]  # doctest: +SKIP
    (200, 31, 576)
    >>> acts.labels[:2], acts.ids[:2]        # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
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

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"ActivationStore({str(self.path)!r}, model={m['model'].get('name')!r}, "
            f"rows={m['n_rows']}, sites={m['sites']}, positions={m['positions']})"
        )

    def _read(self, key: str) -> np.ndarray:
        if key in self._cache:
            return self._cache[key]
        parts, rows = [], []
        for shard in self.manifest["shards"]:
            with safe_open(self.path / shard["file"], framework="numpy") as f:
                if key not in f.keys():  # noqa: SIM118 - safe_open has no __contains__
                    raise CaptureError(f"{key!r} is not in {self.path}")
                parts.append(f.get_tensor(key))
                rows.append(f.get_tensor("rows"))
        cat = np.concatenate(parts)
        if is_token_key(key):
            rr = np.concatenate([self._read_raw(s, "all/row") for s in self.manifest["shards"]])
            pp = np.concatenate([self._read_raw(s, "all/pos") for s in self.manifest["shards"]])
            out = cat[np.lexsort((pp, rr))]
        else:
            r = np.concatenate(rows)
            inv = np.empty(len(r), dtype=np.int64)
            inv[r] = np.arange(len(r))
            out = cat[inv]
        self._cache[key] = out
        return out

    def _read_raw(self, shard: dict[str, Any], key: str) -> np.ndarray:
        with safe_open(self.path / shard["file"], framework="numpy") as f:
            return f.get_tensor(key)

    def get(self, site: str, position: str) -> np.ndarray:
        """Activations ``[n_rows, n_layers(+1 for resid), width]`` in dataset order
        (``heads``: ``[n_rows, n_layers, n_heads, head_dim]``; ``all``: rows are tokens,
        see :meth:`token_index`)."""
        if site not in self.sites:
            raise CaptureError(
                f"site {site!r} was not captured here (sites: {', '.join(self.sites)})",
                where=str(self.path),
            )
        if position not in self.positions:
            raise CaptureError(
                f"position {position!r} was not captured here "
                f"(positions: {', '.join(self.positions)})",
                where=str(self.path),
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
        path = self.path / "weights.safetensors"
        if not path.is_file():
            raise CaptureError(f"{self.path} has no weights.safetensors (capture with heads)")
        with safe_open(path, framework="numpy") as f:
            bias = f"o_proj.{layer}.bias"
            return f.get_tensor(f"o_proj.{layer}.weight"), (
                f.get_tensor(bias) if bias in f.keys() else None  # noqa: SIM118
            )

    def by_label(self, site: str, position: str) -> dict[str, np.ndarray]:
        """``{label: [n_label, layers, width]}`` for the given site and position."""
        x, labels = self.get(site, position), np.array(self.labels)
        return {lab: x[labels == lab] for lab in dict.fromkeys(self.labels)}


def load_activations(path: str | os.PathLike[str]) -> ActivationStore:
    """Open a finished activation folder written by ``emocircuits extract``."""
    return ActivationStore(path)

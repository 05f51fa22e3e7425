"""``extract``: dataset + model -> activation folder (streamed, atomic, resumable)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from emocircuits.capture.capture import (
    CapturedBatch,
    CaptureSpec,
    iter_capture,
    plan_batches,
    token_lengths,
)
from emocircuits.capture.store import (
    FORMAT,
    FORMAT_VERSION,
    ActivationStore,
    atomic_write_json,
    is_token_key,
    save_shard,
    shard_name,
)
from emocircuits.data.dataset import Dataset
from emocircuits.errors import CaptureError
from emocircuits.models.loading import LoadedModel


def _version() -> str:
    from emocircuits import __version__

    return __version__


def _plan(lm: LoadedModel, ds: Dataset, spec: CaptureSpec, shard_size: int) -> dict[str, Any]:
    """Everything that determines the tensors; a resumed run must match it exactly."""
    plan = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": {k: lm.provenance.get(k) for k in ("name", "source", "revision")},
        "dtype": str(lm.dtype).removeprefix("torch."),
        "dataset_sha256": ds.sha256,
        "spec": asdict(spec),
        "shard_size": shard_size,
    }
    return json.loads(json.dumps(plan))  # the form it has when read back from plan.json


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def extract(
    lm: LoadedModel,
    dataset: Dataset,
    out: str | Path,
    spec: CaptureSpec = CaptureSpec(),
    *,
    shard_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> ActivationStore:
    """Capture ``dataset`` through ``lm`` into the folder ``out`` and return it opened.

    Re-running with the same arguments resumes an interrupted run (or returns the finished
    folder at once); different settings on an existing folder are an error unless
    ``overwrite``.

    >>> lm = load_model("smollm2-135m")  # doctest: +SKIP
    >>> acts = extract(lm, load_dataset("baseline"), "runs/base")  # doctest: +SKIP
    """
    out = Path(out)
    spec.check(lm.arch)
    if shard_size < 1:
        raise CaptureError(f"shard size must be >= 1, got {shard_size}")
    positions_need_words = any(p.startswith("emotion_word") for p in spec.positions)
    if positions_need_words and not any(e.emotion_word for e in dataset.examples):
        raise CaptureError(
            f"position 'emotion_word' asked for, but no row of {dataset.source} has an "
            "emotion_word field"
        )
    plan = _plan(lm, dataset, spec, shard_size)
    plan_path = out / "plan.json"
    if out.exists() and any(out.iterdir()):
        old = None
        if plan_path.is_file():
            try:
                old = json.loads(plan_path.read_text())
            except json.JSONDecodeError:
                old = None
        if old != plan and (not overwrite or old is None):
            why = (
                f"an extraction with other settings ({', '.join(_diff(old, plan))} differ)"
                if old
                else "files that are not an extraction (never overwritten)"
            )
            raise CaptureError(
                f"{out} already holds {why}; choose another --out or pass --overwrite"
            )
        if old != plan:
            shutil.rmtree(out)
        elif (out / "manifest.json").is_file():
            return ActivationStore(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_path, plan)

    t0 = time.perf_counter()
    lengths = token_lengths(lm, dataset.texts)
    batches = plan_batches(lengths, spec.batch_size)
    per_shard = max(1, shard_size // spec.batch_size)
    groups = [batches[i : i + per_shard] for i in range(0, len(batches), per_shard)]
    todo = [k for k in range(len(groups)) if not (out / shard_name(k)).is_file()]
    done_rows = sum(len(b) for k, g in enumerate(groups) if k not in todo for b in g)
    spans = [e.emotion_span for e in dataset.examples]
    bar = tqdm(
        total=len(dataset),
        initial=done_rows,
        unit="prompt",
        desc=f"capture {lm.name}",
        disable=not progress,
        file=sys.stderr,
    )
    if todo:
        flat = [b for k in todo for b in groups[k]]
        it = iter_capture(lm, dataset.texts, spec, spans=spans, batches=flat)
        try:
            for k in todo:
                n_rows = sum(len(b) for b in groups[k])
                shard = _ShardBuffer(n_rows)
                for _ in groups[k]:
                    part = next(it)
                    shard.add(part)
                    bar.update(len(part.rows))
                save_shard(out / shard_name(k), shard.arrays(), {"format": FORMAT, "shard": str(k)})
                del shard  # one shard in memory at a time: memory stays flat
                _release_freed_memory()
        finally:
            it.close()
    bar.close()
    if "heads" in spec.sites:
        _save_weights(lm, spec, out)
    manifest = _manifest(lm, dataset, spec, plan, out, len(groups))
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out / "manifest.json", manifest)
    return ActivationStore(out)


class _ShardBuffer:
    """Arrays of one shard, preallocated and filled batch by batch (no second copy);
    token-level (``all``) arrays vary in length and are concatenated at the end."""

    def __init__(self, n_rows: int) -> None:
        self.n_rows, self.filled = n_rows, 0
        self.fixed: dict[str, np.ndarray] = {}
        self.ragged: dict[str, list[np.ndarray]] = {}

    def add(self, part: CapturedBatch) -> None:
        n = len(part.rows)
        arrays = dict(part.arrays, rows=part.rows)
        for key, value in arrays.items():
            if is_token_key(key):
                self.ragged.setdefault(key, []).append(value)
                continue
            if key not in self.fixed:
                self.fixed[key] = np.empty((self.n_rows, *value.shape[1:]), value.dtype)
            self.fixed[key][self.filled : self.filled + n] = value
        self.filled += n

    def arrays(self) -> dict[str, np.ndarray]:
        assert self.filled == self.n_rows
        return self.fixed | {k: np.concatenate(v) for k, v in self.ragged.items()}


def _release_freed_memory() -> None:
    """Ask glibc to hand freed heap back to the OS (Linux), so RSS tracks what is live."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _save_weights(lm: LoadedModel, spec: CaptureSpec, out: Path) -> None:
    tensors = {}
    for layer in spec.resolved_layers(lm.arch)["heads"]:
        w, b = lm.arch.o_proj_weight(layer)
        tensors[f"o_proj.{layer}.weight"] = w.float().cpu().numpy().copy()
        if b is not None:
            tensors[f"o_proj.{layer}.bias"] = b.float().cpu().numpy().copy()
    tmp = out / ".weights.safetensors.tmp"
    save_file(tensors, tmp)
    tmp.replace(out / "weights.safetensors")


def _manifest(
    lm: LoadedModel,
    ds: Dataset,
    spec: CaptureSpec,
    plan: dict[str, Any],
    out: Path,
    n_shards: int,
) -> dict[str, Any]:
    from safetensors import safe_open

    shards, shapes = [], {}
    for k in range(n_shards):
        path = out / shard_name(k)
        with safe_open(path, framework="numpy") as f:
            n = f.get_slice("rows").get_shape()[0]
            for key in f.keys():  # noqa: SIM118
                shape = f.get_slice(key).get_shape()
                shapes.setdefault(key, [0, *shape[1:]])
                shapes[key][0] += shape[0]
        shards.append({"file": path.name, "n_rows": int(n), "sha256": _sha(path)})
    arch = lm.arch
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "emocircuits_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": lm.provenance,
        "dtype": plan["dtype"],
        "stored_dtype": "float32",
        "architecture": {
            "model_type": arch.model_type,
            "n_layers": arch.n_layers,
            "width": arch.width,
            "n_heads": arch.n_heads,
            "head_dim": arch.head_dim,
            "parallel_blocks": arch.parallel,
        },
        "n_layers": arch.n_layers,
        "width": arch.width,
        "dataset": ds.provenance(),
        "sites": list(spec.sites),
        "positions": list(spec.positions),
        "layers": spec.resolved_layers(arch),
        "capture": {
            "batch_size": spec.batch_size,
            "padding_side": spec.padding_side or lm.tokenizer.padding_side,
            "max_length": spec.max_length,
            "position_ids": "from attention mask (cumsum - 1)",
            "emotion_word_fallback": "last",
            "mean_excludes": "padding, special tokens, first content token",
        },
        "n_rows": len(ds),
        "ids": ds.ids,
        "labels": ds.labels,
        "tensors": shapes,
        "shards": shards,
    }


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


__all__ = ["extract"]

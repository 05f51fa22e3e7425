"""``extract``: model + dataset -> activations, in memory or in a folder (streamed, atomic,
resumable)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from emocircuits.capture.capture import (
    DEFAULT_POSITIONS,
    DEFAULT_SITES,
    CapturedBatch,
    CaptureSpec,
    Recorder,
    batch_rows,
    plan_batches,
    run_batch,
    token_lengths,
)
from emocircuits.capture.chat import chat_format
from emocircuits.capture.hooks import hooked
from emocircuits.capture.store import (
    FORMAT,
    FORMAT_VERSION,
    ActivationStore,
    atomic_write_json,
    file_sha256,
    is_token_key,
    open_safetensors,
    save_shard,
    save_weights,
    shard_name,
)
from emocircuits.data.dataset import Dataset
from emocircuits.errors import CaptureError
from emocircuits.models.batching import Batches, BatchSize, check_batch_size
from emocircuits.models.loading import LoadedModel


def _version() -> str:
    from emocircuits._version import __version__

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
    if spec.chat is None:  # raw text: the plan of a folder written before chat existed
        del plan["spec"]["chat"], plan["spec"]["system"]
    else:  # the template decides the tokens
        chat = chat_format(lm, spec.chat, spec.system)
        assert chat is not None
        plan["chat"] = chat.provenance()
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


def capture_positions(ds: Dataset, positions: Sequence[str]) -> tuple[str, ...]:
    """The position rules to capture: the default rules that need an emotion word are
    dropped for a dataset without ``emotion_word`` fields (e.g. a held-out set); rules asked
    for explicitly are kept (and refused by :func:`extract` if they cannot be read).

    >>> from emocircuits.data import load_dataset
    >>> capture_positions(load_dataset("natural"), DEFAULT_POSITIONS)  # doctest: +SKIP
    ('last', 'mean')
    """
    positions = tuple(positions)
    if positions == DEFAULT_POSITIONS and not any(e.emotion_word for e in ds.examples):
        return tuple(p for p in positions if not p.startswith("emotion_word"))
    return positions


def as_dataset(data: Dataset | str | Path, *, min_per_class: int = 1) -> Dataset:
    """A :class:`Dataset` as given, or loaded from a preset name or a JSONL path.

    >>> len(as_dataset("baseline"))
    200
    """
    if isinstance(data, Dataset):
        return data
    from emocircuits.data.dataset import load_dataset

    return load_dataset(data, min_per_class=min_per_class)


def extract(
    lm: LoadedModel,
    data: Dataset | str | Path,
    out: str | Path | None = None,
    spec: CaptureSpec | None = None,
    *,
    sites: Sequence[str] = DEFAULT_SITES,
    positions: Sequence[str] = DEFAULT_POSITIONS,
    layers: Sequence[int] | None = None,
    batch_size: BatchSize = 16,
    padding_side: str | None = None,
    max_length: int | None = None,
    chat: str | None = None,
    system: str | None = None,
    min_per_class: int = 2,
    shard_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> ActivationStore:
    """Capture ``data`` (a Dataset, preset name or JSONL path) through ``lm``.

    With ``out=None`` the activations stay in memory (no files); with ``out`` they stream
    shard by shard into that folder. Either way the result is an :class:`ActivationStore`,
    and ``store.save(folder)`` of an in-memory one writes the folder ``out=folder`` would.
    ``chat``: ``None`` (raw text), ``"user"`` (each text is the user's message) or
    ``"assistant"`` (each text is the assistant's reply), with an optional ``system``
    prompt (:mod:`~emocircuits.capture.chat`); the position rules then read the text's own
    tokens (:mod:`~emocircuits.capture.positions`).
    ``spec``, when given, replaces ``sites`` ... ``system``. ``min_per_class`` applies
    when ``data`` is loaded here. The default position rules that need an emotion word are
    dropped for data without one (:func:`capture_positions`).

    ``batch_size``: rows per forward pass, or ``"auto"`` (from the free memory of the
    model's device); a batch that runs out of memory is halved and run again, finished
    rows are kept, and the size settled on is printed (``progress``) and recorded in the
    manifest (``capture.batch_size_used``).

    On disk, re-running with the same arguments resumes an interrupted run (or returns the
    finished folder at once); different settings on an existing folder are an error unless
    ``overwrite``.

    >>> lm = load_model("smollm2-135m")  # doctest: +SKIP
    >>> acts = extract(lm, "baseline")                     # in memory  # doctest: +SKIP
    >>> acts = extract(lm, "baseline", out="runs/base")    # a folder   # doctest: +SKIP
    """
    dataset = as_dataset(data, min_per_class=min_per_class)
    if spec is None:
        spec = CaptureSpec(
            sites=tuple(sites),
            positions=capture_positions(dataset, positions),
            layers=None if layers is None else tuple(layers),
            batch_size=check_batch_size(batch_size),
            padding_side=padding_side,
            max_length=max_length,
            chat=chat,
            system=system,
        )
    spec.check(lm.arch)
    chat_format(lm, spec.chat, spec.system)  # no template: refused before any file is made
    if shard_size < 1:
        raise CaptureError(f"shard size must be >= 1, got {shard_size}")
    positions_need_words = any(p.startswith("emotion_word") for p in spec.positions)
    if positions_need_words and not any(e.emotion_word for e in dataset.examples):
        raise CaptureError(
            f"position 'emotion_word' asked for, but no row of {dataset.source} has an "
            "emotion_word field"
        )
    plan = _plan(lm, dataset, spec, shard_size)
    if out is None:
        return _extract_in_memory(lm, dataset, spec, plan, shard_size, progress)
    out = Path(out)
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
    batches = Batches(spec.batch_size, "extract")
    groups = _groups(lm, dataset, spec, shard_size, batches)
    todo = [k for k in range(len(groups)) if not (out / shard_name(k)).is_file()]
    done_rows = sum(len(b) for k, g in enumerate(groups) if k not in todo for b in g)
    # closing(): the hooks go when this loop ends, also when writing a shard fails
    with closing(_iter_shards(lm, dataset, spec, groups, todo, done_rows, progress, batches)) as it:
        for k, arrays in it:
            save_shard(out / shard_name(k), arrays, k)
            del arrays  # one shard in memory at a time: memory stays flat
            _release_freed_memory()
    batches.report(progress)
    if "heads" in spec.sites:
        save_weights(out / "weights.safetensors", _weights(lm, spec))
    entries, shapes = [], {}
    for k in range(len(groups)):
        path = out / shard_name(k)
        with open_safetensors(path) as f:
            n = f.get_slice("rows").get_shape()[0]
            for key in f.keys():  # noqa: SIM118
                _add_shape(shapes, key, f.get_slice(key).get_shape())
        entries.append({"file": path.name, "n_rows": int(n), "sha256": file_sha256(path)})
    manifest = _manifest(lm, dataset, spec, plan, entries, shapes, batches)
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out / "manifest.json", manifest)
    return ActivationStore(out)


def _extract_in_memory(
    lm: LoadedModel,
    dataset: Dataset,
    spec: CaptureSpec,
    plan: dict[str, Any],
    shard_size: int,
    progress: bool,
) -> ActivationStore:
    """The same shards as on disk, kept in memory (``sha256`` is filled in by ``save``)."""
    t0 = time.perf_counter()
    batches = Batches(spec.batch_size, "extract")
    groups = _groups(lm, dataset, spec, shard_size, batches)
    todo = range(len(groups))
    with closing(_iter_shards(lm, dataset, spec, groups, todo, 0, progress, batches)) as it:
        shards = [arrays for _, arrays in it]
    batches.report(progress)
    weights = _weights(lm, spec) if "heads" in spec.sites else None
    entries, shapes = [], {}
    for k, arrays in enumerate(shards):
        for key in sorted(arrays):
            _add_shape(shapes, key, list(arrays[key].shape))
        entries.append({"file": shard_name(k), "n_rows": len(arrays["rows"]), "sha256": None})
    manifest = _manifest(lm, dataset, spec, plan, entries, shapes, batches)
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    return ActivationStore.from_shards(shards, manifest, weights=weights, plan=plan)


def _add_shape(shapes: dict[str, list[int]], key: str, shape: Sequence[int]) -> None:
    shapes.setdefault(key, [0, *shape[1:]])
    shapes[key][0] += shape[0]


def _groups(
    lm: LoadedModel, dataset: Dataset, spec: CaptureSpec, shard_size: int, batches: Batches
) -> list[list[np.ndarray]]:
    """The batches of each shard: rows sorted by token length, cut into shards of whole
    batches of the size asked for (``"auto"``: ``shard_size`` rows), so that which rows a
    shard holds does not depend on the memory free today (a resumed run finds the same
    shards); each shard cut into batches of the size to run now."""
    chat = chat_format(lm, spec.chat, spec.system)
    lengths = token_lengths(lm, dataset.texts, chat)
    if spec.batch_size == "auto":
        per_shard = shard_size
    else:
        per_shard = max(1, shard_size // int(spec.batch_size)) * int(spec.batch_size)
    size = batch_rows(lm, spec, lengths, batches)
    shards = plan_batches(lengths, per_shard)
    return [[s[i : i + size] for i in range(0, len(s), size)] for s in shards]


def _iter_shards(
    lm: LoadedModel,
    dataset: Dataset,
    spec: CaptureSpec,
    groups: list[list[np.ndarray]],
    todo: Sequence[int],
    done_rows: int,
    progress: bool,
    batches: Batches,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(k, arrays)`` of each shard in ``todo``; hooks are removed when this ends. A
    batch that runs out of memory is halved (``batches``); its shard is still whole."""
    bar = tqdm(
        total=len(dataset),
        initial=done_rows,
        unit="prompt",
        desc=f"capture {lm.name}",
        disable=not progress,
        file=sys.stderr,
    )
    spans = [e.emotion_span for e in dataset.examples]
    texts = dataset.texts
    recorder = Recorder(lm.arch, spec)
    chat = chat_format(lm, spec.chat, spec.system)

    def one(rows: np.ndarray) -> CapturedBatch:
        return run_batch(
            lm, recorder, [texts[i] for i in rows], [spans[i] for i in rows], rows, chat
        )

    try:
        if todo:
            with hooked(recorder.hooks()):
                for k in todo:
                    shard = _ShardBuffer(sum(len(b) for b in groups[k]))
                    for _, part in batches.run("capture", groups[k], one):
                        shard.add(part)
                        bar.update(len(part.rows))
                    yield k, shard.arrays()
    finally:
        bar.close()


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


def _weights(lm: LoadedModel, spec: CaptureSpec) -> dict[str, np.ndarray]:
    tensors = {}
    for layer in spec.resolved_layers(lm.arch)["heads"]:
        w, b = lm.arch.o_proj_weight(layer)
        tensors[f"o_proj.{layer}.weight"] = w.float().cpu().numpy().copy()
        if b is not None:
            tensors[f"o_proj.{layer}.bias"] = b.float().cpu().numpy().copy()
    return tensors


def _manifest(
    lm: LoadedModel,
    ds: Dataset,
    spec: CaptureSpec,
    plan: dict[str, Any],
    shards: list[dict[str, Any]],
    shapes: dict[str, list[int]],
    batches: Batches,
) -> dict[str, Any]:
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
            "batch_size_used": batches.used.get("capture"),
            "padding_side": spec.padding_side or lm.tokenizer.padding_side,
            "max_length": spec.max_length,
            "position_ids": "from attention mask (cumsum - 1)",
            "emotion_word_fallback": "last",
            "mean_excludes": "padding, special tokens, first content token"
            if spec.chat is None
            else "padding, special tokens, the chat template's tokens",
            "chat": plan.get("chat"),
        },
        "n_rows": len(ds),
        "ids": ds.ids,
        "labels": ds.labels,
        "tensors": shapes,
        "shards": shards,
    }


__all__ = ["capture_positions", "extract"]

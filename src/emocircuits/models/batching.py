"""Batch sizes: a number, or ``"auto"`` (sized from free memory), halved on out-of-memory.

Every batched loop of the library takes ``batch_size=`` a whole number or ``"auto"`` and
runs through one :class:`Batches` object:

- :meth:`Batches.size` is the size to plan batches with now: the number asked for, or for
  ``"auto"`` the free memory of the model's device (CUDA: ``torch.cuda.mem_get_info``; CPU:
  available RAM) over a per-row estimate (:func:`row_bytes`: width, depth, sequence length,
  key-value cache, logits, what is kept), with a safety factor and a cap
  (:data:`AUTO_CAP`);
- :meth:`Batches.run` runs planned batches; a batch that runs out of memory
  (:func:`is_out_of_memory`) is split in halves and run again, later batches of that loop
  use the smaller size, and finished batches are kept (none is lost or run twice). A batch
  of one row that still does not fit is a :class:`~emocircuits.errors.MemoryLimitError`
  (one line: the CLI exits 2);
- :meth:`Batches.report` prints, once, the size settled on (only for ``"auto"`` or after a
  back-off) and :attr:`Batches.provenance` is what the result's provenance records.

One ``Batches`` may serve several loops of one run (generation, perplexity, KL): each loop
has its own name (``kind``), its own estimate and its own back-off.

>>> b = Batches(4, "demo")
>>> [rows.tolist() for rows, _ in b.run("rows", [np.arange(4), np.arange(4, 6)], len)]
[[0, 1, 2, 3], [4, 5]]
>>> b.provenance
{'batch_size': 4, 'batch_size_used': {'rows': 4}}
"""

from __future__ import annotations

import gc
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import torch

from emocircuits.errors import EmocircuitsError, MemoryLimitError

if TYPE_CHECKING:
    from emocircuits.models.loading import LoadedModel

AUTO = "auto"
BatchSize = int | Literal["auto"]
"""A batch size as the library's functions take it: a whole number >= 1, or ``"auto"``."""

#: the largest batch ``"auto"`` picks, per device type: past these a forward pass is
#: compute-bound (larger batches only add padding), and the estimate's error grows with size
AUTO_CAP = {"cuda": 256, "mps": 64, "cpu": 32}
#: the share of the free memory ``"auto"`` plans to use, per device type (the rest: the
#: allocator's fragmentation, other processes, this process's own allocations meanwhile)
FREE_SHARE = {"cuda": 0.8, "mps": 0.5, "cpu": 0.5}
#: the per-row estimate (:func:`row_bytes`) is multiplied by this: temporaries it leaves
#: out (casts, softmax copies, allocator rounding)
SAFETY = 2.0

T = TypeVar("T")

_OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError}
)
_OOM_WORDS = ("out of memory", "can't allocate memory", "could not allocate", "not enough memory")


def check_batch_size(value: Any) -> int | str:
    """``value`` as a batch size (a whole number >= 1, or ``"auto"``), or an
    :class:`~emocircuits.errors.EmocircuitsError` naming it.

    >>> check_batch_size("auto"), check_batch_size(8), check_batch_size("16")
    ('auto', 8, 16)
    >>> check_batch_size(0)
    Traceback (most recent call last):
    ...
    emocircuits.errors.EmocircuitsError: batch size must be a whole number >= 1 or 'auto', not 0
    """
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        n = int(value) if isinstance(value, str) else value
    except ValueError:
        n = None
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise EmocircuitsError(
            f"batch size must be a whole number >= 1 or 'auto', not {value!r}"
        ) from None
    return int(n)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says an allocation failed: ``torch.OutOfMemoryError`` (CUDA), a
    ``MemoryError``, or a ``RuntimeError`` whose message says so (CPU, MPS).

    >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: 8 GB"))
    True
    >>> is_out_of_memory(RuntimeError("shape mismatch"))
    False
    """
    if isinstance(e, _OOM_TYPES):
        return True
    return isinstance(e, RuntimeError) and any(w in str(e).lower() for w in _OOM_WORDS)


def _model_devices(lm: LoadedModel) -> set[torch.device]:
    """The devices the model's weights are on (meta: offloaded by accelerate, left out)."""
    return {p.device for p in lm.model.parameters() if p.device.type != "meta"}


def free_memory(lm: LoadedModel) -> tuple[int, str]:
    """``(bytes, device)``: the memory a batch of ``lm`` can use, and where. On CUDA the
    least free on any GPU the model is on (with a device map every GPU holds a part of the
    activations), counting what PyTorch's allocator holds unused; MPS: its recommended
    limit less what is allocated; CPU: the available RAM.

    >>> free_memory(lm)  # doctest: +SKIP
    (20937510912, 'cpu')
    """
    devices = _model_devices(lm)
    gpus = sorted((d for d in devices if d.type == "cuda"), key=str)
    if gpus:
        best: tuple[int, str] | None = None
        for d in gpus:
            free, _ = torch.cuda.mem_get_info(d)
            free += torch.cuda.memory_reserved(d) - torch.cuda.memory_allocated(d)
            if best is None or free < best[0]:
                best = (int(free), str(d))
        assert best is not None
        return best
    if any(d.type == "mps" for d in devices):
        mps = torch.mps
        limit = int(mps.recommended_max_memory()) if hasattr(mps, "recommended_max_memory") else 0
        return max(0, limit - int(mps.driver_allocated_memory())), "mps"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "cpu"
    except ImportError:  # pragma: no cover - psutil is a dependency; POSIX fallback
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "cpu"


def row_bytes(
    lm: LoadedModel,
    tokens: int,
    *,
    cache_tokens: int = 0,
    logits: int = 1,
    kept: int = 0,
) -> int:
    """Estimated peak memory of one row of a forward pass over ``tokens`` tokens (before
    :data:`SAFETY`): one block's live activations (residual, normed input, attention's
    projections and output, the MLP's hidden layer) in the model's dtype; the attention
    weights where the model computes them in full (``eager``); a key-value cache of
    ``cache_tokens`` tokens for every layer (generation); full-vocabulary logits at
    ``logits`` positions (float32, with their softmax); and ``kept`` float32 ``[tokens,
    width]`` tensors held until the batch ends (captured or traced layers).

    >>> row_bytes(lm, 64)  # doctest: +SKIP
    4718592
    """
    cfg = lm.model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    arch = lm.arch
    w, n_layers, heads = arch.width, arch.n_layers, arch.n_heads
    inner = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * w)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    dtype = lm.dtype
    item = dtype.itemsize if dtype.is_floating_point else 2  # quantized: bf16/fp16 compute
    block = tokens * (6 * w + 3 * inner) * item
    if getattr(cfg, "_attn_implementation", "eager") in (None, "eager"):
        block += 2 * heads * tokens * tokens * 4
    cache = 2 * n_layers * kv_heads * arch.head_dim * cache_tokens * item
    head = 3 * logits * vocab * 4
    return int(block + cache + head + kept * tokens * w * 4)


def auto_batch_size(lm: LoadedModel, per_row: int, n_rows: int | None = None) -> int:
    """The batch size ``"auto"`` picks: the usable free memory (:func:`free_memory`,
    :data:`FREE_SHARE`) over ``per_row`` bytes times :data:`SAFETY`, at least 1, at most
    :data:`AUTO_CAP` for the device and ``n_rows``.

    >>> auto_batch_size(lm, row_bytes(lm, 40), n_rows=200)  # doctest: +SKIP
    32
    """
    free, device = free_memory(lm)
    kind = device.split(":")[0]
    fit = int(free * FREE_SHARE.get(kind, 0.5) // max(1.0, per_row * SAFETY))
    cap = AUTO_CAP.get(kind, AUTO_CAP["cpu"])
    if n_rows is not None:
        cap = min(cap, max(1, n_rows))
    return max(1, min(fit, cap))


def _release() -> None:
    """Hand what a failed batch left back to the allocator before the retry."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Batches:
    """The batch size of one run (``batch_size`` as the caller took it: a number or
    ``"auto"``), the loops that use it, and the sizes they settled on. ``what`` names the
    run in messages (``"extract"``, ``"steer"``). A ``Batches`` may be passed on as a
    ``batch_size`` (:meth:`of`): the callee shares its back-off and its record.

    >>> b = Batches("auto", "extract")
    >>> size = b.size("capture", lm, row_bytes(lm, 48), n_rows=200)  # doctest: +SKIP
    """

    def __init__(self, batch_size: BatchSize, what: str) -> None:
        self.requested = check_batch_size(batch_size)
        self.what = what
        self.used: dict[str, int] = {}  # kind -> the size its batches ran at, at the end
        self.limit: dict[str, int] = {}  # kind -> the largest size left after a back-off
        self.free: tuple[int, str] | None = None
        self._reported = False

    @classmethod
    def of(cls, batch_size: BatchSize | Batches, what: str) -> Batches:
        """``batch_size`` itself if it is a ``Batches``, else a new one."""
        return batch_size if isinstance(batch_size, Batches) else cls(batch_size, what)

    @property
    def auto(self) -> bool:
        return self.requested == AUTO

    @property
    def backed_off(self) -> bool:
        return bool(self.limit)

    def size(
        self,
        kind: str,
        lm: LoadedModel | None = None,
        per_row: int = 0,
        n_rows: int | None = None,
        *,
        per: int = 1,
    ) -> int:
        """The size to plan ``kind``'s batches with: the number asked for, or for
        ``"auto"`` :func:`auto_batch_size` of ``per_row`` bytes (``lm`` needed); never more
        than a back-off of ``kind`` left. ``per``: rows per item where ``kind``'s batches
        count items of several rows (the size asked for counts rows)."""
        if self.requested == AUTO:
            if lm is None:
                raise TypeError("batch size 'auto' needs the model to size it")
            self.free = free_memory(lm)
            n = auto_batch_size(lm, per_row, n_rows)
        else:
            n = max(1, int(self.requested) // per)
        return max(1, min(n, self.limit.get(kind, n)))

    def fixed(
        self,
        kind: str,
        lm: LoadedModel,
        texts: Sequence[str],
        *,
        kept: int = 0,
        extra_tokens: int = 0,
    ) -> int:
        """The one size of a loop without a back-off (its batches are not independent):
        :meth:`size` for ``texts`` (the longest, plus ``extra_tokens``; ``kept`` as in
        :func:`row_bytes`), recorded as used.

        >>> Batches("auto", "heads").fixed("rows", lm, prompts, kept=31)  # doctest: +SKIP
        32
        """
        size = self.requested
        if size == AUTO:
            longest = max((len(x) for x in lm.tokenizer(list(texts))["input_ids"]), default=1)
            per_row = row_bytes(lm, longest + extra_tokens, logits=0, kept=kept)
            size = self.size(kind, lm, per_row, len(texts))
        self.used[kind] = int(size)
        return int(size)

    def run(
        self,
        kind: str,
        batches: Iterable[np.ndarray],
        fn: Callable[[np.ndarray], T],
        *,
        split: Callable[[np.ndarray, int], list[np.ndarray]] | None = None,
    ) -> Iterator[tuple[np.ndarray, T]]:
        """``(rows, fn(rows))`` for the rows of every batch, in order. A batch that runs
        out of memory is split into pieces of half its size (``split(rows, size)``;
        default: consecutive pieces) and those run instead; every later batch larger than
        that is split too. ``fn`` must leave nothing behind when it fails (a batch's
        results are only its return value, or writes it repeats in full)."""
        split = split or _consecutive
        todo = deque(np.asarray(b) for b in batches)
        while todo:
            rows = todo.popleft()
            limit = self.limit.get(kind)
            if limit is not None and len(rows) > limit:
                todo.extendleft(reversed(split(rows, limit)))
                continue
            try:
                out = fn(rows)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            else:
                self.used[kind] = max(len(rows), self.used.get(kind, 0))
                if limit is not None:
                    self.used[kind] = min(self.used[kind], limit)
                yield rows, out
                continue
            # out of memory: the traceback (and the tensors its frames hold) is gone here
            if len(rows) == 1:
                raise MemoryLimitError(
                    f"{self.what}: out of memory even at batch size 1 ({first[:160]}); "
                    "free memory, use shorter texts, or place the model differently "
                    "(--dtype bfloat16, --device-map auto)"
                )
            self.limit[kind] = max(1, len(rows) // 2)
            _release()
            todo.appendleft(rows)

    @property
    def provenance(self) -> dict[str, Any]:
        """What a result records: the size asked for and, per loop, the size it ran at.

        >>> Batches(8, "steer").provenance
        {'batch_size': 8, 'batch_size_used': {}}
        """
        return {"batch_size": self.requested, "batch_size_used": dict(self.used)}

    def describe(self) -> str:
        """The sizes settled on, in words (for the one line :meth:`report` prints)."""
        sizes = ", ".join(f"{k} {v}" for k, v in self.used.items()) or "none run"
        how = "auto" if self.auto else f"{self.requested}"
        line = f"{self.what}: batch size {how} -> {sizes}"
        if self.backed_off:
            line += " (halved after running out of memory)"
        if self.auto and self.free is not None:
            line += f"; {self.free[0] / 2**30:.1f} GiB free on {self.free[1]}"
        return line

    def report(self, enabled: bool = True) -> None:
        """Print :meth:`describe` once to stderr, where there is something to say: the
        size was ``"auto"`` or a batch ran out of memory."""
        if enabled and not self._reported and (self.auto or self.backed_off):
            print(f"emocircuits: {self.describe()}", file=sys.stderr)
            self._reported = True


def _consecutive(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


__all__ = [
    "AUTO",
    "AUTO_CAP",
    "BatchSize",
    "Batches",
    "auto_batch_size",
    "check_batch_size",
    "free_memory",
    "is_out_of_memory",
    "row_bytes",
]

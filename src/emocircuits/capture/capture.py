"""One forward pass per batch captures every requested site, layer and position rule.

Only the selected positions are kept inside the hooks (never full ``[batch, seq, width]``
tensors), the LM head is skipped (the base model is called), and the pass stops after the
last block that anything needs.

>>> spec = CaptureSpec(sites=("resid", "mlp"), positions=("last", "mean"))
>>> for batch in iter_capture(lm, texts, spec):  # doctest: +SKIP
...     batch.arrays["resid/last"].shape          # [rows, n_layers + 1, width]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from emocircuits.capture.chat import ChatFormat, chat_format, check_chat
from emocircuits.capture.hooks import Hook, hooked
from emocircuits.capture.positions import Selection, TokenBatch, get_rule
from emocircuits.capture.store import is_token_key
from emocircuits.errors import CaptureError
from emocircuits.models.architectures import SITES, Architecture
from emocircuits.models.batching import Batches, row_bytes
from emocircuits.models.loading import LoadedModel

DEFAULT_SITES = ("resid", "attn", "mlp")
DEFAULT_POSITIONS = ("last", "mean", "emotion_word")


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture. ``layers`` are per-site indices (None = all); see
    :meth:`Architecture.normalize_layer` for the numbering."""

    sites: tuple[str, ...] = DEFAULT_SITES
    positions: tuple[str, ...] = DEFAULT_POSITIONS
    layers: tuple[int, ...] | None = None
    batch_size: int | str = 16  # or "auto": sized from free memory (:func:`batch_rows`)
    padding_side: str | None = None  # None: the tokenizer's own
    max_length: int | None = None
    chat: str | None = None  # None (raw text), "user" or "assistant": capture.chat
    system: str | None = None  # a system prompt (with chat)

    def resolved_layers(self, arch: Architecture) -> dict[str, list[int]]:
        """Sorted, de-duplicated layer indices per site (negative numbers normalised)."""
        out = {}
        for site in self.sites:
            if site not in SITES:
                raise CaptureError(f"unknown site {site!r}; choose from {', '.join(SITES)}")
            n = arch.n_site_layers(site)
            if self.layers is None:
                out[site] = list(range(n))
            else:
                out[site] = sorted({arch.normalize_layer(i, site) for i in self.layers})
        return out

    def check(self, arch: Architecture) -> None:
        if not self.sites:
            raise CaptureError("no sites requested")
        if not self.positions:
            raise CaptureError("no position rules requested")
        for p in self.positions:
            get_rule(p)
        if self.batch_size != "auto" and (
            not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise CaptureError(f"batch size must be >= 1 or 'auto', got {self.batch_size!r}")
        if self.padding_side not in (None, "left", "right"):
            raise CaptureError(f"padding side must be 'left' or 'right', not {self.padding_side}")
        check_chat(self.chat, self.system)
        self.resolved_layers(arch)


@dataclass
class CapturedBatch:
    """Captured arrays for some rows. ``arrays[f"{site}/{position}"]`` is
    ``[rows, layers, width]`` (``heads``: ``[rows, layers, n_heads, head_dim]``); for the
    ``all`` rule rows are tokens and ``arrays["all/row"]``, ``["all/pos"]`` say whose."""

    rows: np.ndarray  # dataset row indices
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def on_device(sel: Selection, device: torch.device) -> Selection:
    """``sel`` with its tensors on ``device`` (itself when they are there already)."""
    ts = [t for t in (sel.index, sel.weights, sel.mask) if t is not None]
    if all(t.device == device for t in ts):
        return sel
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return Selection(move(sel.index), move(sel.weights), move(sel.mask), sel.fallback, sel.span)


class _StopForward(Exception):
    """Raised by a hook after the last block anything needs: the rest is not computed."""


class Recorder:
    """Hook functions that read the requested positions into per-batch buffers."""

    def __init__(self, arch: Architecture, spec: CaptureSpec) -> None:
        self.arch, self.spec = arch, spec
        self.layers = spec.resolved_layers(arch)
        self.selections: dict[str, Selection] = {}
        self.placed: dict[tuple[str, torch.device], Selection] = {}  # selections per device
        self.buffers: dict[str, list[torch.Tensor | None]] = {}

    def _record(self, site: str, slot: int, h: torch.Tensor) -> None:
        for pos, sel in self.selections.items():
            # blocks may live on different devices: read where h is, keep on the CPU
            key = (pos, h.device)
            if key not in self.placed:
                self.placed[key] = on_device(sel, h.device)
            self.buffers[f"{site}/{pos}"][slot] = self.placed[key].reduce(h).float().cpu()

    def _reader(self, site: str, slot: int):
        def fn(h):
            if site == "heads":  # the input of the output projection, split per head
                h = h.reshape(*h.shape[:-1], self.arch.n_heads, self.arch.head_dim)
            self._record(site, slot, h)

        return fn

    def last_block(self) -> int:
        need = [self.arch.place(s, ls[-1]).block for s, ls in self.layers.items() if ls]
        return max(0, *need)

    def hooks(self) -> list[Hook]:
        arch, hooks = self.arch, []
        for site, layers in self.layers.items():
            for slot, layer in enumerate(layers):
                hooks.append(arch.place(site, layer).read(self._reader(site, slot)))
        stop = self.last_block()
        if stop < arch.n_layers - 1:

            def halt(module, args, output):
                raise _StopForward

            hooks.append((arch.blocks[stop], "forward", halt))
        return hooks

    def begin(self, batch: TokenBatch) -> None:
        self.selections = {p: get_rule(p)(batch) for p in self.spec.positions}
        self.placed = {}
        self.buffers = {
            f"{s}/{p}": [None] * len(ls) for s, ls in self.layers.items() for p in self.selections
        }

    def collect(self) -> dict[str, np.ndarray]:
        out = {}
        for key, slots in self.buffers.items():
            if any(t is None for t in slots):
                raise RuntimeError(f"capture hook for {key} did not run")  # a bug, not input
            out[key] = torch.stack(slots, dim=1).numpy()  # type: ignore[arg-type]
        return out


def tokenize(
    lm: LoadedModel,
    texts: Sequence[str],
    spans: Sequence[tuple[int, int] | None],
    *,
    padding_side: str | None = None,
    max_length: int | None = None,
    chat: ChatFormat | None = None,
) -> tuple[TokenBatch, dict[str, torch.Tensor]]:
    """Tokenise a batch with offsets; return the rule inputs and the model inputs. With
    ``chat`` the texts go through the chat template (spans shifted into it) and the batch
    marks the texts' own tokens (``TokenBatch.text``)."""
    tok = lm.tokenizer
    side = tok.padding_side
    if chat is not None:
        shift = len(chat.prefix)
        spans = [None if s is None else (s[0] + shift, s[1] + shift) for s in spans]
        bounds = torch.tensor([chat.span(t) for t in texts]).reshape(len(texts), 1, 2)
        texts = [chat.wrap(t) for t in texts]
    try:
        if padding_side:
            tok.padding_side = padding_side
        enc = tok(
            list(texts),
            add_special_tokens=chat is None,  # a template writes its own BOS
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
    except NotImplementedError:
        raise CaptureError(
            "this tokenizer gives no character offsets (a 'fast' tokenizer is needed)"
        ) from None
    finally:
        tok.padding_side = side
    mask = enc["attention_mask"]
    batch = TokenBatch(
        input_ids=enc["input_ids"],
        attention_mask=mask,
        special=enc["special_tokens_mask"].bool(),
        offsets=enc["offset_mapping"],
        spans=list(spans),
    )
    if chat is not None:  # tokens that overlap the text's characters
        s, e = enc["offset_mapping"].unbind(-1)
        batch.text = mask.bool() & (e > s) & (s < bounds[..., 1]) & (e > bounds[..., 0])
    # Position ids from the mask, so left padding gives the same positions as right padding.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": position_ids}
    return batch, inputs


def token_lengths(
    lm: LoadedModel, texts: Sequence[str], chat: ChatFormat | None = None
) -> np.ndarray:
    if chat is not None:
        texts = [chat.wrap(t) for t in texts]
    enc = lm.tokenizer(list(texts), padding=False, add_special_tokens=chat is None)
    return np.array([len(ids) for ids in enc["input_ids"]])


def plan_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices per batch, sorted by token length (less padding); deterministic."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batch_rows(
    lm: LoadedModel, spec: CaptureSpec, lengths: np.ndarray, batches: Batches | None = None
) -> int:
    """The batch size of ``spec`` in rows: its number, or for ``"auto"`` what the free
    memory allows for the longest text (:func:`~emocircuits.models.batching.row_bytes`; the
    ``all`` rule keeps every token of every captured layer until the batch ends); never
    more than a back-off of ``batches`` left.

    >>> batch_rows(lm, CaptureSpec(batch_size=8), np.array([5, 9]))  # doctest: +SKIP
    8
    """
    batches = batches or Batches(spec.batch_size, "capture")
    if spec.batch_size != "auto":
        return batches.size("capture")
    tokens = int(max(lengths, default=1))
    tokens = min(tokens, spec.max_length) if spec.max_length else tokens
    n_kept = sum(len(v) for v in spec.resolved_layers(lm.arch).values())
    kept = 2 * n_kept if "all" in spec.positions else 0
    per_row = row_bytes(lm, tokens, logits=0, kept=kept)
    return batches.size("capture", lm, per_row, len(lengths))


def run_batch(
    lm: LoadedModel,
    recorder: Recorder,
    texts: Sequence[str],
    spans: Sequence[tuple[int, int] | None],
    rows: np.ndarray,
    chat: ChatFormat | None = None,
) -> CapturedBatch:
    """Tokenise, run the base model once (hooks attached by the caller), collect."""
    spec = recorder.spec
    batch, inputs = tokenize(
        lm, texts, spans, padding_side=spec.padding_side, max_length=spec.max_length, chat=chat
    )
    recorder.begin(batch)
    device = lm.input_device
    try:
        with torch.inference_mode():
            lm.arch.base_model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False)
    except _StopForward:
        pass
    arrays = recorder.collect()
    # Token positions are stored relative to the unpadded sequence (independent of padding).
    m = batch.attention_mask.bool()
    pad = m.long().argmax(1)  # number of left-padding tokens per row
    if "all" in spec.positions:
        arrays["all/row"] = np.repeat(rows, m.sum(1).numpy())
        arrays["all/pos"] = (torch.nonzero(m)[:, 1] - pad.repeat_interleave(m.sum(1))).numpy()
        arrays["all/token"] = batch.input_ids[m].numpy()
    arrays["meta/n_tokens"] = batch.content.sum(1).numpy()
    for pos, sel in recorder.selections.items():
        if sel.span is not None:
            span = torch.where(sel.span >= 0, sel.span - pad.unsqueeze(1), -1)
            arrays[f"meta/span/{pos}"] = span.numpy()
    return CapturedBatch(rows=rows, arrays=arrays)


def iter_capture(
    lm: LoadedModel,
    texts: Sequence[str],
    spec: CaptureSpec = CaptureSpec(),
    *,
    spans: Sequence[tuple[int, int] | None] | None = None,
    batches: list[np.ndarray] | None = None,
) -> Iterator[CapturedBatch]:
    """Yield captured batches (length-sorted); hooks are removed when the iterator ends or
    is closed, also after an exception."""
    spec.check(lm.arch)
    chat = chat_format(lm, spec.chat, spec.system)
    spans = spans if spans is not None else [None] * len(texts)
    if batches is None:
        lengths = token_lengths(lm, texts, chat)
        batches = plan_batches(lengths, batch_rows(lm, spec, lengths))
    recorder = Recorder(lm.arch, spec)
    with hooked(recorder.hooks()):
        for rows in batches:
            yield run_batch(lm, recorder, [texts[i] for i in rows], [spans[i] for i in rows],
                            rows, chat)  # fmt: skip


def capture(
    lm: LoadedModel,
    texts: Sequence[str],
    spec: CaptureSpec = CaptureSpec(),
    *,
    spans: Sequence[tuple[int, int] | None] | None = None,
) -> dict[str, np.ndarray]:
    """Capture in memory; arrays in input order (for small runs and tests).

    >>> acts = capture(lm, ["Thank you!", "The bus is late."])  # doctest: +SKIP
    >>> acts["resid/last"].shape  # doctest: +SKIP
    (2, 31, 576)
    """
    parts = list(iter_capture(lm, texts, spec, spans=spans))
    return merge_batches(parts, len(texts))


def merge_batches(parts: list[CapturedBatch], n_rows: int) -> dict[str, np.ndarray]:
    """Concatenate batches and restore input order (``all`` rows sorted by row, position)."""
    if not parts:
        return {}
    rows = np.concatenate([p.rows for p in parts])
    inv = np.empty(n_rows, dtype=np.int64)
    inv[rows] = np.arange(len(rows))
    out: dict[str, np.ndarray] = {}
    token_order = None
    if "all/row" in parts[0].arrays:
        r = np.concatenate([p.arrays["all/row"] for p in parts])
        q = np.concatenate([p.arrays["all/pos"] for p in parts])
        token_order = np.lexsort((q, r))
    for key in parts[0].arrays:
        cat = np.concatenate([p.arrays[key] for p in parts])
        if is_token_key(key):
            out[key] = cat[token_order]
        else:
            out[key] = cat[inv]
    return out

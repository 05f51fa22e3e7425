"""Token-position rules: which token(s) of each prompt an activation is read from.

A rule turns a tokenised batch into a :class:`Selection`: one index per row (``last``,
``emotion_word_first``, ``emotion_word_last``), a weight per token (``mean``,
``emotion_word_mean``), or every token (``all``). All rules are mask-aware and work with
left and right padding alike. Add a rule by writing a function ``(TokenBatch) ->
Selection`` and registering it in ``RULES``.

With a chat template (``chat="user"`` / ``"assistant"``, :mod:`~emocircuits.capture.chat`)
the rules read **the text's own tokens**, never the template's scaffolding (role headers,
system prompt, end-of-turn): ``last`` is the text's last token, ``mean`` averages the text's
tokens, ``emotion_word`` finds the word inside the text. So a rule means the same in every
chat mode, and directions from raw and templated captures can be compared. ``end`` is the
last token of the whole input: with ``chat="user"`` the end of the assistant header, where
the model is about to answer; on raw text (and with ``chat="assistant"``, whose reply is
left open) it is the same token as ``last``. ``all`` keeps every token, template included.

>>> sorted(RULES)[:3]
['all', 'emotion_word', 'emotion_word_first']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from emocircuits.errors import CaptureError


@dataclass
class TokenBatch:
    """A padded batch with what the rules need. Shapes: ``[b, s]`` (offsets ``[b, s, 2]``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    special: torch.Tensor  # bool: special tokens (BOS, pad, ...)
    offsets: torch.Tensor  # character offsets of each token in its text
    spans: list[tuple[int, int] | None]  # emotion-word character span per row
    text: torch.Tensor | None = None  # bool: the text's own tokens (chat template); None: raw

    @property
    def content(self) -> torch.Tensor:
        """Real text tokens: attended to and not special (with a chat template: and the
        text's own, not the template's)."""
        out = self.attention_mask.bool() & ~self.special
        return out if self.text is None else out & self.text.bool()


@dataclass
class Selection:
    """Where to read a batch: ``index [b]`` or ``weights [b, s]`` or ``mask [b, s]`` (all).

    ``fallback [b]`` marks rows that used the fallback rule (no emotion word);
    ``span [b, 2]`` is the first and last selected token position (-1 if none)."""

    index: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    fallback: torch.Tensor | None = None
    span: torch.Tensor | None = None

    def reduce(self, h: torch.Tensor) -> torch.Tensor:
        """Read ``h [b, s, ...]`` at the selection: ``[b, ...]`` (or ``[n_tokens, ...]``)."""
        if self.index is not None:
            return h[torch.arange(h.shape[0], device=h.device), self.index]
        if self.weights is not None:
            flat = h.reshape(h.shape[0], h.shape[1], -1)
            w = self.weights.to(flat.dtype)
            out = torch.bmm(w.unsqueeze(1), flat).squeeze(1)
            return out.reshape(h.shape[0], *h.shape[2:])
        assert self.mask is not None
        return h[self.mask]


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the last True in each row (any padding side)."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, pos, -1).max(dim=1).values


def _first_index(mask: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, pos, mask.shape[1]).min(dim=1).values


def last(batch: TokenBatch) -> Selection:
    """The last non-padding token (whatever the tokenizer's padding side); with a chat
    template, the text's last token."""
    mask = batch.attention_mask.bool()
    if batch.text is not None:
        mask = mask & batch.text.bool()
        _require_tokens(mask)
    idx = _last_index(mask)
    return Selection(index=idx, span=torch.stack([idx, idx], 1))


def end(batch: TokenBatch) -> Selection:
    """The last token of the whole input, chat template included (on raw text: ``last``)."""
    idx = _last_index(batch.attention_mask.bool())
    return Selection(index=idx, span=torch.stack([idx, idx], 1))


def _require_tokens(mask: torch.Tensor) -> None:
    if (mask.sum(1) == 0).any():
        bad = int((mask.sum(1) == 0).nonzero()[0, 0])
        raise CaptureError(f"row {bad} of a batch has no content tokens (empty text?)")


def mean(batch: TokenBatch) -> Selection:
    """Mean over content tokens, excluding special tokens and, on raw text, the first
    (attention-sink) token; a one-token text keeps its only token. With a chat template the
    text does not start the sequence (its first token is no sink): all its tokens count."""
    content = batch.content.clone()
    rows = torch.arange(content.shape[0])
    first = _first_index(content)
    many = (content.sum(1) > 1) & (batch.text is None)
    content[rows[many], first[many]] = False
    _require_tokens(content)
    w = content.float()
    return Selection(
        weights=w / w.sum(1, keepdim=True),
        span=torch.stack([_first_index(content), _last_index(content)], 1),
    )


def emotion_word(batch: TokenBatch, how: str = "last", fallback: str = "last") -> Selection:
    """Tokens that overlap the emotion word's character span (via the offset mapping):
    ``first``, ``last`` or ``mean`` of them. Rows without an emotion word (neutral) use the
    ``fallback`` rule; they are flagged in ``Selection.fallback``."""
    starts, ends = batch.offsets[..., 0], batch.offsets[..., 1]
    b = len(batch.spans)
    cs = torch.tensor([s[0] if s else -1 for s in batch.spans]).unsqueeze(1)
    ce = torch.tensor([s[1] if s else -1 for s in batch.spans]).unsqueeze(1)
    hit = batch.content & (ends > starts) & (starts < ce) & (ends > cs)
    has = hit.any(1)
    fb = RULES[fallback](batch) if not bool(has.all()) else None
    if fb is not None and fb.index is None and how != "mean":
        raise CaptureError(f"fallback rule {fallback!r} must select one token for 'how={how}'")
    first, lastpos = _first_index(hit), _last_index(hit)
    span = torch.where(has.unsqueeze(1), torch.stack([first, lastpos], 1), -1)
    if how in ("first", "last"):
        idx = first if how == "first" else lastpos
        if fb is not None:
            assert fb.index is not None
            idx = torch.where(has, idx, fb.index)
            span = torch.where(has.unsqueeze(1), span, fb.span)
        return Selection(index=idx, fallback=~has, span=span)
    w = hit.float()
    w = w / w.sum(1, keepdim=True).clamp(min=1)
    if fb is not None:
        fw = fb.weights
        if fw is None:
            assert fb.index is not None
            fw = torch.zeros_like(w)
            fw[torch.arange(b), fb.index] = 1.0
        w = torch.where(has.unsqueeze(1), w, fw)
        span = torch.where(has.unsqueeze(1), span, fb.span)
    return Selection(weights=w, fallback=~has, span=span)


def all_tokens(batch: TokenBatch) -> Selection:
    """Every attended token (specials included); for small runs. Rows become tokens."""
    return Selection(mask=batch.attention_mask.bool())


RULES: dict[str, Callable[[TokenBatch], Selection]] = {
    "last": last,
    "end": end,
    "mean": mean,
    "emotion_word_first": partial(emotion_word, how="first"),
    "emotion_word_last": partial(emotion_word, how="last"),
    "emotion_word_mean": partial(emotion_word, how="mean"),
    "emotion_word": partial(emotion_word, how="last"),
    "all": all_tokens,
}
"""Rule names for the CLI and API. ``emotion_word`` is ``emotion_word_last``: in a causal
model the word's last sub-token is the first position that has read the whole word."""


def get_rule(name: str) -> Callable[[TokenBatch], Selection]:
    try:
        return RULES[name]
    except KeyError:
        raise CaptureError(
            f"unknown position rule {name!r}; choose from {', '.join(RULES)}"
        ) from None

"""Steering: add ``alpha * s_l * v`` to the residual stream at layer ``l`` while the model
runs (``generate`` and its KV cache included), and take it out again on exit.

- ``v`` is the unit emotion direction; ``s_l`` is the **typical residual norm** at layer
  ``l``: the median L2 norm of the residual stream over content tokens (the first token of
  each text, the attention sink, excluded) of a set of texts (:func:`typical_norms`). So
  ``alpha`` is a fraction of the usual size of the stream there: the same alpha means the
  same relative push at every layer and in every model.
- Layers use the activation-folder numbering: layer ``l >= 1`` is the output of block
  ``l - 1`` (what ``resid`` layer ``l`` captures), layer 0 the embedding output.
- ``where="all"`` adds at every position, prompt and generated tokens alike;
  ``where="new"`` only at generated tokens (forward passes that continue a KV cache).
- ``steer_tokens=N`` holds the push only while the first ``N`` new tokens are written: the
  prompt's positions (with ``where="all"``) and the inputs of the first ``N - 1`` decoding
  steps are pushed, later positions are not (they still attend to the pushed ones through
  the KV cache). A short push starts the text in the direction's tone and the model goes
  on in its own words, at a lower fluency cost than pushing every token (``steer-sweep``
  uses ``N = 3`` by default).
- ``per_row``: instead of one set of steers for the whole batch, a list of steers per row
  of the batch (``[]`` for an unsteered row), so that many conditions share one batched
  ``generate``; rows must then match the batch the model sees.
- The model is never modified: a forward hook per steered block, removed on exit, also
  after an exception.

>>> with steering(lm, vecs, "gratitude", layer=15, alpha=0.25):  # doctest: +SKIP
...     out = lm.model.generate(**inputs, max_new_tokens=30, do_sample=False)
>>> with steering(lm, [Steer(layer=15, vector=v, alpha=0.25, scale=s[15])]):  # doctest: +SKIP
...     out = lm.model.generate(**inputs, max_new_tokens=30, do_sample=False)
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emocircuits.capture.hooks import hooked
from emocircuits.errors import CaptureError, DataError
from emocircuits.models.compat import cache_from_kwargs

if TYPE_CHECKING:
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel

WHERE = ("all", "new")


@dataclass
class Steer:
    """One addition: ``alpha * scale * vector / |vector|`` at residual layer ``layer``."""

    layer: int
    vector: Any  # [width] array or tensor
    alpha: float
    scale: float = 1.0

    def delta(self, width: int) -> Any:
        import torch

        v = torch.as_tensor(np.asarray(self.vector, dtype=np.float64)).flatten()
        if v.numel() != width:
            raise CaptureError(f"steering vector has {v.numel()} values, the model {width}")
        n = float(v.norm())
        if n == 0:
            raise CaptureError(f"steering vector for layer {self.layer} is zero")
        return v / n * (self.alpha * self.scale)


@contextmanager
def steering(
    lm: LoadedModel,
    vectors: EmotionVectors | Sequence[Steer] = (),
    emotion: str | None = None,
    *,
    layer: int | None = None,
    alpha: float | None = None,
    scales: np.ndarray | None = None,
    where: str = "all",
    steer_tokens: int | None = None,
    per_row: Sequence[Sequence[Steer]] | None = None,
) -> Iterator[None]:
    """Steer ``lm`` for the duration of the block. Two forms:

    - ``steering(lm, vecs, emotion, layer=, alpha=)``: add ``alpha * s_l * v`` at residual
      layer ``layer``, ``v`` the unit ``emotion`` direction of ``vecs`` at that layer and
      ``s_l = scales[layer]``, by default :func:`steering_scales` (the typical residual
      norm: median over content tokens of 64 prompts of the ``baseline`` preset). That is
      the push :func:`~emocircuits.interventions.run.steer` makes with the same layer,
      alpha, ``where`` and ``steer_tokens``.
    - ``steering(lm, [Steer(...), ...])``: add each :class:`Steer` as it is (or, with
      ``per_row``, each row's own steers to that row of the batch).

    ``where``: ``"all"`` positions or only ``"new"`` (generated) tokens; ``steer_tokens``:
    push only while the first ``steer_tokens`` new tokens are written (``None``: all).

    >>> with steering(lm, vecs, "gratitude", layer=15, alpha=0.2):  # doctest: +SKIP
    ...     text = generate_text(lm, "The meeting moved to Thursday.")
    """
    if vectors is not None and hasattr(vectors, "directions"):
        steers: Sequence[Steer] = [emotion_steer(lm, vectors, emotion, layer, alpha, scales)]
    else:
        steers = vectors or ()
    with _steering(lm, steers, where=where, per_row=per_row, steer_tokens=steer_tokens):
        yield


def emotion_steer(
    lm: LoadedModel,
    vectors: EmotionVectors,
    emotion: str | None,
    layer: int | None,
    alpha: float | None,
    scales: np.ndarray | None = None,
) -> Steer:
    """The :class:`Steer` of ``emotion``'s direction at residual ``layer``, strength ``alpha``
    x the typical residual norm there (``scales``, by default :func:`steering_scales`)."""
    if emotion is None or layer is None or alpha is None:
        raise CaptureError("steering with vectors needs an emotion, layer= and alpha=")
    if emotion not in vectors.directions:
        have = ", ".join(vectors.directions)
        raise DataError(f"no {emotion!r} direction in the vectors (has {have})")
    if layer not in vectors.layers:
        raise DataError(f"layer {layer} is not in the vectors (layers {vectors.layers})")
    s = steering_scales(lm) if scales is None else scales
    v = vectors.directions[emotion][vectors.layers.index(layer)]
    return Steer(layer, v, float(alpha), float(s[layer]))


@contextmanager
def _steering(
    lm: LoadedModel,
    steers: Sequence[Steer] = (),
    *,
    where: str = "all",
    per_row: Sequence[Sequence[Steer]] | None = None,
    steer_tokens: int | None = None,
) -> Iterator[None]:
    """Add each :class:`Steer` to the residual stream for the duration of the block (or, with
    ``per_row``, each row's own steers to that row of the batch). ``steer_tokens``:
    push only while the first ``steer_tokens`` new tokens are written (``None``: all)."""
    import torch

    if where not in WHERE:
        raise CaptureError(f"unknown steering position {where!r}; choose from {', '.join(WHERE)}")
    if steer_tokens is not None and steer_tokens < 1:
        raise CaptureError(f"steer_tokens must be >= 1 (None: every token), not {steer_tokens}")
    arch = lm.arch
    by_layer: dict[int, Any] = {}
    groups = [steers] if per_row is None else per_row
    for row, group in enumerate(groups):
        for s in group:
            layer = arch.normalize_layer(s.layer, "resid")
            d = s.delta(arch.width)
            if per_row is not None:  # [rows, 1, width]: broadcast over positions
                full = by_layer.setdefault(
                    layer, torch.zeros(len(groups), 1, arch.width, dtype=d.dtype)
                )
                full[row, 0] += d
            else:
                by_layer[layer] = by_layer.get(layer, 0) + d
    state = {"decoding": False, "step": 0}

    def model_pre(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        cache = cache_from_kwargs(kwargs)
        state["decoding"] = cache is not None and _cached_length(cache) > 0
        state["step"] = state["step"] + 1 if state["decoding"] else 0

    def add(delta: torch.Tensor):
        delta = delta.to(lm.dtype)
        placed: dict[torch.device, torch.Tensor] = {}  # moved to a device once, not per call

        def apply(h: torch.Tensor) -> torch.Tensor:
            if where == "new" and not state["decoding"]:
                return h
            if steer_tokens is not None and state["step"] >= steer_tokens:
                return h
            if delta.dim() == 3 and h.shape[0] != delta.shape[0]:
                raise CaptureError(
                    f"per-row steering for {delta.shape[0]} rows, but the batch has {h.shape[0]}"
                )
            d = placed.get(h.device)
            if d is None:  # the block's device (blocks may live on different devices)
                d = placed[h.device] = delta.to(h.device)
            return h + d.to(h.dtype)

        return apply

    hooks: list = [(lm.model, "pre", model_pre)]
    for layer, delta in by_layer.items():
        hooks.append(arch.place("resid", layer).edit(add(delta)))
    with hooked(hooks):
        yield


def describe_push(steer_tokens: int | None, where: str = "all") -> str:
    """Where a push is added, in words (for tables, titles and logs).

    >>> describe_push(3)
    'the prompt and the first 3 new tokens'
    >>> describe_push(None, "new")
    'every new token'
    """
    if steer_tokens is None:
        return "every position" if where == "all" else "every new token"
    first = f"the first {steer_tokens} new tokens"
    return f"the prompt and {first}" if where == "all" else first


def _cached_length(cache: Any) -> int:
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    try:  # legacy tuple of (key, value) per layer
        return int(cache[0][0].shape[-2])
    except (TypeError, IndexError, AttributeError):
        return 0


def typical_norms(lm: LoadedModel, texts: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
    """``[n_layers + 1]`` median residual norm per layer over the content tokens of
    ``texts`` (each text's first token, the attention sink, left out): the ``s_l`` that
    makes steering strengths comparable across layers and models.

    >>> s = typical_norms(lm, ["Thanks for the help.", "The bus is late."])  # doctest: +SKIP
    """
    from emocircuits.capture.capture import CaptureSpec, capture

    acts = capture(
        lm, list(texts), CaptureSpec(sites=("resid",), positions=("all",), batch_size=batch_size)
    )
    x, pos = acts["resid/all"], acts["all/pos"]
    keep = pos > _first_positions(acts["all/row"], pos)
    if not keep.any():
        keep = np.ones(len(pos), dtype=bool)
    return np.median(np.linalg.norm(x[keep], axis=-1), axis=0)


SCALES_WHAT = "median residual norm over content tokens of 64 baseline prompts"
"""What :func:`steering_scales` measures (written into the steering outputs)."""

_SCALES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def steering_scales(lm: LoadedModel) -> np.ndarray:
    """The ``s_l`` that steering multiplies alpha by: :func:`typical_norms` over 64 prompts
    of the shipped ``baseline`` preset (every n-th of them), one value per residual layer.
    Computed once per model and dtype (cached while the model lives).

    >>> s = steering_scales(lm)  # doctest: +SKIP
    >>> s.shape == (lm.arch.n_layers + 1,)  # doctest: +SKIP
    True
    """
    from emocircuits.data import load_dataset

    cached = _SCALES.get(lm.model)
    if cached is None or cached[0] != lm.dtype:
        base = load_dataset("baseline").examples
        texts = [e.text for e in base][:: max(1, len(base) // 64)]
        cached = (lm.dtype, typical_norms(lm, texts))
        _SCALES[lm.model] = cached
    return cached[1].copy()


def _first_positions(rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Each token's row's first position (the attention sink)."""
    first = np.full(rows.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, rows, pos)
    return first[rows]

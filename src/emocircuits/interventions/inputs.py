"""What ``steer`` and ``steer-sweep`` are given, resolved and checked before a model loads:
the prompts (shipped, a file or a list), the vectors (a file or an object), and the
emotions and layers asked for.

>>> as_list(15), as_list([9, 12]), as_list(None)
([15], [9, 12], [])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from emocircuits.errors import DataError

if TYPE_CHECKING:
    from emocircuits.geometry.vectors import EmotionVectors
    from emocircuits.models.loading import LoadedModel

SHIPPED_PROMPTS = "shipped neutral prompts (tune split)"


def resolve_prompts(
    prompts: str | os.PathLike[str] | Sequence[str] | None,
) -> tuple[list[str], str]:
    """The prompts to continue and how the outputs name them: ``None`` the shipped neutral
    ``tune`` prompts, a ``.txt`` / ``.jsonl`` path, or a list of strings.

    >>> resolve_prompts(["Hello there."])
    (['Hello there.'], 'a list of 1 prompts')
    """
    from emocircuits.data.dataset import load_prompts, neutral_prompts

    if prompts is None:
        return neutral_prompts("tune"), SHIPPED_PROMPTS
    if isinstance(prompts, str | os.PathLike):
        return load_prompts(prompts), str(prompts)
    out = list(prompts)
    if not out or not all(isinstance(p, str) and p.strip() for p in out):
        raise DataError("prompts must be a non-empty list of non-empty strings")
    return out, f"a list of {len(out)} prompts"


def resolve_vectors(
    vectors: EmotionVectors | str | os.PathLike[str],
) -> tuple[EmotionVectors, str | None]:
    """The vectors and their file (None for vectors given as an object)."""
    from emocircuits.geometry.vectors import EmotionVectors, safetensors_path

    if isinstance(vectors, str | os.PathLike):
        return EmotionVectors.load(vectors), str(safetensors_path(vectors))
    return vectors, None


def direction_note(vectors: EmotionVectors, name: str) -> str | None:
    """A note for directions that are not ``one_vs_rest`` (they steer less specifically)."""
    if vectors.method == "one_vs_rest":
        return None
    return (f"note: {name} holds {vectors.method} directions; one_vs_rest directions "
            "(`vectors --method one_vs_rest`) leave out what all emotions share and "
            "steer more specifically (docs/BENCHMARKS.md)")  # fmt: skip


def check_request(
    vectors: EmotionVectors, emotions: Sequence[str], layers: Sequence[int], name: str
) -> None:
    """Refuse an emotion or layer ``vectors`` (called ``name`` in the message) lacks; needs
    no model, so a command calls it before loading one."""
    for e in emotions:
        if e not in vectors.directions:
            raise DataError(f"no {e!r} direction in {name} (has {', '.join(vectors.emotions)})")
    for layer in layers:
        if layer not in vectors.layers:
            raise DataError(
                f"layer {layer} is not in {name} (layers {vectors.layers[0]}-{vectors.layers[-1]})"
            )


def check_vectors(
    lm: LoadedModel, vectors: EmotionVectors, emotion: str, layers: Sequence[int]
) -> None:
    """Refuse an emotion, width or layer the vectors do not have for the loaded model, with
    one clear line."""
    if emotion not in vectors.directions:
        raise DataError(f"no direction for {emotion!r} in the vectors (has {vectors.emotions})")
    width = vectors.directions[emotion].shape[-1]
    if width != lm.arch.width:
        raise DataError(f"the vectors are {width} wide, the model {lm.arch.width}")
    for layer in layers:
        if layer not in vectors.layers:
            raise DataError(f"layer {layer} is not in the vectors (layers {vectors.layers})")


def as_list(x: Any) -> list:
    """A layer, alpha or emotion argument as a list: one value, several, or none."""
    if x is None:
        return []
    return [x] if isinstance(x, int | float | str) else list(x)

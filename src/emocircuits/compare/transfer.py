"""One model's emotion directions carried into another model (for ``steer --transfer``).

A map from the source model's activations to the target model's, fitted on the same
stimuli (rows matched by id), is applied to the source's directions layer by layer at the
same relative depth (:func:`~emocircuits.compare.maps.map_directions`). The result is an
:class:`~emocircuits.geometry.EmotionVectors` of the target model; saving it writes what
``emocircuits map-vectors --out`` writes.

>>> mapped = map_vectors("runs/smollm2", "runs/gemma3", "runs/v.safetensors")  # doctest: +SKIP
>>> mapped.save("runs/smollm2-in-gemma3.safetensors")  # doctest: +SKIP
PosixPath('runs/smollm2-in-gemma3.safetensors')
"""

from __future__ import annotations

import os

import numpy as np

from emocircuits.capture.store import ActivationStore
from emocircuits.compare.common import as_store, store_path, where
from emocircuits.compare.comparison import align_rows
from emocircuits.compare.maps import map_directions
from emocircuits.errors import DataError
from emocircuits.geometry.vectors import EmotionVectors, safetensors_path

#: the maps ``map_vectors`` can fit
MAP_METHODS = ("ridge", "procrustes")


def map_vectors(
    source: ActivationStore | str | os.PathLike[str],
    target: ActivationStore | str | os.PathLike[str],
    vectors: EmotionVectors | str | os.PathLike[str],
    *,
    method: str = "ridge",
) -> EmotionVectors:
    """The source model's ``vectors`` mapped into the target model: for each layer of
    ``target``, the source layer at the same relative depth (where ``vectors`` has it),
    a ``method`` map (``ridge``: penalty by leave-one-out; ``procrustes``: rotation between
    the top principal coordinates) fitted from ``source``'s activations to ``target``'s
    on all rows, applied to the directions. ``source`` and ``target`` are activation
    stores (or folders) of the same stimuli; ``vectors`` an ``EmotionVectors`` of the
    source model (or its file). The norms of the result are not meaningful (set to 1).

    >>> a, b = load_activations("runs/a"), load_activations("runs/b")  # doctest: +SKIP
    >>> vecs = map_vectors(a, b, EmotionVectors.load("v.safetensors"))  # doctest: +SKIP
    >>> vecs.method, vecs.provenance["map"]  # doctest: +SKIP
    ('mapped:one_vs_rest', 'ridge')
    """
    if method not in MAP_METHODS:
        raise DataError(f"unknown map {method!r}; choose {' or '.join(MAP_METHODS)}")
    vecs_file = None
    if isinstance(vectors, str | os.PathLike):
        vecs_file = str(safetensors_path(vectors))
        vectors = EmotionVectors.load(vectors)
    a, b = as_store(source), as_store(target)
    named_a, named_b = (
        str(x) if isinstance(x, str | os.PathLike) else (str(p) if (p := store_path(s)) else None)
        for x, s in ((source, a), (target, b))
    )
    vecs = vectors
    (xa, xb), _, _ = align_rows([a, b], vecs.site, vecs.position)
    la, lb = xa.shape[1] - 1, xb.shape[1] - 1
    if xa.shape[2] != vecs.directions[vecs.emotions[0]].shape[-1]:
        raise DataError(f"{vecs_file or 'the vectors'} is not from the model of {where(a)}")
    pairs = {j: round(j * la / lb) for j in range(lb + 1)}  # same relative depth
    pairs = {j: i for j, i in pairs.items() if i in vecs.layers}
    if not pairs:
        raise DataError(f"no layer of {vecs_file or 'the vectors'} matches a layer of {where(b)}")
    dirs = {e: np.zeros((len(pairs), xb.shape[2]), dtype=np.float32) for e in vecs.emotions}
    for k, (j, i) in enumerate(pairs.items()):
        d = np.stack([vecs.directions[e][vecs.layers.index(i)] for e in vecs.emotions])
        mapped = map_directions(xa[:, i], xb[:, j], d, method=method)
        for e, m in zip(vecs.emotions, mapped, strict=True):
            dirs[e][k] = m
    return EmotionVectors(
        directions=dirs,
        norms={e: np.ones(len(pairs), dtype=np.float32) for e in vecs.emotions},
        layers=list(pairs),
        method=f"mapped:{vecs.method}",
        site=vecs.site,
        position=vecs.position,
        baseline=vecs.baseline,
        provenance={"mapped_from": vecs_file, "map": method,
                    "source_activations": named_a,
                    "target_activations": named_b,
                    "layer_pairs": {str(j): i for j, i in pairs.items()},
                    "layer_matching": "same relative depth",
                    "source": vecs.provenance, "norms": "not meaningful (set to 1)"},
    )  # fmt: skip

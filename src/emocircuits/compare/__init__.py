"""Comparing emotion representations across models (RQ2), with basis-free measures only:
coordinate i of one model means nothing in another.

- :mod:`~emocircuits.compare.cka`: linear CKA (unbiased HSIC) over every layer pair;
- :mod:`~emocircuits.compare.rsa`: RSA of emotion centroids, mutual k-nearest neighbours;
- :mod:`~emocircuits.compare.maps`: Procrustes and ridge maps, mapped emotion directions,
  identification, subspace overlap;
- :mod:`~emocircuits.compare.naive`: the pilot's coordinate-wise table, beside its random
  null, to show why it means nothing (:func:`compare_pilot_vectors`);
- :mod:`~emocircuits.compare.comparison`: all of it for two or more activation stores
  (:func:`compare_models`); :mod:`~emocircuits.compare.headlines`: its numbers beside their
  nulls; :mod:`~emocircuits.compare.result`: the :class:`ComparisonResult` that saves the
  folder;
- :mod:`~emocircuits.compare.transfer`: one model's directions mapped into another
  (:func:`map_vectors`).

Every statistic but the naive table is unchanged when one model's activations are rotated
or scaled; every one comes with a null (:mod:`~emocircuits.compare.perm`).
"""

from emocircuits.compare.cka import cka_null, linear_cka, unbiased_hsic
from emocircuits.compare.comparison import align_rows, compare_models
from emocircuits.compare.maps import MAPS, MapResult, compare_directions, split_rows
from emocircuits.compare.naive import (
    NaiveComparison,
    compare_pilot_vectors,
    naive_table,
    random_cosines,
)
from emocircuits.compare.result import ComparisonResult
from emocircuits.compare.rsa import RSA, knn_indices, mutual_knn, rsa
from emocircuits.compare.transfer import map_vectors

__all__ = [
    "MAPS",
    "RSA",
    "ComparisonResult",
    "MapResult",
    "NaiveComparison",
    "align_rows",
    "cka_null",
    "compare_directions",
    "compare_models",
    "compare_pilot_vectors",
    "knn_indices",
    "linear_cka",
    "map_vectors",
    "mutual_knn",
    "naive_table",
    "random_cosines",
    "rsa",
    "split_rows",
    "unbiased_hsic",
]

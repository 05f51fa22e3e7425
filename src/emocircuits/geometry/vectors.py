"""``EmotionVectors``: unit directions per emotion and layer, their norms, and provenance.

Saved as one ``.safetensors`` file (tensors ``{emotion}`` ``[L, W]`` unit rows and
``{emotion}.norm`` ``[L]``; the JSON provenance in the header metadata) plus a readable
``.json`` sidecar with the same metadata. Never pickle: a path ending in ``.pkl`` (the
pilot's habit) is written and read as the ``.safetensors`` file beside it.

>>> vecs = directions(load_activations("runs/ext"), method="mean_diff")  # doctest: +SKIP
>>> vecs.save("runs/ext-vectors.safetensors")                                # doctest: +SKIP
>>> EmotionVectors.load("runs/ext-vectors.safetensors").directions["anger"].shape  # doctest: +SKIP
(31, 576)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors import SafetensorError, safe_open

from emocircuits.capture.store import (
    ActivationStore,
    as_store,
    atomic_save_safetensors,
    atomic_write_json,
    problem,
)
from emocircuits.errors import EmocircuitsError, StorageError
from emocircuits.geometry.directions import emotion_directions
from emocircuits.results import Result

FORMAT = "emocircuits.vectors"

STEER_METHOD = "one_vs_rest"
"""The direction method the steering commands steer with: on held-out prompts it moved the
tone far more than ``mean_diff`` at the same settings (docs/BENCHMARKS.md, "Which
directions steer"); :func:`steering_vectors` rebuilds other vectors with it."""


def safetensors_path(path: str | os.PathLike[str]) -> Path:
    """The file actually used for ``path``: ``x.pkl`` -> ``x.safetensors`` (no pickle)."""
    p = Path(path)
    return p.with_suffix(".safetensors") if p.suffix in (".pkl", ".pickle", "") else p


@dataclass(repr=False)
class EmotionVectors(Result):
    """Directions ``{emotion: [L, W]}`` (unit length per layer), raw norms ``{emotion: [L]}``,
    the layer numbers, and where they come from (method, site, position, model, data).
    ``rows()``: each emotion's direction norm at a few layers."""

    command: ClassVar[str] = "vectors"

    directions: dict[str, np.ndarray]
    norms: dict[str, np.ndarray]
    layers: list[int]
    method: str
    site: str
    position: str
    baseline: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def emotions(self) -> list[str]:
        return list(self.directions)

    def meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "emotions": self.emotions,
            "layers": self.layers,
            "method": self.method,
            "site": self.site,
            "position": self.position,
            "baseline": self.baseline,
            "provenance": self.provenance,
        }

    def shown_layers(self, n: int = 5) -> list[int]:
        """Up to ``n`` layers spread evenly from the first to the last (for tables)."""
        idx = np.unique(np.linspace(0, len(self.layers) - 1, min(n, len(self.layers))).round())
        return [self.layers[int(i)] for i in idx]

    def rows(self) -> list[dict[str, Any]]:
        """One row per emotion: the (raw) direction norm at a few layers."""
        shown = self.shown_layers()
        return [
            {"emotion": e, **{f"norm_L{la}": float(self.norms[e][self.layers.index(la)])
                              for la in shown}}
            for e in self.emotions
        ]  # fmt: skip

    def title(self) -> str:
        return (
            f"EmotionVectors: {len(self.emotions)} emotions x {len(self.layers)} layers, "
            f"{self.method}, {self.site}/{self.position}, baseline {self.baseline}"
        )

    def figure(self) -> Any:
        """Direction norms by layer, one line per emotion."""
        from emocircuits.plots.geometry import layer_norms

        model = self.provenance.get("model", {}).get("name", "?")
        return layer_norms(
            self.layers, self.norms, title=f"‖direction‖ by layer · {model} · "
            f"{self.site}/{self.position} · {self.method}", ylabel="‖direction‖ (plug-in)",
        )  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.safetensors`` (+ ``.json`` sidecar) atomically; returns the tensor file:
        what ``emocircuits vectors --out path`` writes."""
        target = safetensors_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {}
        for emo in self.emotions:
            tensors[emo] = np.ascontiguousarray(self.directions[emo], dtype=np.float32)
            tensors[f"{emo}.norm"] = np.ascontiguousarray(self.norms[emo], dtype=np.float32)
        atomic_save_safetensors(target, tensors, {"emocircuits": json.dumps(self.meta())})
        atomic_write_json(target.with_suffix(".json"), self.meta())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmotionVectors:
        """Read a vectors file (``x.pkl`` reads ``x.safetensors``)."""
        target = safetensors_path(path)
        if not target.is_file():
            raise EmocircuitsError(f"no vectors file {target}")
        try:
            with safe_open(target, framework="numpy") as f:
                meta = json.loads((f.metadata() or {})["emocircuits"])
                dirs = {e: f.get_tensor(e) for e in meta["emotions"]}
                norms = {e: f.get_tensor(f"{e}.norm") for e in meta["emotions"]}
        except (OSError, SafetensorError) as e:  # the file itself: unreadable or cut short
            raise StorageError(
                f"not an emocircuits vectors file, or a truncated or corrupt one ({problem(e)})",
                where=str(target),
            ) from None
        except Exception as e:  # any failure to parse means it is not our file
            raise EmocircuitsError(
                f"not an emocircuits vectors file ({type(e).__name__}: {e})", where=str(target)
            ) from None
        return cls(
            dirs,
            norms,
            list(meta["layers"]),
            meta["method"],
            meta["site"],
            meta["position"],
            meta["baseline"],
            meta.get("provenance", {}),
        )


def normalise(raw: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Unit directions and their norms (a zero direction stays zero)."""
    dirs, norms = {}, {}
    for emo, d in raw.items():
        n = np.linalg.norm(d, axis=-1)
        dirs[emo] = d / np.where(n > 0, n, 1.0)[:, None]
        norms[emo] = n
    return dirs, norms


def directions(
    acts: ActivationStore | str | Path,
    *,
    method: str = "mean_diff",
    site: str = "resid",
    position: str | None = None,
    baseline: str = "neutral",
) -> EmotionVectors:
    """Directions for every emotion of an activation store (no model is run): ``method``
    one of :data:`~emocircuits.geometry.directions.METHODS`, read at ``site`` and
    ``position`` (default: the store's ``default_position``), contrasted with the
    ``baseline`` label. ``.save(path)`` writes what ``emocircuits vectors --out`` writes.

    >>> vecs = directions(load_activations("runs/ext"), method="one_vs_rest")  # doctest: +SKIP
    >>> vecs.directions["anger"].shape                                        # doctest: +SKIP
    (31, 576)
    """
    acts = as_store(acts)
    position = position or acts.default_position
    raw = emotion_directions(
        acts.get(site, position), acts.labels, method=method, baseline=baseline
    )
    dirs, norms = normalise(raw)
    m = acts.manifest
    prov = {
        "activations": None if acts.path is None else str(acts.path),
        "model": m.get("model", {}),
        "dtype": m.get("dtype"),
        "dataset": m.get("dataset", {}),
        "n_per_label": {lab: acts.labels.count(lab) for lab in dict.fromkeys(acts.labels)},
        "note": "raw_mean is the pilot's uncontrasted class mean, kept to reproduce its tables"
        if method == "raw_mean"
        else None,
    }
    return EmotionVectors(dirs, norms, acts.layers(site), method, site, position, baseline, prov)


compute_vectors = directions
"""The former name of :func:`directions` (kept while callers move over)."""


def steering_vectors(
    vecs: EmotionVectors, name: str, method: str | None = STEER_METHOD
) -> tuple[EmotionVectors, dict[str, Any]]:
    """The directions to steer with, and a record of where they came from: ``vecs`` when
    they were made with ``method`` (or ``method`` is None: as they are), else ``method``
    directions rebuilt from the activation folder ``vecs`` records (same site, position and
    baseline). Refuses, in one line, vectors of another method whose activations are gone.

    >>> v, rec = steering_vectors(EmotionVectors.load("v.safetensors"), "v")  # doctest: +SKIP
    >>> rec["method"]  # doctest: +SKIP
    'one_vs_rest'
    """
    record: dict[str, Any] = {"method": vecs.method, "file_method": vecs.method,
                              "rebuilt_from": None}  # fmt: skip
    if method is None or vecs.method == method:
        return vecs, record
    src = vecs.provenance.get("activations")
    if not src or not (Path(src) / "manifest.json").is_file():
        raise EmocircuitsError(
            f"{name} holds {vecs.method} directions, which steer weakly, and the activations "
            f"they came from ({src or 'not recorded'}) are not there to rebuild {method} ones: "
            f"run `emocircuits vectors --activations ACTS --method {method}`, or pass "
            f"--method {vecs.method} to steer with these"
        )
    new = directions(src, method=method, site=vecs.site, position=vecs.position,
                     baseline=vecs.baseline)  # fmt: skip
    if new.layers != vecs.layers or new.emotions != vecs.emotions:
        raise EmocircuitsError(f"the activations {src} no longer match {name} (layers or emotions)")
    return new, {"method": method, "file_method": vecs.method, "rebuilt_from": str(src)}

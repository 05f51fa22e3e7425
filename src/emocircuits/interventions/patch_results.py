"""What activation patching (:mod:`~emocircuits.interventions.patching`) finds, as tables:
:class:`PatchRun` holds the logit difference of every pair under every patch and gives the
recovered fractions with their intervals (``patching.csv``), the clean gaps (``gaps.csv``)
and the pairs (``pairs.csv``); :func:`headline` sums them up per emotion.

>>> rows = run.table(); gaps = run.gaps()  # doctest: +SKIP
>>> headline(rows, gaps)["anger"]["directional_all_positions"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emocircuits.geometry.stats import bootstrap_mean_ci
from emocircuits.interventions.effects import recovered_fraction, rounded
from emocircuits.interventions.patch_pairs import Pair

BODY = "body"
"""Column of all positions before the last ``n_positions`` (patched together)."""
ALL = "all"
"""Column of every position (per-layer directional and random patches)."""
KINDS = ("full", "directional", "random")


@dataclass
class PatchRun:
    """LD of every pair under every patch. ``full``/``directional``: ``[layer, column,
    pair]`` over ``columns`` (``body``, ``-K`` ... ``-1``); ``directional_all`` /
    ``random_all``: ``[layer, pair]`` (every position patched); NaN = the pair has no such
    position. ``found``: candidate pairs per emotion; ``column_tokens``: the token at an
    offset when it is the same in every prompt (the cue), else ``""``."""

    pairs: list[Pair]
    layers: list[int]
    columns: list[str]
    ld_emotion: np.ndarray
    ld_neutral: np.ndarray
    full: np.ndarray
    directional: np.ndarray
    directional_all: np.ndarray
    random_all: np.ndarray
    found: dict[str, int]
    column_tokens: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def emotions(self) -> list[str]:
        return list(dict.fromkeys(p.emotion for p in self.pairs))

    def _rows(self, emotion: str) -> np.ndarray:
        return np.array([p.emotion == emotion for p in self.pairs])

    def gaps(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict]:
        """Per emotion: pairs found and used, mean ``LD_e``, ``LD_n`` and their gap (the
        denominator of every recovered fraction) with a bootstrap interval over pairs."""
        out = []
        for emo in self.emotions:
            m = self._rows(emo)
            d = self.ld_emotion[m] - self.ld_neutral[m]
            lo, hi = bootstrap_mean_ci(d, n_boot, level, seed)
            out.append(
                {
                    "emotion": emo,
                    "pairs_found": self.found.get(emo),
                    "pairs_used": int(m.sum()),
                    "ld_emotion": rounded(self.ld_emotion[m].mean()),
                    "ld_neutral": rounded(self.ld_neutral[m].mean()),
                    "gap": rounded(d.mean()),
                    "gap_ci_low": rounded(lo),
                    "gap_ci_high": rounded(hi),
                    "gap_sd": rounded(d.std(ddof=1)) if len(d) > 1 else None,
                }
            )
        return out

    def table(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict]:
        """Tidy rows ``emotion, kind, layer, position, offset, n_pairs, recovered, ci_low,
        ci_high, ld_patched`` (the file ``patching.csv``)."""
        out = []
        for emo in self.emotions:
            m = self._rows(emo)
            e, n = self.ld_emotion[m], self.ld_neutral[m]
            blocks = [
                ("full", self.full[..., m], self.columns),
                ("directional", self.directional[..., m], self.columns),
                ("directional", self.directional_all[:, None][..., m], [ALL]),
                ("random", self.random_all[:, None][..., m], [ALL]),
            ]
            for kind, ld, columns in blocks:
                val, lo, hi = recovered_fraction(ld, e, n, n_boot=n_boot, level=level, seed=seed)
                count = np.isfinite(ld).sum(-1)
                mean_ld = np.where(count > 0, np.nansum(ld, -1) / np.maximum(count, 1), np.nan)
                for i, layer in enumerate(self.layers):
                    for c, col in enumerate(columns):
                        out.append(
                            {
                                "emotion": emo,
                                "kind": kind,
                                "layer": layer,
                                "position": col,
                                "offset": int(col) if col not in (BODY, ALL) else "",
                                "token": self.column_tokens.get(col, ""),
                                "n_pairs": int(count[i, c]),
                                "recovered": rounded(val[i, c]),
                                "ci_low": rounded(lo[i, c]),
                                "ci_high": rounded(hi[i, c]),
                                "ld_patched": rounded(mean_ld[i, c]),
                            }
                        )
        return out

    def pair_rows(self, ids: Sequence[str] | None = None) -> list[dict]:
        """One row per pair (the file ``pairs.csv``): rows, ids, length, clean LDs."""
        out = []
        for k, p in enumerate(self.pairs):
            out.append(
                {
                    "pair": k,
                    "emotion": p.emotion,
                    "emotion_row": p.emotion_row,
                    "neutral_row": p.neutral_row,
                    "emotion_id": ids[p.emotion_row] if ids is not None else "",
                    "neutral_id": ids[p.neutral_row] if ids is not None else "",
                    "n_tokens": p.n_tokens,
                    "ld_emotion": rounded(self.ld_emotion[k]),
                    "ld_neutral": rounded(self.ld_neutral[k]),
                }
            )
        return out


def headline(rows: Sequence[dict], gaps: Sequence[dict]) -> dict[str, Any]:
    """Per emotion, from :meth:`PatchRun.table` rows and :meth:`PatchRun.gaps`: the
    gap; the layer where directional patching of every position recovers most (with its
    interval and the random direction there); the first layer from which the full patch at
    the readout position (``-1``) recovers at least half, and the last layer at which the
    prompt body alone still does (where the information moves to the final positions)."""
    out: dict[str, Any] = {}
    for g in gaps:
        emo = g["emotion"]
        mine = [r for r in rows if r["emotion"] == emo]

        def sel(kind: str, position: str, mine=mine) -> list[dict]:
            return [r for r in mine if r["kind"] == kind and r["position"] == position
                    and r["recovered"] is not None]  # fmt: skip

        d = sel("directional", ALL)
        rnd = {r["layer"]: r["recovered"] for r in sel("random", ALL)}
        best = max(d, key=lambda r: r["recovered"]) if d else None
        last = sel("full", "-1")
        body = sel("full", BODY)
        cells = [r for r in mine if r["kind"] == "directional" and r["position"] != ALL
                 and r["recovered"] is not None]  # fmt: skip
        top = max(cells, key=lambda r: r["recovered"]) if cells else None
        out[emo] = {
            **{k: g[k] for k in ("gap", "gap_ci_low", "gap_ci_high", "pairs_found", "pairs_used")},
            "directional_all_positions": None if best is None else {
                "best_layer": best["layer"], "recovered": best["recovered"],
                "ci_low": best["ci_low"], "ci_high": best["ci_high"],
                "random_at_best_layer": rnd.get(best["layer"]),
                "random_max_abs": max((abs(v) for v in rnd.values()), default=None),
            },
            "full_readout_position_first_layer_ge_half": next(
                (r["layer"] for r in sorted(last, key=lambda r: r["layer"])
                 if r["recovered"] >= 0.5), None),
            "full_body_last_layer_ge_half": max(
                (r["layer"] for r in body if r["recovered"] >= 0.5), default=None),
            "directional_best_cell": None if top is None else {
                k: top[k] for k in ("layer", "position", "recovered", "ci_low", "ci_high")},
        }  # fmt: skip
    return out

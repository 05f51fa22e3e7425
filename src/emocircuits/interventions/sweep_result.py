"""What a steering sweep returns and saves (:class:`SweepResult`): every continuation, the
summary per stage and setting, the recommendation per emotion (or an explicit none), and
the settings the sweep ran with, including its tune / held-out split of the prompts.

>>> res = SweepResult.load("runs/v-sweep-smollm2-135m")  # doctest: +SKIP
>>> res.recommendations["anger"].held_out["value"]  # doctest: +SKIP
0.41
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from emocircuits.errors import DataError
from emocircuits.interventions.recommend import Recommendation, none_line
from emocircuits.interventions.settings import save_recommendations
from emocircuits.interventions.steering import describe_push
from emocircuits.interventions.summary import headline
from emocircuits.results import Result

STAGES = ("screen", "tune", "held_out")
"""The sweep's stages, in the order they run (rows and summary rows carry ``stage``):
``screen``: every setting, short continuations, tune prompts; ``tune``: the settings kept by
the screen at full length (and their random controls), tune prompts, where the choice is
made; ``held_out``: the chosen settings, the controls and the prompting baseline on the
other prompts."""


@dataclass(repr=False)
class SweepResult(Result):
    """What :func:`~.sweep.steer_sweep` (and :func:`~.sweep.sweep`) return: ``generations``
    (one row per prompt and condition, with its ``stage``), ``summary`` (per stage and
    setting, with KL where measured), ``recommendations`` (per emotion, with the held-out
    effect), ``settings`` (what was swept, the split, how the alphas were chosen) and
    ``meta`` (model, vectors). ``save(folder)`` writes rows.jsonl, summary.csv, sweep.json
    and a dose-response figure per emotion; :meth:`save_recommendations` the settings file
    next to the vectors that ``steer`` reads."""

    command: ClassVar[str] = "steer-sweep"
    generations: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    recommendations: dict[str, Recommendation]
    settings: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> list[dict[str, Any]]:
        """The summary rows of one stage (:data:`STAGES`; rows without a stage: ``tune``)."""
        return [r for r in self.summary if r.get("stage", "tune") == name]

    def rows(self) -> list[dict[str, Any]]:
        """One row per emotion: the recommended setting, its effect on the tune prompts it
        was chosen on and on the held-out prompts."""
        out = []
        for e, r in self.recommendations.items():
            h = r.held_out or {}
            out.append({"emotion": e, "status": r.status, "method": r.method,
                        "layer": r.layer, "alpha": r.alpha, "effect": r.effect,
                        "tune": r.value, "tune_lo": r.lo, "tune_hi": r.hi,
                        "held_out": h.get("value"), "held_out_lo": h.get("lo"),
                        "held_out_hi": h.get("hi"),
                        "perplexity_ratio": h.get("perplexity_ratio_median"),
                        "distinct_2_ratio": h.get("distinct_2_ratio"), "kl": r.kl,
                        "random_vader_change": h.get("random_vader_change"),
                        "meets_limits": r.meets_limits})  # fmt: skip
        return out

    def table(self) -> list[dict[str, Any]]:
        """Every setting of the summary, the columns worth a glance."""
        return [{"stage": r.get("stage", "tune"), **headline(r)} for r in self.summary]

    def title(self) -> str:
        s = self.settings
        return (f"SweepResult: {len(s.get('emotions', []))} emotions x {len(s.get('layers', []))}"
                f" layers x {len(s.get('alphas', []))} alphas, {len(self.generations)} "
                f"continuations, pushed at {self.push()}")  # fmt: skip

    def push(self) -> str:
        """Where the sweep's push was held, in words."""
        return describe_push(self.settings.get("steer_tokens"), self.settings.get("where", "all"))

    def figure(self, emotion: str | None = None) -> Any:
        """The dose-response figure of ``emotion`` (default: the first swept): every setting,
        from the screen's short continuations where the sweep had one."""
        from emocircuits.plots.steering import dose_response

        e = emotion or next(iter(self.recommendations))
        rows = self.stage("screen") or self.stage("tune")
        short = self.settings.get("screen_tokens") if self.stage("screen") else None
        what = f", screen of {short} new tokens" if short else ""
        title = f"steering with the {e} direction (pushed at {self.push()}{what}): dose-response"
        rec = asdict(self.recommendations[e])
        return dose_response(rows, e, recommended=rec if rec["layer"] is not None else None,
                             title=title)  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> Path:
        """The sweep folder ``path``: rows.jsonl, summary.csv, sweep.json and
        dose-response-EMOTION.png/.svg; ``settings["sweep"]`` becomes ``path``."""
        from emocircuits.capture.store import atomic_write_bytes, atomic_write_json
        from emocircuits.plots import save_figure
        from emocircuits.tables import csv_bytes, write_jsonl

        out = Path(path)
        self.settings = {"sweep": str(out), **{k: v for k, v in self.settings.items()
                                               if k != "sweep"}}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "rows.jsonl", self.generations)
        atomic_write_bytes(out / "summary.csv", csv_bytes(self.summary))
        for e in self.recommendations:
            save_figure(self.figure(e), out / f"dose-response-{e}")
        meta = {"format": "emocircuits.steer-sweep", "version": 2,
                "model": self.meta.get("model"), "vectors": self.meta.get("vectors"),
                "settings": self.settings,
                "recommended": {e: asdict(r) for e, r in self.recommendations.items()},
                "summary": self.summary}  # fmt: skip
        atomic_write_json(out / "sweep.json", meta)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SweepResult:
        """Read a folder written by :meth:`save` (or ``emocircuits steer-sweep --out``)."""
        from emocircuits.tables import read_json, read_jsonl

        out = Path(path)
        for name in ("sweep.json", "rows.jsonl"):
            if not (out / name).is_file():
                raise DataError(f"no {name} in {out} (not a steer-sweep folder)")
        meta = read_json(out / "sweep.json")
        if meta.get("format") != "emocircuits.steer-sweep":
            raise DataError("not a steer-sweep result", where=str(out / "sweep.json"))
        recs = {e: Recommendation(**r) for e, r in meta["recommended"].items()}
        return cls(read_jsonl(out / "rows.jsonl"), meta["summary"], recs, meta["settings"],
                   {"model": meta["model"], "vectors": meta["vectors"]})  # fmt: skip

    def save_recommendations(self, vectors_path: str | os.PathLike[str] | None = None) -> Path:
        """Merge the recommendations (an explicit none included) into the settings file next
        to the vectors (default: the vectors file the sweep read), where ``steer`` without
        layer/alpha finds them."""
        vectors_path = vectors_path or (self.meta.get("vectors") or {}).get("file")
        if not vectors_path:
            raise DataError("the vectors were not read from a file; give vectors_path")
        return save_recommendations(vectors_path, self.meta["model"], self.recommendations,
                                    self.settings)  # fmt: skip

    def recommendation_lines(self) -> str:
        """The recommended settings as the lines ``emocircuits steer-sweep`` prints: the
        effect on the tune prompts (chosen on) and on the held-out prompts (reported)."""
        s = self.settings
        split = s.get("split") or {}
        n_t, n_h = len(split.get("tune", [])), len(split.get("held_out", []))
        method = next((r.method for r in self.recommendations.values() if r.method), None)
        lines = [f"recommended settings (pushed at {self.push()}"
                 + (f", {method} directions" if method else "")
                 + f"; chosen on {n_t} tune prompts, effect on {n_h} held-out "
                 "prompts):"]  # fmt: skip
        for e, r in self.recommendations.items():
            if not r.found:
                lines.append(f"  {e:10s} none: {none_line(r)}")
                continue
            h = r.held_out or {}
            held = (f"held out {h['value']:+.3f} [{h['lo']:+.3f}, {h['hi']:+.3f}], ppl ratio "
                    f"{h['perplexity_ratio_median']:.2f}, distinct-2 ratio "
                    f"{h['distinct_2_ratio']:.2f}, random {h['random_vader_change']:+.3f}"
                    if h.get("value") is not None else "held out: not evaluated")  # fmt: skip
            lines.append(f"  {e:10s} layer {r.layer:3d} alpha {r.alpha:<6g} {r.effect} tune "
                         f"{r.value:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] (random "
                         f"{r.random_vader_change:+.3f}, {r.random_draws} draws); "
                         + held)  # fmt: skip
        return "\n".join(lines)

""":class:`HeadsResult`: the tables and summary of the heads analysis, saved as
``emocircuits heads`` writes them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from emocircuits.interventions.causal import TablesResult
from emocircuits.interventions.heads.common import FORMAT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TABLES = ("heads", "components", "neurons", "neuron_prompts", "separation", "logit_diff",
          "ablation")  # fmt: skip


@dataclass(repr=False)
class HeadsResult(TablesResult):
    """Tables ``heads``, ``components``, ``neurons``, ``neuron_prompts``, ``separation``,
    ``logit_diff``, ``ablation`` and the summary of :func:`~.analysis.heads`.

    >>> res = HeadsResult.load("runs/heads-smollm2")  # doctest: +SKIP
    >>> res.rows()[0]["top_head"]  # doctest: +SKIP
    'L12H3'
    """

    command: ClassVar[str] = "heads"
    format: ClassVar[str] = FORMAT
    table_names: ClassVar[tuple[str, ...]] = TABLES

    def rows(self) -> list[dict[str, Any]]:
        """Per emotion: the top head at the readout position with its contrast and
        interval, and the ablation of the most heads tried, ranked there."""
        st = self.summary.get("settings", {})
        out = []
        for e, h in self.summary.get("headline", {}).items():
            top = (h.get("top_heads") or [{}])[0]
            row: dict[str, Any] = {
                "emotion": e,
                "top_head": top.get("name"),
                "contrast": top.get("contrast"),
                "lo": top.get("lo"),
                "hi": top.get("hi"),
            }
            abl = [a for a in h.get("ablation", []) if a["ranked_at"] == st.get("position")]
            for a in abl:
                row[f"drop_{a['metric']}"] = a["top_drop"]
                row[f"p_{a['metric']}"] = a["p"]
            out.append(row)
        return out

    def title(self) -> str:
        st = self.summary.get("settings", {})
        model = (self.summary.get("model") or {}).get("name", "?")
        return f"HeadsResult: {model}, readout layer {st.get('layer')}, {len(self.rows())} emotions"

    def _figures(self) -> Iterator[tuple[str, Figure]]:
        from emocircuits.plots.heads import heads_figures

        return heads_figures(self.summary, self.tables)

    def _plot_folder(self, folder: Path) -> list[Path]:
        from emocircuits.plots.heads import plot_heads

        return plot_heads(folder)

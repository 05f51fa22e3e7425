"""What every stage's result has in common: ``save(path)`` writes exactly what the matching
``emocircuits`` command writes, ``load(path)`` reads it back, and a result shows itself as a
short text (``repr``) and, in Jupyter, as an HTML table (``_repr_html_``).

A result class implements ``save``, ``load`` and ``rows`` (the headline table: a list of
flat dicts); the representations come from here.

>>> from dataclasses import dataclass
>>> @dataclass(repr=False)
... class Toy(Result):
...     values: dict
...     def rows(self):
...         return [{"layer": k, "value": v} for k, v in self.values.items()]
>>> Toy({0: 0.5, 1: 0.25})
<Toy: 2 rows>
  layer  value
  0      0.5
  1      0.25
>>> "<table" in Toy({0: 1.0})._repr_html_()
True
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, ClassVar

MAX_ROWS = 20


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def text_table(rows: list[dict[str, Any]], max_rows: int = MAX_ROWS, indent: str = "  ") -> str:
    """Rows as aligned plain text (the first ``max_rows``; a last line says how many more).

    >>> print(text_table([{"a": 1, "b": 0.123456}, {"a": 10, "b": None}]))
      a   b
      1   0.1235
      10  -
    """
    if not rows:
        return f"{indent}(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    shown = rows[:max_rows]
    cells = [[_fmt(r.get(c)) for c in cols] for r in shown]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]  # fmt: skip
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows")
    return "\n".join(indent + line for line in lines)


def html_table(rows: list[dict[str, Any]], max_rows: int = MAX_ROWS) -> str:
    """Rows as an HTML table; every cell escaped.

    >>> html_table([{"text": "<b>hi</b>"}])
    '<table><thead><tr><th>text</th></tr></thead><tbody><tr><td>&lt;b&gt;hi&lt;/b&gt;</td></tr></tbody></table>'
    """
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows[:max_rows]
    )
    more = f"<p>... {len(rows) - max_rows} more rows</p>" if len(rows) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def figure_html(fig: Any) -> str:
    """A matplotlib figure as an inline PNG ``<img>`` (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


class Result:
    """Base of the stage results (see the module docstring)."""

    #: the ``emocircuits`` command whose output ``save`` writes
    command: ClassVar[str] = ""

    def rows(self) -> list[dict[str, Any]]:
        """The headline table, one flat dict per row."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write what ``emocircuits <command> --out path`` writes; returns the path."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read a saved result back."""
        raise NotImplementedError

    def title(self) -> str:
        """One line naming the result (the first line of ``repr``)."""
        n = len(self.rows())
        return f"{type(self).__name__}: {n} row{'s' * (n != 1)}"

    def figure(self) -> Any | None:
        """A matplotlib figure worth showing in a notebook, or None."""
        return None

    def __repr__(self) -> str:
        return f"<{self.title()}>\n{text_table(self.rows())}"

    def _repr_html_(self) -> str:
        fig = self.figure()
        return (
            f"<div><p><b>{html.escape(self.title())}</b></p>"
            + html_table(self.rows())
            + ("" if fig is None else figure_html(fig))
            + "</div>"
        )

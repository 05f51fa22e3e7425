"""The study report as one self-contained HTML page.

:func:`render` turns a :class:`~emocircuits.report.build.ReportData` into HTML: CSS inline,
figures embedded as base64 PNG data URIs, no external URL, no JavaScript. Every text that
comes from data (prompts, continuations, labels, file names) is escaped by Jinja's
autoescaping; control characters are shown as ``\\xNN``. :func:`write_report` reads a study
folder and writes ``OUT/report.html`` atomically.

>>> fmt_est(Est(0.12345, 0.1, 0.2))
'0.123 [0.100, 0.200]'
>>> fmt_p(3.2e-9), fmt_p(0.0909)
('3.2e-09', '0.091')
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from emocircuits.capture.store import atomic_write_bytes
from emocircuits.report.build import Est, Null, ReportData, collect

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


# ------------------------------------------------------------------------------ formatting
def _decimals(*xs: float | None) -> int:
    """Decimals for numbers shown together: 3 below 10, fewer above, 2 significant digits
    for small ones."""
    m = max((abs(x) for x in xs if x is not None and math.isfinite(x)), default=0.0)
    if m >= 100:
        return 0
    if m >= 10:
        return 1
    if m >= 0.01 or m == 0:
        return 3
    return min(-math.floor(math.log10(m)) + 1, 8)


def _fixed(x: float, d: int) -> str:
    """``x`` with ``d`` decimals, never ``-0.000``."""
    s = f"{x:.{d}f}"
    return s[1:] if s.startswith("-") and not s.strip("-0.") else s


def fmt_num(v: Any) -> str:
    """A number rounded for reading: ``0.926``, ``12.3``, ``1,234``, ``0.0045``; ``n/a``
    for missing or NaN.

    >>> fmt_num(0.92612), fmt_num(12.345), fmt_num(1234.5), fmt_num(0.00451), fmt_num(None)
    ('0.926', '12.3', '1,234', '0.0045', 'n/a')
    """
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if not isinstance(v, float) or not math.isfinite(v):
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return _fixed(v, _decimals(v))


def fmt_p(p: Any) -> str:
    """A p-value: three decimals, or scientific below 0.001 (an analytic p too small for a
    float is ``< 1e-300``).

    >>> fmt_p(0.04999), fmt_p(1.0), fmt_p(None), fmt_p(2e-5), fmt_p(0.0)
    ('0.050', '1.000', 'n/a', '2.0e-05', '< 1e-300')
    """
    if not isinstance(p, int | float) or isinstance(p, bool) or not math.isfinite(p):
        return "n/a"
    if p == 0:
        return "< 1e-300"
    return f"{p:.1e}" if 0 < p < 0.001 else f"{p:.3f}"


def fmt_est(e: Est | Null) -> str:
    """``value [lo, hi]`` with the same decimals throughout; ``[lo, hi]`` without a value.

    >>> fmt_est(Est(12.345, 10, 15)), fmt_est(Est(None, -0.2, 0.3)), fmt_est(Est(0.5))
    ('12.3 [10.0, 15.0]', '[-0.200, 0.300]', '0.500')
    """
    v, lo, hi = (x if isinstance(x, int | float) and math.isfinite(x) else None
                 for x in (e.value, e.lo, e.hi))  # fmt: skip
    d = _decimals(v, lo, hi)
    parts = [] if v is None else [_fixed(v, d)]
    if lo is not None and hi is not None:
        parts.append(f"[{_fixed(lo, d)}, {_fixed(hi, d)}]")
    return " ".join(parts) or "n/a"


def fmt_cell(value: Any, column: str = "") -> str:
    """A table cell: intervals, p-values (by column name), numbers, booleans, text."""
    if isinstance(value, Est | Null):
        return fmt_est(value)
    if column == "p" or column.startswith("p ") or column.endswith(" p"):
        return fmt_p(value)
    if column == "seconds" and isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, bool | int | float):
        return fmt_num(value)
    if value is None:
        return "–"
    return str(value)


def clean_text(value: Any) -> Any:
    """Control characters in strings shown as ``\\xNN`` (HTML cannot carry most of them)."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value


def data_uri(path: Path) -> str | None:
    """A PNG file as a ``data:`` URI, or None if it is missing or not a PNG."""
    png = _png(path)
    return png[0] if png else None


def _png(path: Path) -> tuple[str, int, int] | None:
    """``(data URI, width, height)`` of a PNG file (None if missing or not a PNG)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(PNG_MAGIC) or len(data) < 24:
        return None
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), w, h


def _embeddable(figures: list[Any]) -> list[tuple[Any, str, bool]]:
    """``(figure, data URI, wide)`` for the figures that are readable PNGs; wide ones
    (more than twice as wide as high) take a whole row."""
    out = []
    for f in figures:
        png = _png(f.path)
        if png:
            out.append((f, png[0], png[1] > 2 * png[2]))
    return out


def _numeric(column: str, value: Any) -> bool:
    return isinstance(value, int | float | Est | Null) and not isinstance(value, bool)


# -------------------------------------------------------------------------------- template
CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d8dde6; --bg: #ffffff; --panel: #f5f7fa;
  --yes: #1b7f3b; --partly: #a86400; --no: #b3261e; --off: #6b7280; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica,
  Arial, sans-serif; color: var(--fg); background: var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 1.5rem 1.5rem 4rem; }
header { background: #22304a; color: #fff; padding: 1.4rem 1.5rem; }
header h1 { margin: 0 auto; max-width: 1180px; font-size: 1.5rem; }
header p { margin: .3rem auto 0; max-width: 1180px; color: #c9d3e6; }
nav { position: sticky; top: 0; background: #eef1f6; border-bottom: 1px solid var(--line);
  padding: .4rem 1.5rem; z-index: 2; }
nav a { margin-right: 1.1rem; color: #22304a; text-decoration: none; font-weight: 600; }
section { margin-top: 2.2rem; scroll-margin-top: 2.6rem; }
h2 { font-size: 1.35rem; border-bottom: 2px solid #22304a; padding-bottom: .2rem; }
h3 { font-size: 1.1rem; margin: 1.6rem 0 .4rem; }
h4 { font-size: .98rem; margin: 1.1rem 0 .3rem; }
.question { font-style: italic; color: var(--muted); margin-top: -.3rem; }
.answer { background: var(--panel); border-left: 4px solid #22304a; padding: .6rem .9rem; }
.verdict { display: inline-block; min-width: 4.2rem; text-align: center; color: #fff;
  border-radius: 3px; padding: 0 .45rem; margin-right: .5rem; font-weight: 700;
  font-size: .85rem; text-transform: uppercase; }
.v-yes { background: var(--yes); } .v-partly { background: var(--partly); }
.v-no { background: var(--no); } .v-not-run { background: var(--off); }
.missing, .note { background: #fff6e0; border: 1px solid #f0d9a0; padding: .5rem .8rem;
  border-radius: 3px; }
.pilot { border: 1px solid var(--line); border-radius: 4px; padding: .2rem 1rem .6rem;
  margin: 1rem 0; }
.pilot dt { font-weight: 700; margin-top: .5rem; }
.pilot dd { margin: .1rem 0 0 0; }
.block { border-top: 1px solid var(--line); margin-top: 1.4rem; }
.src { color: var(--muted); font-size: .82rem; margin: .1rem 0 .4rem; word-break: break-all; }
.scroll { overflow-x: auto; margin: .4rem 0 1rem; }
table { border-collapse: collapse; font-size: .86rem; }
th, td { border-bottom: 1px solid var(--line); padding: .25rem .6rem; text-align: left;
  vertical-align: top; }
th { background: var(--panel); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 28rem; white-space: pre-wrap; overflow-wrap: break-word; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .2rem 0; }
.tnote { color: var(--muted); font-size: .8rem; margin: .2rem 0 0; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr));
  gap: 1rem; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 4px; padding: .4rem; }
figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: .8rem; color: var(--muted); margin-top: .3rem; }
figcaption b { color: var(--fg); }
pre { background: var(--panel); padding: .8rem; overflow-x: auto; font-size: .8rem; }
summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 3rem; color: var(--muted); font-size: .8rem; }
"""

TEMPLATE = r"""{% macro render_block(b) %}
<article class="block">
<h3>{{ b.title }}</h3>
<p class="src">from {{ b.source.describe() }}</p>
{% for n in b.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% if b.numbers %}
<h4>Key numbers</h4>
<div class="scroll"><table>
<thead><tr><th>measure</th><th>estimate</th><th>interval</th><th>null</th>
<th>null value</th><th>p</th><th>note</th></tr></thead>
<tbody>
{% for n in b.numbers %}
<tr><td class="text">{{ n.label }}</td>
<td class="num">{{ n.est | est }}</td>
<td>{{ n.interval if n.est.has_interval else '' }}</td>
<td class="text">{{ n.null.what if n.null else '–' }}</td>
<td class="num">{{ (n.null | est) if n.null else '–' }}</td>
<td class="num">{{ n.p | pval }}</td><td class="text">{{ n.note }}</td></tr>
{% endfor %}
</tbody></table></div>
{% endif %}
{% for t in b.tables %}
{% set long = t.rows | length > 12 %}
{% if long %}<details><summary>{{ t.title }} ({{ t.rows | length }} rows)</summary>{% endif %}
<div class="scroll"><table>
<caption>{{ t.title }}</caption>
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in t.rows %}<tr>
{% for c in t.columns %}
<td class="{{ 'num' if numeric(c, r.get(c)) else 'text' }}">{{ r.get(c) | cell(c) }}</td>
{% endfor %}
</tr>
{% endfor %}
</tbody></table>
{% if t.note %}<p class="tnote">{{ t.note }}</p>{% endif %}
<p class="src">from {{ t.source.describe() }}</p></div>
{% if long %}</details>{% endif %}
{% endfor %}
{% set figs = b.figures | embeddable %}
{% if figs %}<div class="figs">
{% for f, uri, wide in figs %}
<figure{{ ' class="wide"' | safe if wide else '' }}>
<img src="{{ uri }}" alt="{{ f.title }}">
<figcaption><b>{{ f.title }}</b><br>from {{ f.source.describe() }}</figcaption></figure>
{% endfor %}
</div>{% endif %}
</article>
{% endmacro %}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ data.title }}</title>
<style>{{ css | safe }}</style>
</head>
<body>
<header>
<h1>{{ data.title }}</h1>
<p>Study folder {{ data.out_dir }}{% if prov.started %} · started {{ prov.started }}{% endif %}
{% if prov.finished %} · finished {{ prov.finished }}{% endif %}
{% if prov.seconds is not none %} · this run {{ prov.seconds | num }} s{% endif %}
{% set done = prov.stages | selectattr("finished") | list %}
{% if done %} · {{ done | selectattr("reused") | list | length }} of {{ done | length }}
stages reused · the stages' own compute
{{ done | map(attribute="seconds") | select("number") | sum | num }} s{% endif %}</p>
</header>
<nav><a href="#summary">Summary</a>
{% if data.datasets %}<a href="#datasets">Datasets</a>{% endif %}
{% for s in data.sections %}<a href="#{{ s.id }}">{{ s.id | upper }}</a>
{% endfor %}
<a href="#provenance">Provenance</a></nav>
<main>
<section id="summary">
<h2>Summary</h2>
{% for n in data.notes %}<p class="note">{{ n }}</p>{% endfor %}
<p>Each answer below is computed from the study's saved numbers (intervals are 95% unless
said otherwise; “beyond chance” means p &lt; 0.05 against the null named next to it).
The pilot's claims and why ours differ are in each section.</p>
<div class="scroll"><table>
<thead><tr><th>question</th><th>answer</th><th>from the numbers</th></tr></thead>
<tbody>
{% for s in data.sections %}
<tr><td><a href="#{{ s.id }}">{{ s.title }}</a></td>
<td><span class="verdict v-{{ s.verdict | replace(' ', '-') }}">{{ s.verdict }}</span></td>
<td class="text">{{ s.answer }}</td></tr>
{% endfor %}
</tbody></table></div>
</section>

{% if data.datasets %}
<section id="datasets">
<h2>Datasets: what else tells the classes apart</h2>
<p class="question">Before the directions: the audit of every dataset this study used
(no model): balance, surface features per class, the tokens that give each class away,
near-duplicates, and a bag-of-words probe. A probe on the model that only matches the bag
of words, or a class that one punctuation mark gives away, is not evidence of an emotion
direction.</p>
{% for b in data.datasets %}{{ render_block(b) }}{% endfor %}
</section>
{% endif %}

{% for s in data.sections %}
<section id="{{ s.id }}">
<h2>{{ s.title }}</h2>
<p class="question">{{ s.question }}</p>
<p class="answer">
<span class="verdict v-{{ s.verdict | replace(' ', '-') }}">{{ s.verdict }}</span>
{{ s.answer }}</p>
{% for m in s.missing %}<p class="missing">{{ m }}</p>{% endfor %}
<div class="pilot">
<h3>The pilot's claim and ours</h3>
<dl>
<dt>The pilot said</dt><dd>{{ s.pilot.claim }}</dd>
<dt>How it measured</dt><dd>{{ s.pilot.method }}</dd>
<dt>What this study finds</dt><dd>{{ s.answer }}</dd>
<dt>Why they differ</dt><dd>{{ s.pilot.why_different }}</dd>
<dt>Pilot source</dt><dd>{{ s.pilot.source }}</dd>
</dl>
</div>
{% for b in s.blocks %}{{ render_block(b) }}{% endfor %}
</section>
{% endfor %}

<section id="provenance">
<h2>Provenance</h2>
{% for f in prov.failed or [] %}
<p class="note">Failed stage: {{ f.stage }} — {{ f.error }}</p>
{% endfor %}
{% for title, rows in [("Models", prov.models), ("Datasets", prov.datasets),
                       ("Stages", prov.stages)] %}
<h3>{{ title }}</h3>
{% if rows %}<div class="scroll"><table>
<thead><tr>{% for c in rows[0] %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in rows %}<tr>
{% for c in rows[0] %}
<td class="{{ 'num' if numeric(c, r.get(c)) else 'text' }}">{{ r.get(c) | cell(c) }}</td>
{% endfor %}
</tr>
{% endfor %}
</tbody></table></div>
{% else %}<p class="missing">None recorded in study.json.</p>{% endif %}
{% endfor %}
<h3>Versions</h3>
{% if prov.versions %}<div class="scroll"><table><tbody>
{% for k, v in prov.versions.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</tbody></table></div>{% else %}<p class="missing">None recorded in study.json.</p>{% endif %}
<details><summary>Effective configuration (study.json → config)</summary>
<pre>{{ config_json }}</pre></details>
</section>
<footer>Written by emocircuits {{ version }} from the saved outputs of {{ data.out_dir }}; no
model was run to make this page.</footer>
</main>
</body>
</html>
"""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=clean_text,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=fmt_num,
        pval=fmt_p,
        est=fmt_est,
        cell=fmt_cell,
        embeddable=_embeddable,
    )
    env.globals["numeric"] = _numeric
    return env


def render(data: ReportData) -> str:
    """The whole report page for ``data`` (one string of HTML, self-contained)."""
    from emocircuits._version import __version__

    template = _environment().from_string(TEMPLATE)
    return template.render(
        data=data,
        prov=data.provenance,
        css=CSS,
        version=__version__,
        config_json=json.dumps(data.provenance.config, indent=2, ensure_ascii=False, default=str),
    )


def build_report(study_dir: str | os.PathLike[str]) -> Path:
    """Read the finished study in ``study_dir`` and write ``study_dir/report.html``
    (atomically: a temporary file in the same folder, then a rename). Returns its path; no
    model runs. What ``emocircuits report DIR`` does.

    >>> build_report("runs/study")  # doctest: +SKIP
    PosixPath('runs/study/report.html')
    """
    out_dir = study_dir
    data = collect(out_dir)
    path = Path(out_dir) / "report.html"
    atomic_write_bytes(path, render(data).encode("utf-8"))
    return path


write_report = build_report  # the earlier name

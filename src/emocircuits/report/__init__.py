"""The study report: :func:`collect` reads a finished study folder into small dataclasses,
:func:`render` makes one self-contained HTML page of them, :func:`build_report` writes
``OUT/report.html`` (``write_report`` is its earlier name). Nothing here runs a model.

>>> from emocircuits.report import build_report
>>> build_report("runs/study")  # doctest: +SKIP
PosixPath('runs/study/report.html')
"""

from emocircuits.report.build import ReportData, collect
from emocircuits.report.html import build_report, render, write_report

__all__ = ["ReportData", "build_report", "collect", "render", "write_report"]

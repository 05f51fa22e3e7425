"""The study report: :func:`collect` reads a finished study folder into small dataclasses,
:func:`render` makes one self-contained HTML page of them, :func:`write_report` writes
``OUT/report.html``. Nothing here runs a model.

>>> from emocircuits.report import write_report
>>> write_report("runs/study")  # doctest: +SKIP
PosixPath('runs/study/report.html')
"""

from emocircuits.report.build import ReportData, collect
from emocircuits.report.html import render, write_report

__all__ = ["ReportData", "collect", "render", "write_report"]

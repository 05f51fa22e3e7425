"""The terminal summary of a finished study: what ran, what was reused, the answer to each
research question in a line or two, and where the report and the MLflow store are."""

from __future__ import annotations

from typing import Any

from emocircuits.study.runner import StudyResult


def print_summary(res: StudyResult, console: Any = None) -> None:
    """Print the stage table and the key answers (from the report's own reading of the
    saved outputs, so the terminal and the page say the same)."""
    from rich.console import Console
    from rich.table import Table

    from emocircuits.report.build import collect

    console = console or Console()
    t = Table(title=f"study {res.out}", show_edge=False)
    for col in ("stage", "ran", "seconds"):
        t.add_column(col, justify="right" if col == "seconds" else "left")
    for s in res.stages:
        t.add_row(s["key"], "reused" if s["cached"] else "ran", f"{s['seconds']:.1f}")
    console.print(t)
    n_ran = len(res.ran)
    console.print(
        f"{n_ran} of {len(res.stages)} stages ran, {len(res.stages) - n_ran} reused; "
        f"{res.seconds:.1f} s in all"
    )
    data = collect(res.out)
    for rq in data.sections:
        console.print(f"[bold]{rq.title}[/bold] — {rq.answer}", highlight=False)
    if res.report is not None:
        console.print(f"report: {res.report}")
    if (res.out / "mlflow.db").is_file():
        console.print(f"MLflow: mlflow ui --backend-store-uri sqlite:///{res.out / 'mlflow.db'}")

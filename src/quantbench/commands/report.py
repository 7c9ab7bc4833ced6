from __future__ import annotations

import sys

import typer
from rich.console import Console

from quantbench import validate


def report_command(
    results_path: str = typer.Argument(..., help="a results.jsonl written by quantbench run"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | md | csv | json"),
    html: str = typer.Option(None, "--html", help="write a self-contained HTML report here"),
    plots: str = typer.Option(None, "--plots", help="write PNG charts into this folder"),
    output: str = typer.Option(None, "--output", "-o", help="write the --format text here"),
) -> None:
    """Read RESULTS.jsonl and show it as a table, markdown, CSV or JSON; HTML and PNG on request."""
    from quantbench.report import make_report, render, rich_renderables

    validate.results_to_read(results_path)
    for path, what in ((html, "HTML report"), (output, "output file")):
        if path:
            validate.writable_file(path, what)
    if plots:
        validate.writable_folder(plots, "plots folder")
    report = make_report(results_path, html=html, plots=plots, output=output, fmt=fmt)
    for problem in report.problems:
        print(problem, file=sys.stderr)
    for path in report.written:
        print(f"wrote {path}", file=sys.stderr)
    if output:
        return
    if fmt == "table":
        console = Console()
        for part in rich_renderables(report.results):
            console.print(part)
    else:
        sys.stdout.write(render(report.results, fmt))


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)

"""Read Results, never measure: terminal table, markdown / CSV / JSON, PNG charts, one HTML file.

    from quantbench.report import load_results, render, write_html, save_plots, ResultList
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from quantbench.checks import Check, checks_by_model, run_checks
from quantbench.errors import QuantbenchError
from quantbench.report.export import to_csv, to_json, to_markdown
from quantbench.report.html import render_html, write_html
from quantbench.report.notebook import ResultList
from quantbench.report.plots import save_plots
from quantbench.report.table import rich_checks, rich_table, summary
from quantbench.results import Result, latest_by_key, read_results

FORMATS = ("table", "md", "csv", "json")

__all__ = [
    "FORMATS", "Check", "Report", "ResultList", "checks_by_model", "load_results", "make_report",
    "render", "render_html", "rich_renderables", "run_checks", "save_plots", "summary", "to_csv",
    "to_json", "to_markdown", "write_html",
]


def load_results(path: str | Path) -> tuple[ResultList, list[str]]:
    """The newest Result of each spec in a JSONL file, and one message per unreadable line."""
    results, problems = read_results(path)
    return ResultList(latest_by_key(results)), problems


def rich_renderables(results: Iterable[Result]) -> list[object]:
    """The terminal view: the summary table, then one checks table per model."""
    results = list(results)
    table = summary(results)
    parts: list[object] = [rich_table(table, title="quantbench results")] if table.rows else []
    parts += [rich_checks(model, checks) for model, checks in checks_by_model(results).items()]
    return parts or ["no benchmark results"]


def _table_text(results: list[Result], width: int = 200) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    for part in rich_renderables(results):
        console.print(part)
    return console.file.getvalue()


def render(results: Iterable[Result], fmt: str = "md") -> str:
    """The report as text in one of FORMATS ('table' is the terminal view without colour)."""
    results = list(results)
    renderers = {"table": _table_text, "md": to_markdown, "csv": to_csv, "json": to_json}
    if fmt not in renderers:
        raise QuantbenchError(f"unknown report format '{fmt}'; choose from: {', '.join(FORMATS)}")
    return renderers[fmt](results)


@dataclass
class Report:
    results: ResultList
    problems: list[str] = field(default_factory=list)  # unreadable lines, skipped
    written: list[Path] = field(default_factory=list)


def make_report(results_path: str | Path, html: str | Path | None = None,
                plots: str | Path | None = None, output: str | Path | None = None,
                fmt: str = "md") -> Report:
    """Read a results file and write the files asked for (HTML, PNG charts, text output)."""
    if fmt not in FORMATS:
        raise QuantbenchError(f"unknown report format '{fmt}'; choose from: {', '.join(FORMATS)}")
    results, problems = load_results(results_path)
    report = Report(results, problems)
    if html:
        report.written.append(write_html(results, html, source=Path(results_path).name))
    if plots:
        report.written += save_plots(results, plots)
    if output:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(results, fmt), encoding="utf-8")
        report.written.append(path)
    return report

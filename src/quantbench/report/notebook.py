"""ResultList: a list of Results that Jupyter shows as the report's table and checks."""

from __future__ import annotations

from pathlib import Path

from quantbench.checks import Check, checks_by_model
from quantbench.report.export import to_csv, to_json, to_markdown
from quantbench.report.html import checks_html, html_table, scoped_css, write_html
from quantbench.report.plots import save_plots
from quantbench.report.table import summary
from quantbench.results import Result


class ResultList(list):
    """A plain list of Result; only adds how it looks in a notebook and a few exports."""

    def _repr_html_(self) -> str:
        table = summary(self)
        checks = "".join(checks_html(m, c) for m, c in checks_by_model(self).items())
        body = html_table(table) if table.rows else "<p>No benchmark results.</p>"
        style = scoped_css(".quantbench")
        return f'<div class="quantbench"><style>{style}</style>{body}{checks}</div>'

    def _repr_markdown_(self) -> str:
        return to_markdown(self)

    def checks(self) -> dict[str, list[Check]]:
        return checks_by_model(self)

    def to_markdown(self) -> str:
        return to_markdown(self)

    def to_csv(self) -> str:
        return to_csv(self)

    def to_json(self) -> str:
        return to_json(self)

    def save_html(self, path: str | Path) -> Path:
        return write_html(self, path)

    def save_plots(self, folder: str | Path) -> list[Path]:
        return save_plots(self, folder)

    def ok(self) -> ResultList:
        return ResultList(r for r in self if isinstance(r, Result) and r.ok)

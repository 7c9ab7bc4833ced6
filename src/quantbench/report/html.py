"""One self-contained HTML file: inline CSS, charts as data: PNGs, no script, no network.

Every string that came from a results file goes through `esc` (model ids, errors, versions,
file names). The Content-Security-Policy forbids scripts and remote loads as a second fence.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from quantbench.checks import Check, checks_by_model
from quantbench.report.plots import png_bytes, render_charts
from quantbench.report.table import (
    RANDOM_NOTE,
    Row,
    Table,
    benchmarks,
    environment,
    fmt_num,
    metric,
    metric_keys,
    other_table,
    summary,
)
from quantbench.results import Result

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CHART_TITLES = {
    "memory": "Memory per precision (weights vs peak)",
    "latency_vs_batch": "Latency and throughput vs batch size",
    "decode_ms_per_token": "Decode ms/token",
    "quality_vs_memory": "Quality vs memory, Pareto frontier ringed",
}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
       margin: 0 auto; max-width: 1200px; padding: 24px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px;
     border-bottom: 2px solid #e3e7ef; padding-bottom: 4px; }
.sub { color: #5b6475; } table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d5dbe6; padding: 4px 8px; text-align: left; vertical-align: top; }
td { overflow-wrap: anywhere; } th { background: #eef2f8; }
td.num { font-variant-numeric: tabular-nums; text-align: right; white-space: nowrap; }
tr.random td { background: #fff6d6; } tr.error td { background: #fde4e4; }
.banner { background: #ffe08a; border: 2px solid #c99a00; padding: 10px 14px; margin: 12px 0;
          font-weight: 600; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 4px; font-weight: 700;
         color: #fff; min-width: 34px; text-align: center; }
.pass { background: #1a7f37; } .fail { background: #cf222e; } .na { background: #8c959f; }
.tag { background: #c99a00; color: #fff; border-radius: 4px; padding: 0 6px; font-size: 12px;
       margin-left: 6px; white-space: nowrap; }
figure { margin: 12px 0 24px; } figure img { max-width: 100%; border: 1px solid #e3e7ef; }
figcaption { color: #5b6475; } .note { color: #5b6475; font-style: italic; }
pre { white-space: pre-wrap; background: #f6f8fa; padding: 8px; margin: 4px 0; }
"""


def scoped_css(scope: str) -> str:
    """CSS with every selector under `scope`, so a notebook cell cannot restyle the page."""

    def prefix(match: re.Match[str]) -> str:
        selectors = [s.strip().replace("body", "").strip() for s in match.group(1).split(",")]
        return ", ".join(f"{scope} {s}".strip() for s in selectors) + " {"

    return re.sub(r"([^{}]+)\{", prefix, CSS)


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def _is_number(cell: str) -> bool:
    head = cell.split(" ")[0].replace(",", "")
    try:
        float(head)
    except ValueError:
        return False
    return True


def html_table(table: Table) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        css = "error" if row.error else "random" if row.random else ""
        cells = []
        for i, cell in enumerate(row.cells):
            tag = ' <span class="tag">random weights</span>' if i == 0 and row.random else ""
            cls = ' class="num"' if _is_number(cell) else ""
            cells.append(f"<td{cls}>{esc(cell)}{tag}</td>")
        body.append(f'<tr class="{css}">' + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in table.notes)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{notes}"


def checks_html(model: str, checks: list[Check]) -> str:
    classes = {"pass": "pass", "fail": "fail", "n/a": "na"}
    rows = "".join(
        f'<tr><td><span class="badge {classes[c.status]}">{esc(c.status.upper())}</span></td>'
        f"<td>{esc(c.name)}</td><td>{esc(c.value)}</td><td>{esc(c.expected)}</td></tr>"
        for c in checks
    )
    return (f"<h3>{esc(model)}</h3><table><thead><tr><th></th><th>check</th><th>value</th>"
            f"<th>expected</th></tr></thead><tbody>{rows}</tbody></table>")


def _environment_html(results: list[Result]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
                   for k, v in environment(results).items())
    return f"<table>{rows}</table>"


def _charts_html(results: list[Result]) -> str:
    parts = []
    for name, fig in render_charts(results).items():
        title = CHART_TITLES.get(name, name)
        if fig is None:
            parts.append(f'<p class="note">{esc(title)}: no data in these results.</p>')
            continue
        data = base64.b64encode(png_bytes(fig)).decode("ascii")
        parts.append(f'<figure><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(title)}</figcaption></figure>")
    return "".join(parts)


def _all_metrics_html(results: list[Result]) -> str:
    """Every metric of every benchmark Result, folded away: the summary shows a selection."""
    results = benchmarks(results)
    keys = sorted({k for r in results for k in metric_keys(r)})
    if not keys:
        return ""
    table = Table(headers=["model", "precision", *keys])
    for r in results:
        table.rows.append(Row(r, [str(r.spec.model), str(r.spec.precision),
                                  *(fmt_num(metric(r, k), 6) for k in keys)]))
    return f"<details><summary>All metrics</summary>{html_table(table)}</details>"


def _errors_html(results: list[Result]) -> str:
    failed = [r for r in results if r.error]
    if not failed:
        return ""
    items = "".join(f"<li><b>{esc(r.spec.model)}</b> {esc(r.spec.precision)} "
                    f"({esc(r.spec.kind)})<pre>{esc(r.error)}</pre></li>" for r in failed)
    return f"<h2>Errors</h2><ul>{items}</ul>"


def render_html(results: Iterable[Result], title: str = "quantbench report",
                source: str | None = None) -> str:
    """The whole report as one HTML document."""
    results = list(results)
    table = summary(results)
    random_models = list(dict.fromkeys(str(r.spec.model) for r in results if r.random_weights))
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    banner = ""
    if random_models:
        banner = (f'<div class="banner">Random-weight runs: {esc(", ".join(random_models))}. '
                  f"{esc(RANDOM_NOTE)}.</div>")
    sub = f"{esc(source)} · " if source else ""
    checks = "".join(checks_html(m, c) for m, c in checks_by_model(results).items())
    extra = other_table(results)
    body = [
        f"<h1>{esc(title)}</h1><p class='sub'>{sub}generated {esc(generated)} · "
        f"{len(results)} result(s)</p>", banner,
        "<h2>Summary</h2>", html_table(table) if table.rows else "<p>No benchmark results.</p>",
        "<h2>Checks</h2>", checks or "<p>No benchmark results to check.</p>",
        "<h2>Charts</h2>", _charts_html(results), _all_metrics_html(results),
        _errors_html(results),
        f"<h2>Other runs</h2>{html_table(extra)}" if extra.rows else "",
        "<h2>Environment</h2>", _environment_html(results),
    ]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(b for b in body if b) + "</body></html>\n")


def write_html(results: Iterable[Result], path: str | Path, source: str | None = None) -> Path:
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(results, source=source), encoding="utf-8")
    return path

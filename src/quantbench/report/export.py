"""Results as markdown (README, PR comment), CSV (one row per Result, raw numbers) and JSON."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable

from quantbench.checks import Check, checks_by_model
from quantbench.report.table import Table, environment, metric_keys, other_table, summary
from quantbench.results import Result

STATUS_MARK = {"pass": "✅ pass", "fail": "❌ FAIL", "n/a": "➖ n/a"}


def md_escape(text: object) -> str:
    """Text that a markdown renderer shows as typed: no HTML, no table breaks, one line."""
    # only what could open an HTML tag or entity is escaped, so "nf4 < int8" stays readable
    text = re.sub(r"&(?=#?\w+;)", "&amp;", str(text))
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    for char in "*_[]":
        text = text.replace(char, "\\" + char)
    return " ".join(text.split())


def md_table(table: Table) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in table.headers) + " |",
             "|" + "|".join("---" for _ in table.headers) + "|"]
    for row in table.rows:
        cells = [md_escape(c) for c in row.cells]
        if row.random:
            cells[0] += " ⚠"  # the note under the table says what the mark means
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def md_checks(model: str, checks: list[Check]) -> str:
    lines = [f"**Checks: {md_escape(model)}**", ""]
    for check in checks:
        lines.append(f"- {STATUS_MARK[check.status]} {md_escape(check.name)}: "
                     f"{md_escape(check.value)} (expected {md_escape(check.expected)})")
    return "\n".join(lines)


def to_markdown(results: Iterable[Result], title: str = "quantbench results") -> str:
    results = list(results)
    table = summary(results)
    env = environment(results)
    parts = [f"### {md_escape(title)}", "",
             " · ".join(f"{k}: {md_escape(v)}" for k, v in env.items() if k in ("device", "date")),
             ""]
    if table.rows:
        parts += [md_table(table), ""]
        parts += [f"_{md_escape(note)}_" for note in table.notes]
        parts.append("")
    else:
        parts += ["_no benchmark results_", ""]
    for model, checks in checks_by_model(results).items():
        parts += [md_checks(model, checks), ""]
    extra = other_table(results)
    if extra.rows:
        parts += ["**Other runs**", "", md_table(extra), ""]
    versions = {k: v for k, v in env.items() if k not in ("device", "date")}
    if versions:
        parts.append("<sub>" + ", ".join(f"{md_escape(k)} {md_escape(v)}"
                                         for k, v in versions.items()) + "</sub>")
    return "\n".join(parts).rstrip() + "\n"


def _raw(result: Result, key: str) -> object:
    value = result.metrics.get(key) if isinstance(result.metrics, dict) else None
    if isinstance(value, (dict, list)):  # e.g. per_device_allocated_bytes
        return json.dumps(value, default=str)
    return "" if value is None else value


def to_csv(results: Iterable[Result]) -> str:
    """One row per Result with every metric any Result has, as raw numbers."""
    results = list(results)
    keys = sorted({k for r in results for k in metric_keys(r)})
    fixed = ["model", "precision", "kind", "random_weights", "device", "timestamp",
             "error", "options", "workload", "adapter"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fixed + keys)
    for r in results:
        spec = r.spec
        writer.writerow([spec.model, spec.precision, spec.kind, r.random_weights, r.device,
                         r.timestamp, r.error or "", json.dumps(spec.options, default=str),
                         json.dumps(spec.workload, default=str), spec.adapter or ""]
                        + [_raw(r, k) for k in keys])
    return out.getvalue()


def to_json(results: Iterable[Result]) -> str:
    """The Results as written, plus the checks per model; readable back with Result.from_dict."""
    results = list(results)
    payload = {
        "results": [r.to_dict() for r in results],
        "checks": {m: [c.to_dict() for c in cs] for m, cs in checks_by_model(results).items()},
    }
    return json.dumps(payload, indent=2, default=str) + "\n"

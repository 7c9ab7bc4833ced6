"""Results -> rows of text, llama-bench style: one row per configuration, every varying
parameter shown, medians with their p10-p90 spread. Every output format reads these rows.

Cells are plain text; each renderer (rich, markdown, HTML) escapes them for its own medium.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from quantbench.checks import Check, metric_of
from quantbench.results import Result, sweep, sweep_key

MISSING = "-"
RANDOM_NOTE = "⚠ random weights: memory and speed only, quality not meaningful"
SHARED_MARK = "timings on a shared device"
SHARED_NOTE = ("⚠ timings on a shared device: other processes used the GPU, or more CPU cores "
               "than were free, while they were taken; expect them slow and noisy")
QUALITY_METRICS = ("perplexity", "ppl_ratio", "kl_mean", "kl_p99", "top1_agreement")


metric = metric_of  # the report's name for it


def fmt_bytes(size: float | None) -> str:
    if size is None:
        return MISSING
    if abs(size) >= 2**30:
        return f"{size / 2**30:.2f} GiB"
    return f"{size / 2**20:.1f} MiB"


def fmt_num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return MISSING
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"


def fmt_spread(result: Result, key: str) -> str:
    """median [p10-p90] when the spread was recorded."""
    median = metric(result, key)
    if median is None:
        return MISSING
    low, high = metric(result, f"{key}_p10"), metric(result, f"{key}_p90")
    if low is None or high is None:
        return f"{median:.3g}"
    return f"{median:.3g} [{low:.3g}-{high:.3g}]"


def metric_keys(result: Result) -> list[str]:
    return [str(k) for k in result.metrics] if isinstance(result.metrics, dict) else []


def benchmarks(results: Iterable[Result]) -> list[Result]:
    return [r for r in results if r.spec.kind == "benchmark"]


def others(results: Iterable[Result]) -> list[Result]:
    """finetune / optimizer / anything newer: reported in their own section."""
    return [r for r in results if r.spec.kind != "benchmark"]


def suffixes(results: Iterable[Result], family: str) -> list[int]:
    """The batch sizes (or prompt lengths) a metric family was measured at, ascending."""
    found: set[int] = set()
    for result in results:
        if isinstance(result.metrics, dict):
            found.update(sweep(result.metrics, family))
    return sorted(found)


def _settings(result: Result) -> dict[str, str]:
    """Every spec parameter that could vary between rows, flattened to text."""
    spec = result.spec
    flat = {"model": str(spec.model), "precision": str(spec.precision)}
    for group in ("options", "workload"):
        values = getattr(spec, group)
        for key, value in (values.items() if isinstance(values, dict) else ()):
            flat[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    if spec.adapter:
        flat["adapter"] = str(spec.adapter)
    return flat


def varying(results: list[Result]) -> list[str]:
    """Settings whose value differs between results (model and precision always shown)."""
    settings = [_settings(r) for r in results]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in keys if k in ("model", "precision") or len({s.get(k) for s in settings}) > 1]


def label(result: Result, shown: list[str], with_model: bool = True) -> str:
    """A short name for charts: precision, then whatever else varies."""
    settings = _settings(result)
    parts = [settings["precision"]]
    if with_model:
        parts.insert(0, settings["model"])
    parts += [f"{k}={settings.get(k, MISSING)}" for k in shown if k not in ("model", "precision")]
    return " ".join(parts)


@dataclass
class Row:
    result: Result
    cells: list[str]

    @property
    def random(self) -> bool:
        return bool(self.result.random_weights)

    @property
    def error(self) -> str | None:
        return self.result.error


@dataclass
class Table:
    headers: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Cell = Callable[[Result], str]


def _quality(key: str, spec: str) -> Cell:
    def cell(result: Result) -> str:
        if result.random_weights:
            return "n/a"  # never quote quality for random weights, even if a number was written
        value = metric(result, key)
        if value is None:
            return MISSING
        error = metric(result, f"{key}_se")
        # the standard error, llama-perplexity style: a difference inside it is no difference
        return format(value, spec) + (f" ± {error:.2g}" if error is not None and error == error else "")

    return cell


def _bandwidth_share(result: Result) -> str:
    limit = metric(result, "bandwidth_limit_ms_per_token")
    decode = metric(result, "decode_ms_per_token")
    if not limit or not decode:
        return MISSING
    share = 100 * limit / decode
    return f"{share:.0f}%" if share >= 10 else f"{share:.2g}%"  # eager decode sits far below 1%


def _calibration(result: Result) -> str:
    """Calibration time and peak memory of a calibrated row (GPU allocator or CPU RSS)."""
    seconds = metric(result, "calibration_seconds")
    if seconds is None:
        return MISSING
    peak = metric(result, "calibration_peak_bytes") or metric(result, "calibration_peak_rss_bytes")
    shown = f"{seconds:.0f}" if seconds >= 100 else f"{seconds:.3g}"  # 1103 s, not 1.1e+03
    return f"{shown} s, {fmt_bytes(peak)}"


def _columns(results: list[Result]) -> list[tuple[str, Cell]]:
    """Summary columns; the widest batch and longest prompt stand for the rest."""
    batches, lengths = suffixes(results, "peak_generate_bytes"), suffixes(results, "prefill_ms")
    speeds = suffixes(results, "tokens_per_s")
    columns: list[tuple[str, Cell]] = [
        ("weights", lambda r: fmt_bytes(metric(r, "weights_footprint_bytes"))),
    ]
    if batches:
        peak = sweep_key("peak_generate_bytes", batches[-1])
        columns.append((f"peak b{batches[-1]}", lambda r, k=peak: fmt_bytes(metric(r, k))))
    if lengths:
        prefill = sweep_key("prefill_ms", lengths[-1])
        columns.append((f"prefill p{lengths[-1]} ms", lambda r, k=prefill: fmt_spread(r, k)))
    columns.append(("decode ms/token", lambda r: fmt_spread(r, "decode_ms_per_token")))
    # share of the memory-bandwidth bound reached (gpt-fast's number): limit / measured
    columns.append(("% of bw limit", _bandwidth_share))
    for batch in speeds[:1] + speeds[1:][-1:]:
        key = sweep_key("tokens_per_s", batch)
        columns.append((f"tok/s b{batch}", lambda r, key=key: fmt_num(metric(r, key), 4)))
    columns += [
        ("ppl", _quality("perplexity", ".4g")),
        ("ppl ratio", _quality("ppl_ratio", ".3f")),
        ("KL mean", _quality("kl_mean", ".3g")),
        ("KL p99", _quality("kl_p99", ".3g")),
        ("top-1", _quality("top1_agreement", ".3f")),
        ("calibration", _calibration),
    ]
    return columns


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status(result: Result) -> str:
    """ok, random weights, or the error's first line; batches that ran out of memory too."""
    if result.error:
        text = str(result.error).strip()
        return _short(text.splitlines()[0] if text else "error")
    info = result.info if isinstance(result.info, dict) else {}
    # the runner notes a batch that ran out of memory as info["batch_<B>"] and stops the sweep
    oom = [k.removeprefix("batch_") for k, v in info.items()
           if str(k).startswith("batch_") and "out of memory" in str(v)]
    base = "random weights" if result.random_weights else "ok"
    if result.shared_device:
        base += f"; {SHARED_MARK}"
    return f"{base}; out of memory at b{', b'.join(oom)}" if oom else base


def summary(results: Iterable[Result]) -> Table:
    """The main table: benchmark Results, one row each, empty metric columns dropped."""
    results = benchmarks(results)
    shown = varying(results) if results else ["model", "precision"]
    columns = _columns(results)
    grid = [[fn(r) for _, fn in columns] for r in results]
    keep = [i for i in range(len(columns)) if any(row[i] not in (MISSING, "n/a") for row in grid)]
    table = Table(headers=shown + [columns[i][0] for i in keep] + ["status"])
    for result, cells in zip(results, grid, strict=True):
        settings = _settings(result)
        table.rows.append(Row(result, [settings.get(k, MISSING) for k in shown]
                              + [cells[i] for i in keep] + [status(result)]))
    if any(r.random_weights for r in results):
        table.notes.append(RANDOM_NOTE)
    if any(r.shared_device for r in results):
        table.notes.append(SHARED_NOTE)
    if any(h.startswith(("peak b", "tok/s b", "prefill p")) for h in table.headers):
        table.notes.append("b = batch size, p = prompt tokens; [p10-p90] spread over repeats")
    if any(" ± " in cell for row in table.rows for cell in row.cells):
        table.notes.append("± one standard error over scored tokens (ppl ratio paired per token)")
    return table


def other_table(results: Iterable[Result]) -> Table:
    """Finetune / optimizer Results: every metric they carry, raw."""
    results = others(results)
    keys = list(dict.fromkeys(k for r in results for k in metric_keys(r)))
    table = Table(headers=["kind", "model", "precision", *keys, "status"])
    for result in results:
        cells = [fmt_bytes(metric(result, k)) if k.endswith("_bytes")
                 else fmt_num(metric(result, k), 4) for k in keys]
        spec = result.spec
        table.rows.append(Row(result, [str(spec.kind), str(spec.model), str(spec.precision),
                                       *cells, status(result)]))
    return table


def environment(results: Iterable[Result]) -> dict[str, str]:
    """Device, library versions and dates, each distinct value once."""
    results = list(results)
    env: dict[str, list[str]] = {"device": [], "date": []}
    for result in results:
        if result.device:
            env["device"].append(str(result.device))
        versions = result.versions if isinstance(result.versions, dict) else {}
        for name, version in versions.items():
            env.setdefault(str(name), []).append(str(version))
    stamps = sorted(str(r.timestamp) for r in results if r.timestamp)
    env["date"] = [stamps[0], stamps[-1]] if stamps else ["unknown"]
    env["device"] = env["device"] or ["unknown"]
    return {k: ", ".join(dict.fromkeys(v)) if k != "date" else " to ".join(dict.fromkeys(v))
            for k, v in env.items()}


def rich_table(table: Table, title: str | None = None) -> Any:
    """A rich Table; cells are Text so that '[...]' in a model id is never read as markup."""
    from rich.table import Table as RichTable
    from rich.text import Text

    out = RichTable(title=title, caption=Text("\n".join(table.notes)) if table.notes else None)
    for header in table.headers:
        # names stay whole; numbers and spreads may wrap when the terminal is narrow
        whole = header in ("model", "precision")
        out.add_column(header, no_wrap=whole, overflow="ellipsis" if whole else "fold")
    for row in table.rows:
        style = "red" if row.error else "yellow" if row.random else None
        cells = [Text(cell) for cell in row.cells]
        if row.random:
            cells[0].append(" ⚠")  # the caption says what the mark means
        out.add_row(*cells, style=style)
    return out


def rich_checks(model: str, checks: list[Check]) -> Any:
    from rich.table import Table as RichTable
    from rich.text import Text

    colors = {"pass": "green", "fail": "bold red", "n/a": "dim"}
    out = RichTable(title=Text(f"checks: {model}"), show_header=True)
    for header in ("", "check", "value", "expected"):
        out.add_column(header, overflow="fold")
    for check in checks:
        out.add_row(Text(check.status.upper(), style=colors[check.status]),
                    Text(check.name), Text(check.value), Text(check.expected))
    return out

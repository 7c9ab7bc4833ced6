"""The report's charts with matplotlib: PNG files for papers and READMEs, bytes for the HTML.

Figures are built with `matplotlib.figure.Figure`, not pyplot: no global state, no GUI backend,
nothing left open. A chart with no data to draw is skipped (None), never drawn empty.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from quantbench.report.table import benchmarks, label, metric, suffixes, varying
from quantbench.results import Result, sweep, sweep_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIB = 2**20
RANDOM_SUFFIX = " (random weights)"


def _text(text: object) -> str:
    """Model ids are data, not TeX: a '$' must not start mathtext (it can even raise)."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    # imported here so that `import quantbench.report` (and ResultList) stays light
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _usable(results: Iterable[Result]) -> list[Result]:
    return [r for r in benchmarks(results) if r.ok]


def _names(results: list[Result]) -> list[str]:
    shown = varying(results)
    with_model = len({r.spec.model for r in results}) > 1
    return [_text(label(r, shown, with_model) + (RANDOM_SUFFIX if r.random_weights else ""))
            for r in results]


def memory_chart(results: Iterable[Result]) -> Figure | None:
    """Weights footprint next to the peak while generating, per batch size; a panel per model
    so that a 7B run does not flatten a 135M one."""
    results = [r for r in _usable(results) if metric(r, "weights_footprint_bytes") is not None]
    if not results:
        return None
    series = [("weights", "weights_footprint_bytes")]
    series += [(f"peak b{b}", sweep_key("peak_generate_bytes", b))
               for b in suffixes(results, "peak_generate_bytes")]
    models = list(dict.fromkeys(r.spec.model for r in results))
    widest = max(sum(r.spec.model == m for r in results) for m in models)
    fig = _figure(max(6.0, 1.2 * widest + 3), 3.6 * len(models))
    width = 0.8 / len(series)
    for panel, model in zip(fig.subplots(len(models), 1, squeeze=False)[:, 0], models, strict=True):
        group = [r for r in results if r.spec.model == model]
        for i, (name, key) in enumerate(series):
            xs = [j + i * width for j in range(len(group))]
            ys = [(metric(r, key) or 0) / MIB for r in group]
            panel.bar(xs, ys, width, label=name, hatch="//" if i == 0 else None)
        names = [_text(label(r, varying(group), False)) for r in group]
        panel.set_xticks([j + 0.4 - width / 2 for j in range(len(group))], names)
        random = RANDOM_SUFFIX if any(r.random_weights for r in group) else ""
        panel.set_title(_text(f"{model}{random}"), fontsize="medium")
        panel.set_ylabel("MiB")
        panel.legend(fontsize="small")
    fig.suptitle("Memory per precision: weights vs peak while generating")
    return fig


def _series(result: Result, family: str, batches: list[int]) -> tuple[list[int], list[float]]:
    measured = sweep(result.metrics, family) if isinstance(result.metrics, dict) else {}
    points = [(b, measured[b]) for b in batches if isinstance(measured.get(b), (int, float))]
    return [b for b, _ in points], [v for _, v in points]


def latency_chart(results: Iterable[Result]) -> Figure | None:
    """Decode latency per step and throughput as the batch grows, both as measured."""
    results = _usable(results)
    families = ("tokens_per_s", "decode_ms_per_token")
    batches = sorted({b for family in families for b in suffixes(results, family)})
    panels = [(family, title, ylabel) for family, title, ylabel in (
        ("decode_ms_per_token", "Decode latency vs batch size", "ms per decoding step"),
        ("tokens_per_s", "Throughput vs batch size", "generated tokens/s (incl. prefill)"),
    ) if any(_series(r, family, batches)[0] for r in results)]
    results = [r for r in results if any(_series(r, f, batches)[0] for f, _, _ in panels)]
    if not results:
        return None
    fig = _figure(5 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (family, title, ylabel) in zip(axes, panels, strict=True):
        for result, name in zip(results, _names(results), strict=True):
            ax.plot(*_series(result, family, batches), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set(xlabel="batch size", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
    # one legend under the panels, where it cannot hide a line
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=min(4, len(results)), fontsize="small")
    return fig


def decode_chart(results: Iterable[Result]) -> Figure | None:
    """Decode ms/token: median bars, p10-p90 whiskers."""
    results = [r for r in _usable(results) if metric(r, "decode_ms_per_token") is not None]
    if not results:
        return None
    medians = [metric(r, "decode_ms_per_token") for r in results]
    low, high = [], []
    for result, median in zip(results, medians, strict=True):
        p10, p90 = (metric(result, f"decode_ms_per_token_{p}") for p in ("p10", "p90"))
        # whiskers cannot be negative: a spread missing or inconsistent draws none
        low.append(max(0.0, median - p10) if p10 is not None else 0.0)
        high.append(max(0.0, p90 - median) if p90 is not None else 0.0)
    fig = _figure(max(6.0, 0.9 * len(results) + 3), 4.2)
    ax = fig.add_subplot()
    ax.bar(range(len(results)), medians, yerr=[low, high], capsize=4, color="tab:purple")
    ax.set_xticks(range(len(results)), _names(results), rotation=20, ha="right")
    ax.set_ylabel("ms per generated token (batch 1)")
    ax.set_title("Decode latency: median, p10-p90")
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both memory and loss (lower is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        beaten = any(ox <= x and oy <= y and (ox, oy) != (x, y) for ox, oy in points)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _quality_key(results: list[Result]) -> str:
    every_ratio = all(metric(r, "ppl_ratio") is not None for r in results)
    return "ppl_ratio" if every_ratio else "perplexity"


def quality_chart(results: Iterable[Result]) -> Figure | None:
    """Perplexity vs weights footprint, per model, with the Pareto frontier joined and ringed."""
    results = [r for r in _usable(results) if not r.random_weights
               and metric(r, "weights_footprint_bytes") is not None
               and (metric(r, "ppl_ratio") is not None or metric(r, "perplexity") is not None)]
    if not results:
        return None
    key = _quality_key(results)
    results = [r for r in results if metric(r, key) is not None]
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    names = _names(results)
    models = list(dict.fromkeys(r.spec.model for r in results))
    for model in models:
        idx = [i for i, r in enumerate(results) if r.spec.model == model]
        pts = [(metric(results[i], "weights_footprint_bytes") / MIB, metric(results[i], key))
               for i in idx]
        dots = ax.scatter([x for x, _ in pts], [y for _, y in pts], zorder=3,
                          label=_text(model) if len(models) > 1 else None)
        front = [pts[i] for i in pareto_front(pts)]
        ax.plot([x for x, _ in front], [y for _, y in front], "--", color=dots.get_facecolor()[0],
                zorder=2)
        ax.scatter([x for x, _ in front], [y for _, y in front], s=180, facecolors="none",
                   edgecolors="black", zorder=4)
        for i, (x, y) in zip(idx, pts, strict=True):
            ax.annotate(names[i], (x, y), textcoords="offset points", xytext=(5, 5),
                        fontsize="small")
    ax.scatter([], [], s=120, facecolors="none", edgecolors="black", label="Pareto frontier")
    ax.set_xlabel("weights footprint (MiB)")
    ax.set_ylabel("perplexity / reference" if key == "ppl_ratio" else "perplexity")
    ax.set_title("Quality vs memory (lower-left is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


CHARTS: dict[str, Callable[[list[Result]], Figure | None]] = {
    "memory": memory_chart,
    "latency_vs_batch": latency_chart,
    "decode_ms_per_token": decode_chart,
    "quality_vs_memory": quality_chart,
}


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def render_charts(results: Iterable[Result]) -> dict[str, Figure | None]:
    results = list(results)
    return {name: chart(results) for name, chart in CHARTS.items()}


def save_plots(results: Iterable[Result], folder: str | Path, dpi: int = 150) -> list[Path]:
    """One PNG per chart that has data; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in render_charts(results).items():
        if fig is not None:
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=dpi)
            written.append(path)
    return written

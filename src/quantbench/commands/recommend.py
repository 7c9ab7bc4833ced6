from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from quantbench import validate


def recommend_command(
    model: str = typer.Argument(..., help="HF id, local folder or offline alias"),
    vram: str = typer.Option(..., "--vram", help="memory budget, e.g. 8GiB, 8GB, 8000MiB"),
    max_ppl_increase: str = typer.Option("5%", help="largest perplexity increase accepted"),
    results: str = typer.Option(None, "--results", help="results.jsonl from quantbench run"),
    batch: int = typer.Option(1, "--batch"),
    seq_len: int = typer.Option(2048, "--seq-len"),
    device: str = typer.Option("cuda", help="cuda | cpu"),
    as_json: bool = typer.Option(False, "--json", help="print the recommendation as JSON"),
) -> None:
    """Pick the precision of MODEL that fits VRAM with the best quality."""
    from quantbench.estimate import EstimateSettings
    from quantbench.recommend import recommend
    from quantbench.units import gib

    validate.model_name(model)
    validate.positive(batch=batch, seq_len=seq_len)
    if results:
        validate.results_to_read(results)
    settings = EstimateSettings(batch_size=batch, seq_len=seq_len, device=device)
    rec = recommend(model, vram, max_ppl_increase, results, settings)
    if as_json:
        print(json.dumps(rec.to_dict(), indent=2))
        return
    console = Console()
    winner = rec.winner or "nothing fits"
    console.print(f"[bold]{winner}[/] for {rec.model} in {gib(rec.budget_bytes)} ({rec.source})")
    table = Table()
    for col in ("precision", "needs", "from", "ppl ratio", "verdict"):
        table.add_column(col)
    for c in rec.candidates:
        ratio = "-" if c.ppl_ratio is None else f"{c.ppl_ratio:.4f}"
        table.add_row(c.precision, gib(c.need_bytes or 0), c.memory_metric, ratio, c.verdict)
    console.print(table)
    for note in rec.notes:
        console.print(f"note: {note}")


def register(app: typer.Typer) -> None:
    app.command("recommend")(recommend_command)

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from quantbench import validate


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def optimizers_command(
    model: str = typer.Argument("smollm2-135m", help="HF id, local folder or offline alias"),
    optimizers: str = typer.Option(
        "adamw_torch,adamw_bnb_8bit,paged_adamw_8bit", help="comma-separated optimizer names"
    ),
    modes: str = typer.Option("full,lora,qlora", help="full | lora | qlora, comma-separated"),
    seq_len: int = typer.Option(256),
    batch_size: int = typer.Option(1),
    steps: int = typer.Option(5, help="timed steps after one warm-up step"),
    lora_r: int = typer.Option(16),
    full_precision: str = typer.Option(
        None, help="base precision of full and lora (default: bf16 on GPU, fp32 on CPU)"
    ),
    gradient_checkpointing: bool = typer.Option(False),
    results: str = typer.Option("results.jsonl", help="append one Result per mode x optimizer here"),
) -> None:
    """Optimizer-state memory and step time of AdamW, AdamW8bit, PagedAdamW8bit: full, LoRA, QLoRA."""
    from quantbench.results import append_result
    from quantbench.training import ComparisonConfig, compare_optimizers

    validate.model_name(model)
    validate.positive(seq_len=seq_len, batch_size=batch_size, steps=steps, lora_r=lora_r)
    validate.results_to_append(results)
    config = ComparisonConfig(
        modes=_split(modes), optimizers=_split(optimizers), seq_len=seq_len,
        batch_size=batch_size, steps=steps, lora_r=lora_r, full_precision=full_precision,
        gradient_checkpointing=gradient_checkpointing,
    )
    found = compare_optimizers(model, config)
    for result in found:
        append_result(results, result)
    print_table(found)
    Console().print(f"{len(found)} results appended to {results}")


def print_table(results: list) -> None:  # list[Result]
    table = Table(title=f"optimizers on {results[0].spec.model}" if results else "optimizers")
    for column in ("mode", "precision", "optimizer", "trainable", "state MiB", "paged MiB",
                   "peak MiB", "step ms", "opt step ms", "tokens/s"):
        table.add_column(column, justify="left" if column in ("mode", "precision", "optimizer") else "right")
    notes: list[str] = []
    for r in results:
        w, m = r.spec.workload, r.metrics
        notes += [n for n in r.info.get("notes", []) if n not in notes]
        if not r.ok:
            table.add_row(w["mode"], r.spec.precision, w["optimizer"], *["-"] * 6, f"error: {r.error}")
            continue
        peak = m.get("peak_train_bytes", m.get("rss_growth_train_bytes"))
        table.add_row(
            w["mode"], r.spec.precision, w["optimizer"], f"{m['trainable_parameters']:,}",
            f"{m['optimizer_state_bytes'] / 2**20:.2f}", f"{m['paged_state_bytes'] / 2**20:.2f}",
            f"{peak / 2**20:.1f}", f"{m['train_step_ms']:.1f}", f"{m['optimizer_step_ms']:.1f}",
            f"{m['tokens_per_s']:.1f}",
        )
    console = Console()
    console.print(table)
    if results and "rss_growth_train_bytes" in results[0].metrics:
        console.print("peak MiB on CPU is the growth of process RSS during the steps")
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def register(app: typer.Typer) -> None:
    app.command("optimizers")(optimizers_command)

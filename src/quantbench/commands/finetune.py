from __future__ import annotations

import typer
from rich.console import Console
from typer.core import TyperGroup

from quantbench import validate
from quantbench.errors import QuantbenchError


class _TrainByDefault(TyperGroup):
    """`quantbench finetune MODEL ...` trains; `quantbench finetune merge ...` merges."""

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


finetune_app = typer.Typer(
    cls=_TrainByDefault,
    help="QLoRA fine-tuning: train LoRA adapters on a quantized model, or merge them.",
    no_args_is_help=True,
)


def _targets(text: str) -> str | tuple[str, ...]:
    if text.strip().lower() == "auto":
        return "auto"
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise QuantbenchError("--target-modules needs 'auto' or comma-separated module names")
    return names


@finetune_app.command("train")
def train_command(
    model: str = typer.Argument(..., help="HF id, local folder or offline alias"),
    precision: str = typer.Option("nf4", "--precision", "-p"),
    data: str = typer.Option(
        None, help="training text: .txt, or .jsonl with 'text' (or prompt/completion); default: our sample"
    ),
    output: str = typer.Option(..., "--output", "-o", help="folder for the adapter, plot and result"),
    lora_r: int = typer.Option(16),
    lora_alpha: int = typer.Option(32),
    lora_dropout: float = typer.Option(0.05),
    target_modules: str = typer.Option("auto", help="'auto' (every linear in the blocks) or names, comma-separated"),
    optimizer: str = typer.Option(
        "paged_adamw_8bit", help="adamw_torch | adamw_bnb_8bit | paged_adamw_8bit | paged_adamw_32bit"
    ),
    lr: float = typer.Option(2e-4, help="learning rate"),
    max_steps: int = typer.Option(60),
    batch_size: int = typer.Option(1, help="per process"),
    grad_accum: int = typer.Option(4),
    seq_len: int = typer.Option(256, help="tokens per training block"),
    gradient_checkpointing: bool = typer.Option(True),
    compute_dtype: str = typer.Option(None, help="fp32 | fp16 | bf16 (default: best for device)"),
    seed: int = typer.Option(0),
    results: str = typer.Option(None, help="also append the Result to this JSONL file"),
) -> None:
    """Train LoRA adapters on MODEL loaded in a precision (QLoRA for 4-bit)."""
    from quantbench.results import append_result
    from quantbench.training import FinetuneConfig, distributed, finetune

    validate.model_name(model)
    validate.precision_names(precision)
    if data:
        validate.text_file(data, "training data")
    validate.writable_folder(output)
    if results:
        validate.results_to_append(results)
    config = FinetuneConfig(
        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        target_modules=_targets(target_modules), optimizer=optimizer, learning_rate=lr,
        max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, seq_len=seq_len,
        gradient_checkpointing=gradient_checkpointing, compute_dtype=compute_dtype, seed=seed,
    )
    if max_steps < 1 or seq_len < 2 or batch_size < 1 or grad_accum < 1 or lora_r < 1:
        raise QuantbenchError("--max-steps, --seq-len, --batch-size, --grad-accum, --lora-r must be positive")
    result = finetune(model, precision, data, output, config)
    if distributed()[0] != 0:
        return  # one report, from the first process
    if results:
        append_result(results, result)
    _print_summary(result, output)


def _print_summary(result, output: str) -> None:  # noqa: ANN001
    console = Console()
    m = result.metrics
    for note in result.info.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"target modules: {', '.join(result.info['target_modules'])}")
    console.print(
        f"trainable parameters: {m['trainable_parameters']:,} of {m['all_parameters']:,} "
        f"({100 * m['trainable_share']:.3f}%)"
    )
    memory_key = "peak_train_bytes" if "peak_train_bytes" in m else "rss_growth_train_bytes"
    label = "peak memory (max allocated)" if memory_key == "peak_train_bytes" else "RSS growth (CPU)"
    console.print(
        f"loss {m['train_loss_first']:.4f} -> {m['train_loss_last']:.4f} over {m['train_steps']} steps; "
        f"{m['tokens_per_s']:.1f} tokens/s; {label} {m[memory_key] / 2**20:.1f} MiB; "
        f"optimizer state {m['optimizer_state_bytes'] / 2**20:.2f} MiB"
    )
    console.print(f"adapter, loss_curve.png and result.json saved in {output}")


@finetune_app.command("merge")
def merge_command(
    adapter: str = typer.Argument(..., help="adapter folder written by quantbench finetune"),
    output: str = typer.Option(..., "--output", "-o", help="folder for the merged model"),
    dtype: str = typer.Option("bf16", help="fp16 | bf16 | fp32"),
    base: str = typer.Option(None, help="base model (default: the one the adapter was trained on)"),
) -> None:
    """Fold a LoRA adapter into its unquantized base and save a plain model."""
    from quantbench.training import merge_adapter

    out = merge_adapter(adapter, output, dtype=dtype, base=base)
    Console().print(f"merged {dtype} model saved in {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(finetune_app, name="finetune")

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from quantbench import validate
from quantbench.commands._options import parse_skip_modules


def estimate_command(
    model: str = typer.Argument(..., help="HF id, local folder or offline alias (config only)"),
    precision: str = typer.Option(None, "--precision", "-p", help="comma-separated; default all"),
    batch: int = typer.Option(1, "--batch", help="sequences generated at once"),
    seq_len: int = typer.Option(2048, "--seq-len", help="tokens in the KV cache per sequence"),
    device: str = typer.Option("cuda", help="cuda | cpu: sets the default compute dtype"),
    compute_dtype: str = typer.Option(None, help="fp32 | fp16 | bf16 (default: as load() picks)"),
    skip_modules: str = typer.Option(None, help="linears kept unquantized; 'none' quantizes all"),
    train: str = typer.Option(None, "--train", help="full | lora | qlora"),
    optimizer: str = typer.Option("adamw", help="adamw | adamw8bit | paged_adamw_8bit"),
    lora_r: int = typer.Option(16, "--lora-r"),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing"),
    gpus: int = typer.Option(1, "--gpus", help="split the weights over N equal GPUs"),
    gpu_memory: str = typer.Option(None, help="per-GPU cap for --gpus, e.g. 24GiB"),
    trust_remote_code: bool = typer.Option(False, help="run code shipped with the model"),
    as_json: bool = typer.Option(False, "--json", help="print the estimate as JSON"),
) -> None:
    """Estimate memory for MODEL in each precision from its config, before downloading weights."""
    from quantbench.estimate import EstimateSettings, estimate
    from quantbench.units import parse_size

    validate.model_name(model)
    precisions = validate.precision_names(precision) if precision is not None else None
    validate.positive(batch=batch, seq_len=seq_len, gpus=gpus, lora_r=lora_r)
    settings = EstimateSettings(
        batch_size=batch, seq_len=seq_len, device=device, compute_dtype=compute_dtype,
        skip_modules=parse_skip_modules(skip_modules), train=train, optimizer=optimizer,
        lora_r=lora_r, gradient_checkpointing=gradient_checkpointing, gpus=gpus,
        gpu_memory_bytes=parse_size(gpu_memory) if gpu_memory else None,
        trust_remote_code=trust_remote_code,
    )
    result = estimate(model, precisions, settings)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    console = Console()
    for table in tables(result):
        console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    for p in result.precisions:
        if p.training_note:
            console.print(f"note: {p.precision} training n/a: {p.training_note}")


def _g(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def tables(result: object) -> list[Table]:
    arch, s = result.architecture, result.settings
    title = (f"{result.model}: {arch.model_type}, {arch.parameters:,} parameters, "
             f"batch {s.batch_size} x {s.seq_len} tokens, compute {result.compute_dtype} (GiB)")
    main = Table(title=title)
    for col in ("precision", "quantized params", "kept params", "bits/weight", "weights", "of which constants",
                "KV cache", "activations", "peak inference", "+ context"):
        main.add_column(col, justify="right")
    for p in result.precisions:
        weights = _g(p.weights_bytes)
        if p.run_weights_bytes > p.weights_bytes:
            weights += f" ({_g(p.run_weights_bytes)} running)"
        bits = "-" if p.bits_per_weight is None else f"{p.bits_per_weight:.3g}"
        main.add_row(p.precision, f"{p.quantized_parameters:,}", f"{p.full_precision_parameters:,}", bits,
                     weights, _g(p.quant_constants_bytes), _g(p.kv_cache_bytes),
                     _g(p.activations_bytes), _g(p.peak_inference_bytes),
                     _g(p.inference_total_bytes))
    out = [main]
    if s.train:
        out.append(_training_table(result))
    if s.gpus > 1:
        out.append(_split_table(result))
    out.append(_fit_table(result))
    return out


def _training_table(result: object) -> Table:
    s = result.settings
    table = Table(title=f"training: {s.train}, {s.optimizer}, gradient checkpointing "
                        f"{'on' if s.gradient_checkpointing else 'off'} (GiB)")
    for col in ("precision", "trainable", "weights", "grads", "optimizer", "of which paged",
                "activations", "act. checkpointed", "peak"):
        table.add_column(col, justify="right")
    for p in result.precisions:
        t = p.training
        if t is None:
            table.add_row(p.precision, "n/a", *[""] * 7)
            continue
        table.add_row(p.precision, f"{t.trainable_parameters:,}", _g(t.weights_bytes),
                      _g(t.gradients_bytes), _g(t.optimizer_bytes), _g(t.paged_optimizer_bytes),
                      _g(t.activations_bytes), _g(t.activations_checkpointed_bytes),
                      _g(t.peak_bytes))
    return table


def _split_table(result: object) -> Table:
    table = Table(title=f"split over {result.settings.gpus} GPUs (device_map='auto', balanced)")
    for col in ("precision", "device", "weights GiB", "modules"):
        table.add_column(col)
    for p in result.precisions:
        for share in p.gpu_split:
            mods = share.modules
            shown = ", ".join(mods) if len(mods) <= 3 else f"{mods[0]} ... {mods[-1]} ({len(mods)})"
            table.add_row(p.precision, share.device, _g(share.weights_bytes), shown)
    return table


def _fit_table(result: object) -> Table:
    from quantbench.estimate import GPUS

    modes = ["inference"] + (["training"] if result.settings.train else [])
    per = f" per GPU of {result.settings.gpus}" if result.settings.gpus > 1 else ""
    table = Table(title=f"fits{per}? headroom in GiB (incl. CUDA context)")
    table.add_column("precision")
    table.add_column("mode")
    for name in GPUS:
        table.add_column(name, justify="right")
    for p in result.precisions:
        for mode in modes:
            cells = []
            for name in GPUS:
                room = p.fits[name][mode]
                cells.append("n/a" if room is None else
                             (f"[green]yes {room / 2**30:.1f}[/]" if room >= 0 else "[red]no[/]"))
            table.add_row(p.precision, mode, *cells)
    return table


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate_command)

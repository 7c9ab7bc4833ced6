from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quantbench import validate
from quantbench.commands import _options as opt


def inspect_command(
    model: str = typer.Argument("smollm2-135m", help="HF id, local folder or offline alias"),
    precision: str = typer.Option("nf4", "--precision", "-p"),
    compute_dtype: str = opt.COMPUTE_DTYPE,
    skip_modules: str = opt.SKIP_MODULES,
    int8_threshold: float = opt.INT8_THRESHOLD,
    device_map: str = opt.DEVICE_MAP,
    max_memory: str = opt.MAX_MEMORY,
    trust_remote_code: bool = opt.TRUST_REMOTE_CODE,
    calibration_file: Path = opt.CALIBRATION_FILE,
    calibration_samples: int = opt.CALIBRATION_SAMPLES,
    calibration_seq_len: int = opt.CALIBRATION_SEQ_LEN,
    as_json: bool = typer.Option(False, "--json", help="print the inspection as JSON"),
) -> None:
    """Load MODEL in a precision and show what was quantized and what it weighs."""
    from quantbench.loading import load

    validate.model_name(model)
    calibration = {"calibration_file": calibration_file, "calibration_samples": calibration_samples,
                   "calibration_seq_len": calibration_seq_len}
    options = opt.load_options(
        compute_dtype, skip_modules, int8_threshold, device_map, max_memory, trust_remote_code, calibration
    )
    loaded = load(model, precision, options)
    info = loaded.inspection
    if as_json:
        payload = {
            "model": loaded.model_ref.name,
            "random_weights": loaded.model_ref.random_weights,
            "precision": loaded.precision.name,
            "device": loaded.device,
            **info.to_dict(),
        }
        print(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{loaded.model_ref.label} as {loaded.precision.name}", show_header=False)
    rows = {
        "parameters": f"{info.parameters:,}",
        "quantized layers": ", ".join(f"{k} x{v}" for k, v in info.quantized_layers.items()) or "none",
        "quant types": ", ".join(f"{k} x{v}" for k, v in info.quant_types.items()) or "-",
        "double quant": "yes" if info.double_quant else "no",
        "unquantized linears": ", ".join(info.unquantized_linears) or "none",
        "full-precision modules": ", ".join(f"{k} ({v})" for k, v in info.full_precision_modules.items()),
        "storage dtypes": ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in info.storage_dtypes.items()),
        "compute dtype": info.compute_dtype,
        "weights footprint": f"{info.footprint_bytes:,} B ({info.footprint_bytes / 2**20:.1f} MiB)",
        "ratio to fp16": f"{info.ratio_to_fp16:.3f}",
        "placement": ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in info.devices.items()),
        "load time": f"{loaded.load_seconds:.1f} s",
        **{f"note {i}": note for i, note in enumerate(info.notes, 1)},
    }
    for key, value in rows.items():
        table.add_row(key, escape(value))  # layer classes such as Linear[compressed-tensors]
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)

"""Options shared by commands that load a model: parsed once, here."""

from __future__ import annotations

from typing import Any

import typer

from quantbench.calibration.text import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
from quantbench.errors import QuantbenchError
from quantbench.precisions import DEFAULT_INT8_THRESHOLD, DEFAULT_SKIP_MODULES, DTYPES, LoadOptions
from quantbench.units import parse_size

EXIT_CODES = (
    "Exit status: 0 every precision was measured (one that does not fit is an answer); "
    "1 a precision ended in another error (the results are kept); 2 bad input (nothing "
    "measured, no results file touched); 130 interrupted (what was measured is kept)."
)

# The loading options every model-loading command takes, declared once.
COMPUTE_DTYPE = typer.Option(None, help="fp32 | fp16 | bf16 (default: best for the device)")
SKIP_MODULES = typer.Option(None, help="modules left unquantized, comma-separated; 'none' quantizes all")
INT8_THRESHOLD = typer.Option(DEFAULT_INT8_THRESHOLD, help="LLM.int8 outlier threshold")
DEVICE_MAP = typer.Option(None, help="accelerate device map, e.g. auto")
MAX_MEMORY = typer.Option(None, help="per-device cap, e.g. 0=20GiB,1=20GiB,cpu=30GiB")
TRUST_REMOTE_CODE = typer.Option(False, help="run code shipped with the model")
CALIBRATION_FILE = typer.Option(None, help="text for gptq-4bit / awq-4bit calibration (default: a passage "
                                "shipped with quantbench, distinct from the held-out one)")
CALIBRATION_SAMPLES = typer.Option(DEFAULT_SAMPLES, min=1, help="calibration samples (consecutive windows)")
CALIBRATION_SEQ_LEN = typer.Option(DEFAULT_SEQ_LEN, min=1, help="tokens per calibration sample")

def parse_skip_modules(text: str | None) -> tuple[str, ...]:
    """None: the default (lm_head); 'none': quantize every linear."""
    if text is None:
        return DEFAULT_SKIP_MODULES
    return tuple(m.strip() for m in text.split(",") if m.strip() and m.strip() != "none")


def parse_max_memory(text: str | None) -> dict[Any, str] | None:
    """'0=20GiB,1=20GiB,cpu=30GiB' -> {0: '20GiB', 1: '20GiB', 'cpu': '30GiB'} for accelerate."""
    if not text:
        return None
    out: dict[Any, str] = {}
    for part in text.split(","):
        device, sep, size = part.partition("=")
        device, size = device.strip(), size.strip()
        if not sep or not _is_size(size) or not (device.isdigit() or device in ("cpu", "disk")):
            raise QuantbenchError(
                f"bad --max-memory entry '{part.strip()}'; expected e.g. 0=20GiB,1=20GiB,cpu=30GiB"
            )
        out[int(device) if device.isdigit() else device] = size.replace(" ", "")
    return out


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise QuantbenchError(f"{what} must be comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise QuantbenchError(f"{what} must be positive integers, got '{text}'")
    return values


def load_options(compute_dtype: str | None, skip_modules: str | None, int8_threshold: float,
                 device_map: str | None, max_memory: str | None, trust_remote_code: bool,
                 calibration: dict[str, Any] | None = None) -> LoadOptions:
    """`calibration`: calibration_file / _samples / _seq_len, for the calibrated precisions."""
    if compute_dtype is not None and compute_dtype.lower() not in DTYPES:
        raise QuantbenchError(f"unknown compute dtype '{compute_dtype}'; choose from: fp32, fp16, bf16")
    calibration = dict(calibration or {})
    if calibration.get("calibration_file") is not None:
        calibration["calibration_file"] = str(calibration["calibration_file"])
    return LoadOptions(
        **calibration,
        compute_dtype=compute_dtype,
        skip_modules=parse_skip_modules(skip_modules),
        int8_threshold=int8_threshold,
        device_map=device_map,
        max_memory=parse_max_memory(max_memory),
        trust_remote_code=trust_remote_code,
    )


def _is_size(text: str) -> bool:
    try:
        parse_size(text)
    except QuantbenchError:
        return False
    return True


KERNELS = typer.Option(
    "quantbench", help="fast engine's decode GEMVs on CUDA: quantbench (own Triton kernels) | bnb (the layers' own)"
)


def kernels_choice(name: str) -> str:
    from quantbench.kernels import check_choice

    return check_choice(name)

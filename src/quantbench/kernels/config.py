"""Launch shapes of the GEMV kernels: one fixed choice per (kernel, N, K), never timed at run time.

A shape picked by timing would change the summation order, and so the low bits of the result,
from one process to the next; a table keeps every run's numbers identical. The table was set from
benchmarks/kernels_gemv.py on an H100 (benchmarks/NOTES-decode.md has the sweep).
"""

from __future__ import annotations

import os

# kind -> (BLOCK_N rows per program, BLOCK_K elements per step, warps)
DEFAULTS: dict[str, tuple[int, int, int]] = {
    "dense": (4, 1024, 4),
    "4bit": (8, 512, 4),
    "int8": (8, 1024, 4),
}
LONG_ROWS = {"int8": (8, 2048, 8)}  # K >= 4096: longer steps (tinyllama down_proj sweep)
_OVERRIDES: dict[str, tuple[int, int, int]] = {}
_FOURBIT = {"factored": False}


def fourbit_factored() -> bool:
    """4-bit GEMV variant: absmax applied per block (True) or per weight (False, the default:
    the weight rounded to the activation dtype first, as bitsandbytes' dequantize_4bit does)."""
    return _FOURBIT["factored"]


def set_fourbit_factored(on: bool) -> None:
    _FOURBIT["factored"] = on


def interpreted() -> bool:
    """True under Triton's CPU interpreter (TRITON_INTERPRET=1): no inline PTX there."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def set_config(kind: str, shape: tuple[int, int, int] | None) -> None:
    """Force a launch shape for one kind (the tuning benchmark uses this); None restores the table."""
    if shape is None:
        _OVERRIDES.pop(kind, None)
    else:
        _OVERRIDES[kind] = shape


def config_for(kind: str, n: int, k: int) -> tuple[int, int, int]:
    base = "4bit" if kind.startswith("4bit") else kind
    shape = LONG_ROWS.get(base, DEFAULTS[base]) if k >= 4096 else DEFAULTS[base]
    block_n, block_k, warps = _OVERRIDES.get(base, shape)
    if interpreted():  # the CPU interpreter pays per program: few, wide ones (same numerics class)
        block_n = 128
    if kind.startswith("4bit"):
        block_k = max(block_k, int(kind[4:]))  # a step holds whole quantization blocks
    block_k = min(block_k, max(16, 1 << (k - 1).bit_length()))  # no step wider than the row
    return block_n, block_k, warps

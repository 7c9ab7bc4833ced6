"""What a GEMV reads as its activation: the row as given, or (ACT) silu(gate) * up of a merged
gate/up output [gate | up], so the MLP's elementwise kernel between its two GEMVs disappears.

Roundings as eager fp16/bf16 torch makes them: silu(gate) in fp32, rounded to the activation
dtype; the product in fp32, rounded again."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_x(x_ptr, offsets, mask, half, ACT: tl.constexpr):
    """x[offsets] (0 where `mask` is False; mask None: every offset is in range)."""
    if mask is None:  # noqa: SIM108  (a compile-time branch in Triton)
        gate = tl.load(x_ptr + offsets)
    else:
        gate = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    if ACT:
        if mask is None:  # noqa: SIM108
            up = tl.load(x_ptr + half + offsets)
        else:
            up = tl.load(x_ptr + half + offsets, mask=mask, other=0.0)
        g = gate.to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
        gate = (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)
    return gate


def act_columns(x_cols: int, k: int, act: bool) -> None:
    """The activation a kernel with K = k columns can read from a row of x_cols columns."""
    if x_cols != (2 * k if act else k):
        raise ValueError(f"activation has {x_cols} columns for K = {k}{' (gate | up)' if act else ''}")

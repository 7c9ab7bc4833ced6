"""Triton GEMV kernels for decode (a few activation rows against a whole weight matrix).

Each kernel reads a storage format exactly as its library keeps it, so the model, its checkpoint
and its numerics stay that library's:
  gemv_dense  fp16/bf16/fp32 weights [N, K] (nn.Linear), fp32 accumulation (here);
  gemv_4bit   bitsandbytes NF4/FP4 packed bytes + fp32 absmax per block (fourbit.py);
  gemv_int8   LLM.int8: int8 rows + per-row scale (SCB), threshold 0 bit-exact to bitsandbytes,
              outliers as a fixed-capacity set with a dense fallback (int8.py).

No atomics anywhere: a program owns its output rows (the 4-bit split-K adds its partial sums in a
second kernel, in a fixed order), so a result is the same on every run. Activation rows are a
grid axis: each row re-reads the weights, which is right for decode (1-8 rows) and wrong for
prefill (bitsandbytes' own kernels serve that).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import config_for
from quantbench.kernels.fourbit import gemv_4bit
from quantbench.kernels.int8 import gemv_int8
from quantbench.kernels.prologue import act_columns, load_x

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _dense_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, N, K, stride_x, stride_o,
                  HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        k_ok = k < K
        x = load_x(x_ptr + m * stride_x, k, k_ok, K, ACT).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * x[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_o + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _launch(kernel, x: torch.Tensor, n: int, k: int, out_dtype: torch.dtype, kind: str, *args, **meta) -> torch.Tensor:  # noqa: ANN001
    x2 = _rows(x)
    out = torch.empty(x2.shape[0], n, dtype=out_dtype, device=x.device)
    block_n, block_k, warps, _ = config_for(kind, n, k)
    grid = (triton.cdiv(n, block_n), x2.shape[0])
    kernel[grid](x2, *args, out, n, k, x2.stride(0), out.stride(0),
                 BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, **meta)
    return out.reshape(*x.shape[:-1], n)


def gemv_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               act: bool = False) -> torch.Tensor:
    """x [..., K] @ weight[N, K].T (+ bias), fp32 accumulation, in x's dtype. act: x is
    [..., 2K] = [gate | up] and the kernel reads silu(gate) * up (prologue.py)."""
    n, k = weight.shape
    act_columns(x.shape[-1], k, act)
    return _launch(_dense_kernel, x, n, k, x.dtype, "dense", weight, bias if bias is not None else weight,
                   HAS_BIAS=bias is not None, ACT=act)


__all__ = ["gemv_4bit", "gemv_dense", "gemv_int8"]

"""Triton GEMV kernels for decode (a few activation rows against a whole weight matrix).

Each kernel reads a storage format exactly as its library keeps it, so the model, its checkpoint
and its numerics stay that library's:
  gemv_dense  fp16/bf16/fp32 weights [N, K] (nn.Linear), fp32 accumulation (here);
  gemv_4bit   bitsandbytes NF4/FP4 packed bytes + fp32 absmax per block (fourbit.py);
  gemv_int8   LLM.int8: int8 rows + per-row scale (SCB), threshold 0 bit-exact to bitsandbytes,
              outlier columns' float term in the K-steps that hold one (int8.py).

No atomics anywhere: a program owns its output rows (the 4-bit split-K adds its partial sums in a
second kernel, in a fixed order), so a result is the same on every run. Activation rows are a
grid axis: each row re-reads the weights, which is right for decode (1-8 rows) and wrong for
prefill (bitsandbytes' own kernels serve that).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import config_for, pipeline_stages, rows_once
from quantbench.kernels.fourbit import gemv_4bit
from quantbench.kernels.int8 import gemv_int8
from quantbench.kernels.overlap import launch_options, mode_for, prefetch_range, wait_for_inputs
from quantbench.kernels.prologue import (
    add_residual,
    fused_args,
    load_x,
    prepare_rows,
    prologue,
    row_ends,
    row_rsqrt,
    rows_of,
    weight_tile,
)


@triton.jit
def _dense_kernel(x_ptr, w_ptr, bias_ptr, nw_ptr, eps, res_ptr, out_ptr, N, K, stride_x, stride_r, stride_o,
                  HAS_BIAS: tl.constexpr, PRO: tl.constexpr, RES: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, PDL: tl.constexpr = 0, STAGES: tl.constexpr = None):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    ELEM: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth // 8
    first = pid_n * BLOCK_N
    prefetch_range(w_ptr.to(tl.pointer_type(tl.uint8)), first.to(tl.int64) * K * ELEM,
                   tl.minimum(BLOCK_N, N - first) * K * ELEM, PDL)  # the program's rows, end to end
    wait_for_inputs(PDL)
    bias, res = row_ends(bias_ptr, res_ptr + m * stride_r, rows, row_ok, HAS_BIAS, RES)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    loop_start = 0
    if PRO == 2:  # the first step's weights asked for before the norm's sum of squares, which they do not need
        first_w = weight_tile(w_ptr, rows, row_ok, cols, K)
    r = row_rsqrt(x_ptr + m * stride_x, K, eps, PRO, STAGES=STAGES)
    if PRO == 2:  # that step first, then the loop from the second: the same sums in the same order
        acc += first_w.to(tl.float32) * load_x(x_ptr + m * stride_x, cols, cols < K, K, PRO, nw_ptr,
                                               r).to(tl.float32)[None, :]
        loop_start = BLOCK_K
    for k0 in tl.range(loop_start, K, BLOCK_K, num_stages=STAGES):  # config.pipeline_stages
        k = k0 + cols
        x = load_x(x_ptr + m * stride_x, k, k < K, K, PRO, nw_ptr, r).to(tl.float32)
        acc += weight_tile(w_ptr, rows, row_ok, k, K).to(tl.float32) * x[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += bias
    out = add_residual(out.to(out_ptr.dtype.element_ty), res, RES)
    tl.store(out_ptr + m * stride_o + rows, out, mask=row_ok)


def gemv_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, act: bool = False,
               norm: tuple[torch.Tensor, float] | None = None,
               residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight[N, K].T (+ bias), fp32 accumulation, in x's dtype. act: x is [..., 2K]
    = [gate | up], read as silu(gate) * up; norm (weight, eps): x read RMSNorm-ed; residual:
    added to the result (prologue.py)."""
    n, k = weight.shape
    pro = prologue(x.shape[-1], k, act, norm)
    x2 = rows_of(x)
    out = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    nw, eps, res, stride_r = fused_args(x2, norm, residual, n)
    block_n, block_k, warps, _ = config_for("dense", n, k)
    pdl = mode_for(x.device, "dense", k * weight.element_size(), weight.data_ptr())
    if rows_once("dense", n, k):
        x2, pro = prepare_rows(x2, k, pro, nw, eps, pdl, pipeline_stages("dense")), 0
    _dense_kernel[(triton.cdiv(n, block_n), x2.shape[0])](
        x2, weight, bias if bias is not None else weight, nw, eps, res, out, n, k, x2.stride(0), stride_r,
        out.stride(0), HAS_BIAS=bias is not None, PRO=pro, RES=residual is not None, BLOCK_N=block_n,
        BLOCK_K=block_k, PDL=pdl, STAGES=pipeline_stages("dense"), num_warps=warps, **launch_options(pdl))
    return out.reshape(*x.shape[:-1], n)


__all__ = ["gemv_4bit", "gemv_dense", "gemv_int8"]

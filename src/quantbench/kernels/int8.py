"""LLM.int8 GEMVs: bitsandbytes' int8 rows + per-row fp32 scale (SCB) read as they are.

The activation row is quantized as bitsandbytes does (fp16 absmax over the non-outlier columns,
scale 127/absmax by the GPU's approximate division, round to nearest even), the int8 dot is exact
in int32 and bitsandbytes' fp16 epilogue follows: fma(acc * row * col, 1/127^2, bias).

Threshold 0: one fused kernel per launch (each program quantizes the activation itself); bit-exact
to `Linear8bitLt`.

Threshold > 0 (LLM.int8's outliers: columns with |x| >= threshold), two kernels, no host sync,
static shapes, so a CUDA graph holds them:
  _prepare   one program per activation row: the row's scale, its int8 codes with the outlier
             columns zeroed, and the outlier set: up to CAPACITY (column, value) pairs, in column
             order, and how many there were;
  _outlier_gemv  the int8 dot on those codes, then the outlier term as a gather of at most
             CAPACITY weight columns, dequantized as bitsandbytes does (int8 * SCB / 127, rounded
             to the activation dtype) and multiplied in fp32.
A row with more than CAPACITY outliers takes the dense-mask path instead, inside the same kernel:
every column is tested against the threshold again and the float term runs over the whole row
(exact for any number of outliers, slower). `_prepare` counts those rows in the caller's
`overflow` tensor (one int32 per activation row, never reset by the kernels), so a benchmark can
say how often it happened. bitsandbytes takes the union of the batch's outlier columns; here each
activation row has its own set (identical at batch 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import config_for, interpreted
from quantbench.kernels.prologue import add_residual, fused_args, load_x, prologue, row_rsqrt, rows_of

CAPACITY = 32  # outlier columns per activation row before the dense fallback (counted)


@triton.jit
def _divide(num, den, APPROX: tl.constexpr):
    if APPROX:  # CUDA's __fdividef, which bitsandbytes' quantization kernel uses
        return tl.inline_asm_elementwise("div.approx.f32 $0, $1, $2;", "=r,r,r", [num, den],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return num / den


@triton.jit
def _int8_kernel(x_ptr, w_ptr, scb_ptr, bias_ptr, nw_ptr, eps, res_ptr, out_ptr, N, K, stride_x, stride_r,
                 stride_o, HAS_BIAS: tl.constexpr, APPROX_DIV: tl.constexpr, PRO: tl.constexpr, RES: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    xm = x_ptr + m * stride_x
    r = row_rsqrt(xm, K, eps, PRO)
    # 1. The row's absmax in fp16 (bitsandbytes quantizes A.to(float16)).
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        amax = tl.maximum(amax, tl.abs(load_x(xm, k, k < K, K, PRO, nw_ptr, r).to(tl.float16).to(tl.float32)))
    row_stat = tl.max(amax, axis=0)
    scale = _divide(tl.full([BLOCK_K], 127.0, tl.float32), tl.zeros([BLOCK_K], tl.float32) + row_stat,
                    APPROX_DIV)
    # 2. Quantize the activation chunk, exact int8 x int8 -> int32 dot.
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        x16 = load_x(xm, k, k < K, K, PRO, nw_ptr, r).to(tl.float16).to(tl.float32)
        q = _rint(x16 * scale)
        w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & (k < K)[None, :],
                    other=0, eviction_policy="evict_first")
        acc += w.to(tl.int32) * q.to(tl.int32)[None, :]
    # 3. bitsandbytes' epilogue: fp16 result, then the activation dtype.
    out = _epilogue(tl.sum(acc, axis=1), row_stat, scb_ptr, bias_ptr, rows, row_ok, HAS_BIAS, APPROX_DIV)
    out = add_residual(out.to(out_ptr.dtype.element_ty), res_ptr + m * stride_r, rows, row_ok, RES)
    tl.store(out_ptr + m * stride_o + rows, out, mask=row_ok)


@triton.jit
def _epilogue(acc, row_stat, scb_ptr, bias_ptr, rows, row_ok, HAS_BIAS: tl.constexpr, APPROX_DIV: tl.constexpr):
    """bitsandbytes' int8 matmul epilogue: fp16(fmaf(acc * row * col, 1/127^2, bias))."""
    col = tl.load(scb_ptr + rows, mask=row_ok, other=0.0)
    bias = tl.zeros(acc.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    product = acc.to(tl.float32) * row_stat * col
    if APPROX_DIV:  # compiled: bitsandbytes' fmaf, 1/127^2 as it writes it
        return tl.fma(product, 6.200012e-05, bias).to(tl.float16)
    else:  # the interpreter mistypes tl.fma's result
        return (product * 6.200012e-05 + bias).to(tl.float16)


@triton.jit
def _dequant(w, col, dtype):
    """int8_vectorwise_dequant of weight columns: int8 * SCB * (1/127), rounded to the activation
    dtype as bitsandbytes leaves it, then fp32 for the product."""
    return ((w.to(tl.float32) * col[:, None]) * 7.874015718698502e-3).to(dtype).to(tl.float32)


@triton.jit
def _rint(v):
    # Round half to even without libdevice (the interpreter has none): 1.5 * 2^23 trick, exact
    # for |v| < 2^22; quantized activations are within +-127.
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _prepare(x_ptr, nw_ptr, eps, threshold, q_ptr, stat_ptr, idx_ptr, val_ptr, count_ptr, overflow_ptr, K,
             stride_x, CAP: tl.constexpr, APPROX_DIV: tl.constexpr, PRO: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    xm = x_ptr + m * stride_x
    r = row_rsqrt(xm, K, eps, PRO)
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        a = tl.abs(load_x(xm, k, k < K, K, PRO, nw_ptr, r).to(tl.float16).to(tl.float32))
        amax = tl.maximum(amax, tl.where(a < threshold, a, 0.0))
    row_stat = tl.max(amax, axis=0)
    scale = _divide(tl.full([BLOCK_K], 127.0, tl.float32), tl.zeros([BLOCK_K], tl.float32) + row_stat,
                    APPROX_DIV)
    found = 0
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        ok = k < K
        x = load_x(xm, k, ok, K, PRO, nw_ptr, r)
        x16 = x.to(tl.float16).to(tl.float32)
        outlier = (tl.abs(x16) >= threshold) & ok
        q = tl.where(outlier, 0.0, _rint(x16 * scale))
        tl.store(q_ptr + m * K + k, q.to(tl.int8), mask=ok)
        # compaction without atomics: each outlier's place is the count of outliers before it
        flag = outlier.to(tl.int32)
        place = found + tl.cumsum(flag, axis=0) - 1
        keep = outlier & (place < CAP)
        tl.store(idx_ptr + m * CAP + place, k, mask=keep)
        tl.store(val_ptr + m * CAP + place, x.to(tl.float32), mask=keep)
        found += tl.sum(flag, axis=0)
    tl.store(stat_ptr + m, row_stat)
    tl.store(count_ptr + m, found)
    tl.store(overflow_ptr + m, tl.load(overflow_ptr + m) + (found > CAP).to(tl.int32))


@triton.jit
def _outlier_gemv(q_ptr, stat_ptr, idx_ptr, val_ptr, count_ptr, x_ptr, w_ptr, scb_ptr, bias_ptr, nw_ptr, eps,
                  res_ptr, threshold, out_ptr, N, K, stride_x, stride_r, stride_o, CAP: tl.constexpr,
                  HAS_BIAS: tl.constexpr, APPROX_DIV: tl.constexpr, PRO: tl.constexpr, RES: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    rows = tl.where(row_ok, rows, 0)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        q = tl.load(q_ptr + m * K + k, mask=k < K, other=0)
        w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=(k < K)[None, :], other=0,
                    eviction_policy="evict_first")
        acc += w.to(tl.int32) * q.to(tl.int32)[None, :]
    col = tl.load(scb_ptr + rows)
    row_stat = tl.load(stat_ptr + m)
    out = _epilogue(tl.sum(acc, axis=1), row_stat, scb_ptr, bias_ptr, rows, row_ok, HAS_BIAS, APPROX_DIV)
    out = out.to(out_ptr.dtype.element_ty).to(tl.float32)
    # the outlier term: the outlier columns' weights dequantized, times the kept activations
    count = tl.load(count_ptr + m)
    extra = tl.zeros([BLOCK_N], dtype=tl.float32)
    if count <= CAP:
        slot = tl.arange(0, CAP)
        used = slot < count
        where = tl.load(idx_ptr + m * CAP + slot, mask=used, other=0)
        value = tl.load(val_ptr + m * CAP + slot, mask=used, other=0.0)
        w = tl.load(w_ptr + rows[:, None] * K + where[None, :], mask=used[None, :], other=0)
        extra = tl.sum(_dequant(w, col, x_ptr.dtype.element_ty) * value[None, :], axis=1)
    else:  # more outliers than the set holds: the dense mask over the whole row (counted)
        r = row_rsqrt(x_ptr + m * stride_x, K, eps, PRO)
        dense = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols
            x = load_x(x_ptr + m * stride_x, k, k < K, K, PRO, nw_ptr, r)
            xo = tl.where(tl.abs(x.to(tl.float16).to(tl.float32)) >= threshold, x.to(tl.float32), 0.0)
            w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=(k < K)[None, :], other=0)
            dense += _dequant(w, col, x_ptr.dtype.element_ty) * xo[None, :]
        extra = tl.sum(dense, axis=1)
    out = add_residual((out + extra).to(out_ptr.dtype.element_ty), res_ptr + m * stride_r, rows, row_ok, RES)
    tl.store(out_ptr + m * stride_o + rows, out, mask=row_ok)


def gemv_int8(x: torch.Tensor, weight: torch.Tensor, scb: torch.Tensor, threshold: float = 0.0,
              bias: torch.Tensor | None = None, overflow: torch.Tensor | None = None, act: bool = False,
              norm: tuple[torch.Tensor, float] | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """LLM.int8 linear for a few rows: x [..., K], int8 weight [N, K], SCB [N] fp32. With a
    threshold, `overflow` (int32, one per activation row; optional) counts the rows that had more
    than CAPACITY outliers and took the dense path. act / norm / residual: the fusions of
    prologue.py."""
    n, k = weight.shape
    pro = prologue(x.shape[-1], k, act, norm)
    x2 = rows_of(x)
    rows = x2.shape[0]
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    nw, eps, res, stride_r = fused_args(x2, norm, residual, n)
    block_n, block_k, warps, _ = config_for("int8", n, k)
    # fp32 products must round before they are added or rounded to integers, as in bitsandbytes:
    # no fused multiply-add in these kernels (their dot is integer arithmetic: this costs little).
    fusion = {} if interpreted() else {"enable_fp_fusion": False}
    bias_arg = bias if bias is not None else scb
    grid = (triton.cdiv(n, block_n), rows)
    common = {"HAS_BIAS": bias is not None, "APPROX_DIV": not interpreted(), "PRO": pro,
              "RES": residual is not None, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps, **fusion}
    if threshold <= 0:
        _int8_kernel[grid](x2, weight, scb, bias_arg, nw, eps, res, out, n, k, x2.stride(0), stride_r,
                           out.stride(0), **common)
        return out.reshape(*x.shape[:-1], n)
    if overflow is None or overflow.numel() < rows:
        overflow = torch.zeros(rows, dtype=torch.int32, device=x.device)
    q = torch.empty(rows, k, dtype=torch.int8, device=x.device)
    stat = torch.empty(rows, dtype=torch.float32, device=x.device)
    idx = torch.empty(rows, CAPACITY, dtype=torch.int32, device=x.device)
    val = torch.empty(rows, CAPACITY, dtype=torch.float32, device=x.device)
    count = torch.empty(rows, dtype=torch.int32, device=x.device)
    _prepare[(rows,)](x2, nw, eps, float(threshold), q, stat, idx, val, count, overflow, k, x2.stride(0),
                      CAP=CAPACITY, APPROX_DIV=not interpreted(), PRO=pro,
                      BLOCK_K=min(2048, triton.next_power_of_2(k)), num_warps=8, **fusion)
    _outlier_gemv[grid](q, stat, idx, val, count, x2, weight, scb, bias_arg, nw, eps, res, float(threshold), out,
                        n, k, x2.stride(0), stride_r, out.stride(0), CAP=CAPACITY, **common)
    return out.reshape(*x.shape[:-1], n)

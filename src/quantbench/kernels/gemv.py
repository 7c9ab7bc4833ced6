"""Triton GEMV kernels for decode (a few activation rows against a whole weight matrix).

Each kernel reads a storage format exactly as its library keeps it, so the model, its checkpoint
and its numerics stay that library's:
  gemv_dense  fp16/bf16/fp32 weights [N, K] (nn.Linear), fp32 accumulation;
  gemv_4bit   bitsandbytes NF4/FP4: bytes of the row-major [N, K] matrix, two codes per byte
              (high nibble first), one fp32 absmax per `blocksize` consecutive weights; a weight
              is code[nibble] * absmax rounded to the activation dtype (what bitsandbytes'
              dequantize_4bit produces), products and sums in fp32;
  gemv_int8   LLM.int8: int8 rows + per-row fp32 scale (SCB). The activation row is quantized
              in the kernel as bitsandbytes does (absmax over non-outliers, scale 127/absmax by
              the GPU's approximate division, round to nearest even), the int8 dot is exact in
              int32 and bitsandbytes' fp16 epilogue follows: fma(acc * row * col, 1/127^2, bias).
              With an outlier threshold the columns with |x| >= threshold are a dense mask: they
              are left out of the int8 part and added back in the activation dtype from the
              weight dequantized as bitsandbytes does (int8 * SCB / 127). A dense mask has no
              capacity limit: any number of outliers per token is exact.

Every program owns BLOCK_N output rows and walks all of K: no split-K, no atomics, so a result
is the same on every run. Activation rows are a grid axis: each row re-reads the weights, which
is right for decode (1-8 rows) and wrong for prefill (bitsandbytes' own kernels serve that).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import config_for, fourbit_factored, interpreted

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _dense_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, N, K, stride_x, stride_o,
                  HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        k_ok = k < K
        x = tl.load(x_ptr + m * stride_x + k, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * x[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_o + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _fourbit_kernel(x_ptr, w_ptr, absmax_ptr, code_ptr, bias_ptr, out_ptr, N, K, stride_x, stride_o,
                    W_DTYPE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCKSIZE: tl.constexpr,
                    FACTOR: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # A tile is [rows, quant blocks, bytes of a block]: the absmax broadcasts along the last axis
    # and the two nibbles of a byte meet the even and the odd activation.
    # FACTOR: sum code * x over a block in fp32, then one multiply by its absmax (fewer operations
    # per weight; the weight is code * absmax exactly, not rounded to the activation dtype first).
    # Otherwise each weight is code * absmax rounded to W_DTYPE, as dequantize_4bit writes it.
    NB: tl.constexpr = BLOCK_K // BLOCKSIZE
    HALF: tl.constexpr = BLOCKSIZE // 2
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    blk = tl.arange(0, NB)
    byte = tl.arange(0, HALF)
    row_ok = (rows < N)[:, None, None]
    acc = tl.zeros([BLOCK_N, NB, HALF], dtype=tl.float32)
    acc_blocks = tl.zeros([BLOCK_N, NB], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        blk_ok = (k0 + blk * BLOCKSIZE < K)[None, :, None]
        first = k0 + blk[None, :, None] * BLOCKSIZE + 2 * byte[None, None, :]  # element index in row
        packed = tl.load(w_ptr + rows[:, None, None] * (K // 2) + first // 2, mask=row_ok & blk_ok,
                         other=0, eviction_policy="evict_first")
        hi = tl.load(code_ptr + (packed >> 4).to(tl.int32))
        lo = tl.load(code_ptr + (packed & 15).to(tl.int32))
        x_even = tl.load(x_ptr + m * stride_x + first, mask=blk_ok, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + m * stride_x + first + 1, mask=blk_ok, other=0.0).to(tl.float32)
        if FACTOR:
            scale = tl.load(absmax_ptr + rows[:, None] * (K // BLOCKSIZE) + k0 // BLOCKSIZE + blk[None, :],
                            mask=(rows < N)[:, None] & (k0 + blk * BLOCKSIZE < K)[None, :], other=0.0)
            acc_blocks += tl.sum(hi * x_even + lo * x_odd, axis=2) * scale
        else:
            scale = tl.load(absmax_ptr + rows[:, None, None] * (K // BLOCKSIZE) + k0 // BLOCKSIZE
                            + blk[None, :, None], mask=row_ok & blk_ok, other=0.0)
            w_hi = (hi * scale).to(W_DTYPE).to(tl.float32)
            w_lo = (lo * scale).to(W_DTYPE).to(tl.float32)
            acc += w_hi * x_even + w_lo * x_odd
    out = tl.sum(acc_blocks, axis=1) if FACTOR else tl.sum(tl.sum(acc, axis=2), axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_o + rows, out.to(out_ptr.dtype.element_ty), mask=rows < N)


@triton.jit
def _divide(num, den, APPROX: tl.constexpr):
    if APPROX:  # CUDA's __fdividef, which bitsandbytes' quantization kernel uses
        return tl.inline_asm_elementwise("div.approx.f32 $0, $1, $2;", "=r,r,r", [num, den],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return num / den


@triton.jit
def _int8_kernel(x_ptr, w_ptr, scb_ptr, bias_ptr, threshold, out_ptr, N, K, stride_x, stride_o,
                 OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr, APPROX_DIV: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    # 1. The row's absmax in fp16 (bitsandbytes quantizes A.to(float16)), outliers left out.
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        a = tl.abs(tl.load(x_ptr + m * stride_x + k, mask=k < K, other=0.0).to(tl.float16).to(tl.float32))
        if OUTLIERS:
            a = tl.where(a < threshold, a, 0.0)
        amax = tl.maximum(amax, a)
    row_stat = tl.max(amax, axis=0)
    scale = _divide(tl.full([BLOCK_K], 127.0, tl.float32), tl.zeros([BLOCK_K], tl.float32) + row_stat,
                    APPROX_DIV)
    # 2. Quantize the activation chunk, exact int8 x int8 -> int32 dot; outliers in float.
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    extra = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    if OUTLIERS:
        col_scale = tl.load(scb_ptr + rows, mask=row_ok, other=0.0)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        x = tl.load(x_ptr + m * stride_x + k, mask=k < K, other=0.0)
        x16 = x.to(tl.float16).to(tl.float32)
        q = _rint(x16 * scale)
        if OUTLIERS:
            q = tl.where(tl.abs(x16) < threshold, q, 0.0)
        w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & (k < K)[None, :],
                    other=0, eviction_policy="evict_first")
        acc += w.to(tl.int32) * q.to(tl.int32)[None, :]
        if OUTLIERS:  # noqa: SIM102  (a compile-time branch around a run-time one)
            if tl.max((tl.abs(x16) >= threshold).to(tl.int32), axis=0) > 0:  # rare: skip the float path
                xo = tl.where(tl.abs(x16) >= threshold, x.to(tl.float32), 0.0)
                # int8_vectorwise_dequant: int8 * SCB * (1/127), in the activation dtype
                w_deq = ((w.to(tl.float32) * col_scale[:, None]) * 7.874015718698502e-3)
                extra += w_deq.to(x_ptr.dtype.element_ty).to(tl.float32) * xo[None, :]
    # 3. bitsandbytes' epilogue: fp16 result, then the activation dtype; outliers added there.
    total = tl.sum(acc, axis=1).to(tl.float32)
    col = tl.load(scb_ptr + rows, mask=row_ok, other=0.0)
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    product = total * row_stat * col
    if APPROX_DIV:  # compiled: bitsandbytes' fmaf, 1/127^2 as it writes it
        out = tl.fma(product, 6.200012e-05, bias).to(tl.float16)
    else:  # the interpreter mistypes tl.fma's result
        out = (product * 6.200012e-05 + bias).to(tl.float16)
    out = out.to(out_ptr.dtype.element_ty)
    if OUTLIERS:
        out = (out.to(tl.float32) + tl.sum(extra, axis=1)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + m * stride_o + rows, out, mask=row_ok)


@triton.jit
def _rint(v):
    # Round half to even without libdevice (the interpreter has none): 1.5 * 2^23 trick, exact
    # for |v| < 2^22; quantized activations are within +-127.
    return (v + 12582912.0) - 12582912.0


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _launch(kernel, x: torch.Tensor, n: int, out_dtype: torch.dtype, kind: str, *args, **meta) -> torch.Tensor:  # noqa: ANN001
    x2 = _rows(x)
    out = torch.empty(x2.shape[0], n, dtype=out_dtype, device=x.device)
    block_n, block_k, warps = config_for(kind, n, x.shape[-1])
    grid = (triton.cdiv(n, block_n), x2.shape[0])
    kernel[grid](x2, *args, out, n, x.shape[-1], x2.stride(0), out.stride(0),
                 BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, **meta)
    return out.reshape(*x.shape[:-1], n)


def gemv_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight[N, K].T (+ bias), fp32 accumulation, in x's dtype."""
    n = weight.shape[0]
    return _launch(_dense_kernel, x, n, x.dtype, "dense", weight, bias if bias is not None else weight,
                   HAS_BIAS=bias is not None)


def gemv_4bit(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int,
              blocksize: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] against bitsandbytes' packed 4-bit [N, K] (`absmax` fp32, one per block)."""
    k = x.shape[-1]
    if k % blocksize or absmax.dtype != torch.float32:
        raise ValueError("gemv_4bit needs K % blocksize == 0 and fp32 absmax")
    return _launch(_fourbit_kernel, x, n, x.dtype, f"4bit{blocksize}", packed, absmax, code,
                   bias if bias is not None else absmax, W_DTYPE=_TL_DTYPES[x.dtype],
                   HAS_BIAS=bias is not None, BLOCKSIZE=blocksize, FACTOR=fourbit_factored())


def gemv_int8(x: torch.Tensor, weight: torch.Tensor, scb: torch.Tensor, threshold: float = 0.0,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """LLM.int8 linear for a few rows: x [..., K], int8 weight [N, K], SCB [N] fp32."""
    n = weight.shape[0]
    # fp32 products must round before they are added or rounded to integers, as in bitsandbytes:
    # no fused multiply-add in this kernel (its dot is integer arithmetic, so this costs little).
    fusion = {} if interpreted() else {"enable_fp_fusion": False}
    return _launch(_int8_kernel, x, n, x.dtype, "int8", weight, scb, bias if bias is not None else scb,
                   float(threshold), OUTLIERS=threshold > 0, HAS_BIAS=bias is not None,
                   APPROX_DIV=not interpreted(), **fusion)

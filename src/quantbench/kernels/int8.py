"""LLM.int8 GEMVs: bitsandbytes' int8 rows + per-row fp32 scale (SCB) read as they are.

The activation row is quantized as bitsandbytes does (fp16 absmax over the non-outlier columns,
scale 127/absmax by the GPU's approximate division, round to nearest even), the int8 dot is exact
in int32 and bitsandbytes' fp16 epilogue follows: fma(acc * row * col, 1/127^2, bias).

One fused kernel per launch, no host sync and static shapes, so a CUDA graph holds it: each
program quantizes the activation itself (a pass for the absmax, then the int8 dot).

Threshold 0: bit-exact to `Linear8bitLt`.

Threshold > 0 (LLM.int8's outliers: columns with |x| >= threshold): the absmax pass also counts
the outliers, the int8 codes skip them, and when the row has any, a last pass adds their term
(the weights' columns dequantized as bitsandbytes does, int8 * SCB / 127 rounded to the
activation dtype, times the activation in fp32), loading weights only at outlier columns (masked
loads over OUTLIER_CHUNK-column chunks: only those columns' bytes move). A token without outliers
pays a compare per element and one branch: threshold 0's speed. With outliers the cost follows
the chunks that hold them; there is no capacity to run over and no fallback. bitsandbytes takes
the union of the batch's outlier columns; here each activation row has its own (identical at
batch 1).

Where config.rows_once says so (by default for N and K >= 4096) the row's work is done once
per launch instead of in every program: `_quantize_rows` (one program per row) writes the int8
codes, the row's absmax and a list of its outlier columns and values (up to OUTLIER_SLOTS), and
the GEMV's programs read the codes and take the outlier term from the list: a gather of those
columns' weights (after the int8 dot, or by config.int8_list_gather before it, so that its
loads are in flight during the dot). A row with more outliers than the list holds takes the
masked pass above, from the row itself (no capacity to run over here either). Same codes, same
epilogue; only the outlier term's fp32 sum runs in another order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import (
    config_for,
    int8_list_gather,
    int8_outlier_pass,
    interpreted,
    pipeline_stages,
    rows_once,
    unfused_products,
)
from quantbench.kernels.overlap import OFF, launch_options, mode_for, prefetch_range, wait_for_inputs
from quantbench.kernels.prologue import (
    add_residual,
    finish_x,
    fused_args,
    load_x,
    load_x_parts,
    prologue,
    row_ends,
    row_launch,
    row_rsqrt,
    rows_of,
    weight_tile,
)

OUTLIER_CHUNK = tl.constexpr(256)  # columns per test-and-load of the outlier term
OUTLIER_SLOTS = 64  # outlier columns a row's list holds ("once"); more take the masked pass


@triton.jit
def _divide(num, den, APPROX: tl.constexpr):
    if APPROX:  # CUDA's __fdividef, which bitsandbytes' quantization kernel uses
        return tl.inline_asm_elementwise("div.approx.f32 $0, $1, $2;", "=r,r,r", [num, den],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return num / den


@triton.jit
def _row_scale(xm, nw_ptr, r, threshold, K, PRO: tl.constexpr, OUTLIERS: tl.constexpr, APPROX_DIV: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """The row's absmax in fp16 (bitsandbytes quantizes A.to(float16)), outlier columns left out;
    127 / absmax as a [BLOCK_K] vector; and the outliers counted."""
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    seen = tl.zeros([BLOCK_K], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        amax, seen = _absmax_step(load_x(xm, k, k < K, K, PRO, nw_ptr, r), amax, seen, threshold, OUTLIERS)
    return _scale_of(amax, seen, APPROX_DIV, BLOCK_K)


@triton.jit
def _absmax_step(x, amax, seen, threshold, OUTLIERS: tl.constexpr):
    """amax and seen after one step of x: |x| in fp16 outside the outlier columns, outliers counted."""
    a = tl.abs(x.to(tl.float16).to(tl.float32))
    if OUTLIERS:
        seen += (a >= threshold).to(tl.int32)
        a = tl.where(a < threshold, a, 0.0)
    return tl.maximum(amax, a), seen


@triton.jit
def _scale_of(amax, seen, APPROX_DIV: tl.constexpr, BLOCK_K: tl.constexpr):
    """(absmax, 127 / absmax as a [BLOCK_K] vector, outlier count) from _absmax_step's partials."""
    row_stat = tl.max(amax, axis=0)
    scale = _divide(tl.full([BLOCK_K], 127.0, tl.float32), tl.zeros([BLOCK_K], tl.float32) + row_stat,
                    APPROX_DIV)
    return row_stat, scale, tl.sum(seen, axis=0)


@triton.jit
def _codes(x, scale, threshold, OUTLIERS: tl.constexpr):
    """The activation's int8 codes (as fp32): round(x16 * 127 / absmax), 0 at outlier columns."""
    x16 = x.to(tl.float16).to(tl.float32)
    q = _rint(x16 * scale)
    if OUTLIERS:
        q = tl.where(tl.abs(x16) >= threshold, 0.0, q)
    return q


@triton.jit
def _quantize_rows(x_ptr, nw_ptr, eps, threshold, q_ptr, stat_ptr, idx_ptr, val_ptr, count_ptr, K, stride_x,
                   APPROX_DIV: tl.constexpr, PRO: tl.constexpr, OUTLIERS: tl.constexpr, SLOTS: tl.constexpr,
                   BLOCK_K: tl.constexpr, PDL: tl.constexpr = 0, STAGES: tl.constexpr = None,
                   ONE_STEP: tl.constexpr = False):
    """Row m's int8 codes, absmax and outlier list (columns and values, in column order; the
    count may exceed SLOTS, the list stops there), for the GEMV's programs to read. ONE_STEP
    (the row fits one BLOCK_K step): the row and the norm's weight are loaded once, before the
    sum of squares, and the absmax and the codes come from those registers; else each pass
    loads them again. The same values either way."""
    m = tl.program_id(0)
    wait_for_inputs(PDL)
    xm = x_ptr + m * stride_x
    count = tl.sum(tl.zeros([BLOCK_K], dtype=tl.int32), axis=0)
    if ONE_STEP:
        k = tl.arange(0, BLOCK_K)
        raw, other = load_x_parts(xm, k, k < K, K, PRO, nw_ptr)
        r = row_rsqrt(xm, K, eps, PRO, STAGES=STAGES)
        x = finish_x(raw, other, PRO, r)
        amax, seen = _absmax_step(x, tl.zeros([BLOCK_K], dtype=tl.float32), tl.zeros([BLOCK_K], dtype=tl.int32),
                                  threshold, OUTLIERS)
        row_stat, scale, seen = _scale_of(amax, seen, APPROX_DIV, BLOCK_K)
        count = _store_codes(x, k, K, m, scale, threshold, seen, count, q_ptr, idx_ptr, val_ptr, OUTLIERS, SLOTS)
    else:
        r = row_rsqrt(xm, K, eps, PRO, STAGES=STAGES)
        row_stat, scale, seen = _row_scale(xm, nw_ptr, r, threshold, K, PRO, OUTLIERS, APPROX_DIV, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = load_x(xm, k, k < K, K, PRO, nw_ptr, r)
            count = _store_codes(x, k, K, m, scale, threshold, seen, count, q_ptr, idx_ptr, val_ptr, OUTLIERS,
                                 SLOTS)
    tl.store(stat_ptr + m, row_stat)
    tl.store(count_ptr + m, count)


@triton.jit
def _store_codes(x, k, K, m, scale, threshold, seen, count, q_ptr, idx_ptr, val_ptr, OUTLIERS: tl.constexpr,
                 SLOTS: tl.constexpr):
    """One step of row m's codes stored, and its outliers listed after the `count` before them;
    the count after it."""
    tl.store(q_ptr + m * K + k, _codes(x, scale, threshold, OUTLIERS).to(tl.int8), mask=k < K)
    if OUTLIERS:  # noqa: SIM102 (a compile-time branch around a run-time one)
        if seen > 0:  # a row without outliers skips the list's scan (the GEMV reads none)
            outlier = (tl.abs(x.to(tl.float16).to(tl.float32)) >= threshold) & (k < K)
            slot = count + tl.cumsum(outlier.to(tl.int32), axis=0) - 1
            listed = outlier & (slot < SLOTS)
            tl.store(idx_ptr + m * SLOTS + slot, k, mask=listed)
            tl.store(val_ptr + m * SLOTS + slot, x.to(tl.float32), mask=listed)
            count += tl.sum(outlier.to(tl.int32), axis=0)
    return count


@triton.jit
def _int8_kernel(x_ptr, w_ptr, scb_ptr, bias_ptr, nw_ptr, eps, res_ptr, threshold, out_ptr, N, K, stride_x,
                 stride_r, stride_o, q_ptr, stat_ptr, idx_ptr, val_ptr, count_ptr, HAS_BIAS: tl.constexpr,
                 APPROX_DIV: tl.constexpr, PRO: tl.constexpr, RES: tl.constexpr, OUTLIERS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SKIP_CHUNKS: tl.constexpr = True,
                 CODES: tl.constexpr = False, SLOTS: tl.constexpr = 64, EARLY: tl.constexpr = False,
                 PDL: tl.constexpr = 0, STAGES: tl.constexpr = None):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    first = pid_n * BLOCK_N
    prefetch_range(w_ptr.to(tl.pointer_type(tl.uint8)), first.to(tl.int64) * K, tl.minimum(BLOCK_N, N - first) * K,
                   PDL)  # the program's rows, end to end
    wait_for_inputs(PDL)
    col = tl.load(scb_ptr + rows, mask=row_ok, other=0.0)  # with bias and residual, before the loop
    bias, res = row_ends(bias_ptr, res_ptr + m * stride_r, rows, row_ok, HAS_BIAS, RES)
    xm = x_ptr + m * stride_x
    gathered_w = None
    gathered_val = None
    if CODES:  # _quantize_rows did the row's work
        row_stat = tl.load(stat_ptr + m).to(tl.float32)
        seen = tl.load(count_ptr + m).to(tl.int32)
        if OUTLIERS and EARLY:  # the list's weights in flight during the dot, not after it
            gathered_w, gathered_val = _gather_listed(idx_ptr + m * SLOTS, val_ptr + m * SLOTS, seen, w_ptr, rows,
                                                      row_ok, K, SLOTS)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    loop_start = 0
    if not CODES:  # 1. the row's absmax and scale, outliers counted
        # the first step's weights asked for before the row's passes (the norm's sum of squares,
        # the absmax), which they do not need: in flight while the program walks its row
        first_w = weight_tile(w_ptr, rows, row_ok, cols, K)
        r = row_rsqrt(xm, K, eps, PRO, STAGES=STAGES)
        row_stat, scale, seen = _row_scale(xm, nw_ptr, r, threshold, K, PRO, OUTLIERS, APPROX_DIV, BLOCK_K)
        q = _codes(load_x(xm, cols, cols < K, K, PRO, nw_ptr, r), scale, threshold, OUTLIERS)
        acc += first_w.to(tl.int32) * q.to(tl.int32)[None, :]
        loop_start = BLOCK_K
    # 2. exact int8 x int8 -> int32 dot (integer sums: the peeled step changes no result)
    for k0 in tl.range(loop_start, K, BLOCK_K, num_stages=STAGES):  # config.pipeline_stages
        k = k0 + cols
        # the weights asked for first: behind the activation's codes, computed inline, they
        # would wait for its exchange through shared memory (block barriers), a second round trip
        w = weight_tile(w_ptr, rows, row_ok, k, K)
        if CODES:
            q = tl.load(q_ptr + m * K + k, mask=k < K, other=0)
        else:
            q = _codes(load_x(xm, k, k < K, K, PRO, nw_ptr, r), scale, threshold, OUTLIERS)
        acc += w.to(tl.int32) * q.to(tl.int32)[None, :]
    # 3. bitsandbytes' epilogue: fp16 result, then the activation dtype; the outlier term is added
    # to that rounded result, as bitsandbytes adds its fp16 outlier matmul.
    out = _epilogue(tl.sum(acc, axis=1), row_stat, col, bias, APPROX_DIV)
    out = out.to(out_ptr.dtype.element_ty)
    if OUTLIERS:  # noqa: SIM102 (a compile-time branch around a run-time one)
        if seen > 0:
            if CODES:
                extra = _listed_or_passed(xm, gathered_w, gathered_val, idx_ptr + m * SLOTS, val_ptr + m * SLOTS,
                                          seen, w_ptr, scb_ptr, nw_ptr, eps, threshold, rows, row_ok, K, PRO,
                                          BLOCK_N, SKIP_CHUNKS, SLOTS, EARLY)
            else:
                extra = _outlier_term(xm, w_ptr, scb_ptr, nw_ptr, r, threshold, rows, row_ok, K, PRO, BLOCK_N,
                                      SKIP_CHUNKS)
            out = (out.to(tl.float32) + extra).to(out_ptr.dtype.element_ty)
    out = add_residual(out, res, RES)
    tl.store(out_ptr + m * stride_o + rows, out, mask=row_ok)


@triton.jit
def _gather_listed(idx_ptr, val_ptr, count, w_ptr, rows, row_ok, K, SLOTS: tl.constexpr):
    """A row's listed outlier values [SLOTS] and its rows' int8 weights at those columns
    [BLOCK_N, SLOTS]; nothing loaded past the count, nor for a list that overflowed."""
    j = tl.arange(0, SLOTS)
    listed = j < tl.where(count <= SLOTS, count, 0)
    idx = tl.load(idx_ptr + j, mask=listed, other=0)
    val = tl.load(val_ptr + j, mask=listed, other=0.0)
    w = tl.load(w_ptr + rows[:, None] * K + idx[None, :], mask=row_ok[:, None] & listed[None, :], other=0)
    return w, val


@triton.jit
def _listed_or_passed(xm, gathered_w, gathered_val, idx_ptr, val_ptr, count, w_ptr, scb_ptr, nw_ptr, eps, threshold,
                      rows, row_ok, K, PRO: tl.constexpr, BLOCK_N: tl.constexpr, SKIP_CHUNKS: tl.constexpr,
                      SLOTS: tl.constexpr, GATHERED: tl.constexpr):
    """The outlier term from a row's list (its columns' weights gathered, dequantized as in
    _outlier_term, times the listed values, summed in fp32); a row with more outliers than the
    list holds takes _outlier_term's pass over the row. GATHERED: the program gathered the list
    before its int8 dot (gathered_w, gathered_val); else it gathers it here."""
    if count <= SLOTS:
        if GATHERED:
            w, val = gathered_w, gathered_val
        else:
            w, val = _gather_listed(idx_ptr, val_ptr, count, w_ptr, rows, row_ok, K, SLOTS)
        col = tl.load(scb_ptr + rows, mask=row_ok, other=0.0)  # again, as in _outlier_term
        extra = tl.sum(_dequant(w, col, xm.dtype.element_ty) * val[None, :], axis=1)
    else:
        extra = _outlier_term(xm, w_ptr, scb_ptr, nw_ptr, row_rsqrt(xm, K, eps, PRO), threshold, rows, row_ok, K,
                              PRO, BLOCK_N, SKIP_CHUNKS)
    return extra


@triton.jit
def _outlier_term(xm, w_ptr, scb_ptr, nw_ptr, r, threshold, rows, row_ok, K, PRO: tl.constexpr,
                  BLOCK_N: tl.constexpr, SKIP_CHUNKS: tl.constexpr):
    """sum over outlier columns of the dequantized weight times the activation, in fp32, in one
    pass over the row in OUTLIER_CHUNK-column chunks; weights are loaded only at outlier columns
    (masked loads, from L2: the int8 dot just read them), and small tiles keep the kernel's
    registers at the int8 dot's count. SKIP_CHUNKS: a chunk without outliers is skipped after a
    block-wide test (the chunks then run one after another); else every chunk runs its masked
    loads into a 2-D sum reduced once at the end (more instructions, no reductions in the loop;
    config.set_int8_outlier_pass chooses)."""
    # the rows' SCB again, from L1: the epilogue's copy passed in stays live through the int8 dot,
    # up to 6 more registers in the compiled kernel (Triton 3.6), for a load only outlier rows make
    col = tl.load(scb_ptr + rows, mask=row_ok, other=0.0)
    if SKIP_CHUNKS:
        extra = tl.zeros([BLOCK_N], dtype=tl.float32)
    else:
        wide = tl.zeros([BLOCK_N, OUTLIER_CHUNK], dtype=tl.float32)
    for k0 in range(0, K, OUTLIER_CHUNK):
        k = k0 + tl.arange(0, OUTLIER_CHUNK)
        x = load_x(xm, k, k < K, K, PRO, nw_ptr, r)
        outlier = (tl.abs(x.to(tl.float16).to(tl.float32)) >= threshold) & (k < K)
        xo = tl.where(outlier, x.to(tl.float32), 0.0)
        at = w_ptr + rows[:, None] * K + k[None, :]
        keep = row_ok[:, None] & outlier[None, :]
        if SKIP_CHUNKS:
            if tl.max(outlier.to(tl.int32), axis=0) > 0:
                extra += tl.sum(_dequant(tl.load(at, mask=keep, other=0), col, xm.dtype.element_ty) * xo[None, :],
                                axis=1)
        else:
            wide += _dequant(tl.load(at, mask=keep, other=0), col, xm.dtype.element_ty) * xo[None, :]
    if not SKIP_CHUNKS:
        extra = tl.sum(wide, axis=1)
    return extra


@triton.jit
def _epilogue(acc, row_stat, col, bias, APPROX_DIV: tl.constexpr):
    """bitsandbytes' int8 matmul epilogue: fp16(fmaf(acc * row * col, 1/127^2, bias)); col the
    rows' SCB, bias theirs (fp32, 0 without)."""
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


def quantize_rows(x2: torch.Tensor, k: int, threshold: float, pro: int = 0, nw: torch.Tensor | None = None,
                  eps: float = 0.0, pdl: int = OFF) -> tuple[torch.Tensor, ...]:
    """LLM.int8's activation quantization of rows x2 (read through prologue PRO): int8 codes
    [rows, k] (0 at outlier columns), absmax [rows] fp32, outlier columns and values [rows,
    OUTLIER_SLOTS] (int32, fp32; in column order, the first OUTLIER_SLOTS) and the outlier count
    [rows] int32. pdl: the launch mode of the GEMV that reads them."""
    rows = x2.shape[0]
    q = torch.empty(rows, k, dtype=torch.int8, device=x2.device)
    stat = torch.empty(rows, dtype=torch.float32, device=x2.device)
    count = torch.empty(rows, dtype=torch.int32, device=x2.device)
    idx = torch.empty(rows, OUTLIER_SLOTS, dtype=torch.int32, device=x2.device)
    val = torch.empty(rows, OUTLIER_SLOTS, dtype=torch.float32, device=x2.device)
    block, launch = row_launch(k, pdl)
    _quantize_rows[(rows,)](x2, x2 if nw is None else nw, eps, float(threshold), q, stat, idx, val, count, k,
                            x2.stride(0), APPROX_DIV=not interpreted(), PRO=pro, OUTLIERS=threshold > 0,
                            SLOTS=OUTLIER_SLOTS, BLOCK_K=block, STAGES=pipeline_stages("int8"), ONE_STEP=block >= k,
                            **unfused_products(), **launch)
    return q, stat, idx, val, count


def gemv_int8(x: torch.Tensor, weight: torch.Tensor, scb: torch.Tensor, threshold: float = 0.0,
              bias: torch.Tensor | None = None, act: bool = False, norm: tuple[torch.Tensor, float] | None = None,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """LLM.int8 linear for a few rows: x [..., K], int8 weight [N, K], SCB [N] fp32, outlier
    threshold (0: none). act / norm / residual: the fusions of prologue.py."""
    n, k = weight.shape
    pro = prologue(x.shape[-1], k, act, norm)
    x2 = rows_of(x)
    rows = x2.shape[0]
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    nw, eps, res, stride_r = fused_args(x2, norm, residual, n)
    block_n, block_k, warps, _ = config_for("int8", n, k)
    # fp32 products round before they are added or rounded to integers, as in bitsandbytes (the
    # dot is integer arithmetic: no fused multiply-add costs little)
    once = rows_once("int8", n, k)
    pdl = mode_for(x.device, "int8-rows" if once else "int8", k, weight.data_ptr())
    if once:
        q, stat, idx, val, count = quantize_rows(x2, k, threshold, pro, nw, eps, pdl)
    else:
        q = stat = count = idx = val = scb  # placeholders, never read
    _int8_kernel[(triton.cdiv(n, block_n), rows)](
        x2, weight, scb, bias if bias is not None else scb, nw, eps, res, float(threshold), out, n, k,
        x2.stride(0), stride_r, out.stride(0), q, stat, idx, val, count, HAS_BIAS=bias is not None,
        APPROX_DIV=not interpreted(), PRO=pro, RES=residual is not None, OUTLIERS=threshold > 0, BLOCK_N=block_n,
        BLOCK_K=block_k, SKIP_CHUNKS=int8_outlier_pass() == "skip", CODES=once, SLOTS=OUTLIER_SLOTS,
        EARLY=int8_list_gather() == "early", PDL=pdl, STAGES=pipeline_stages("int8"),
        num_warps=warps, **unfused_products(), **launch_options(pdl))
    return out.reshape(*x.shape[:-1], n)

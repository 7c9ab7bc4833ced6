"""What a GEMV reads as its activation, and what it adds to its result, so that the elementwise
kernels around a block's GEMVs disappear into them.

Prologue (PRO):
  0  the row as given;
  1  silu(gate) * up of a merged gate/up output [gate | up] (the MLP's activation);
  2  RMSNorm of the row: weight * (x * rsqrt(mean(x^2) + eps)) (the block's norms), each program
     summing the squares of the whole row first (a few KB, from L2).
Epilogue (RES): the result rounded to the activation dtype, plus a residual row, rounded again
(the block's residual adds).
Roundings are those of eager fp16/bf16 torch (transformers' LlamaRMSNorm and LlamaMLP): silu in
fp32 rounded, then the product rounded; the normalised row rounded, then times the weight rounded.

The dense and LLM.int8 GEMVs also share their weight tile's load (weight_tile).

Inline, every program of a GEMV computes the prologue over the whole row it reads; where
config.rows_once says so, `prepare_rows` computes it in a kernel of its own first (one
program per row) and the GEMV reads the result as a plain row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.kernels.overlap import LAUNCH, launch_options, wait_for_inputs


@triton.jit
def row_rsqrt(x_ptr, K, eps, PRO: tl.constexpr, BLOCK: tl.constexpr = 1024, STAGES: tl.constexpr = None):
    """rsqrt(mean(x^2) + eps) of a row of K for PRO 2; 1.0 otherwise. STAGES: its steps' loads
    in flight together (config.pipeline_stages: the same sums in the same order)."""
    if PRO == 2:
        total = tl.zeros([BLOCK], dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK, num_stages=STAGES):
            k = k0 + tl.arange(0, BLOCK)
            v = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            total += v * v
        return tl.rsqrt(tl.sum(total, axis=0) / K + eps)
    else:
        return 1.0


@triton.jit
def _silu_mul(gate, up):
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    return (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)


@triton.jit
def _rms(x, weight, r):
    normed = (x.to(tl.float32) * r).to(x.dtype)
    return (weight.to(tl.float32) * normed.to(tl.float32)).to(x.dtype)


@triton.jit
def _load(ptr, mask):
    if mask is None:  # noqa: SIM108  (a compile-time branch in Triton)
        v = tl.load(ptr)
    else:
        v = tl.load(ptr, mask=mask, other=0)
    return v


@triton.jit
def load_x(x_ptr, offsets, mask, half, PRO: tl.constexpr, nw_ptr, r):
    """The activation at `offsets` (0 where `mask` is False; mask None: all in range). half: the
    up half's offset (PRO 1); nw_ptr, r: the norm's weight and the row's rsqrt (PRO 2)."""
    x, other = load_x_parts(x_ptr, offsets, mask, half, PRO, nw_ptr)
    return finish_x(x, other, PRO, r)


@triton.jit
def load_x_parts(x_ptr, offsets, mask, half, PRO: tl.constexpr, nw_ptr):
    """load_x's loads alone (the row, and the up half or the norm's weight; else the row again),
    which need no rsqrt: a kernel can issue them before it sums the squares."""
    x = _load(x_ptr + offsets, mask)
    other = x
    if PRO == 1:
        other = _load(x_ptr + half + offsets, mask)
    elif PRO == 2:
        other = _load(nw_ptr + offsets, mask)
    return x, other


@triton.jit
def finish_x(x, other, PRO: tl.constexpr, r):
    """load_x's arithmetic on load_x_parts' values."""
    if PRO == 1:
        x = _silu_mul(x, other)
    elif PRO == 2:
        x = _rms(x, other, r)
    return x


@triton.jit
def _prepare_rows_kernel(x_ptr, nw_ptr, eps, out_ptr, K, stride_x, PRO: tl.constexpr, BLOCK: tl.constexpr,
                         PDL: tl.constexpr, STAGES: tl.constexpr = None):
    m = tl.program_id(0)
    wait_for_inputs(PDL)
    xm = x_ptr + m * stride_x
    r = row_rsqrt(xm, K, eps, PRO, STAGES=STAGES)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        tl.store(out_ptr + m * K + k, load_x(xm, k, k < K, K, PRO, nw_ptr, r), mask=k < K)


def prepare_rows(x2: torch.Tensor, k: int, pro: int, nw: torch.Tensor, eps: float, pdl: int,
                 stages: int | None = None) -> torch.Tensor:
    """The rows as a PRO kernel would read them ([rows, k], x2's dtype); x2 itself for PRO 0.
    pdl: the launch mode of the GEMV that reads them (OFF: this one launches plainly too; else
    it launches dependently and lets that GEMV prefetch its weights meanwhile); stages: that
    GEMV's pipeline depth, which the norm's sum of squares takes too."""
    if pro == 0:
        return x2
    out = torch.empty(x2.shape[0], k, dtype=x2.dtype, device=x2.device)
    block, launch = row_launch(k, pdl)
    _prepare_rows_kernel[(x2.shape[0],)](x2, nw, eps, out, k, x2.stride(0), PRO=pro, BLOCK=block, STAGES=stages,
                                         **launch)
    return out


def row_launch(k: int, pdl: int) -> tuple[int, dict]:
    """(elements per step, launch keywords with PDL) of a one-program-per-row kernel before a GEMV
    launched in mode `pdl`: the whole row in one step up to 16k columns. One program per row is
    latency-bound, and each step is a round trip to L2 that the next one waits for (an H100 took
    ~10 us per row of 4096 in 1024-column steps). It launches dependently when the GEMV does."""
    block = min(triton.next_power_of_2(k), 16384)
    mode = min(pdl, LAUNCH)  # nothing of its own to prefetch
    return block, {"PDL": mode, "num_warps": 4 if block <= 2048 else 8 if block <= 8192 else 16,
                   **launch_options(mode)}


@triton.jit
def word_halves(words, DT: tl.constexpr):
    """The (even, odd) 16-bit elements in DT of 32-bit words that hold them low half first."""
    even = (words & 0xFFFF).to(tl.uint16).to(DT, bitcast=True)
    odd = ((words >> 16) & 0xFFFF).to(tl.uint16).to(DT, bitcast=True)
    return even, odd


@triton.jit
def load_pairs(x_ptr, offsets, mask, half, PRO: tl.constexpr, nw_ptr, r):
    """load_x for 16-bit activations read as int32 words: (even, odd) elements of the words at
    `offsets` (in words; `half` too), as fp32. The words keep every load 16 bytes wide and in
    the layout of the packed weights that meet them (no shuffle through shared memory)."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    words = _load(x_ptr.to(tl.pointer_type(tl.int32)) + offsets, mask)
    even, odd = word_halves(words, DT)
    if PRO == 1:
        up_even, up_odd = word_halves(_load(x_ptr.to(tl.pointer_type(tl.int32)) + half + offsets, mask), DT)
        even, odd = _silu_mul(even, up_even), _silu_mul(odd, up_odd)
    elif PRO == 2:
        w_even, w_odd = word_halves(_load(nw_ptr.to(tl.pointer_type(tl.int32)) + offsets, mask), DT)
        even, odd = _rms(even, w_even, r), _rms(odd, w_odd, r)
    return even.to(tl.float32), odd.to(tl.float32)


@triton.jit
def weight_tile(w_ptr, rows, row_ok, k, K):
    """A program's rows of a row-major [N, K] weight at columns k (0 outside), read once: evicted
    from L2 first. The dense and LLM.int8 GEMVs' step load, and their peeled first step's."""
    return tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0,
                   eviction_policy="evict_first")


@triton.jit
def row_ends(bias_ptr, res_ptr, rows, mask, HAS_BIAS: tl.constexpr, RES: tl.constexpr):
    """What a GEMV adds to its output rows after its loop, the bias and the residual (fp32; 0
    without), loaded before the loop: neither depends on it, so their round trip to memory
    overlaps the loop's instead of following it."""
    bias = tl.zeros(rows.shape, dtype=tl.float32)
    res = tl.zeros(rows.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=mask, other=0.0).to(tl.float32)
    if RES:
        res = tl.load(res_ptr + rows, mask=mask, other=0.0).to(tl.float32)
    return bias, res


@triton.jit
def add_residual(out, res, RES: tl.constexpr):
    """`out` (already in the output dtype) plus the residual `res` (row_ends'), rounded (RES), or
    as is."""
    if RES:
        out = (out.to(tl.float32) + res).to(out.dtype)
    return out


def prologue(x_cols: int, k: int, act: bool, norm: object) -> int:
    """PRO for a kernel with K = k reading a row of x_cols columns; raises on a mismatch."""
    if act and norm is not None:
        raise ValueError("a GEMV reads either silu(gate) * up or a normed row, not both")
    if x_cols != (2 * k if act else k):
        raise ValueError(f"activation has {x_cols} columns for K = {k}{' (gate | up)' if act else ''}")
    return 1 if act else 2 if norm is not None else 0


def rows_of(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def fused_args(x2: torch.Tensor, norm: tuple[torch.Tensor, float] | None,
               residual: torch.Tensor | None, n: int) -> tuple:
    """(norm weight, eps, residual rows, residual row stride) kernel arguments; placeholders
    (x itself) where a fusion is off."""
    res = x2 if residual is None else rows_of(residual)
    if residual is not None and res.shape != (x2.shape[0], n):
        raise ValueError(f"residual {tuple(residual.shape)} does not match the output's {x2.shape[0]} x {n}")
    weight, eps = norm if norm is not None else (x2, 0.0)
    return weight, float(eps), res, res.stride(0)

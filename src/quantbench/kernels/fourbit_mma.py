"""The 4-bit GEMV on tensor cores: bitsandbytes' packed NF4/FP4 storage, decoded to 16-bit codes
and multiplied by the activation with tl.dot (a prototype beside fourbit.py; nothing routes to it).

Storage as fourbit.py reads it: row-major [N, K] bytes, two codes per byte (high nibble = element
2j, low = 2j + 1), one fp32 absmax per 64 (`blocksize`) consecutive weights of a row.

Why: fourbit.py and bitsandbytes' gemv_4bit run at the same speed on an H100 and an H200 (1.4x
the bandwidth): both are bound by instructions per weight, not by DRAM. On CUDA cores every
weight costs a code lookup, an fp32 multiply-add per activation row, and its share of the
activation and absmax loads and of the reduction across threads. Here a program decodes a
[BLOCK_N, NB * 64] tile of weights to the activation's 16-bit dtype and hands the multiply-adds
to one tl.dot per K-step:
  - per packed byte what remains is the decode: one lookup in a 256-entry table of code pairs
    (LOOKUPS "byte", built per program from the 16 codes) gives both codes as the packed
    fp16x2 / bf16x2 word the MMA takes ("nibble": two lookups in the 16 codes, and a pack);
  - the multiply-adds are MMA instructions (an m64n16k16 wgmma covers 1024 weights against 16
    activation rows), the activation reaches them as an operand tile from shared memory, never
    as per-weight loads, and every activation row (1-16 at decode) rides in the same instruction;
  - the absmax multiplies the dot's fp32 result once per (output row, block, activation row),
    not once per weight.
Compiled for sm_90 by Triton 3.6 (a static count of the K-loop's machine code, not a timing):
3.0 instructions per weight at the default shape with the byte lookup, 6.4 with the nibble
lookup, 4.3 with X_FIRST, against 9.0 for fourbit.py's default (per-nibble lookup, split
activation, BLOCK_N 4, BLOCK_K 1024).
Instructions are not the whole story: random bytes meet shared-memory bank conflicts in the
256-entry table (about 3-4 ways per warp) and none in the 16 codes, which is why fourbit.py's H100
sweep kept its per-nibble lookup; both lookups are here, for the GPU to choose between.
Numerics: the codes rounded to the activation dtype (as gemv_4bit holds them), exact products in
the dot, fp32 sums; the absmax applied in fp32 per block; one rounding of the result to x's dtype.

The dot needs at least 16 rows on each side and the absmax differs per block, so a step of NB
blocks is one dot with a block-diagonal activation operand: row m * NB + j holds activation row m
on block j's 64 columns and zeros elsewhere, so result row m * NB + j is block j's partial sum
for activation row m, ready for block j's absmax; R = M_PAD * NB >= 16 rows (M_PAD: activation
rows, padded). At one activation row and NB <= 16 this costs no more MMA work than padding M to
16, where a batched (3-D) dot per block would cost NB times as much.

What it costs:
  - the MMA does 16 rows of work for 1-8 useful ones: at 4.8 TB/s of packed weights that is about
    300 dense fp16 TFLOP/s, well under an H200's tensor-core peak, so it is not the bound;
  - the block-diagonal activation is loaded as it is, [R, NB * 64] per step with a mask that is
    constant over each block (16-byte loads; masked-off zeros cost no memory traffic), and
    written to shared memory as the dot's operand: R / BLOCK_N of the weight tile's size;
  - the decoded tile must reach the MMA's operand layout: with the weights as the dot's first
    operand (default: out^T = W x^T, M = BLOCK_N) Hopper's wgmma takes them from registers,
    but the compiler still passes the tile through shared memory once (a store and an ldmatrix
    per 8 weights per thread); with X_FIRST (x first, the weights second: M = R rows, which
    wgmma, 64 rows per warpgroup, does not take, so Ampere's mma.sync) the same;
  - the [BLOCK_N, R] absmax tile is loaded per step and moved to the accumulator's layout.

Launch shapes: SHAPES below, keyed by (N, K) like config.py's table, never timed at run time
(BLOCK_N rows per program, NB quantization blocks per K-step, warps, pipeline stages, SPLIT
programs along K; SPLIT 0: enough programs to fill the SMs twice, each keeping two K-steps). The
entries are first choices from the reasoning above, not from a sweep. Split-K writes fp32
partials that fourbit's _sum_splits adds in a fixed order (no atomics: the same result every run).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import SMS
from quantbench.kernels.fourbit import _sum_splits
from quantbench.kernels.overlap import launch_options, mode_for, prefetch_range, prefetch_rows, wait_for_inputs
from quantbench.kernels.prologue import rows_of

# (BLOCK_N, NB, warps, stages, SPLIT). BLOCK_N 64 with 4 warps: one warpgroup, one wgmma M-tile.
# Four blocks (128 packed bytes per row) per step keep 8 KB of weights per program in flight per
# stage; compiled by Triton 3.6 for sm_90 that takes 160 registers and 72 KB of shared memory at
# three stages: three programs per SM. The tinyllama shapes with few rows and K 2048 take two
# blocks per step, so that their split-K programs keep two steps each.
DEFAULT: tuple[int, int, int, int, int] = (64, 4, 4, 3, 0)
SHAPES: dict[tuple[int, int], tuple[int, int, int, int, int]] = {
    (2560, 2048): (64, 2, 4, 2, 0), (2048, 2048): (64, 2, 4, 2, 0),
}
LOOKUPS = {"nibble": 0, "byte": 1}  # 16-entry table per nibble; 256-entry table of code pairs per byte
_OVERRIDE: list[tuple[int, int, int, int, int]] = []


def set_shape(shape: tuple[int, ...] | None) -> None:
    """Force a launch shape (BLOCK_N, NB, warps, stages, SPLIT) for every call (the benchmark's
    sweep); None restores the table."""
    _OVERRIDE.clear()
    if shape is not None:
        _OVERRIDE.append(tuple(shape))


def launch_shape(n: int, k: int, blocksize: int = 64) -> tuple[int, int, int, int, int]:
    """(BLOCK_N, NB, warps, stages, SPLIT) for an [n, k] matrix, SPLIT resolved."""
    block_n, nb, warps, stages, split = _OVERRIDE[0] if _OVERRIDE else SHAPES.get((n, k), DEFAULT)
    blocks = k // blocksize
    nb = min(nb, triton.next_power_of_2(blocks))  # no step wider than the row
    if split == 0:
        programs, steps = triton.cdiv(n, block_n), triton.cdiv(blocks, nb)
        split = 1 if programs >= 2 * SMS else max(1, min(triton.cdiv(2 * SMS, programs), steps // 2))
    return block_n, nb, warps, stages, split


@triton.jit
def _codes16(code_ptr, DT: tl.constexpr):
    # rounded to nearest even by integer arithmetic: Triton's interpreter truncates on a bf16 cast
    c = tl.load(code_ptr + tl.arange(0, 16)).to(tl.float32)
    if DT.is_bf16():
        bits = c.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return c.to(DT)


@triton.jit
def _pair_table(codes):
    # entry b: code[b >> 4] in the low half (element 2j comes first in memory), code[b & 15] high
    b = tl.arange(0, 256)
    first = tl.gather(codes, b >> 4, 0).to(tl.uint16, bitcast=True).to(tl.uint32)
    second = tl.gather(codes, b & 15, 0).to(tl.uint16, bitcast=True).to(tl.uint32)
    return first | (second << 16)


@triton.jit
def _decode(packed, table, DT: tl.constexpr, BYTES: tl.constexpr):
    """[rows, bytes] packed -> [rows, 2 * bytes] codes in DT, element order."""
    flat: tl.constexpr = [packed.shape[0] * packed.shape[1]]
    if BYTES:
        pairs = tl.reshape(tl.gather(table, tl.reshape(packed.to(tl.int32), flat), 0), packed.shape)
        hi = (pairs & 0xFFFF).to(tl.uint16).to(DT, bitcast=True)
        lo = (pairs >> 16).to(tl.uint16).to(DT, bitcast=True)
    else:
        hi = tl.reshape(tl.gather(table, tl.reshape((packed >> 4).to(tl.int32), flat), 0), packed.shape)
        lo = tl.reshape(tl.gather(table, tl.reshape((packed & 15).to(tl.int32), flat), 0), packed.shape)
    return tl.reshape(tl.join(hi, lo), [packed.shape[0], 2 * packed.shape[1]])


@triton.jit
def _step(x_ptr, w_ptr, absmax_ptr, table, rows, b0, limit, m0, M, row_bytes, row_blocks, stride_x,
          BLOCKSIZE: tl.constexpr, NB: tl.constexpr, M_PAD: tl.constexpr, MASKED: tl.constexpr,
          BYTES: tl.constexpr, X_FIRST: tl.constexpr):
    """Blocks b0 .. b0 + NB (those < limit): the [BLOCK_N, R] (X_FIRST: [R, BLOCK_N]) partial sums,
    absmax applied, R = M_PAD * NB rows of activation row m * NB + block j."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    HALF: tl.constexpr = BLOCKSIZE // 2
    STEP: tl.constexpr = NB * BLOCKSIZE
    R: tl.constexpr = M_PAD * NB
    byte = b0 * HALF + tl.arange(0, NB * HALF)
    at = w_ptr + rows[:, None] * row_bytes + byte[None, :]
    if MASKED:
        packed = tl.load(at, mask=(byte < limit * HALF)[None, :], other=0, eviction_policy="evict_first")
    else:
        packed = tl.load(at, eviction_policy="evict_first")
    w = _decode(packed, table, DT, BYTES)  # [BLOCK_N, STEP]

    # the block-diagonal activation, loaded as it is: the mask is constant over each block's 64
    # columns, so the loads stay 16 bytes wide, and the zeros cost no memory traffic
    r = tl.arange(0, R)
    j = r % NB
    m = m0 + r // NB
    col = b0 * BLOCKSIZE + tl.arange(0, STEP)
    x_ok = (m < M)[:, None] & ((tl.arange(0, STEP) // BLOCKSIZE)[None, :] == j[:, None])
    if MASKED:  # a masked weight decodes to code 0, not 0: its activation must be 0
        x_ok = x_ok & (col < limit * BLOCKSIZE)[None, :]
    xd = tl.load(x_ptr + m[:, None] * stride_x + col[None, :], mask=x_ok, other=0.0)  # [R, STEP]

    if X_FIRST:
        part = tl.dot(xd, tl.trans(w))
        scale_at = absmax_ptr + rows[None, :] * row_blocks + (b0 + j)[:, None]
        scale_ok = (b0 + j < limit)[:, None]
    else:
        part = tl.dot(w, tl.trans(xd))
        scale_at = absmax_ptr + rows[:, None] * row_blocks + (b0 + j)[None, :]
        scale_ok = (b0 + j < limit)[None, :]
    scale = tl.load(scale_at, mask=scale_ok, other=0.0) if MASKED else tl.load(scale_at)
    return part * scale


@triton.jit
def _fourbit_mma_kernel(x_ptr, w_ptr, absmax_ptr, code_ptr, bias_ptr, out_ptr, M, N, row_bytes, row_blocks,
                        split_blocks, stride_x, stride_o, HAS_BIAS: tl.constexpr, BLOCKSIZE: tl.constexpr,
                        SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr, M_PAD: tl.constexpr,
                        BYTES: tl.constexpr, X_FIRST: tl.constexpr, PDL: tl.constexpr = 0):
    DT: tl.constexpr = x_ptr.dtype.element_ty
    R: tl.constexpr = M_PAD * NB
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    m0 = tl.program_id(2) * M_PAD
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows = tl.where(row_ok, rows, 0)  # clamped, not masked: the weight loads stay unconditional
    start = split * split_blocks  # in quantization blocks
    end = tl.minimum(start + split_blocks, row_blocks)
    full_end = start + ((end - start) // NB) * NB
    first = pid_n * BLOCK_N
    count = tl.minimum(BLOCK_N, N - first)
    prefetch_rows(w_ptr, first, count, row_bytes, start * (BLOCKSIZE // 2), (end - start) * (BLOCKSIZE // 2), PDL,
                  BLOCK_N)
    prefetch_range(absmax_ptr.to(tl.pointer_type(tl.uint8)), first.to(tl.int64) * row_blocks * 4,
                   count * row_blocks * 4, PDL)
    table = _codes16(code_ptr, DT)
    if BYTES:
        table = _pair_table(table)
    wait_for_inputs(PDL)
    acc = tl.zeros([R, BLOCK_N] if X_FIRST else [BLOCK_N, R], dtype=tl.float32)
    for b0 in range(start, full_end, NB):
        acc += _step(x_ptr, w_ptr, absmax_ptr, table, rows, b0, end, m0, M, row_bytes, row_blocks, stride_x,
                     BLOCKSIZE, NB, M_PAD, False, BYTES, X_FIRST)
    if full_end < end:  # a last partial step
        acc += _step(x_ptr, w_ptr, absmax_ptr, table, rows, full_end, end, m0, M, row_bytes, row_blocks,
                     stride_x, BLOCKSIZE, NB, M_PAD, True, BYTES, X_FIRST)
    if X_FIRST:
        out = tl.sum(tl.reshape(acc, [M_PAD, NB, BLOCK_N]), axis=1)
    else:
        out = tl.trans(tl.sum(tl.reshape(acc, [BLOCK_N, M_PAD, NB]), axis=2))  # [M_PAD, BLOCK_N]
    m = m0 + tl.arange(0, M_PAD)
    ok = (m < M)[:, None] & row_ok[None, :]
    if SPLIT == 1:
        if HAS_BIAS:
            out += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + m[:, None] * stride_o + rows[None, :], out.to(out_ptr.dtype.element_ty), mask=ok)
    else:  # fp32 partials [M, SPLIT, N], _sum_splits' layout
        tl.store(out_ptr + (m[:, None] * SPLIT + split) * N + rows[None, :], out, mask=ok)


def gemv_4bit_mma(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int,
                  blocksize: int = 64, bias: torch.Tensor | None = None, *, lookup: str = "byte",
                  x_first: bool = False) -> torch.Tensor:
    """x [..., K] (fp16 or bf16) against bitsandbytes' packed 4-bit [N, K] (`absmax` fp32, one per
    block of a row; `code` the format's 16 codes), on tensor cores; in x's dtype. lookup: "byte"
    or "nibble" (LOOKUPS); x_first: x as the dot's first operand (see the module's docstring)."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"gemv_4bit_mma takes fp16 or bf16 activations, not {x.dtype}")
    k = packed.numel() * 2 // n
    if k % blocksize or absmax.dtype != torch.float32 or code.numel() != 16:
        raise ValueError("gemv_4bit_mma needs K % blocksize == 0, fp32 absmax and the 16 codes")
    if x.shape[-1] != k:
        raise ValueError(f"activation has {x.shape[-1]} columns for K = {k}")
    x2 = rows_of(x)
    rows = x2.shape[0]
    block_n, nb, warps, stages, split = launch_shape(n, k, blocksize)
    m_pad = max(min(triton.next_power_of_2(rows), 16), triton.cdiv(16, nb))  # the dot's >= 16 rows
    blocks = k // blocksize
    split_blocks = triton.cdiv(triton.cdiv(blocks, split), nb) * nb  # whole steps: one partial step at most
    split = triton.cdiv(blocks, split_blocks)
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    target = out if split == 1 else torch.empty(rows, split, n, dtype=torch.float32, device=x.device)
    bias_arg = bias if bias is not None else absmax
    pdl = mode_for(x.device, "4bit", k // 2, blocksize // 2, blocks * 4, packed.data_ptr(), absmax.data_ptr())
    _fourbit_mma_kernel[(triton.cdiv(n, block_n), split, triton.cdiv(rows, m_pad))](
        x2, packed, absmax, code, bias_arg, target, rows, n, k // 2, blocks, split_blocks, x2.stride(0),
        out.stride(0), HAS_BIAS=bias is not None, BLOCKSIZE=blocksize, SPLIT=split, BLOCK_N=block_n, NB=nb,
        M_PAD=m_pad, BYTES=LOOKUPS[lookup] == 1, X_FIRST=x_first, PDL=pdl, num_warps=warps, num_stages=stages,
        **launch_options(pdl))
    if split > 1:
        after = mode_for(x.device, "sum")
        _sum_splits[(triton.cdiv(n, 1024), rows)](target, bias_arg, x2, out, n, 0, out.stride(0),
                                                   HAS_BIAS=bias is not None, RES=False, SPLIT=split, BLOCK=1024,
                                                   PDL=after, num_warps=4, **launch_options(after))
    return out.reshape(*x.shape[:-1], n)


__all__ = ["DEFAULT", "LOOKUPS", "SHAPES", "gemv_4bit_mma", "launch_shape", "set_shape"]

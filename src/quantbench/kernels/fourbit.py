"""The 4-bit GEMV: bitsandbytes' packed NF4/FP4 storage read as it is, for a few activation rows.

Storage (bitsandbytes): the row-major [N, K] matrix as bytes, two codes per byte (high nibble
first), one fp32 absmax per `blocksize` consecutive weights of a row (K % blocksize == 0, so a
block never straddles a row); a weight is code[nibble] * absmax.

How it is fast:
  - a program's tile is [rows, quant blocks, bytes of a block]: each thread loads 16 contiguous
    packed bytes, and the activation arrives as contiguous pairs split into the values the high
    and the low nibbles meet (no strided loads), crossing to the bytes' threads as one 32-bit
    word per pair (config.fourbit_activation);
  - the codes are looked up per nibble by warp shuffles of the 16 codes held one per lane (the
    default, nibbles.py), or by config.set_fourbit_gather: from the 16-entry table gathered
    through shared memory ("shared"), per byte from a 256-entry table of (high, low) pairs
    ("bytes"), from L1 ("global"), or by byte permutes over registers ("registers");
  - opt-in (config.fourbit_tile "column"): a thread's pieces of packed bytes lie in several rows
    at the same columns, so each activation value it converts to fp32 serves all of them;
  - the absmax is applied once per block: code * x summed over a block in fp32, then one multiply
    by the block's absmax (the weight is code * absmax exactly, never rounded to fp16 first);
  - a step asks for its packed bytes, absmax and activation together, before the activation's
    exchange through shared memory, so it waits for memory once;
  - split-K for matrices with few rows: SPLIT programs share a row range, each writes an fp32
    partial sum, and a second small kernel adds the partials in a fixed order (no atomics: the
    result is the same on every run).
Launch shapes come from config.py's table (never timed at run time).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import (
    config_for,
    fourbit_activation,
    fourbit_gather,
    fourbit_numerics,
    fourbit_pairs,
    fourbit_tile,
    interpreted,
    pipeline_stages,
    rows_once,
)
from quantbench.kernels.nibbles import lane_code, nibble_codes, register_code, shuffle_codes
from quantbench.kernels.overlap import launch_options, mode_for, prefetch_range, prefetch_rows, wait_for_inputs
from quantbench.kernels.prologue import (
    add_residual,
    fused_args,
    load_pairs,
    load_x,
    prepare_rows,
    prologue,
    row_ends,
    row_rsqrt,
    rows_of,
    word_halves,
)


@triton.jit
def _tile_axes(rows, blocks, COLUMN: tl.constexpr):
    """`rows` and quantization `blocks` as the two leading axes of a step's tiles: [rows, blocks]
    (the row tile) or, COLUMN (config.fourbit_tile "column"), [blocks, rows]."""
    if COLUMN:
        row_at, block_at = rows[None, :], blocks[:, None]
    else:
        row_at, block_at = rows[:, None], blocks[None, :]
    return row_at, block_at


@triton.jit
def _shared_by_rows(t, COLUMN: tl.constexpr):
    """A step's activation values [NB, HALF] with the tiles' rows axis added, so that the rows'
    tiles share them: [1, NB, HALF], or [NB, 1, HALF] for the column tile."""
    return t[:, None, :] if COLUMN else t[None, :, :]


@triton.jit
def _weights(w_ptr, absmax_ptr, rows, b0, row_bytes, row_blocks, limit, BLOCKSIZE: tl.constexpr,
             NB: tl.constexpr, MASKED: tl.constexpr, PAIRS: tl.constexpr, COLUMN: tl.constexpr = False):
    """A step's loads that need nothing from the kernel before: the packed bytes [rows, NB, bytes
    of a block] of quantization blocks b0 .. b0 + NB (positions in blocks, so the compiler sees
    16-byte alignment of every packed row chunk) and, in the split layout, their absmax [rows,
    NB]: asked for together, before the activation's exchange through shared memory (block
    barriers), behind which a load would wait for the activation's. COLUMN (config.fourbit_tile
    "column"): the tiles are [NB, rows, bytes of a block] and [NB, rows], so the compiler lays a
    thread's 16-byte pieces in several rows at the same columns."""
    HALF: tl.constexpr = BLOCKSIZE // 2
    byte = tl.arange(0, HALF)
    row_at, block_at = _tile_axes(rows, b0 + tl.arange(0, NB), COLUMN)
    offsets = row_at[:, :, None] * row_bytes + block_at[:, :, None] * HALF + byte[None, None, :]
    ok = block_at < limit
    if MASKED:
        packed = tl.load(w_ptr + offsets, mask=ok[:, :, None], other=0, eviction_policy="evict_first")
    else:
        packed = tl.load(w_ptr + offsets, eviction_policy="evict_first")
    if PAIRS:  # the absmax is loaded in the packed bytes' layout with the activation (_step_with)
        scale = tl.zeros([1], dtype=tl.float32)
    else:
        scale_at = absmax_ptr + row_at * row_blocks + block_at
        scale = tl.load(scale_at, mask=ok, other=0.0) if MASKED else tl.load(scale_at)
    return packed, scale


@triton.jit
def gathered_codes(packed, TABLE):
    """(high, low) codes of every packed byte from the 16-entry table, gathered per nibble."""
    shape: tl.constexpr = [packed.shape[0] * packed.shape[1] * packed.shape[2]]
    hi = tl.reshape(tl.gather(TABLE, tl.reshape((packed >> 4).to(tl.int32), shape), 0), packed.shape)
    lo = tl.reshape(tl.gather(TABLE, tl.reshape((packed & 15).to(tl.int32), shape), 0), packed.shape)
    return hi, lo


@triton.jit
def split_pairs(x, NB: tl.constexpr, HALF: tl.constexpr, WORDS: tl.constexpr, COLUMN: tl.constexpr = False):
    """A step's 16-bit activation [NB * 2 * HALF] as the fp32 values a byte's high and low nibbles
    meet, [1, NB, HALF] each, for the packed bytes' threads: the (even, odd) pairs cross to them
    as one 32-bit word each (WORDS, config.fourbit_activation) or as two fp32 values. COLUMN:
    [NB, 1, HALF], for the [NB, rows, HALF] tiles."""
    if WORDS:
        even, odd = tl.split(tl.reshape(x.to(tl.uint16, bitcast=True).to(tl.uint32), [NB, HALF, 2]))
        x_hi, x_lo = word_halves(_shared_by_rows((odd << 16) | even, COLUMN), x.dtype)
        x_hi, x_lo = x_hi.to(tl.float32), x_lo.to(tl.float32)
    else:
        x_hi, x_lo = tl.split(tl.reshape(x.to(tl.float32), [NB, HALF, 2]))
        x_hi, x_lo = _shared_by_rows(x_hi, COLUMN), _shared_by_rows(x_lo, COLUMN)
    return x_hi, x_lo


@triton.jit
def _block_mask(rows, ok):
    """A step's quantization blocks in range (`ok`, [NB]) as a [rows, NB, 1] mask, which the
    loads of its [rows, NB, HALF] tiles broadcast."""
    return ok[None, :, None] & (rows[:, None, None] * 0 == 0)


@triton.jit
def pair_words(x_ptr, rows, b0, ok, m, stride_x, row_blocks, nw_ptr, r, NB: tl.constexpr, HALF: tl.constexpr,
               MASKED: tl.constexpr, PRO: tl.constexpr):
    """The activation's (even, odd) 16-bit pairs that the packed bytes of blocks b0 .. b0 + NB
    meet, as fp32 [rows, NB, HALF] each, read by every byte's own thread from memory as 32-bit
    words in the packed bytes' layout (load_pairs, the prologue applied there): the rows share
    them through L1, and nothing crosses shared memory."""
    words = rows[:, None, None] * 0 + (b0 + tl.arange(0, NB))[None, :, None] * HALF + tl.arange(0, HALF)[None, None, :]
    x_mask = _block_mask(rows, ok) if MASKED else None
    return load_pairs(x_ptr + m * stride_x, words, x_mask, row_blocks * HALF, PRO, nw_ptr, r)


@triton.jit
def _step(x_ptr, w_ptr, absmax_ptr, code_ptr, rows, b0, row_bytes, row_blocks, limit, m, stride_x,
          nw_ptr, r, BLOCKSIZE: tl.constexpr, NB: tl.constexpr, MASKED: tl.constexpr, PRO: tl.constexpr,
          PAIRS: tl.constexpr, TABLE=None, BYTES: tl.constexpr = False, BNB: tl.constexpr = False,
          REGS: tl.constexpr = False, SHUFFLE: tl.constexpr = False, WORDS: tl.constexpr = False,
          DIRECT: tl.constexpr = False, COLUMN: tl.constexpr = False):
    packed, scale = _weights(w_ptr, absmax_ptr, rows, b0, row_bytes, row_blocks, limit, BLOCKSIZE, NB, MASKED, PAIRS,
                             COLUMN)
    return _step_with(packed, scale, x_ptr, absmax_ptr, code_ptr, rows, b0, row_blocks, limit, m, stride_x, nw_ptr,
                      r, BLOCKSIZE, NB, MASKED, PRO, PAIRS, TABLE, BYTES, BNB, REGS, SHUFFLE, WORDS, DIRECT, COLUMN)


@triton.jit
def _step_with(packed, scale, x_ptr, absmax_ptr, code_ptr, rows, b0, row_blocks, limit, m, stride_x, nw_ptr, r,
               BLOCKSIZE: tl.constexpr, NB: tl.constexpr, MASKED: tl.constexpr, PRO: tl.constexpr,
               PAIRS: tl.constexpr, TABLE=None, BYTES: tl.constexpr = False, BNB: tl.constexpr = False,
               REGS: tl.constexpr = False, SHUFFLE: tl.constexpr = False, WORDS: tl.constexpr = False,
               DIRECT: tl.constexpr = False, COLUMN: tl.constexpr = False):
    # One step's arithmetic, on its weights from _weights. PAIRS: the activation read as int32
    # words in the packed bytes' layout, the absmax broadcast along each block, the result per
    # byte (summed after the loop); else the activation split through shared memory into the
    # values the high and low nibbles meet (as 32-bit words of 16-bit pairs with WORDS,
    # config.fourbit_activation, else as fp32 values), or with DIRECT read by each byte's thread
    # as pair_words reads them, and each block summed before its absmax multiplies it.
    HALF: tl.constexpr = BLOCKSIZE // 2
    blk = tl.arange(0, NB)
    byte = tl.arange(0, HALF)
    block = b0 + blk
    ok = block < limit
    if REGS:  # byte permutes over the codes held in registers (nibbles.py)
        hi, lo = nibble_codes(packed, code_ptr, x_ptr)
    elif SHUFFLE:  # warp shuffles of each lane's code (nibbles.py); TABLE: this lane's
        hi, lo = shuffle_codes(packed, TABLE)
    elif TABLE is None:
        hi = tl.load(code_ptr + (packed >> 4).to(tl.int32))
        lo = tl.load(code_ptr + (packed & 15).to(tl.int32))
    elif BYTES:  # one lookup per byte: both codes' fp32 bits in one int64 entry
        shape: tl.constexpr = [packed.shape[0] * packed.shape[1] * packed.shape[2]]
        both = tl.reshape(tl.gather(TABLE, tl.reshape(packed.to(tl.int32), shape), 0), packed.shape)
        hi = (both >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        lo = both.to(tl.int32).to(tl.float32, bitcast=True)
    else:
        hi, lo = gathered_codes(packed, TABLE)
    if PAIRS:
        # every tile in the packed bytes' own shape: each thread reads the words and the absmax its
        # bytes meet (the same ones as the threads of other rows, from L1), no layout exchange
        x_hi, x_lo = pair_words(x_ptr, rows, b0, ok, m, stride_x, row_blocks, nw_ptr, r, NB, HALF, MASKED, PRO)
        x_mask = _block_mask(rows, ok) if MASKED else None
        scale_at = absmax_ptr + rows[:, None, None] * row_blocks + block[None, :, None] + byte[None, None, :] * 0
        scale = tl.load(scale_at, mask=x_mask, other=0.0) if MASKED else tl.load(scale_at)
        return (hi * x_hi + lo * x_lo) * scale
    else:
        if DIRECT:  # config.fourbit_activation "direct": no exchange through shared memory
            x_hi, x_lo = pair_words(x_ptr, rows, b0, ok, m, stride_x, row_blocks, nw_ptr, r, NB, HALF, MASKED, PRO)
        else:
            elem = b0 * BLOCKSIZE + tl.arange(0, NB * BLOCKSIZE)
            x_mask = elem < limit * BLOCKSIZE if MASKED else None
            x = load_x(x_ptr + m * stride_x, elem, x_mask, row_blocks * BLOCKSIZE, PRO, nw_ptr, r)
            x_hi, x_lo = split_pairs(x, NB, HALF, WORDS, COLUMN)
        if BNB:  # gemv_4bit's arithmetic: code, absmax, weight and product each in the activation dtype
            DT: tl.constexpr = x_ptr.dtype.element_ty
            s = scale.to(DT).to(tl.float32)[:, :, None]  # [rows, blocks] or, COLUMN, [blocks, rows]
            w_hi = (hi.to(DT).to(tl.float32) * s).to(DT).to(tl.float32)
            w_lo = (lo.to(DT).to(tl.float32) * s).to(DT).to(tl.float32)
            return tl.sum((w_hi * x_hi).to(DT).to(tl.float32) + (w_lo * x_lo).to(DT).to(tl.float32), axis=2)
        return tl.sum(hi * x_hi + lo * x_lo, axis=2) * scale  # [rows, blocks] or, COLUMN, [blocks, rows]


@triton.jit
def _fourbit_kernel(x_ptr, w_ptr, absmax_ptr, code_ptr, bias_ptr, nw_ptr, eps, res_ptr, out_ptr, N, row_bytes,
                    row_blocks, split_blocks, stride_x, stride_r, stride_o, HAS_BIAS: tl.constexpr,
                    BLOCKSIZE: tl.constexpr, SPLIT: tl.constexpr, LOOKUP: tl.constexpr, PRO: tl.constexpr,
                    RES: tl.constexpr, PAIRS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    BNB: tl.constexpr = False, PDL: tl.constexpr = 0, STAGES: tl.constexpr = None,
                    WORDS: tl.constexpr = False, DIRECT: tl.constexpr = False, COLUMN: tl.constexpr = False):
    NB: tl.constexpr = BLOCK_K // BLOCKSIZE
    tl.static_assert(not (COLUMN and (PAIRS or DIRECT)), "the pairs layout and the direct activation read row tiles")
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    m = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows = tl.where(row_ok, rows, 0)  # clamped, not masked: the loads stay unconditional
    start = split * split_blocks  # in quantization blocks
    end = tl.minimum(start + split_blocks, row_blocks)
    if PAIRS:
        acc = tl.zeros([BLOCK_N, NB, BLOCKSIZE // 2], dtype=tl.float32)
    elif COLUMN:
        acc = tl.zeros([NB, BLOCK_N], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_N, NB], dtype=tl.float32)
    full_end = start + ((end - start) // NB) * NB
    first = pid_n * BLOCK_N
    count = tl.minimum(BLOCK_N, N - first)
    prefetch_rows(w_ptr, first, count, row_bytes, start * (BLOCKSIZE // 2), (end - start) * (BLOCKSIZE // 2), PDL,
                  BLOCK_N)
    prefetch_range(absmax_ptr.to(tl.pointer_type(tl.uint8)), first.to(tl.int64) * row_blocks * 4,
                   count * row_blocks * 4, PDL)  # the rows' absmax, end to end
    # LOOKUP 0: the 16 fp32 codes from L1; 1: gathered from shared memory; 2: a 256-entry table
    # of (high, low) code pairs per byte value, gathered from shared memory (code_ptr: int64);
    # 3: byte permutes over register_code's words (no table here); 4: warp shuffles, each lane
    # holding one code
    if LOOKUP == 2:
        table = tl.load(code_ptr + tl.arange(0, 256))
    elif LOOKUP == 4:
        table = lane_code(code_ptr)
    elif LOOKUP == 1:
        table = tl.load(code_ptr + tl.arange(0, 16))
    else:
        table = None
    wait_for_inputs(PDL)
    bias, res = row_ends(bias_ptr, res_ptr + m * stride_r, rows, row_ok, HAS_BIAS and SPLIT == 1, RES)
    loop_start = start
    if PRO == 2:  # the first step's weights asked for before the norm's sum of squares, which they do not need
        first_packed, first_scale = _weights(w_ptr, absmax_ptr, rows, start, row_bytes, row_blocks, full_end,
                                             BLOCKSIZE, NB, True, PAIRS, COLUMN)
    r = row_rsqrt(x_ptr + m * stride_x, row_blocks * BLOCKSIZE, eps, PRO, STAGES=STAGES)
    if PRO == 2:
        if start < full_end:
            acc += _step_with(first_packed, first_scale, x_ptr, absmax_ptr, code_ptr, rows, start, row_blocks, end,
                              m, stride_x, nw_ptr, r, BLOCKSIZE, NB, False, PRO, PAIRS, table,
                              LOOKUP == 2, BNB, LOOKUP == 3, LOOKUP == 4, WORDS, DIRECT, COLUMN)
        loop_start = start + NB
    for b0 in tl.range(loop_start, full_end, NB, num_stages=STAGES):  # config.pipeline_stages
        acc += _step(x_ptr, w_ptr, absmax_ptr, code_ptr, rows, b0, row_bytes, row_blocks, end, m, stride_x,
                     nw_ptr, r, BLOCKSIZE, NB, False, PRO, PAIRS, table,
                     LOOKUP == 2, BNB, LOOKUP == 3, LOOKUP == 4, WORDS, DIRECT, COLUMN)
    if full_end < end:  # a last partial step
        acc += _step(x_ptr, w_ptr, absmax_ptr, code_ptr, rows, full_end, row_bytes, row_blocks, end, m,
                     stride_x, nw_ptr, r, BLOCKSIZE, NB, True, PRO, PAIRS, table,
                     LOOKUP == 2, BNB, LOOKUP == 3, LOOKUP == 4, WORDS, DIRECT, COLUMN)
    out = tl.sum(tl.sum(acc, axis=2), axis=1) if PAIRS else tl.sum(acc, axis=0) if COLUMN else tl.sum(acc, axis=1)
    if SPLIT == 1:
        if BNB:  # bitsandbytes rounds the product to the activation dtype, then adds the bias
            out = out.to(out_ptr.dtype.element_ty).to(tl.float32)
        if HAS_BIAS:
            out += bias
        out = add_residual(out.to(out_ptr.dtype.element_ty), res, RES)
        tl.store(out_ptr + m * stride_o + rows, out, mask=row_ok)
    else:  # fp32 partials [M, SPLIT, N]; _sum_splits adds them
        tl.store(out_ptr + (m * SPLIT + split) * N + rows, out, mask=row_ok)


@triton.jit
def _sum_splits(part_ptr, bias_ptr, res_ptr, out_ptr, N, stride_r, stride_o, HAS_BIAS: tl.constexpr,
                RES: tl.constexpr, SPLIT: tl.constexpr, BLOCK: tl.constexpr, BNB: tl.constexpr = False,
                PDL: tl.constexpr = 0):
    wait_for_inputs(PDL)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = tl.program_id(1)
    ok = rows < N
    bias, res = row_ends(bias_ptr, res_ptr + m * stride_r, rows, ok, HAS_BIAS, RES)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT):  # always in this order: a deterministic sum
        total += tl.load(part_ptr + (m * SPLIT + s) * N + rows, mask=ok, other=0.0)
    if BNB:
        total = total.to(out_ptr.dtype.element_ty).to(tl.float32)
    if HAS_BIAS:
        total += bias
    out = add_residual(total.to(out_ptr.dtype.element_ty), res, RES)
    tl.store(out_ptr + m * stride_o + rows, out, mask=ok)


LOOKUPS = {"global": 0, "shared": 1, "bytes": 2, "registers": 3, "shuffle": 4}  # config.set_fourbit_gather's modes


def byte_table(code: torch.Tensor) -> torch.Tensor:
    """The 256-entry lookup of the "bytes" mode: entry b holds the fp32 bits of code[b >> 4]
    (high word) and code[b & 15] (low word), so one gather decodes both codes of a packed byte."""
    bits = code.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return (bits.repeat_interleave(16) << 32) | bits.repeat(16)


def code_table(code: torch.Tensor, lookup: int) -> torch.Tensor:
    """The table a LOOKUP mode reads, from the 16 codes or from a table built for another mode
    (the engine builds one at install, storage.py; a launch that falls back to the shared lookup
    takes the fp32 codes at the head of register_code's table)."""
    if lookup == LOOKUPS["registers"]:
        return code if code.numel() == 32 else register_code(code)
    codes = code[:16] if code.numel() == 32 else code
    if lookup == LOOKUPS["bytes"]:
        return codes if codes.dtype == torch.int64 else byte_table(codes)
    return codes if codes.dtype == torch.float32 else codes.float()


def gemv_4bit(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int,
              blocksize: int, bias: torch.Tensor | None = None, act: bool = False,
              norm: tuple[torch.Tensor, float] | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] against bitsandbytes' packed 4-bit [N, K] (`absmax` fp32, one per block of a
    row; `code` its 16-entry table, or code_table's for the lookup mode), fp32 accumulation, in
    x's dtype. act / norm / residual: the fusions of prologue.py."""
    k = packed.numel() * 2 // n
    if k % blocksize or absmax.dtype != torch.float32:
        raise ValueError("gemv_4bit needs K % blocksize == 0 and fp32 absmax")
    pro = prologue(x.shape[-1], k, act, norm)
    x2 = rows_of(x)
    rows = x2.shape[0]
    nw, eps, res, stride_r = fused_args(x2, norm, residual, n)
    block_n, block_k, warps, split = config_for(f"4bit{blocksize}", n, k)
    blocks = k // blocksize
    split_blocks = triton.cdiv(blocks, split)  # each split whole quantization blocks
    split = triton.cdiv(blocks, split_blocks)
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    pairs = fourbit_pairs() and x.dtype in (torch.float16, torch.bfloat16)
    bnb_numerics = fourbit_numerics() == "bitsandbytes" and not pairs
    lookup = LOOKUPS[fourbit_gather()]
    if lookup == 3 and (interpreted() or not bnb_numerics or x.dtype not in (torch.float16, torch.bfloat16)):
        lookup = 1  # the register table holds the codes rounded as gemv_4bit rounds them, and needs PTX
    if lookup == 4 and interpreted():
        lookup = 1  # shuffles need PTX; the same codes from shared memory
    code = code_table(code, lookup)
    target = out if split == 1 else torch.empty(rows, split, n, dtype=torch.float32, device=x.device)
    bias_arg = bias if bias is not None else absmax
    pdl = mode_for(x.device, "4bit", k // 2, blocksize // 2, blocks * 4, packed.data_ptr(), absmax.data_ptr())
    if rows_once("4bit", n, k):
        x2, pro = prepare_rows(x2, k, pro, nw, eps, pdl, pipeline_stages("4bit")), 0
    sixteen_bit = x.dtype in (torch.float16, torch.bfloat16)
    # "direct" where the launch has no prologue: with one, each thread would norm or silu its own
    # 32 values per step, four times over the words crossing's count (config.fourbit_activation)
    crossing = fourbit_activation()
    direct = crossing == "direct" and sixteen_bit and pro == 0 and not pairs
    words = crossing != "split" and sixteen_bit and not direct
    column = fourbit_tile() == "column" and not pairs and not direct  # those read in the row tile's layout
    _fourbit_kernel[(triton.cdiv(n, block_n), split, rows)](
        x2, packed, absmax, code, bias_arg, nw, eps, res, target, n, k // 2, blocks, split_blocks, x2.stride(0),
        stride_r, out.stride(0), HAS_BIAS=bias is not None, BLOCKSIZE=blocksize, SPLIT=split,
        LOOKUP=lookup, PRO=pro, RES=residual is not None and split == 1,
        PAIRS=pairs, BLOCK_N=block_n, BLOCK_K=block_k, BNB=bnb_numerics, PDL=pdl, STAGES=pipeline_stages("4bit"),
        WORDS=words, DIRECT=direct, COLUMN=column, num_warps=warps,
        **launch_options(pdl))
    if split > 1:
        block = 1024
        after = mode_for(x.device, "sum")
        _sum_splits[(triton.cdiv(n, block), rows)](target, bias_arg, res, out, n, stride_r, out.stride(0),
                                                    HAS_BIAS=bias is not None, RES=residual is not None,
                                                    SPLIT=split, BLOCK=block, BNB=bnb_numerics, PDL=after,
                                                    num_warps=4, **launch_options(after))
    return out.reshape(*x.shape[:-1], n)

"""4-bit codes looked up in registers: byte permutes instead of a table in shared memory.

The 16 codes of a 4-bit format, rounded to the activation's 16-bit dtype (as bitsandbytes'
gemv_4bit holds them: `quant_map[i] = T(datatype[i])`), fit in eight 32-bit words: four of low
bytes, four of high bytes. PTX's `prmt` picks any four bytes out of two words by 3-bit selectors,
so four nibbles are decoded with six permutes (for each byte half: codes 0-7, codes 8-15, and one
to choose between them by each nibble's top bit) and two more to interleave low and high bytes
into fp16/bf16 pairs: no shared memory, no barrier, no memory access after the eight words.

The lookup needs inline PTX, which Triton's CPU interpreter does not run; the 4-bit kernel uses it
only compiled on a GPU ("registers" in config.set_fourbit_gather, with bitsandbytes' numerics),
and tests run the assembly text itself through a small PTX evaluator.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _lookup(high: bool) -> str:
    """PTX for one nibble of each of four packed bytes ($2): their codes as two registers of two
    16-bit codes each ($0: bytes 0 and 1, $1: bytes 2 and 3). Table word j is $(3 + 4 j): each
    32-bit input takes `pack` registers, of which the first is used."""
    t = [f"${3 + 4 * j}" for j in range(8)]
    nibbles = "shr.b32 n, $2, 4;\n    and.b32 n, n, 0x0F0F0F0F;" if high else "and.b32 n, $2, 0x0F0F0F0F;"
    # nibble fields land in the order bytes 0, 2, 1, 3 (s = n | n >> 12); the last two permutes
    # put them back in element order
    return f"""{{
    .reg .b32 n, s, s3, sel, a, b, lo, hi;
    {nibbles}
    shr.b32 s, n, 12;
    or.b32 s, s, n;
    and.b32 s3, s, 0x7777;
    shr.b32 sel, s, 1;
    and.b32 sel, sel, 0x4444;
    or.b32 sel, sel, 0x3210;
    prmt.b32 a, {t[0]}, {t[1]}, s3;
    prmt.b32 b, {t[2]}, {t[3]}, s3;
    prmt.b32 lo, a, b, sel;
    prmt.b32 a, {t[4]}, {t[5]}, s3;
    prmt.b32 b, {t[6]}, {t[7]}, s3;
    prmt.b32 hi, a, b, sel;
    prmt.b32 $0, lo, hi, 0x6240;
    prmt.b32 $1, lo, hi, 0x7351;
}}"""


HIGH_TEXT, LOW_TEXT = _lookup(True), _lookup(False)
# globals a jit function reads must be constexpr
HIGH, LOW = tl.constexpr(HIGH_TEXT), tl.constexpr(LOW_TEXT)
CONSTRAINTS = tl.constexpr("=r,=r,r," + ",".join(["r"] * 32))


def _shuffle(high: bool) -> str:
    """PTX for one nibble of each of four packed bytes ($4): their fp32 codes ($0-$3), each read
    from the lane whose number the nibble is, where lane j holds code[j % 16] ($5, lane_code). A
    shuffle takes its lane from the index's low five bits: the nibble, and above it one bit of
    the next nibble, which picks lane j or j + 16, both holding code[j]; so no mask is needed."""
    lines = []
    for i in range(4):
        shift = 8 * i + (4 if high else 0)
        if shift:
            lines.append(f"shr.b32 s, $4, {shift};")
        lines.append(f"shfl.sync.idx.b32 ${i}, $5, {'s' if shift else '$4'}, 0x1f, 0xffffffff;")
    return "{\n    .reg .b32 s;\n    " + "\n    ".join(lines) + "\n}"


SHUFFLE_HIGH_TEXT, SHUFFLE_LOW_TEXT = _shuffle(True), _shuffle(False)
SHUFFLE_HIGH, SHUFFLE_LOW = tl.constexpr(SHUFFLE_HIGH_TEXT), tl.constexpr(SHUFFLE_LOW_TEXT)
# four fp32 outputs; the four packed bytes in one register; the lane's code (a 32-bit input takes
# `pack` registers, of which the first is used)
SHUFFLE_CONSTRAINTS = tl.constexpr("=r,=r,=r,=r,r,r,r,r,r")


@triton.jit
def lane_code(code_ptr):
    """code[lane % 16] in every thread: its own lane's code, a value that differs across the warp
    (the shuffles read it from the lane a nibble names), so it must stay in the thread that
    loaded it; a scalar is splat in place, never exchanged between threads."""
    lane = tl.inline_asm_elementwise("mov.u32 $0, %laneid;", "=r,r", [tl.program_id(0)], dtype=tl.int32,
                                     is_pure=True, pack=1)  # (the input only gives the call its shape)
    return tl.load(code_ptr + (lane & 15))


@triton.jit
def shuffle_codes(packed, code):
    """(high, low) fp32 codes of every packed byte by warp shuffles of lane_code's values: exact
    codes, no table in shared memory, one shuffle and at most one shift per nibble."""
    hi = tl.inline_asm_elementwise(SHUFFLE_HIGH, SHUFFLE_CONSTRAINTS, [packed, code], dtype=tl.float32,
                                   is_pure=True, pack=4)
    lo = tl.inline_asm_elementwise(SHUFFLE_LOW, SHUFFLE_CONSTRAINTS, [packed, code], dtype=tl.float32,
                                   is_pure=True, pack=4)
    return hi, lo


def register_words(code: torch.Tensor, dtype: torch.dtype) -> list[int]:
    """The eight table words of `code` (16 values) rounded to `dtype`: low bytes of codes 0-3,
    4-7, 8-11, 12-15, then their high bytes."""
    bits = [int(b) & 0xFFFF for b in code.detach().float().cpu().to(dtype).view(torch.int16).tolist()]
    low = [sum((bits[4 * j + i] & 0xFF) << (8 * i) for i in range(4)) for j in range(4)]
    high = [sum((bits[4 * j + i] >> 8) << (8 * i) for i in range(4)) for j in range(4)]
    return low + high


def register_code(code: torch.Tensor) -> torch.Tensor:
    """What the 4-bit kernel takes as `code` in the "registers" mode: the 16 fp32 codes (for the
    modes it falls back to), then the table words for fp16 and for bf16, as fp32 bit patterns."""
    words = register_words(code, torch.float16) + register_words(code, torch.bfloat16)
    as_int = torch.tensor([w - (1 << 32) if w >= 1 << 31 else w for w in words], dtype=torch.int32)
    return torch.cat([code.detach().float().cpu(), as_int.view(torch.float32)]).to(code.device)


@triton.jit
def nibble_codes(packed, code_ptr, x_ptr):
    """(high, low) codes of every packed byte, in fp32, from register_code's words for the
    activation's dtype (x_ptr's)."""
    DT = x_ptr.dtype.element_ty
    words = code_ptr.to(tl.pointer_type(tl.int32)) + 16 + (8 if tl.bfloat16 == DT else 0)
    t0, t1, t2, t3 = tl.load(words), tl.load(words + 1), tl.load(words + 2), tl.load(words + 3)
    t4, t5, t6, t7 = tl.load(words + 4), tl.load(words + 5), tl.load(words + 6), tl.load(words + 7)
    args = [packed, t0, t1, t2, t3, t4, t5, t6, t7]
    hi = tl.inline_asm_elementwise(HIGH, CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
    lo = tl.inline_asm_elementwise(LOW, CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
    return hi.to(tl.float32), lo.to(tl.float32)


__all__ = ["HIGH_TEXT", "LOW_TEXT", "SHUFFLE_HIGH_TEXT", "SHUFFLE_LOW_TEXT", "lane_code", "nibble_codes",
           "register_code", "register_words", "shuffle_codes"]

"""The register lookup's PTX, run by a small evaluator of the instructions it uses: every byte
value decodes to bitsandbytes' codes rounded to fp16 and to bf16, in element order."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch

from quantbench.kernels.nibbles import (
    HIGH_TEXT,
    LOW_TEXT,
    SHUFFLE_HIGH_TEXT,
    SHUFFLE_LOW_TEXT,
    register_code,
    register_words,
)

MASK = 0xFFFFFFFF


def _prmt(a: int, b: int, selector: int) -> int:
    pool = (b << 32) | a  # bytes 0-3 from a, 4-7 from b
    out = 0
    for i in range(4):
        field = (selector >> (4 * i)) & 0xF
        byte = (pool >> (8 * (field & 7))) & 0xFF
        if field & 8:  # sign-replicate mode: the selected byte's top bit everywhere
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _shfl_idx(lanes: list[int], index: int, clamp: int, member: int) -> int:
    """shfl.sync.idx.b32 with clamp 0x1f and a full warp, as PTX defines it: lane index[4:0]'s value."""
    assert clamp == 0x1F and member == MASK
    return lanes[index & 31]


def _run(asm: str, regs: dict[str, int], lanes: dict[str, list[int]] | None = None) -> dict[str, int]:
    """Run `asm` for one lane; `lanes`: a register's value in each of the warp's 32 lanes (shuffles)."""
    ops = {"shr.b32": lambda a, b: a >> b, "and.b32": lambda a, b: a & b, "or.b32": lambda a, b: a | b}
    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        dst, *srcs = [t.strip() for t in rest.split(",")]
        if op == "shfl.sync.idx.b32":
            source, index, clamp, member = srcs
            regs[dst] = _shfl_idx(lanes[source], regs[index], int(clamp, 16), int(member, 16))
            continue
        values = [int(s, 16) if s.startswith("0x") else int(s) if s.isdigit() else regs[s] for s in srcs]
        regs[dst] = (_prmt(*values) if op == "prmt.b32" else ops[op](*values)) & MASK
    return regs


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_register_lookup_decodes_every_byte(quant_type, dtype):
    code = bnbf.get_4bit_type(quant_type, device="cpu")
    words = register_words(code, dtype)
    expected = code.float().to(dtype).view(torch.int16).tolist()
    table = {f"${3 + 4 * j}": w for j, w in enumerate(words)}
    for first in range(256):  # four bytes per register: every value in every position
        packed = [(first + i * 67) % 256 for i in range(4)]
        regs = table | {"$2": sum(b << (8 * i) for i, b in enumerate(packed))}
        for text, nibble in ((HIGH_TEXT, lambda b: b >> 4), (LOW_TEXT, lambda b: b & 15)):
            out = _run(text, dict(regs))
            got = [(out[r] >> s) & 0xFFFF for r in ("$0", "$1") for s in (0, 16)]
            assert got == [expected[nibble(b)] & 0xFFFF for b in packed]


def test_register_code_keeps_the_codes_and_both_tables():
    code = bnbf.get_4bit_type("nf4", device="cpu")
    table = register_code(code)
    assert torch.equal(table[:16], code.float())
    words = table[16:].view(torch.int32).tolist()
    assert [w & MASK for w in words] == register_words(code, torch.float16) + register_words(code, torch.bfloat16)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_shuffle_lookup_decodes_every_byte_to_the_exact_codes(quant_type):
    """The shuffle lookup's PTX: lane j holds code[j % 16] (lane_code); every byte value, in every
    position of the packed register, gives the fp32 codes of its high and low nibbles exactly."""
    code = bnbf.get_4bit_type(quant_type, device="cpu").float()
    bits = [b & MASK for b in code.view(torch.int32).tolist()]
    lanes = {"$5": [bits[j % 16] for j in range(32)]}
    for first in range(256):
        packed = [(first + i * 67) % 256 for i in range(4)]
        word = sum(b << (8 * i) for i, b in enumerate(packed))
        for text, nibble in ((SHUFFLE_HIGH_TEXT, lambda b: b >> 4), (SHUFFLE_LOW_TEXT, lambda b: b & 15)):
            out = _run(text, {"$4": word}, lanes)
            assert [out[f"${i}"] for i in range(4)] == [bits[nibble(b)] for b in packed]

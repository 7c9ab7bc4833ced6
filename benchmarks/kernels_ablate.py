"""Where the 4-bit GEMV's time goes: its K-loop taken apart, one piece of arithmetic at a time.

    python benchmarks/kernels_ablate.py --out DIR [--models tinyllama,llama7b]
    TRITON_INTERPRET=1 python benchmarks/kernels_ablate.py --check   (CPU: the full variant's bits)

Every variant runs the default kernel's launch shape for the shape (config.FOURBIT: the same
programs, rows and K-steps, a last partial step included) and its loads (the packed bytes,
evict-first, and the absmax, asked for together), and keeps one more part of its arithmetic:
  stream  the packed bytes summed as integers and the absmax as floats: the access pattern alone
  lookup  + the codes by warp shuffle (the activation taken as 1)
  split   + the activation, split into the values the high and low nibbles meet and carried
          through shared memory to the threads that hold the bytes
  full    + the absmax per block: the default kernel's arithmetic for a plain row (no fused norm,
          no residual), whose output equals gemv_4bit's bit for bit (checked on every shape)
  full-xsplit  the same with the activation carried as split fp32 values, not as 32-bit words
          of pairs (two of config.fourbit_activation's modes)
beside gemv_4bit itself with plain launches and with the launch overlap's default (its L2
prefetch), a device copy of the same bytes (read + write, so not a read-only bound), and the
loads alone at other tilings (TILINGS: up to whole 4096-column rows per step).
Times: us per call replayed from a CUDA graph, the calls rotating over copies of the weights so
that none is in L2 (kernels_gemv.graph_us). Writes kernels_ablate.json into --out.

If `stream` is far below the copy bandwidth the tiling itself (short programs, 512-byte pieces of
rows) is what to change; if `stream` is fast and `lookup` or `split` slow, the work per weight.
"""

from __future__ import annotations

import argparse
import json

import triton
import triton.language as tl

from quantbench.kernels.fourbit import _weights, gathered_codes, split_pairs
from quantbench.kernels.nibbles import lane_code, shuffle_codes

VARIANTS = ("stream", "lookup", "split", "full", "full-xsplit")
# the loads alone at other tilings (rows, columns per step, warps): does any access pattern of
# bitsandbytes' row-major bytes reach the copy bandwidth? (the launch-shape sweep of the full
# kernel stopped at 1024 columns per step)
TILINGS = [(4, 1024, 4), (8, 1024, 8), (16, 1024, 8), (4, 2048, 4), (4, 2048, 8), (8, 2048, 8), (2, 4096, 4),
           (4, 4096, 8), (8, 512, 4), (16, 512, 8)]


@triton.jit
def _step(x_ptr, w_ptr, absmax_ptr, rows, b0, row_bytes, row_blocks, table, acc, count, VARIANT: tl.constexpr,
          SHUFFLE: tl.constexpr, NB: tl.constexpr, MASKED: tl.constexpr, WORDS: tl.constexpr):
    """One K-step of VARIANT, as the default kernel's _step loads it (masked: the last partial step)."""
    BLOCKSIZE: tl.constexpr = 64
    packed, scale = _weights(w_ptr, absmax_ptr, rows, b0, row_bytes, row_blocks, row_blocks, BLOCKSIZE, NB,
                             MASKED, False)
    if VARIANT == 0:
        count += tl.sum(tl.sum(packed.to(tl.int32), axis=2), axis=1)
        acc += scale
    else:
        if SHUFFLE:
            hi, lo = shuffle_codes(packed, table)
        else:  # the interpreter: the same codes gathered from a register copy of the table
            hi, lo = gathered_codes(packed, table)
        if VARIANT == 1:
            acc += tl.sum(hi + lo, axis=2) + scale
        else:
            elem = b0 * BLOCKSIZE + tl.arange(0, NB * BLOCKSIZE)
            if MASKED:
                x = tl.load(x_ptr + elem, mask=elem < row_blocks * BLOCKSIZE, other=0.0)
            else:
                x = tl.load(x_ptr + elem)
            x_hi, x_lo = split_pairs(x, NB, BLOCKSIZE // 2, WORDS)
            products = tl.sum(hi * x_hi + lo * x_lo, axis=2)
            if VARIANT == 2:
                acc += products + scale
            else:
                acc += products * scale
    return acc, count


@triton.jit
def _ablated(x_ptr, w_ptr, absmax_ptr, code_ptr, out_ptr, N, row_bytes, row_blocks, VARIANT: tl.constexpr,
             SHUFFLE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WORDS: tl.constexpr = True):
    NB: tl.constexpr = BLOCK_K // 64
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows = tl.where(row_ok, rows, 0)  # clamped, as the default kernel's
    table = lane_code(code_ptr) if SHUFFLE else tl.load(code_ptr + tl.arange(0, 16))
    full_end = (row_blocks // NB) * NB
    acc = tl.zeros([BLOCK_N, NB], dtype=tl.float32)
    count = tl.zeros([BLOCK_N], dtype=tl.int32)
    for b0 in tl.range(0, full_end, NB):
        acc, count = _step(x_ptr, w_ptr, absmax_ptr, rows, b0, row_bytes, row_blocks, table, acc, count, VARIANT,
                           SHUFFLE, NB, False, WORDS)
    if full_end < row_blocks:
        acc, count = _step(x_ptr, w_ptr, absmax_ptr, rows, full_end, row_bytes, row_blocks, table, acc, count,
                           VARIANT, SHUFFLE, NB, True, WORDS)
    out = tl.sum(acc, axis=1) + count.to(tl.float32)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


def ablated(variant: str, x, packed, absmax, code, n: int, tiling: tuple[int, int, int] | None = None):  # noqa: ANN001, ANN201
    """One variant's call on x [1, K] (fp16) against packed 4-bit [N, K]: fp16 [1, N]. tiling:
    (rows, columns per step, warps) instead of the default kernel's."""
    import torch

    from quantbench.kernels.config import config_for, interpreted

    k = x.shape[-1]
    block_n, block_k, warps, split = config_for("4bit64", n, k)
    if tiling:
        block_n, block_k, warps = tiling
    if split != 1:
        raise SystemExit(f"({n}, {k}): the default launch splits K; the ablation covers whole rows only")
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _ablated[(triton.cdiv(n, block_n),)](x, packed, absmax, code, out, n, k // 2, k // 64,
                                         VARIANT=min(VARIANTS.index(variant), 3), SHUFFLE=not interpreted(),
                                         BLOCK_N=block_n, BLOCK_K=block_k, WORDS=variant != "full-xsplit",
                                         num_warps=warps)
    return out


def _quantized(n: int, k: int, device: str):  # noqa: ANN202
    import bitsandbytes.functional as bnbf
    import torch

    w = torch.randn(n, k, device=device, dtype=torch.float16) * 0.02
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    return torch.randn(1, k, device=device, dtype=torch.float16), packed, state


def check(shapes: list[tuple[int, int]], device: str) -> None:
    """The full variants equal gemv_4bit (plain launch, the same activation crossing) bit for bit
    on every shape. Compiled for an H100 the two crossings' results differ in their last bits
    (the interpreter's agree), so each variant meets gemv_4bit in its own mode."""
    import torch

    from quantbench.kernels import gemv
    from quantbench.kernels.config import modes, set_fourbit_activation, set_launch_overlap, set_modes

    before = modes()
    set_launch_overlap("off")  # gemv_4bit as the variants launch: plainly
    try:
        for n, k in shapes:
            x, packed, state = _quantized(n, k, device)
            for variant, crossing in (("full", "words"), ("full-xsplit", "split")):
                set_fourbit_activation(crossing)
                expected = gemv.gemv_4bit(x, packed, state.absmax, state.code.float(), n, 64)
                if not torch.equal(ablated(variant, x, packed, state.absmax, state.code.float(), n), expected):
                    raise SystemExit(f"({n}, {k}): the {variant} variant differs from gemv_4bit")
    finally:
        set_modes(before)
    print(f"full variants equal gemv_4bit on {len(shapes)} shapes")


def time_shape(model: str, name: str, n: int, k: int) -> dict:
    """Every variant, gemv_4bit (plain launch, then the default launch overlap) and a copy of the
    same bytes at one shape: us per call and TB/s (weight bytes / time)."""
    import torch
    from kernels_gemv import graph_us

    from quantbench.kernels import gemv
    from quantbench.kernels.config import set_launch_overlap

    x, packed, state = _quantized(n, k, "cuda")
    nbytes = packed.numel() + state.absmax.numel() * 4
    code = state.code.float()
    copies: list = []

    def weights(i: int) -> tuple:  # the i-th copy of the packed bytes, absmax and a flat buffer
        while len(copies) <= i:
            copies.append((packed.clone(), state.absmax.clone(), torch.empty(nbytes, dtype=torch.uint8,
                                                                             device="cuda")))
        return copies[i]

    calls = {variant: (lambda i, v=variant: lambda: ablated(v, x, *weights(i)[:2], code, n)) for variant in VARIANTS}
    calls["gemv"] = lambda i: lambda: gemv.gemv_4bit(x, *weights(i)[:2], code, n, 64)
    calls["copy"] = lambda i: lambda: weights(i)[2].copy_(weights(i + 1)[2])
    row: dict = {"model": model, "shape": name, "N": n, "K": k, "weight_bytes": nbytes}
    with torch.no_grad():
        for key, make in calls.items():
            for overlap in ("off", "auto") if key == "gemv" else ("off",):
                set_launch_overlap(overlap)
                row[f"{key}_{overlap}_us" if key == "gemv" else f"{key}_us"] = graph_us(make, nbytes)
        row["stream_tilings_us"] = {str(tiling): graph_us(
            lambda i, t=tiling: lambda: ablated("stream", x, *weights(i)[:2], code, n, t), nbytes)
            for tiling in TILINGS if tiling[1] <= k}
    set_launch_overlap("auto")
    row |= {f"{key[:-3]}_tb_s": nbytes / us / 1e6 for key, us in list(row.items()) if key.endswith("_us")
            and isinstance(us, float)}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="kernels-out")
    p.add_argument("--models", default="tinyllama,llama7b")
    p.add_argument("--check", action="store_true", help="only the bit-for-bit check, on small shapes (CPU too)")
    args = p.parse_args()
    if args.check:
        check([(40, 448), (24, 1344), (16, 4096)], "cpu")
        return
    from kernels_gemv import SHAPES, new_report

    report, out = new_report(args.out)
    for model in args.models.split(","):
        shapes = {name: nk for name, nk in SHAPES[model].items() if name != "lm_head"}  # lm_head: dense
        check(list(shapes.values()), "cuda")
        for name, (n, k) in shapes.items():
            row = time_shape(model, name, n, k)
            report["rows"].append(row)
            print(f"{model:9} {name:8} " + "  ".join(f"{key[:-3]} {us:6.1f}" for key, us in row.items()
                                                    if key.endswith("_us") and isinstance(us, float)), flush=True)
            best = min(row["stream_tilings_us"].items(), key=lambda item: item[1])
            print(f"{'':19}loads alone, best tiling {best[0]}: {best[1]:.1f} us", flush=True)
            (out / "kernels_ablate.json").write_text(json.dumps(report, indent=1))  # a stopped run keeps its rows


if __name__ == "__main__":
    main()

"""Kernel overlap across a decode step's launches (Hopper's programmatic dependent launch).

A decode step is a chain of short kernels (2-20 us each on a 1.1B model), and each one starts by
waiting: for its launch, then for the first weights to arrive from DRAM. The weights never depend
on the kernel before, only the activation does. With dependent launch (`launch_pdl`) a GEMV's
programs start while the previous kernel still runs, ask L2 for the weight bytes they will read
(one bulk prefetch per row range, issued by one thread), and only then wait for the previous
kernel's results (`griddepcontrol.wait`), so the DRAM latency and the launch overlap the
previous kernel's tail. Right after the wait each program lets the next kernel launch
(`griddepcontrol.launch_dependents`): that kernel's programs fill SM slots this one leaves free,
and prefetch in turn.

Safety: everything before the wait reads constant weights only; every read of an activation,
residual or partial sum, and every store, comes after it. The wait returns once the previous
kernel has finished and its writes are visible, and that kernel itself finished its own wait
first, so results from any earlier kernel are visible too. A kernel launched without the
attribute (or after one that never lets dependents launch) runs as before: the wait returns at
once.

Modes (config.set_launch_overlap): "auto" (the default: prefetch for the 4-bit GEMV, dependent
launch for the attention and the LLM.int8 row kernels and their GEMVs, AUTO below),
"off" (plain launches), "launch" (dependent launch for every kernel, no prefetch), "prefetch"
(both, every kernel), "every" (dependent launch for every kernel, the prefetch for the 4-bit GEMV
alone). Off under Triton's interpreter and below compute capability 9.0.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import interpreted, launch_overlap

# PDL (constexpr) values: what a kernel does before reading its inputs
OFF, LAUNCH, PREFETCH = 0, 1, 2


@triton.jit
def prefetch_range(byte_ptr, offset, nbytes, PDL: tl.constexpr):
    """Ask L2 for `nbytes` at byte `offset` of `byte_ptr` (16-byte multiples), one thread
    issuing one bulk prefetch. No-op unless PDL is PREFETCH."""
    if PDL == 2:
        tl.inline_asm_elementwise(
            "{ .reg .u32 t; .reg .pred p; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
            "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r", [byte_ptr + offset, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_rows(base_ptr, first_row, rows, row_stride, offset, nbytes, PDL: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """prefetch_range of `nbytes` at `offset` of each of the program's `rows` rows (at most
    BLOCK_N), `row_stride` bytes apart: a program's columns of a split row range."""
    if PDL == 2:
        for i in tl.static_range(BLOCK_N):
            if i < rows:
                prefetch_range(base_ptr, (first_row + i).to(tl.int64) * row_stride + offset, nbytes, PDL)


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """Wait until the previous kernel's results are visible, then let the next kernel launch.
    No-op when PDL is OFF (and a no-op wait in a kernel launched without the attribute)."""
    if PDL != 0:
        tl.inline_asm_elementwise("griddepcontrol.wait; griddepcontrol.launch_dependents; mov.u32 $0, 0;",
                                  "=r", [], dtype=tl.int32, is_pure=False, pack=1)


# "auto": what measured faster end to end on an H100 (tinyllama, one run, ms/token, plain ->
# every kernel with prefetch): nf4 1.26 -> 1.15, fp16 1.34 -> 1.45, int8 1.32 -> 1.41. The 4-bit
# GEMV is bound by its decode and latency, not by DRAM, and gains from weights already in L2; the
# dense and int8 GEMVs stream near bandwidth and lose to the extra L2 traffic. The attention
# launches dependently too, so the 4-bit o_proj after it can prefetch during it: in a 4-bit model
# this is the measured configuration but for the lm_head (one plain launch per token); in an fp16
# or int8 model, where the kernels around the attention launch plainly, it is plain launches. The
# rotary + cache write kernel (rope.py) launches dependently in the explicit modes only: untimed.
# An LLM.int8 GEMV whose row work runs in a kernel before it ("int8-rows", config.rows_once:
# llama-2-7b's every launch) launches dependently, and so does that row kernel: a one-program
# kernel whose launch and wait for the GEMV before it were most of its time. H100, llama-2-7b
# LLM.int8 decode on its own steps: 4.21 ms/token plain, 3.99 with every kernel launched
# dependently (no prefetch: these GEMVs stream near bandwidth).
AUTO = {"4bit": PREFETCH, "sum": LAUNCH, "attention": LAUNCH, "int8-rows": LAUNCH}


def mode_for(device: torch.device, kind: str, *aligned: int) -> int:
    """The PDL constexpr for a launch of a `kind` kernel ("4bit", "sum" (its split-K sum),
    "dense", "int8", "int8-rows" (one after its row kernel), "attention", "rope") on `device`;
    `aligned` are byte counts and addresses the bulk prefetch needs in 16-byte multiples (else
    dependent launch without prefetch)."""
    mode = launch_overlap()
    if mode == "off" or interpreted() or device.type != "cuda" or _major(device.index) < 9:
        return OFF
    wanted = {"auto": AUTO.get(kind, OFF), "launch": LAUNCH, "prefetch": PREFETCH,
              "every": PREFETCH if kind == "4bit" else LAUNCH}[mode]
    if wanted == PREFETCH and any(v % 16 for v in aligned):
        return LAUNCH
    return wanted


@functools.cache
def _major(index: int | None) -> int:
    """Compute capability major of a CUDA device, asked once (mode_for runs at every launch)."""
    return torch.cuda.get_device_capability(index)[0]


def launch_options(pdl: int) -> dict:
    """Keyword arguments of a Triton launch for mode `pdl`."""
    return {"launch_pdl": True} if pdl != OFF else {}


__all__ = ["LAUNCH", "OFF", "PREFETCH", "launch_options", "mode_for", "prefetch_range", "prefetch_rows",
           "wait_for_inputs"]

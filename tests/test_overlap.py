"""Launch overlap (kernels/overlap.py): which kernels launch dependently in each mode, and the
compiled order that makes it safe: weight prefetches before the wait, every store after it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from quantbench.kernels import config, overlap
from quantbench.kernels.overlap import LAUNCH, OFF, PREFETCH, mode_for

CUDA = torch.device("cuda", 0)


@pytest.fixture
def hopper(monkeypatch):
    """A compiled (not interpreted) launch on a compute capability 9.0 device."""
    monkeypatch.setattr(overlap, "interpreted", lambda: False)
    monkeypatch.setattr(overlap, "_major", lambda index: 9)
    yield
    config.set_launch_overlap("auto")


def test_auto_prefetches_for_the_4bit_gemv_only(hopper):
    assert config.launch_overlap() == "auto"
    modes = {kind: mode_for(CUDA, kind) for kind in ("4bit", "sum", "attention", "dense", "int8")}
    assert modes == {"4bit": PREFETCH, "sum": LAUNCH, "attention": LAUNCH, "dense": OFF, "int8": OFF}
    assert mode_for(CUDA, "4bit", 1024, 8) == LAUNCH  # a bulk prefetch needs 16-byte multiples


@pytest.mark.parametrize(("mode", "expected"), [("off", OFF), ("launch", LAUNCH), ("prefetch", PREFETCH)])
def test_explicit_modes_apply_to_every_kernel(hopper, mode, expected):
    config.set_launch_overlap(mode)
    assert {mode_for(CUDA, kind, 2048) for kind in ("4bit", "dense", "int8")} == {expected}


def test_no_overlap_where_it_cannot_run(hopper, monkeypatch):
    config.set_launch_overlap("prefetch")
    assert mode_for(torch.device("cpu"), "4bit") == OFF
    monkeypatch.setattr(overlap, "_major", lambda index: 8)
    assert mode_for(CUDA, "4bit") == OFF
    monkeypatch.setattr(overlap, "interpreted", lambda: True)
    monkeypatch.setattr(overlap, "_major", lambda index: 9)
    assert mode_for(CUDA, "4bit") == OFF
    with pytest.raises(ValueError, match="overlap"):
        config.set_launch_overlap("sometimes")


COMPILE = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from quantbench.kernels import fourbit
constexprs = {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 1, "PRO": 2, "RES": True,
              "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 512, "BNB": False, "PDL": int(sys.argv[1])}
pointers = {"w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "bias_ptr": "*fp32"}
signature = {name: "constexpr" if name in constexprs else pointers.get(name, "*fp16") if name.endswith("_ptr")
             else "fp32" if name == "eps" else "i32" for name in fourbit._fourbit_kernel.arg_names}
source = ASTSource(fn=fourbit._fourbit_kernel, signature=signature, constexprs=constexprs)
print(triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"])
"""


def _ptx(pdl: int) -> str:
    """The 4-bit GEMV with the RMSNorm prologue and the residual epilogue, compiled for sm_90 (in
    a process of its own: other tests run the kernels under Triton's interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE, str(pdl)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_compiled_kernel_prefetches_weights_before_it_waits_and_stores_after():
    pytest.importorskip("triton.backends.nvidia")
    plain, overlapped = _ptx(OFF), _ptx(PREFETCH)
    assert "griddepcontrol" not in plain and "cp.async.bulk.prefetch" not in plain
    wait = overlapped.index("griddepcontrol.wait")
    assert overlapped.count("griddepcontrol.wait") == 1
    assert overlapped.index("griddepcontrol.launch_dependents") > wait
    prefetches = [i for i in range(len(overlapped)) if overlapped.startswith("cp.async.bulk.prefetch", i)]
    assert prefetches and max(prefetches) < wait  # weight rows and absmax, asked for early
    assert overlapped.index("st.global") > wait  # nothing written before the inputs are final

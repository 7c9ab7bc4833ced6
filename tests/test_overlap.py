"""Launch overlap (kernels/overlap.py): which kernels launch dependently in each mode, and the
compiled order that makes it safe: weight prefetches before the wait, every store after it."""

from __future__ import annotations

import os
import re

# as in the other kernel tests, before Triton sees a kernel: whichever of them a test process
# imports first, every kernel is then interpreted (the compile check runs in its own process)
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import sm90_ptx  # noqa: E402

from quantbench.kernels import config, overlap  # noqa: E402
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
    kinds = ("4bit", "sum", "attention", "dense", "int8", "int8-rows", "rope")
    modes = {kind: mode_for(CUDA, kind) for kind in kinds}
    assert modes == {"4bit": PREFETCH, "sum": LAUNCH, "attention": LAUNCH, "dense": OFF, "int8": OFF,
                     "int8-rows": LAUNCH, "rope": OFF}
    assert mode_for(CUDA, "4bit", 1024, 8) == LAUNCH  # a bulk prefetch needs 16-byte multiples


@pytest.mark.parametrize(("rows", "kind"), [("once", "int8-rows"), ("inline", "int8")])
def test_llm_int8_launches_dependently_where_a_row_kernel_runs_before_it(monkeypatch, rows, kind):
    """Under "auto" an LLM.int8 GEMV with its row work done once asks for the launch mode of
    "int8-rows" (dependent launch, for the row kernel too); one that does the row work inline
    asks for plain int8's."""
    from quantbench.kernels import int8

    asked = []
    monkeypatch.setattr(int8, "mode_for", lambda device, which, *aligned: asked.append(which) or OFF)
    before = config.row_prologue()
    config.set_row_prologue(rows)
    try:
        weight = torch.randint(-127, 128, (8, 64), dtype=torch.int8)
        int8.gemv_int8(torch.randn(1, 64, dtype=torch.float16), weight, torch.rand(8) + 1, 6.0)
    finally:
        config.set_row_prologue(before)
    assert asked == [kind]


@pytest.mark.parametrize(("mode", "expected"), [("off", OFF), ("launch", LAUNCH), ("prefetch", PREFETCH)])
def test_explicit_modes_apply_to_every_kernel(hopper, mode, expected):
    config.set_launch_overlap(mode)
    assert {mode_for(CUDA, kind, 2048) for kind in ("4bit", "dense", "int8")} == {expected}


def test_every_launches_each_kernel_dependently_and_prefetches_for_the_4bit_gemv(hopper):
    config.set_launch_overlap("every")
    kinds = ("4bit", "sum", "attention", "dense", "int8", "int8-rows", "rope")
    assert {kind: mode_for(CUDA, kind, 2048) for kind in kinds} == {
        "4bit": PREFETCH, "sum": LAUNCH, "attention": LAUNCH, "dense": LAUNCH, "int8": LAUNCH, "int8-rows": LAUNCH,
        "rope": LAUNCH}
    assert mode_for(CUDA, "4bit", 1024, 8) == LAUNCH  # a bulk prefetch needs 16-byte multiples


def test_set_modes_takes_what_modes_reports_and_restores_a_snapshot(hopper):
    saved = config.modes()
    config.set_modes({"launch_overlap": "off", "int8_outlier_pass": "skip"})
    assert mode_for(CUDA, "4bit") == OFF and config.int8_outlier_pass() == "skip"
    config.set_modes(saved)
    assert config.modes() == saved and mode_for(CUDA, "4bit") == PREFETCH
    with pytest.raises(ValueError, match="kernel mode"):
        config.set_modes({"overlap": "off"})  # the internal key, not the reported name


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
from quantbench.kernels import fourbit, gemv, int8, rope
pdl = int(sys.argv[1])
kernels = {  # kernel, constexprs, pointer types other than fp16
    "4bit": (fourbit._fourbit_kernel, {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 1, "PRO": 2,
             "RES": True, "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 512, "BNB": False},
             {"w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "bias_ptr": "*fp32"}),
    "4bit-shuffle": (fourbit._fourbit_kernel, {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 4,
                     "PRO": 2, "RES": True, "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 512, "BNB": False},
                     {"w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "bias_ptr": "*fp32"}),
    "dense": (gemv._dense_kernel, {"HAS_BIAS": False, "PRO": 2, "RES": True, "BLOCK_N": 4, "BLOCK_K": 1024}, {}),
    "int8": (int8._int8_kernel, {"HAS_BIAS": False, "APPROX_DIV": True, "PRO": 2, "RES": True, "OUTLIERS": True,
             "BLOCK_N": 8, "BLOCK_K": 1024, "SKIP_CHUNKS": False}, {"w_ptr": "*i8", "scb_ptr": "*fp32",
             "bias_ptr": "*fp32"}),
    "int8-codes": (int8._int8_kernel, {"HAS_BIAS": False, "APPROX_DIV": True, "PRO": 0, "RES": True,
                   "OUTLIERS": True, "BLOCK_N": 8, "BLOCK_K": 1024, "SKIP_CHUNKS": False, "CODES": True},
                   {"w_ptr": "*i8", "scb_ptr": "*fp32", "bias_ptr": "*fp32", "q_ptr": "*i8", "stat_ptr": "*fp32",
                    "idx_ptr": "*i32", "val_ptr": "*fp32", "count_ptr": "*i32"}),
    "int8-codes-early": (int8._int8_kernel, {"HAS_BIAS": False, "APPROX_DIV": True, "PRO": 0, "RES": True,
                         "OUTLIERS": True, "BLOCK_N": 8, "BLOCK_K": 1024, "SKIP_CHUNKS": False, "CODES": True,
                         "EARLY": True},
                         {"w_ptr": "*i8", "scb_ptr": "*fp32", "bias_ptr": "*fp32", "q_ptr": "*i8",
                          "stat_ptr": "*fp32", "idx_ptr": "*i32", "val_ptr": "*fp32", "count_ptr": "*i32"}),
}
if pdl:  # main loops software-pipelined (config.pipeline_stages): their loads become cp.async copies
    for name in ("4bit-shuffle", "dense", "int8", "int8-codes"):
        kernel, constexprs, pointers = kernels[name]
        kernels[name + "-staged"] = (kernel, constexprs | {"STAGES": 3}, pointers)
for name, (kernel, constexprs, pointers) in kernels.items():
    show(name, kernel, constexprs | {"PDL": pdl}, pointers)
# the rotary + cache write: a dependent launch at most (no weights to prefetch)
show("rope", rope._rope_store, {"H": 32, "KVH": 4, "D": 64, "HP": 32, "KVHP": 4, "PDL": min(pdl, 1)},
     {"length_ptr": "*i64"})
"""
STAGED = ("4bit-shuffle", "dense", "int8", "int8-codes")


@pytest.fixture(scope="module")
def compiled() -> tuple[dict[str, str], dict[str, str]]:
    """The 4-bit (shared-memory and shuffle lookups), dense and LLM.int8 GEMVs with the RMSNorm
    prologue and the residual epilogue, and the LLM.int8 GEMV that reads a row kernel's codes
    (its outlier list gathered after or before the dot), compiled for sm_90 (in a process of
    its own: other tests run the kernels under Triton's interpreter) with plain launches and
    with the launch overlap, where some also pipeline their main loop; and the rotary + cache
    write kernel, which has nothing to prefetch: kernel name -> PTX."""
    pytest.importorskip("triton.backends.nvidia")
    return sm90_ptx(COMPILE, str(OFF)), sm90_ptx(COMPILE, str(PREFETCH))


def _copies(ptx: str) -> list[int]:
    """Where the PTX starts an asynchronous global-to-shared copy (not a bulk prefetch to L2)."""
    return [found.start() for found in re.finditer(r"cp\.async\.c[ag]\.shared\.global", ptx)]


def test_compiled_kernels_prefetch_weights_before_they_wait_and_read_inputs_after(compiled):
    plain, overlapped = compiled
    assert set(overlapped) == {"4bit", "4bit-shuffle", "dense", "int8", "int8-codes", "int8-codes-early", "rope"} | {
        f"{name}-staged" for name in STAGED}
    for name, ptx in overlapped.items():
        unstaged = name.removesuffix("-staged")
        assert "griddepcontrol" not in plain[unstaged] and "cp.async.bulk.prefetch" not in plain[unstaged]
        wait = ptx.index("griddepcontrol.wait")
        assert ptx.count("griddepcontrol.wait") == 1
        assert ptx.index("griddepcontrol.launch_dependents") > wait
        prefetches = [i for i in range(len(ptx)) if ptx.startswith("cp.async.bulk.prefetch", i)]
        if name == "rope":  # no weights: it only waits
            assert not prefetches
        else:
            assert prefetches and max(prefetches) < wait, name  # weight rows (and absmax), asked for early
        assert ptx.index("st.global") > wait, name  # nothing written before the inputs are final
        # nothing read before the wait but constants: the 4-bit code table (16 floats), else nothing
        loads_before = ptx[:wait].count("ld.global")
        assert loads_before <= (1 if name.startswith("4bit") else 0), (name, loads_before)
    # the shuffle lookup: each lane's code loaded once, before the loop, and read by shuffles only
    shuffle = overlapped["4bit-shuffle"]
    assert shuffle.count("%laneid") == 1 and "shfl.sync.idx.b32" in shuffle
    assert "ld.shared" not in shuffle.split("shfl.sync.idx.b32")[0].split("griddepcontrol.wait")[0]


def test_pipelined_main_loops_copy_their_steps_ahead_only_after_the_wait(compiled):
    """config.pipeline_stages: with stages, a GEMV's K-loop loads its next steps by cp.async into
    shared memory (none without); under the launch overlap every such copy, of weights as of the
    activation, comes after the wait for the previous kernel, as every other read does."""
    plain, overlapped = compiled
    for name in STAGED:
        assert not _copies(plain[name]) and not _copies(overlapped[name]), name
        staged = overlapped[f"{name}-staged"]
        copies = _copies(staged)
        assert copies and "cp.async.wait_group" in staged, name
        assert min(copies) > staged.index("griddepcontrol.wait"), name


def test_rope_kernel_reads_everything_before_it_writes(compiled):
    """The rotary + cache write kernel's code: every load of a step (q, k, v and the angles)
    comes before its first store, so the step waits for memory once; a load after a store that
    might alias it would wait for that store."""
    for ptx in (code["rope"] for code in compiled):
        loads = [i for i in range(len(ptx)) if ptx.startswith("ld.global", i)]
        stores = [i for i in range(len(ptx)) if ptx.startswith("st.global", i)]
        assert len(loads) > 3 and max(loads) < min(stores)

"""quantbench's decode GEMVs, run on the CPU by Triton's interpreter, against bitsandbytes' own
functions and layers as the oracle (tiny shapes; the GPU check is benchmarks/kernels_gemv.py)."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton sees a kernel: CPU tensors

import pytest
import torch

pytest.importorskip("triton")
bnb = pytest.importorskip("bitsandbytes")
bnbf = bnb.functional

from conftest import sm90_ptx, static_cache_step  # noqa: E402

from quantbench.kernels import gemv  # noqa: E402
from quantbench.kernels.config import (  # noqa: E402
    config_for,
    fourbit_gather,
    fourbit_pairs,
    set_config,
    set_fourbit_gather,
    set_fourbit_numerics,
    set_fourbit_pairs,
    set_int8_outlier_pass,
)

N, K = 40, 192  # N is no multiple of a program's rows, K three 64-blocks: masks are exercised


@pytest.fixture
def row_mode():
    """config.set_row_prologue for one test, the mode before it restored after."""
    from quantbench.kernels.config import row_prologue, set_row_prologue

    before = row_prologue()
    yield set_row_prologue
    set_row_prologue(before)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ulps(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error in units of the output dtype's spacing at each reference value."""
    spacing = torch.finfo(out.dtype).eps * ref.abs().clamp_min(1e-3)
    return float(((out.double() - ref).abs() / spacing.double()).max())


@pytest.mark.parametrize(("dtype", "act"), [(torch.float16, False), (torch.bfloat16, False), (torch.float16, True)])
def test_dense_gemv_is_a_rounded_fp32_matmul(dtype, act):
    """act: the kernel reads silu(gate) * up of a [gate | up] row, rounded as torch rounds it
    (fp16 only: the interpreter's bf16 casts truncate, and act rounds twice before the matmul)."""
    x, w = torch.randn(2, K, dtype=dtype), torch.randn(N, K, dtype=dtype)
    bias = torch.randn(N, dtype=dtype)
    ref = x.double() @ w.double().T + bias.double()
    if act:
        gate, up = torch.randn(2, K, dtype=dtype), torch.randn(2, K, dtype=dtype)
        ref = (torch.nn.functional.silu(gate) * up).double() @ w.double().T + bias.double()
        x = torch.cat([gate, up], dim=-1)
    out = gemv.gemv_dense(x, w, bias, act=act)
    assert out.dtype == dtype and out.shape == (2, N)
    assert _ulps(out, ref) <= 1.0  # fp32 sums, one rounding (the interpreter's bf16 cast truncates)


def _exact_weights(packed: torch.Tensor, state) -> torch.Tensor:  # noqa: ANN001
    """bitsandbytes' 4-bit weights as dequantize_4bit computes them, code * absmax per block,
    never rounded to 16 bits (fp64)."""
    exact = copy.copy(state)
    exact.dtype = torch.float32
    return bnbf.dequantize_4bit(packed, exact).double()


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize(("shape", "gather", "pairs"),
                         [(None, "bytes", False), ((128, 128, 4, 2), "global", True), (None, "shared", False),
                          (None, "shuffle", False)])  # shuffle: compiled only, "shared" here
def test_4bit_gemv_reads_bitsandbytes_storage(quant_type, double_quant, shape, gather, pairs):
    """Every code lookup and activation layout; the table's shape (one partial step) and a
    split-K in 2."""
    torch.manual_seed(1)
    x, w = torch.randn(3, K, dtype=torch.float16), torch.randn(N, K, dtype=torch.float16)
    bias = torch.randn(N, dtype=torch.float16)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    absmax = state.absmax
    if state.nested:  # what dequantize_4bit computes on every call
        absmax = (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
    ref = x.double() @ _exact_weights(packed, state).T + bias.double()
    before = fourbit_gather(), fourbit_pairs()
    set_config("4bit", shape)
    set_fourbit_gather(gather)
    set_fourbit_pairs(pairs)
    try:
        out = gemv.gemv_4bit(x, packed, absmax, state.code, N, 64, bias)
    finally:
        set_config("4bit", None)
        set_fourbit_gather(before[0])
        set_fourbit_pairs(before[1])
    assert out.shape == (3, N) and out.dtype == torch.float16
    assert _ulps(out, ref) <= 1.0
    # and within fp16 rounding of bitsandbytes' own weights (rounded to fp16 by dequantize_4bit)
    theirs = x.double() @ bnbf.dequantize_4bit(packed, state).double().T + bias.double()
    assert float((out.double() - theirs).norm() / theirs.norm()) < 1e-3


def test_4bit_gemv_in_2048_element_steps(row_mode):
    """llama-2-7b's launch shapes read 2048 elements (32 quantization blocks) per step: a whole
    step and a partial one (K = 35 blocks, as down_proj's 11008 ends in a partial step) within
    an fp16 rounding of dequantize_4bit + an fp64 matmul, and the RMSNorm done once gives the
    bits it gives inline."""
    torch.manual_seed(7)
    n, k = 24, 64 * 35
    x, w = torch.randn(2, k, dtype=torch.float16), torch.randn(n, k, dtype=torch.float16)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    weights = _exact_weights(packed, state)
    ref = x.double() @ weights.T
    norm = (torch.rand(k, dtype=torch.float16) + 0.5, 1e-5)
    set_config("4bit", (8, 2048, 8, 0))
    try:
        assert config_for("4bit64", n, k)[1] == 2048
        out = gemv.gemv_4bit(x, packed, state.absmax, state.code, n, 64)
        normed = []
        for mode in ("inline", "once"):
            row_mode(mode)
            normed.append(gemv.gemv_4bit(x, packed, state.absmax, state.code, n, 64, norm=norm))
    finally:
        set_config("4bit", None)
    assert _ulps(out, ref) <= 1.0
    assert torch.equal(normed[0], normed[1])
    weight, eps = norm  # eager's RMSNorm: the normalised row rounded, then times the weight rounded
    row = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).half()
    expected = (weight.float() * row.float()).half().double() @ weights.T
    assert _ulps(normed[0], expected) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_4bit_activation_as_words_or_split_gives_the_same_bits(dtype, row_mode):
    """config.fourbit_activation: the activation crosses to the packed bytes' threads as 32-bit
    words of 16-bit pairs ("words") or as split fp32 values ("split"), or the threads read their
    words themselves ("direct", in launches without a prologue); the same values meet the same
    arithmetic, so every output bit matches: whole and partial steps, a split-K in 3, bias and
    residual, both numerics, the RMSNorm and silu * up prologues inline and done once."""
    from quantbench.kernels.config import fourbit_activation, set_fourbit_activation

    torch.manual_seed(12)
    k = 448  # 7 blocks of 64
    w = torch.randn(N, k, dtype=dtype)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="fp4")
    x, bias, residual = torch.randn(2, k, dtype=dtype), torch.randn(N, dtype=dtype), torch.randn(2, N, dtype=dtype)
    norm = (torch.rand(k, dtype=dtype) + 0.5, 1e-5)
    before = fourbit_activation()
    try:
        for shape, numerics, kwargs in (((128, 128, 4, 1), "fp32", {}), ((128, 256, 4, 1), "fp32", {"bias": bias}),
                                        ((128, 64, 4, 3), "fp32", {"residual": residual}),
                                        ((128, 512, 4, 1), "bitsandbytes", {"bias": bias}),
                                        ((128, 256, 4, 1), "fp32", {"norm": norm}),
                                        ((128, 256, 4, 1), "fp32", {"norm": norm, "once": True}),
                                        ((128, 128, 4, 1), "fp32", {"act": True})):
            set_config("4bit", shape)
            set_fourbit_numerics(numerics)
            row_mode("once" if kwargs.pop("once", False) else "inline")
            xin = torch.cat([x, x.flip(-1)], dim=-1) if "act" in kwargs else x
            outs = []
            for mode in ("split", "words", "direct"):
                set_fourbit_activation(mode)
                outs.append(gemv.gemv_4bit(xin, packed, state.absmax, state.code, N, 64, **kwargs))
            assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2]), (shape, numerics, list(kwargs))
    finally:
        set_config("4bit", None)
        set_fourbit_numerics("fp32")
        set_fourbit_activation(before)


@pytest.fixture
def fourbit_launches(monkeypatch) -> list[dict]:
    """The constexpr arguments of every 4-bit kernel launch the test makes, in order."""
    from quantbench.kernels import fourbit

    launched: list[dict] = []

    def spy(*args, _run=fourbit._fourbit_kernel.run, **kwargs):  # noqa: ANN002, ANN003, ANN202
        launched.append(kwargs)
        return _run(*args, **kwargs)

    monkeypatch.setattr(fourbit._fourbit_kernel, "run", spy)
    return launched


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_4bit_column_tile_gives_the_row_tiles_bits(dtype, row_mode, fourbit_launches):
    """config.fourbit_tile "column": the packed bytes and absmax tiled [blocks, rows, bytes]
    compute what the row tile computes, and under the interpreter every output bit matches: whole
    and partial steps (2048-column steps; the interpreter's launches take 128 rows), a split-K in
    3, bias and residual, both numerics and activation crossings, the RMSNorm and silu * up
    prologues inline and done once; the result is within an fp16 rounding of dequantize_4bit + an
    fp64 matmul; and the kernel was launched with the column tile each time it was asked for."""
    from quantbench.kernels.config import fourbit_activation, fourbit_tile, set_fourbit_activation, set_fourbit_tile


    torch.manual_seed(15)
    k = 64 * 35  # 2048-column steps end in a partial one
    w = torch.randn(N, k, dtype=dtype)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    x, bias, residual = torch.randn(2, k, dtype=dtype), torch.randn(N, dtype=dtype), torch.randn(2, N, dtype=dtype)
    norm = (torch.rand(k, dtype=dtype) + 0.5, 1e-5)
    before = fourbit_tile(), fourbit_activation()
    try:
        for shape, numerics, crossing, kwargs in (
                ((8, 2048, 4, 1), "fp32", "words", {}), ((4, 512, 4, 3), "fp32", "words", {"residual": residual}),
                ((8, 1024, 4, 1), "bitsandbytes", "words", {"bias": bias}), ((8, 1024, 4, 1), "fp32", "split", {}),
                ((4, 1024, 4, 1), "fp32", "words", {"norm": norm}),
                ((8, 2048, 4, 1), "fp32", "words", {"norm": norm, "once": True}),
                ((8, 1024, 4, 1), "fp32", "words", {"act": True})):
            set_config("4bit", shape)
            set_fourbit_numerics(numerics)
            set_fourbit_activation(crossing)
            row_mode("once" if kwargs.pop("once", False) else "inline")
            xin = torch.cat([x, x.flip(-1)], dim=-1) if "act" in kwargs else x
            outs = []
            for tile in ("row", "column"):
                set_fourbit_tile(tile)
                outs.append(gemv.gemv_4bit(xin, packed, state.absmax, state.code, N, 64, **kwargs))
            assert torch.equal(outs[0], outs[1]), (shape, numerics, crossing, list(kwargs))
            assert [launch["COLUMN"] for launch in fourbit_launches[-2:]] == [False, True]
            if not kwargs and numerics == "fp32" and dtype == torch.float16:
                assert _ulps(outs[1], x.double() @ _exact_weights(packed, state).T) <= 1.0
    finally:
        set_config("4bit", None)
        set_fourbit_numerics("fp32")
        set_fourbit_tile(before[0])
        set_fourbit_activation(before[1])


def test_4bit_column_tile_not_where_the_step_reads_row_tiles(fourbit_launches):
    """The "pairs" layout and the "direct" activation (a launch without a prologue) read their
    activation in the row tile's layout, so they keep the row tile when "column" is asked for."""
    from quantbench.kernels import fourbit
    from quantbench.kernels.config import (
        fourbit_activation,
        fourbit_tile,
        set_fourbit_activation,
        set_fourbit_tile,
    )

    torch.manual_seed(16)
    packed, state = bnbf.quantize_4bit(torch.randn(N, K, dtype=torch.float16), blocksize=64, quant_type="nf4")
    x = torch.randn(1, K, dtype=torch.float16)
    before = fourbit_tile(), fourbit_activation(), fourbit_pairs()
    set_fourbit_tile("column")
    try:
        fourbit.gemv_4bit(x, packed, state.absmax, state.code, N, 64)
        set_fourbit_pairs(True)
        fourbit.gemv_4bit(x, packed, state.absmax, state.code, N, 64)
        set_fourbit_pairs(False)
        set_fourbit_activation("direct")
        fourbit.gemv_4bit(x, packed, state.absmax, state.code, N, 64)
    finally:
        set_fourbit_tile(before[0])
        set_fourbit_activation(before[1])
        set_fourbit_pairs(before[2])
    assert [(launch["PAIRS"], launch["DIRECT"], launch["COLUMN"]) for launch in fourbit_launches] == [
        (False, False, True), (True, False, False), (False, True, False)]


def test_4bit_one_tile_order_converts_each_activation_value_once_for_its_rows(compiled_code):
    """Compiled for sm_90 at 8 rows x 2048 columns with no prologue, one of config.fourbit_tile's
    orders lays each thread's pieces in four rows at the same columns, converting a quarter of
    the activation values to fp32 that the other does (which one is Triton's layout choice: the
    column tile under Triton 3.6, the row tile under 3.9), with the same code lookups (one
    shuffle per nibble)."""
    row, column = compiled_code["4bit tile=row"], compiled_code["4bit tile=column"]
    conversions = sorted((row.count("cvt.f32.f16"), column.count("cvt.f32.f16")))
    assert conversions[0] * 4 == conversions[1] > 0
    assert column.count("shfl.sync.idx") == row.count("shfl.sync.idx") > 0


def test_4bit_direct_activation_only_where_the_launch_has_no_prologue(fourbit_launches, row_mode):
    """config.fourbit_activation "direct": launches without a prologue (a plain row, and a norm
    done once by a row kernel) read their words directly; a norm or silu * up inline keeps the
    words crossing; fp32 activations take the split crossing."""
    from quantbench.kernels import fourbit
    from quantbench.kernels.config import fourbit_activation, set_fourbit_activation

    torch.manual_seed(14)
    w = torch.randn(N, K, dtype=torch.float16)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    x = torch.randn(1, K, dtype=torch.float16)
    norm = {"norm": (torch.ones(K, dtype=torch.float16), 1e-5)}
    before = fourbit_activation()
    set_fourbit_activation("direct")
    try:
        row_mode("inline")
        for xin, kwargs in ((x, {}), (x, norm), (torch.cat([x, x], -1), {"act": True}), (x.float(), {})):
            fourbit.gemv_4bit(xin, packed, state.absmax, state.code, N, 64, **kwargs)
        row_mode("once")
        fourbit.gemv_4bit(x, packed, state.absmax, state.code, N, 64, **norm)
    finally:
        set_fourbit_activation(before)
    assert [(launch["DIRECT"], launch["WORDS"]) for launch in fourbit_launches] == [
        (True, False), (False, True), (False, True), (False, False), (True, False)]


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape", [None, (128, 128, 4, 2)])  # the table's; a split-K in 2
def test_4bit_gemv_can_round_as_bitsandbytes_gemv_4bit(double_quant, shape):
    """set_fourbit_numerics("bitsandbytes"): gemv_4bit's CUDA arithmetic written out (the code,
    the absmax, each weight and each product rounded to fp16, an fp32 sum rounded to fp16, then
    the bias) equals the kernel's up to the fp32 sum's order; the default fp32 arithmetic does not."""
    torch.manual_seed(6)
    x, w = torch.randn(2, K, dtype=torch.float16), torch.randn(N, K, dtype=torch.float16)
    bias = torch.randn(N, dtype=torch.float16)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    absmax = state.absmax
    if state.nested:
        absmax = (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
    codes = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], dim=-1).view(N, K).long()
    weight = (state.code.half().float()[codes] * absmax.half().float().repeat_interleave(64).view(N, K)).half()
    products = (x.float()[:, None, :] * weight.float()[None]).half()
    expected = (products.double().sum(-1).float().half().float() + bias.float()).double()
    set_config("4bit", shape)
    try:
        set_fourbit_numerics("bitsandbytes")
        theirs = gemv.gemv_4bit(x, packed, absmax, state.code, N, 64, bias)
        set_fourbit_numerics("fp32")
        ours = gemv.gemv_4bit(x, packed, absmax, state.code, N, 64, bias)
    finally:
        set_config("4bit", None)
        set_fourbit_numerics("fp32")
    assert _ulps(theirs, expected) <= 1.0
    assert _ulps(ours, expected) > 2.0


@pytest.fixture(scope="module")
def compiled_code() -> dict[str, str]:
    """Kernels compiled for sm_90 in one process of its own (this one interprets them): the 4-bit
    GEMV (shuffle lookup, RMSNorm prologue), the inline LLM.int8 GEMV (RMSNorm prologue,
    outliers) and the dense GEMV (RMSNorm prologue) as Triton's IR, and the 4-bit GEMV's other
    activation crossings and bitsandbytes' roundings; the decode attention (heads of 64 in groups of 8) in one part
    and in four as PTX, and unpipelined and three stages deep as Triton's IR."""
    pytest.importorskip("triton.backends.nvidia")
    return sm90_ptx("""
from quantbench.kernels import attention, fourbit, gemv, int8
show("dense step", gemv._dense_kernel, {"HAS_BIAS": False, "PRO": 2, "RES": True, "BLOCK_N": 4, "BLOCK_K": 1024},
     {"w_ptr": "*fp16", "bias_ptr": "*fp32"}, asm="ttir")
show("4bit step", fourbit._fourbit_kernel, {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 4, "PRO": 2,
     "RES": True, "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 1024},
     {"w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "bias_ptr": "*fp32"}, asm="ttir")
for lookup in (1, 3):  # bitsandbytes' roundings (an opt-in numerics) with the words crossing
    show(f"4bit bnb-rounding lookup={lookup}", fourbit._fourbit_kernel, {"HAS_BIAS": False, "BLOCKSIZE": 64,
         "SPLIT": 1, "LOOKUP": lookup, "PRO": 2, "RES": True, "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 1024,
         "BNB": True, "WORDS": True}, {"w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32",
         "bias_ptr": "*fp32"}, asm="ttir")
show("4bit direct", fourbit._fourbit_kernel, {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 4, "PRO": 0,
     "RES": False, "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 1024, "DIRECT": True},
     {"w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "bias_ptr": "*fp32"}, asm="ttgir")
for column in (False, True):  # config.fourbit_tile, at llama-2-7b's 2048-column steps
    show(f"4bit tile={'column' if column else 'row'}", fourbit._fourbit_kernel, {"HAS_BIAS": False, "BLOCKSIZE": 64,
         "SPLIT": 1, "LOOKUP": 4, "PRO": 0, "RES": False, "PAIRS": False, "BLOCK_N": 8, "BLOCK_K": 2048, "WORDS": True,
         "COLUMN": column}, {"w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "bias_ptr": "*fp32"})
for words in (False, True):
    show(f"4bit words={words}", fourbit._fourbit_kernel, {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1,
         "LOOKUP": 4, "PRO": 2, "RES": True, "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 1024, "WORDS": words},
         {"w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "bias_ptr": "*fp32"}, asm="ttgir")
show("int8 step", int8._int8_kernel, {"HAS_BIAS": False, "APPROX_DIV": True, "PRO": 2, "RES": True, "OUTLIERS": True,
     "BLOCK_N": 8, "BLOCK_K": 1024, "SKIP_CHUNKS": False},
     {"w_ptr": "*i8", "scb_ptr": "*fp32", "bias_ptr": "*fp32"}, asm="ttir")
pointers = {"mask_ptr": "*u8", "part_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32", "count_ptr": "*i32"}
common = {"GROUP": 8, "D": 64, "BLOCK_L": 64, "SCAN": 64}
for parts in (1, 4):
    show(f"attention parts={parts}", attention._decode_attention, common | {"PARTS_P2": parts, "PDL": 1}, pointers)
for stages in (None, 3):
    show(f"attention stages={stages}", attention._decode_attention, common | {"PARTS_P2": 1, "STAGES": stages},
         pointers, asm="ttir")
""")


def test_4bit_steps_ask_for_their_weights_before_what_they_wait_for(compiled_code):
    """In each K-step of the 4-bit GEMV (the default shuffle lookup, RMSNorm prologue) the
    absmax is loaded with the packed weights and the activation, before the activation's split
    into the values the high and low nibbles meet (an exchange through shared memory, behind
    block barriers in the machine code), so a step waits for memory once; and the first step's
    weights are asked for before the norm's sum of squares (the first loop), which they do not
    need, nor does the residual the epilogue adds."""
    ir = compiled_code["4bit step"]
    loop = ir[ir.rindex("scf.for"):]
    body = loop[:loop.index("scf.yield")].splitlines()
    absmax = [i for i, line in enumerate(body) if "tt.load" in line and "tensor<4x16x!tt.ptr<f32>>" in line]
    split = [i for i, line in enumerate(body) if "tt.split" in line]
    assert len(absmax) == 1 and split and absmax[0] < split[0]
    ir_lines = ir.splitlines()
    first_loop = next(i for i, line in enumerate(ir_lines) if "scf.for" in line)
    packed = [i for i, line in enumerate(ir_lines) if "tt.load" in line and "tensor<4x16x32x!tt.ptr<i8>>" in line]
    residual = [i for i, line in enumerate(ir_lines) if "tt.load" in line and "tensor<4x!tt.ptr<f16>>" in line]
    assert packed[0] < first_loop and residual == [residual[0]] and residual[0] < first_loop


def test_4bit_activation_crosses_to_the_bytes_threads_as_words(compiled_code):
    """config.fourbit_activation "words" (RMSNorm prologue): each K-step's activation, once its
    norm is applied, crosses to the threads holding the packed bytes as one tensor of 32-bit
    (even, odd) pairs, where "split" converts two fp32 tensors; both load the same four tiles."""
    for words, crossing in ((True, ["tensor<16x32xi32"]), (False, ["tensor<16x32xf32"] * 2)):
        ir = compiled_code[f"4bit words={words}"]
        loop = ir[ir.rindex("scf.for"):]
        body = loop[:loop.index("scf.yield")]
        converted = [line.split(":")[-1].strip()[:16] for line in body.splitlines() if "ttg.convert_layout" in line]
        assert converted == crossing and body.count("tt.load") == 4, words


def test_4bit_activation_read_directly_crosses_nothing(compiled_code):
    """config.fourbit_activation "direct" (no prologue): the K-step's activation is loaded in the
    packed bytes' layout, so nothing in the loop changes layout (the words crossing converts one
    int32 tile); the packed bytes, absmax and activation are its three loads."""
    loop = compiled_code["4bit direct"][compiled_code["4bit direct"].rindex("scf.for"):]
    body = loop[:loop.index("scf.yield")]
    assert "ttg.convert_layout" not in body and body.count("tt.load") == 3


def test_4bit_kernel_compiles_with_bitsandbytes_roundings_and_the_words_crossing(compiled_code):
    """The opt-in numerics of bitsandbytes' gemv_4bit (shared and register lookups) compile for
    sm_90 with the default activation crossing: products rounded to the activation dtype."""
    for lookup in (1, 3):
        assert "arith.truncf" in compiled_code[f"4bit bnb-rounding lookup={lookup}"]


def test_dense_first_weights_come_before_the_norm(compiled_code):
    """The dense GEMV with the RMSNorm prologue (fp16 q/k/v and gate/up, every lm_head) asks for
    its first step's weights before the norm's sum of squares, the first loop, which they do not
    need; the loop's steps load theirs as before."""
    lines = compiled_code["dense step"].splitlines()
    weights = [i for i, line in enumerate(lines) if "tt.load" in line and "tensor<4x1024x!tt.ptr<f16>>" in line]
    first_loop = next(i for i, line in enumerate(lines) if "scf.for" in line)
    assert len(weights) == 2 and weights[0] < first_loop < weights[1]


def test_4bit_register_lookup_falls_back_where_it_cannot_run():
    """The "registers" lookup needs inline PTX: under the interpreter (and without bitsandbytes'
    numerics) the kernel takes the shared lookup, from the fp32 codes at the head of its table."""
    from quantbench.kernels.nibbles import register_code

    torch.manual_seed(7)
    x, w = torch.randn(1, K, dtype=torch.float16), torch.randn(N, K, dtype=torch.float16)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="fp4")
    before = fourbit_gather()
    try:
        for numerics in ("bitsandbytes", "fp32"):
            set_fourbit_numerics(numerics)
            set_fourbit_gather("shared")
            shared = gemv.gemv_4bit(x, packed, state.absmax, state.code, N, 64)
            set_fourbit_gather("registers")
            assert torch.equal(gemv.gemv_4bit(x, packed, state.absmax, register_code(state.code), N, 64), shared)
    finally:
        set_fourbit_gather(before)
        set_fourbit_numerics("fp32")


def _int8_layer(w: torch.Tensor, threshold: float):
    layer = bnb.nn.Linear8bitLt(K, N, bias=False, has_fp16_weights=False, threshold=threshold)
    layer.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu").eval()
    with torch.no_grad():
        layer(torch.randn(1, K, dtype=w.dtype))  # first call moves CB/SCB into the state
    return layer


def test_int8_step_asks_for_its_weights_first(compiled_code):
    """In each K-step of the LLM.int8 GEMV that quantizes its activation inline (the RMSNorm
    prologue, outliers on), the int8 weights are the step's first load: behind the activation's
    codes, which pass through shared memory, they would wait for the activation's load. The
    first step's weights are asked for before the row's passes (the norm's sum of squares, the
    absmax), which they do not need, and the epilogue's row scales and residual before the loops."""
    ir = compiled_code["int8 step"]
    lines = ir.splitlines()
    weights = [i for i, line in enumerate(lines) if "tt.load" in line and "tensor<8x1024x!tt.ptr<i8>>" in line]
    first_loop = next(i for i, line in enumerate(lines) if "scf.for" in line)
    assert len(weights) == 2 and weights[0] < first_loop  # the peeled step's, then the main loop's
    loop = max(i for i in range(weights[1]) if "scf.for" in lines[i])
    assert next(i for i in range(loop, weights[1] + 1) if "tt.load" in lines[i]) == weights[1]
    for tile in ("tensor<8x!tt.ptr<f32>>", "tensor<8x!tt.ptr<f16>>"):  # SCB, residual
        assert next(i for i, line in enumerate(lines) if "tt.load" in line and tile in line) < first_loop, tile


def test_int8_gemv_threshold_0_is_bitsandbytes_arithmetic_exactly():
    torch.manual_seed(2)
    w, x = torch.randn(N, K, dtype=torch.float16), torch.randn(2, K, dtype=torch.float16)
    layer = _int8_layer(w, 0.0)
    cb, scb = layer.state.CB, layer.state.SCB
    # bitsandbytes' own activation quantization and int32 product; its GPU epilogue written out
    # (fmaf(acc * row * col, 1/127^2) in fp32, one rounding to fp16; its CPU one differs).
    ca, sca, _ = bnbf.int8_vectorwise_quant(x.clone())
    acc = torch.ops.bitsandbytes.int8_linear_matmul(ca, cb).double()
    expected = ((acc.float() * sca[:, None] * scb[None, :]).double() * 6.200012e-05).float().half()
    got = gemv.gemv_int8(x, cb, scb, 0.0)
    assert torch.equal(got, expected)
    with torch.no_grad():
        layer_out = layer(x)  # the layer itself: same up to its CPU epilogue's other constant
    assert _ulps(got, layer_out.double()) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spread", [False, True])  # outliers in one K-step; in every step
@pytest.mark.parametrize("outlier_pass", ["skip", "masked"])
def test_int8_gemv_outliers_match_linear8bitlt(dtype, spread, outlier_pass, monkeypatch):
    import triton.language as tl

    from quantbench.kernels import int8

    # 64-column steps and outlier chunks: the outlier term's chunks are loaded or skipped
    monkeypatch.setattr(int8, "OUTLIER_CHUNK", tl.constexpr(64))
    torch.manual_seed(3)
    w = torch.randn(N, K, dtype=torch.float16)
    x = torch.randn(1, K, dtype=dtype)
    at = torch.randperm(K)[:7] if spread else torch.arange(7) * 3
    x[0, at] = torch.tensor([4.0, -5.5, 7.0, -3.1, 9.0, 3.0, -8.0], dtype=dtype)
    layer = _int8_layer(w, 3.0)
    with torch.no_grad():
        expected = layer(x.clone()).double()
    set_config("int8", (8, 64, 4))
    set_int8_outlier_pass(outlier_pass)
    try:
        got = gemv.gemv_int8(x, layer.state.CB, layer.state.SCB, 3.0)
        plain = gemv.gemv_int8(x, layer.state.CB, layer.state.SCB, 0.0)
    finally:
        set_config("int8", None)
        set_int8_outlier_pass("skip")
    # bitsandbytes on the CPU skips the GPU's fp16 rounding of the int8 part; the interpreter's
    # bf16 casts truncate: judged against the output's scale, a few steps of the dtype
    scale = float(expected.abs().max())
    error, error_plain = (float((t.double() - expected).abs().max()) / scale for t in (got, plain))
    steps = torch.finfo(dtype).eps
    assert error <= 2 * steps
    if dtype == torch.float16:  # the outliers matter: quantized with the rest, the result is off
        assert error_plain > 3 * max(error, steps)


def test_int8_row_codes_are_bitsandbytes_activation_quantization(monkeypatch):
    """quantize_rows (the "once" prologue) writes what bitsandbytes' int8_vectorwise_quant
    computes: the same codes with outlier columns zeroed, the same absmax, and the outlier
    columns with their values, listed in column order; a row with more outliers than the list
    holds keeps its full count (the GEMV then takes the pass over the row)."""
    from quantbench.kernels import int8

    torch.manual_seed(5)
    x = torch.randn(1, K, dtype=torch.float16)
    at = torch.tensor([5, 17, 64, 100, 191])
    x[0, at] = torch.tensor([4.0, -5.5, 7.0, -3.5, 9.0], dtype=torch.float16)
    codes, absmax, outlier_cols = bnbf.int8_vectorwise_quant(x.clone(), threshold=3.0)
    q, stat, idx, val, count = int8.quantize_rows(x, K, 3.0)
    assert torch.equal(q, codes) and torch.equal(stat, absmax.float())
    assert torch.equal(idx[0, :5].long(), outlier_cols.long()) and int(count[0]) == 5
    assert torch.equal(val[0, :5], x[0, at].float())
    monkeypatch.setattr(int8, "OUTLIER_SLOTS", 2)
    q2, _, idx2, _, count2 = int8.quantize_rows(x, K, 3.0)
    assert int(count2[0]) == 5 and torch.equal(idx2[0].long(), outlier_cols[:2].long())
    assert torch.equal(q2, codes)


@pytest.mark.parametrize("pro", [0, 1, 2])
def test_int8_row_codes_in_one_step_or_several_are_the_same(pro, monkeypatch):
    """quantize_rows reads a row that fits one step once, into registers, and a longer row again
    in each pass; both give the same codes, absmax and outlier list, through every prologue."""
    from quantbench.kernels import int8
    from quantbench.kernels.prologue import row_launch

    torch.manual_seed(9)
    x = torch.randn(2, 2 * K if pro == 1 else K, dtype=torch.float16) * 2
    x[1, [3, 70, 150]] = 9.0
    nw = torch.rand(K, dtype=torch.float16) + 0.5
    one_step = int8.quantize_rows(x, K, 3.0, pro, nw, 1e-5)
    monkeypatch.setattr(int8, "row_launch", lambda k, pdl: (64, row_launch(k, pdl)[1]))  # three steps of 64
    steps = int8.quantize_rows(x, K, 3.0, pro, nw, 1e-5)
    (q, stat, idx, val, count), (q2, stat2, idx2, val2, count2) = one_step, steps
    assert torch.equal(q, q2) and torch.equal(stat, stat2) and torch.equal(count, count2)
    assert int(count[1]) > 0
    for row, listed in enumerate(count.clamp(max=int8.OUTLIER_SLOTS).tolist()):  # the slots past the count: unset
        assert torch.equal(idx[row, :listed], idx2[row, :listed]) and torch.equal(val[row, :listed], val2[row, :listed])


@pytest.mark.parametrize("kind", ["dense", "nf4", "nf4-steps", "int8-t0", "int8-t3", "int8-t3-overflow"])
@pytest.mark.parametrize("fusion", ["none", "act", "norm"])
def test_row_prologue_once_gives_the_inline_results(kind, fusion, monkeypatch, row_mode, request):
    """The row's work done once before the GEMV (config "once") against every program doing it:
    the same results, with the blocks' fusions, the 4-bit kernel's full and masked K-steps,
    LLM.int8 outliers taken from the list and from the pass over the row (more outliers than the
    list holds)."""
    from quantbench.kernels import int8

    torch.manual_seed(6)
    x = torch.randn(2, 2 * K if fusion == "act" else K, dtype=torch.float16) * 2
    x[1, :24] = 5.0  # 24 outliers of |x| >= 3 in the second row; the first has a few
    options = {"act": {"act": True}, "norm": {"norm": (torch.rand(K, dtype=torch.float16) + 0.5, 1e-5),
                                              "residual": torch.randn(2, N, dtype=torch.float16)}}.get(fusion, {})
    w = torch.randn(N, K, dtype=torch.float16)
    if kind == "dense":
        run = lambda: gemv.gemv_dense(x, w, **options)  # noqa: E731
    elif kind.startswith("nf4"):
        if kind == "nf4-steps":  # two blocks per K-step: a full step, then the masked last one
            set_config("4bit", (8, 128, 4, 1))
            request.addfinalizer(lambda: set_config("4bit", None))
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        run = lambda: gemv.gemv_4bit(x, packed, state.absmax, state.code, N, 64, **options)  # noqa: E731
    else:
        layer = _int8_layer(w, 0.0)
        threshold = 0.0 if kind == "int8-t0" else 3.0
        if kind.endswith("overflow"):
            monkeypatch.setattr(int8, "OUTLIER_SLOTS", 4)
        run = lambda: gemv.gemv_int8(x, layer.state.CB, layer.state.SCB, threshold, **options)  # noqa: E731
    row_mode("inline")
    inline = run()
    row_mode("once")
    once = run()
    if kind.startswith("int8-t3"):  # the outlier term's fp32 sum in another order: one output step
        assert float((once.float() - inline.float()).abs().max()) <= torch.finfo(torch.float16).eps * float(
            inline.float().abs().max())
    else:
        assert torch.equal(once, inline)


@pytest.mark.parametrize("slots", [64, 4])
def test_int8_list_gathered_before_the_dot_gives_the_same_results(slots, monkeypatch, row_mode):
    """config.int8_list_gather "early" (the listed columns' weights loaded before the int8 dot)
    against "end": the same values summed in the same order, so equal results, for rows with no
    outlier, a few, and (slots 4) more than the list holds, which take the pass over the row."""
    from quantbench.kernels import int8
    from quantbench.kernels.config import int8_list_gather, set_int8_list_gather

    torch.manual_seed(7)
    x = torch.randn(3, K, dtype=torch.float16).clamp(-2.5, 2.5)
    x[1, [3, 90]] = 5.0  # two outliers of |x| >= 3; row 0 none, row 2 twenty-four
    x[2, :24] = -5.0
    w = torch.randn(N, K, dtype=torch.float16)
    layer = _int8_layer(w, 0.0)
    monkeypatch.setattr(int8, "OUTLIER_SLOTS", slots)
    launched = []
    kernel = int8._int8_kernel

    class Recording:  # the launch's EARLY, as the kernel was asked for it
        def __getitem__(self, grid):  # noqa: ANN001, ANN204
            def launch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
                launched.append(kwargs["EARLY"])
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(int8, "_int8_kernel", Recording())
    row_mode("once")
    before = int8_list_gather()
    try:
        results = {}
        for mode in ("end", "early"):
            set_int8_list_gather(mode)
            results[mode] = gemv.gemv_int8(x, layer.state.CB, layer.state.SCB, 3.0)
    finally:
        set_int8_list_gather(before)
    assert launched == [False, True]
    assert torch.equal(results["early"], results["end"])
    plain = gemv.gemv_int8(x, layer.state.CB, layer.state.SCB, 0.0)
    assert torch.equal(results["early"][0], plain[0])  # no outlier: threshold 0's result
    assert not torch.equal(results["early"][1:], plain[1:])  # the outliers' term is in the others


@pytest.mark.parametrize("rows", ["inline", "once"])
def test_plan_merges_projections_and_gives_the_layers_results(rows, row_mode):
    """Real SmolLM2 (NF4, two blocks): a decode step through the kernels, compiled, equals the
    layers' own step; q/k/v and gate/up are one launch each, the blocks' norms, residual adds and
    silu(gate) * up run inside the GEMVs (no kernels of their own; "once": in a row kernel before
    each), the weights are not copied."""
    import quantbench
    from quantbench.kernels import install

    model = quantbench.load("smollm2-135m", "nf4", device="cpu").model
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    for module in model.modules():  # keep bitsandbytes' storage; no CPU repacking
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 3, 7, 9, 11]])
    with torch.no_grad():
        prefix = model(ids[:, :-1], use_cache=True).past_key_values
        theirs_cache, ours_cache = prefix, copy.deepcopy(prefix)
        expected = model(ids[:, -1:], past_key_values=theirs_cache, use_cache=True).logits
        attention = model.model.layers[0].self_attn
        bytes_before = sum(p.numel() * p.element_size() for p in model.parameters())
        plan = install(model, allow_cpu=True, skip=("lm_head",))
        layers = plan.describe()["layers"]
        assert layers["q_proj+k_proj+v_proj"] == "quantbench gemv nf4, merged, x2"
        assert layers["gate_proj+up_proj"] == "quantbench gemv nf4, merged, x2"
        assert layers["block"].endswith(", x2")  # norms and residual adds inside the GEMVs
        assert sum(p.numel() * p.element_size() for p in model.parameters()) == bytes_before
        q, k = attention.q_proj.weight, attention.k_proj.weight
        assert k.data_ptr() == q.data_ptr() + q.numel()  # views of one buffer, rows end to end

        norms = []
        for block in model.model.layers:
            block.input_layernorm.register_forward_hook(lambda *_: norms.append(1))
            block.post_attention_layernorm.register_forward_hook(lambda *_: norms.append(1))
        launches = []
        original = gemv.gemv_4bit
        gemv.gemv_4bit = lambda *a, **kw: launches.append(1) or original(*a, **kw)
        row_mode(rows)
        layers = plan.describe()["layers"]
        assert ("RMSNorm once per launch" in layers["q_proj+k_proj+v_proj"]) == (rows == "once")
        assert ("RMSNorm once per launch" in layers["gate_proj+up_proj"]) == (rows == "once")
        assert ("silu * up once per launch" in layers["down_proj"]) == (rows == "once")
        assert layers["o_proj"] == "quantbench gemv nf4, x2"  # no row work: nothing done once
        try:
            plan.enabled = True
            step = torch.compile(lambda i, c: model(i, past_key_values=c, use_cache=True).logits,
                                 backend="eager")
            got = step(ids[:, -1:], ours_cache)
        finally:
            plan.enabled = False
            gemv.gemv_4bit = original
    assert len(launches) == 2 * 4  # per block: q/k/v, o, gate/up, down
    assert not norms  # the norms ran inside the GEMVs
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("rows", ["inline", "once"])
def test_int8_outliers_op_compiled_equals_eager(rows, row_mode):
    """The installed LLM.int8 launch with outliers (a custom op), compiled as the fast engine
    compiles its step: the same output as uncompiled, and close to the layer's own; with the
    row's quantization in the GEMV or in a kernel before it."""
    from quantbench.kernels import install

    torch.manual_seed(4)
    layer = _int8_layer(torch.randn(N, K, dtype=torch.float16), 3.0)
    model = torch.nn.Sequential(layer)
    x = torch.randn(1, K, dtype=torch.float16)
    x[0, :6] = 5.0
    with torch.no_grad():
        own = layer(x.clone()).double()
    plan = install(model, allow_cpu=True)
    assert "outliers>=3" in next(iter(plan.describe()["layers"].values()))
    plan.enabled = True
    row_mode(rows)
    try:
        described = plan.describe()
        assert described["modes"]["row_prologue"] == rows
        assert ("quantized once" in next(iter(described["layers"].values()))) == (rows == "once")
        eager = model(x)
        compiled = torch.compile(model, backend="aot_eager")(x)
    finally:
        plan.enabled = False
    assert torch.equal(eager, compiled)
    assert float((eager.double() - own).abs().max()) <= 2 * torch.finfo(torch.float16).eps * float(own.abs().max())


def test_decode_attention_matches_sdpa_on_a_masked_cache():
    """Grouped-query heads over a static cache with unwritten (masked) positions, per row."""
    import types

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from quantbench.kernels.attention import decode_attention

    torch.manual_seed(5)
    batch, heads, kv_heads, length, dim = 2, 8, 2, 100, 64  # 100: a last partial block of keys
    q = torch.randn(batch, heads, 1, dim, dtype=torch.float16)
    k, v = (torch.randn(batch, kv_heads, length, dim, dtype=torch.float16) for _ in range(2))
    mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :37] = True
    mask[1, ..., 5:80] = True
    mask[1, ..., 30:33] = False  # a hole inside the attended span
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    ref, _ = sdpa_attention_forward(module, q.double(), k.double(), v.double(), mask, scaling=dim**-0.5)
    out = decode_attention(q, k, v, mask, dim**-0.5)
    assert out.shape == ref.shape == (batch, 1, heads, dim)
    assert _ulps(out, ref) <= 1.0  # fp32 softmax and sums, one rounding to fp16


def test_decode_attention_split_into_parts_combines_them_and_resets_its_counters():
    """A cache long enough to split: parts run as programs of their own and the last one in
    combines them; a part with nothing attended weighs nothing; a second step (as a graph
    replay would run it) gives the same result bit for bit and leaves the counters at zero."""
    import types

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from quantbench.kernels import attention
    from quantbench.kernels.config import SMS, attention_parts, set_attention_parts

    torch.manual_seed(6)
    batch, heads, kv_heads, length, dim = 2, 4, 2, 300, 32
    assert attention_parts() == "parts"  # the default
    parts, chunk = attention.parts_for(batch, heads, length)
    assert parts == 3 and chunk == 128
    # programs enough without parts: one part for a short cache, parts for a long one
    assert attention.parts_for(SMS, 1, attention.SHORT_CACHE - 64) == (1, attention.SHORT_CACHE - 64)
    assert attention.parts_for(SMS, 1, attention.SHORT_CACHE)[0] == 2
    q = torch.randn(batch, heads, 1, dim, dtype=torch.float16)
    k, v = (torch.randn(batch, kv_heads, length, dim, dtype=torch.float16) for _ in range(2))
    mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :140] = True  # the last part attends nothing
    mask[1, ..., 100:290] = True
    mask[1, ..., 120:200] = False  # the middle part attends nothing, the others in pieces
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    ref, _ = sdpa_attention_forward(module, q.double(), k.double(), v.double(), mask, scaling=dim**-0.5)
    wide = [t.float() for t in (q, k, v)]  # fp32 in and out: the parts' other sums show
    first = attention.decode_attention(q, k, v, mask, dim**-0.5)
    again = attention.decode_attention(q, k, v, mask, dim**-0.5)
    wide_parts = attention.decode_attention(*wide, mask, dim**-0.5)
    assert _ulps(first, ref) <= 1.0
    assert torch.equal(first, again)
    assert not attention.counters(q.device).any()
    set_attention_parts("one")
    try:
        assert attention.parts_for(batch, heads, length) == (1, length)
        wide_one = attention.decode_attention(*wide, mask, dim**-0.5)  # one program per head, whole cache
    finally:
        set_attention_parts("parts")
    assert not torch.equal(wide_parts, wide_one)  # the parts did run
    assert torch.allclose(wide_parts, wide_one, rtol=1e-5, atol=1e-6)


def test_decode_attention_parts_compile_to_a_release_and_an_acquire(compiled_code):
    """sm_90 code of the split kernel: every thread's stores, a block barrier, then one
    acquire-release atomic; the combine reads the parts past L1 and resets the counter. The
    unsplit kernel has no atomic at all."""
    assert "atom" not in compiled_code["attention parts=1"]
    split = compiled_code["attention parts=4"]
    atomics = [line.strip() for line in split.splitlines() if line.strip().startswith(("atom", "@"))
               and "atom." in line]
    assert len(atomics) == 2, atomics
    arrive, reset = atomics
    assert ".acq_rel" in arrive and ".gpu" in arrive and ".add" in arrive
    assert ".exch" in reset
    at = split.index(arrive)
    assert split.rfind("bar.sync", 0, at) > split.rfind("st.global", 0, at)  # stores, barrier, release
    assert "ld.global.cg" in split[at:] and "ld.global.cg" not in split[:at]


def test_decode_attention_asks_for_keys_and_values_together(compiled_code):
    """Each step of the loop over the cache loads its key and value tiles before its first
    reduction (the scores' sums, block barriers in the machine code), so a step waits for
    memory once, not once for the keys and again for the values."""
    loop = compiled_code["attention stages=None"]
    loop = loop[loop.rindex("scf.for"):]
    tiles = [i for i in range(len(loop)) if loop.startswith("tt.load", i)
             and "tensor<64x64x!tt.ptr<f16>>" in loop[i:loop.index("\n", i)]]
    assert len(tiles) == 2 and max(tiles) < loop.index("tt.reduce")


def test_decode_attention_asks_for_its_first_step_before_the_mask_scan(compiled_code):
    """The part's first key and value tiles are asked for before the pass over its mask bytes
    (the first loop), which they do not need; the loop over the cache keeps its own loads."""
    ir = compiled_code["attention stages=None"]
    lines = ir.splitlines()
    tiles = [i for i, line in enumerate(lines) if "tt.load" in line and "tensor<64x64x!tt.ptr<f16>>" in line]
    loops = [i for i, line in enumerate(lines) if "scf.for" in line]
    assert len(tiles) == 4 and len(loops) == 2
    assert max(tiles[:2]) < loops[0] and min(tiles[2:]) > loops[1]


def test_decode_attention_asks_for_its_loop_over_the_cache_pipelined(compiled_code):
    """config.pipeline_stages reaches the attention's loop over the cache: Triton's IR marks that
    loop with the depth (whether a Triton version then pipelines it is its own choice: 3.6 does,
    3.9 keeps its loads in the loop), and the loop carries no mark when the mode is off."""
    assert "tt.num_stages = 3" in compiled_code["attention stages=3"]
    assert "tt.num_stages" not in compiled_code["attention stages=None"]


def test_decode_attention_serves_a_static_cache_step_of_the_real_model(monkeypatch):
    """Real SmolLM2 (two blocks) on transformers' StaticCache, as the fast engine steps it: the
    installed attention serves each layer's decode call and the logits stay SDPA's."""
    import quantbench
    from quantbench.kernels import attention, install

    model = quantbench.load("smollm2-135m", "fp32", device="cpu").model
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    plan = install(model, allow_cpu=True, kinds=("attention",))
    calls = []
    original = attention.decode_attention
    monkeypatch.setattr(attention, "decode_attention", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    expected, _ = static_cache_step(model, plan, False)
    assert not calls
    got, _ = static_cache_step(model, plan, True)
    assert len(calls) == 2 and plan.describe()["layers"]["attention"] == "quantbench decode attention, x2"
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    plan.uninstall()
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", ["dense", "4bit", "4bit-pairs", "int8", "int8-outliers"])
def test_fused_norm_and_residual_equal_the_separate_steps(kind, monkeypatch):
    """norm=(weight, eps): the kernel reads LlamaRMSNorm(x) itself; residual: added to its result;
    act: it reads silu(gate) * up (all rounded as eager fp16 torch rounds them)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(6)
    x, residual = torch.randn(2, K, dtype=torch.float16), torch.randn(2, N, dtype=torch.float16)
    norm = LlamaRMSNorm(K, eps=1e-5).half()
    norm.weight.data = torch.rand(K, dtype=torch.float16) + 0.5
    w = torch.randn(N, K, dtype=torch.float16)
    if kind == "dense":
        run = lambda x, **kw: gemv.gemv_dense(x, w, **kw)  # noqa: E731
    elif kind.startswith("4bit"):
        from quantbench.kernels import config

        monkeypatch.setitem(config._GATHER, "pairs", kind.endswith("pairs"))  # activation as int32 words
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        run = lambda x, **kw: gemv.gemv_4bit(x, packed, state.absmax, state.code, N, 64, **kw)  # noqa: E731
    else:
        threshold = 2.5 if kind == "int8-outliers" else 0.0
        layer = _int8_layer(w, threshold)
        run = lambda x, **kw: gemv.gemv_int8(x, layer.state.CB, layer.state.SCB, threshold, **kw)  # noqa: E731
    with torch.no_grad():
        separate = (run(norm(x)).float() + residual.float()).half()
    fused = run(x, norm=(norm.weight, norm.variance_epsilon), residual=residual)
    gate, up = torch.randn(2, K, dtype=torch.float16), torch.randn(2, K, dtype=torch.float16)
    pairs = [(fused, separate), (run(torch.cat([gate, up], -1), act=True), run(torch.nn.functional.silu(gate) * up))]
    for got, expected in pairs:
        scale = float(expected.abs().max())
        assert float((got.double() - expected.double()).abs().max()) / scale <= 2 * torch.finfo(torch.float16).eps


def test_auto_row_prologue_is_once_for_long_quantized_rows_only(row_mode):
    """"auto" does the row work once where it measured faster (LLM.int8 and 4-bit launches of
    llama-2-7b's sizes, N and K >= 4096) and inline elsewhere; "once" and "inline" override it for
    every kernel."""
    from quantbench.kernels.config import rows_once

    row_mode("auto")
    assert rows_once("int8", 4096, 11008) and rows_once("int8", 22016, 4096)
    assert not rows_once("int8", 2048, 5632) and not rows_once("int8", 11264, 2048)  # tinyllama's down, gate/up
    assert rows_once("4bit", 4096, 4096) and rows_once("4bit", 12288, 4096)
    assert not rows_once("4bit", 2048, 5632) and not rows_once("4bit", 11264, 2048)
    assert not rows_once("dense", 4096, 11008)
    row_mode("once")
    assert rows_once("dense", 64, 64) and rows_once("4bit", 64, 64)
    row_mode("inline")
    assert not rows_once("int8", 4096, 11008)


@pytest.mark.parametrize(("mode", "depths"), [
    ("off", {"dense": None, "4bit": None, "int8": None, "attention": None}),
    ("3", {"dense": 3, "4bit": 3, "int8": 3, "attention": 3}),
    ("4bit:2", {"dense": None, "4bit": 2, "int8": None, "attention": None}),
    ("int8:4", {"dense": None, "4bit": None, "int8": 4, "attention": None}),
    ("dense:3", {"dense": 3, "4bit": None, "int8": None, "attention": None}),
    ("attention:2", {"dense": None, "4bit": None, "int8": None, "attention": 2}),
])
def test_each_kernel_launch_takes_its_own_pipeline_depth(mode, depths, monkeypatch, row_mode):
    """config.pipeline_stages: "N" pipelines every kernel's loops, "KIND:N" one kernel's, and a
    GEMV's row kernel (row work done once, its norm's sum of squares) takes its GEMV's depth. The
    interpreter runs loops as written, so what is checked here is each launch's argument; the
    compiled copies are checked in test_overlap.py."""
    from quantbench.kernels import attention, fourbit, int8, prologue
    from quantbench.kernels.config import set_pipeline_stages

    launched = []
    for name, kernel in {"dense": gemv._dense_kernel, "4bit": fourbit._fourbit_kernel, "int8": int8._int8_kernel,
                         "attention": attention._decode_attention, "prepared row": prologue._prepare_rows_kernel,
                         "int8 row codes": int8._quantize_rows}.items():
        def spy(*args, _name=name, _run=kernel.run, **kwargs):  # noqa: ANN002, ANN003, ANN202
            launched.append((_name, kwargs.get("STAGES", "not passed")))
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", spy)
    torch.manual_seed(8)
    x, w = torch.randn(1, K, dtype=torch.float16), torch.randn(N, K, dtype=torch.float16)
    norm = {"norm": (torch.rand(K, dtype=torch.float16) + 0.5, 1e-5)}
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    layer = _int8_layer(w, 0.0)
    row_mode("once")
    set_pipeline_stages(mode)
    try:
        gemv.gemv_dense(x, w, **norm)
        gemv.gemv_4bit(x, packed, state.absmax, state.code, N, 64, **norm)
        gemv.gemv_int8(x, layer.state.CB, layer.state.SCB, 3.0, **norm)
        attention.decode_attention(torch.randn(1, 4, 1, 64), torch.randn(1, 2, 70, 64), torch.randn(1, 2, 70, 64),
                                   torch.ones(1, 1, 1, 70, dtype=torch.bool), 0.125)
        with pytest.raises(ValueError, match="stages"):
            set_pipeline_stages("4bit:7")
    finally:
        set_pipeline_stages("off")
    assert launched == [("prepared row", depths["dense"]), ("dense", depths["dense"]),
                        ("prepared row", depths["4bit"]), ("4bit", depths["4bit"]),
                        ("int8 row codes", depths["int8"]), ("int8", depths["int8"]),
                        ("attention", depths["attention"])]


def test_ablation_benchmark_full_variant_is_the_4bit_gemv():
    """benchmarks/kernels_ablate.py times the 4-bit GEMV's loop with parts of its arithmetic left
    out; its full variants (activation as words, or exchanged) must be the default kernel, bit
    for bit (a partial last step included), or the parts it removes would be measured off
    another kernel."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "kernels_ablate.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "full variants equal gemv_4bit on 3 shapes" in done.stdout


@pytest.mark.parametrize("precision", ["fp32", "nf4"])
def test_equivalence_reference_scores_the_tokens_generate_scored(precision):
    """benchmarks/kernels_equivalence.py's fp32 reference is one forward pass over the prompt and
    eager's tokens with the weights loaded as eager's (real SmolLM2 on the CPU, where eager
    computes in fp32 too): its i-th logits are those the loaded model gives the same sequence
    at position i, quantized weights included, and in fp32 those generate scored the i-th token
    with, not those of a neighbour."""
    import importlib.util
    from pathlib import Path

    import quantbench

    path = Path(__file__).parents[1] / "benchmarks" / "kernels_equivalence.py"
    spec = importlib.util.spec_from_file_location("kernels_equivalence", path)
    equivalence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(equivalence)
    model = quantbench.load("smollm2-135m", precision, device="cpu").model
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        eager = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                               do_sample=False, num_beams=1, pad_token_id=model.generation_config.eos_token_id,
                               output_logits=True, return_dict_in_generate=True)
        tokens = eager.sequences[:, ids.shape[1]:]
        whole = model(eager.sequences).logits[:, ids.shape[1] - 1:-1]
    reference = equivalence.reference_logits(precision, {}, ids, tokens, device="cpu")
    assert reference.shape == whole.shape
    assert torch.allclose(reference, whole, atol=1e-4, rtol=1e-4)
    if precision == "fp32":  # bitsandbytes' CPU decode of one token rounds otherwise than its prefill
        assert torch.allclose(reference, torch.stack(eager.logits, dim=1), atol=2e-3, rtol=1e-3)
        assert torch.equal(reference.argmax(-1), tokens)

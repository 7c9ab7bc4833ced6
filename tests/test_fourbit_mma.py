"""The tensor-core 4-bit GEMV (fourbit_mma.py), run on the CPU by Triton's interpreter, against
bitsandbytes' own quantize_4bit / dequantize_4bit and a float64 matmul (tiny shapes; the GPU check
and timing is benchmarks/kernels_gemv.py --formats nf4-mma,nf4-dq-mma)."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton sees a kernel: CPU tensors

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
bnb = pytest.importorskip("bitsandbytes")
bnbf = bnb.functional

from quantbench.kernels import fourbit  # noqa: E402
from quantbench.kernels.fourbit_mma import gemv_4bit_mma, launch_shape, set_shape  # noqa: E402

# N: one whole program of 64 rows and a part of one; K: five 64-blocks, so a step of four blocks
# leaves a last partial step of one
N, K = 72, 320
# (BLOCK_N, NB, warps, stages, SPLIT): split-K in 2 with a step of one block; in 3 with steps of
# two blocks, the last split a partial step
SPLITS = [(32, 1, 4, 2, 2), (16, 2, 4, 2, 3)]
# a correct kernel is within this of bitsandbytes' fp32 weights: the codes rounded to the 16-bit
# dtype (2^-11 / 2^-8 relative, random signs over a row), one rounding of the result
REL_BOUND = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _bf16_dot(monkeypatch):
    """Triton's interpreter keeps bf16 as its raw 16 bits and hands those to numpy's matmul as
    integers; widened to fp32 first (exactly, as the tensor core's products are), its dot is the
    dot the kernel asks for. The kernel itself runs unchanged."""
    import triton.language as tl
    from triton.runtime import interpreter

    real = interpreter.InterpreterBuilder.create_dot

    def widened(handle):  # noqa: ANN001, ANN202
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args):  # noqa: ANN001, ANN202
        return real(self, widened(a), widened(b), d, *args)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)


@pytest.fixture
def shape():
    """set_shape(s) for one test, the table restored after it."""
    yield set_shape
    set_shape(None)


def _quantized(quant_type: str, double_quant: bool, dtype: torch.dtype, seed: int, n: int = N, k: int = K):
    """(packed, fp32 absmax as the engine expands it, 16 codes, bitsandbytes' fp32 weights)."""
    torch.manual_seed(seed)
    w = torch.randn(n, k, dtype=dtype)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    absmax = state.absmax
    if state.nested:  # what dequantize_4bit computes on every call (storage.py expands it once)
        absmax = (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
    exact = copy.copy(state)
    exact.dtype = torch.float32  # code * absmax in fp32, never rounded to 16 bits
    return packed, absmax, state.code, bnbf.dequantize_4bit(packed, exact)


def _held_weights(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, dtype: torch.dtype,
                  bnb_fp32: torch.Tensor) -> torch.Tensor:
    """float64 weights as the kernel defines them: each code rounded to `dtype`, times its block's
    fp32 absmax, exactly. Checked first against bitsandbytes' fp32 weights with unrounded codes."""
    n, k = bnb_fp32.shape
    nibbles = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], dim=-1).view(n, k).long()
    scale = absmax.view(n, k // 64).repeat_interleave(64, dim=1)
    assert torch.equal(code.float()[nibbles] * scale, bnb_fp32)  # high nibble first, block by block
    return code.to(dtype).double()[nibbles] * scale.double()


def _ulps(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error in units of the output dtype's spacing at each reference value."""
    spacing = torch.finfo(out.dtype).eps * ref.abs().clamp_min(1e-3)
    return float(((out.double() - ref).abs() / spacing.double()).max())


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("rows", [1, 3])
def test_mma_gemv_reads_bitsandbytes_storage(dtype, quant_type, double_quant, rows):
    """The table's launch shape for [72, 320]: a partial program of rows, a full step and a
    partial one; a bias with three activation rows."""
    packed, absmax, code, bnb_fp32 = _quantized(quant_type, double_quant, dtype, seed=rows)
    x = torch.randn(rows, K, dtype=dtype)
    bias = torch.randn(N, dtype=dtype) if rows == 3 else None
    plus = bias.double() if bias is not None else 0.0
    out = gemv_4bit_mma(x, packed, absmax, code, N, 64, bias)
    assert out.shape == (rows, N) and out.dtype == dtype
    assert torch.equal(out, gemv_4bit_mma(x, packed, absmax, code, N, 64, bias))  # deterministic
    # as its numerics define it: exact products and fp32 sums, one rounding (the interpreter's bf16
    # cast truncates: still within one spacing)
    held = x.double() @ _held_weights(packed, absmax, code, dtype, bnb_fp32).T + plus
    assert _ulps(out, held) <= 1.0
    # and close to bitsandbytes' own fp32 weights, as close as the fp32 GEMV of fourbit.py is
    ref = x.double() @ bnb_fp32.double().T + plus
    assert _rel(out, ref) < REL_BOUND[dtype]
    ours = fourbit.gemv_4bit(x, packed, absmax, code, N, 64, bias)
    assert _rel(out, ours.double()) < REL_BOUND[dtype]


@pytest.mark.parametrize("split", [None, *SPLITS])
@pytest.mark.parametrize(("lookup", "x_first"), [("byte", False), ("nibble", False), ("byte", True)])
def test_mma_gemv_variants_and_split_k_agree(split, lookup, x_first, shape):
    """Each lookup and operand order, split-K in fixed-order partial sums, and more activation
    rows than one dot takes (17: two row tiles of 16)."""
    dtype = torch.float16
    packed, absmax, code, bnb_fp32 = _quantized("nf4", False, dtype, seed=11)
    held = _held_weights(packed, absmax, code, dtype, bnb_fp32)
    shape(split)
    assert launch_shape(N, K)[4] == (split[4] if split else 1)
    for rows in (2, 17):
        x = torch.randn(rows, K, dtype=dtype)
        out = gemv_4bit_mma(x, packed, absmax, code, N, 64, lookup=lookup, x_first=x_first)
        assert out.shape == (rows, N)
        assert _ulps(out, x.double() @ held.T) <= 1.0
        assert torch.equal(out, gemv_4bit_mma(x, packed, absmax, code, N, 64, lookup=lookup, x_first=x_first))


def test_mma_gemv_takes_leading_dims_and_refuses_what_it_cannot_read():
    packed, absmax, code, bnb_fp32 = _quantized("fp4", False, torch.float16, seed=3)
    x = torch.randn(2, 1, K, dtype=torch.float16)
    out = gemv_4bit_mma(x, packed, absmax, code, N)
    assert out.shape == (2, 1, N)
    assert torch.equal(out, gemv_4bit_mma(x.view(2, K), packed, absmax, code, N).view(2, 1, N))
    with pytest.raises(ValueError, match="fp16 or bf16"):
        gemv_4bit_mma(x.float(), packed, absmax, code, N)
    with pytest.raises(ValueError, match="fp32 absmax"):
        gemv_4bit_mma(x, packed, absmax.half(), code, N)
    with pytest.raises(ValueError, match="columns"):
        gemv_4bit_mma(x[..., :64], packed, absmax, code, N)


def test_launch_table_splits_the_benchmark_shapes_into_whole_steps():
    """Every shape of benchmarks/kernels_gemv.py: BLOCK_N a wgmma tile, steps no wider than a row,
    and split-K only where there are too few programs to fill an H200 twice."""
    from quantbench.kernels.config import SMS

    shapes = [(2560, 2048), (2048, 2048), (11264, 2048), (2048, 5632), (32000, 2048), (12288, 4096),
              (4096, 4096), (22016, 4096), (4096, 11008), (32000, 4096)]
    for n, k in shapes:
        block_n, nb, warps, stages, split = launch_shape(n, k)
        assert block_n % 64 == 0 and warps * 16 <= block_n and nb * 64 <= k, (n, k)
        programs = -(-n // block_n)
        assert (split == 1) == (programs >= 2 * SMS), (n, k, split)
        assert k // 64 // split >= 2 * nb, (n, k, split)  # each split keeps two steps

"""THE table of precisions: the only place that knows which precisions exist.

Each row is a name, a one-line summary and a scheme (quantbench.schemes): a small frozen config
that says how the precision is built, what one quantized linear stores and where it ranks for
quality. Adding a precision is one row here, plus at most one scheme class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantbench.errors import QuantbenchError

# LoadOptions and its defaults are importable from here, beside the table they apply to
from quantbench.options import DEFAULT_INT8_THRESHOLD as DEFAULT_INT8_THRESHOLD
from quantbench.options import DEFAULT_SKIP_MODULES as DEFAULT_SKIP_MODULES
from quantbench.options import LoadOptions as LoadOptions
from quantbench.schemes import DTYPES, Bnb4bit, Bnb8bit, Float, Hqq, Quanto, Scheme, TorchAo

# the shape bits per weight are quoted for: large enough that per-linear constants vanish
BITS_REFERENCE_SHAPE = (4096, 4096)


@dataclass(frozen=True)
class Precision:
    name: str
    summary: str
    scheme: Scheme

    @property
    def backend(self) -> str:
        return self.scheme.backend

    @property
    def extra(self) -> str | None:
        return self.scheme.extra

    @property
    def quantizes(self) -> bool:
        return self.scheme.quantizes

    @property
    def needs_gpu(self) -> bool:
        return self.scheme.needs_gpu

    @property
    def compile_friendly(self) -> bool:
        return self.scheme.compile_friendly

    @property
    def quality_tier(self) -> int:
        return self.scheme.quality_tier

    @property
    def weight_bits(self) -> float:
        """Bits per quantized weight, constants included, on a 4096 x 4096 linear."""
        n_in, n_out = BITS_REFERENCE_SHAPE
        return 8 * self.scheme.linear_bytes(n_in, n_out) / (n_in * n_out)

    def unquantized_dtype(self, compute_dtype: torch.dtype) -> torch.dtype:
        """dtype of everything that is not quantized (norms, embeddings, skipped linears)."""
        return self.scheme.storage_dtype(compute_dtype)


TORCHAO_INT4_GROUP = 128
HQQ_GROUP = 64
QUANTO_INT4_GROUP = 128

_TABLE = [
    Precision("fp32", "float32 weights and compute", Float("fp32")),
    Precision("fp16", "float16 weights and compute", Float("fp16")),
    Precision("bf16", "bfloat16 weights and compute", Float("bf16")),
    Precision("int8", "LLM.int8: int8 weights, fp16 outliers above the threshold", Bnb8bit()),
    Precision("int8-offload", "LLM.int8 with modules that do not fit the GPU kept in fp32 on the CPU",
              Bnb8bit(offload=True)),
    Precision("nf4", "4-bit NormalFloat, blockwise fp32 absmax", Bnb4bit("nf4")),
    Precision("nf4-dq", "4-bit NormalFloat with double quantization of the absmax",
              Bnb4bit("nf4", double_quant=True)),
    Precision("fp4", "4-bit float (e2m1), blockwise fp32 absmax", Bnb4bit("fp4")),
    Precision("torchao-int8", "torchao int8 weight-only, one scale per output row", TorchAo("int8")),
    Precision("torchao-int4", f"torchao int4 weight-only, group {TORCHAO_INT4_GROUP}, tinygemm "
              "kernel (CUDA sm80+, bf16 compute)", TorchAo("int4", TORCHAO_INT4_GROUP)),
    Precision("torchao-int8-dyn", "torchao int8 weights and dynamically quantized int8 activations",
              TorchAo("int8-dyn")),
    Precision("torchao-fp8-wo", "torchao float8 (e4m3) weight-only, one scale per output row",
              TorchAo("fp8-wo")),
    Precision("torchao-fp8", "torchao float8 (e4m3) weights and dynamic activations, per row "
              "(compute capability 8.9+: Ada, Hopper)", TorchAo("fp8")),
    Precision("hqq-4bit", f"HQQ 4-bit, group {HQQ_GROUP}, scale and zero per group, no calibration",
              Hqq(4, HQQ_GROUP)),
    Precision("hqq-3bit", f"HQQ 3-bit, group {HQQ_GROUP}, scale and zero per group, no calibration",
              Hqq(3, HQQ_GROUP)),
    Precision("quanto-int8", "optimum-quanto int8 weights, one scale per output row", Quanto("int8")),
    Precision("quanto-int4", f"optimum-quanto int4 weights, group {QUANTO_INT4_GROUP}, scale and shift",
              Quanto("int4", QUANTO_INT4_GROUP)),
]

PRECISIONS: dict[str, Precision] = {p.name: p for p in _TABLE}


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name.strip().lower()]
    except KeyError:
        raise QuantbenchError(
            f"unknown precision '{name}'; choose from: {', '.join(PRECISIONS)}"
        ) from None


def parse_precisions(text: str) -> list[Precision]:
    """'fp16,int8,nf4' -> precisions, in the order given, each once."""
    names = [n for n in (part.strip() for part in text.split(",")) if n]
    if not names:
        raise QuantbenchError(f"no precision given; choose from: {', '.join(PRECISIONS)}")
    return [get_precision(n) for n in dict.fromkeys(names)]


def resolve_compute_dtype(name: str | None, device: str) -> torch.dtype:
    """The user's compute dtype, else the best for the device: bf16 where the GPU has it (and
    for a GPU that is not visible here, as the estimate assumes), fp16 on older GPUs, fp32 on
    the CPU (bf16 matmuls are slow there)."""
    if name is None:
        if not device.startswith("cuda"):
            return torch.float32
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise QuantbenchError(f"unknown compute dtype '{name}'; choose from: fp32, fp16, bf16") from None


def reference_precision(device: str) -> str:
    """The precision quality is measured against: half precision on GPU, fp32 on CPU."""
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"

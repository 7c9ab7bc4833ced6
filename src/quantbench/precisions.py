"""THE table of precisions: the only place that knows how a precision is built.

Each entry says how to ask `from_pretrained` for it (a torch dtype or a quantization config),
how many bits a quantized weight costs (constants included), and what it needs to run.
Adding a precision is one entry here, plus at most one builder function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from quantbench.calibration.rows import calibrated_precisions
from quantbench.errors import QuantbenchError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

# bitsandbytes 4-bit: one fp32 absmax per 64 weights; with double quantization the absmax
# become 8-bit, with one fp32 scale (+ offset) per 256 of them.
NF4_BLOCKSIZE = 64
DQ_BLOCKSIZE = 256
FOUR_BIT_CONSTANT_BITS = 32 / NF4_BLOCKSIZE
DOUBLE_QUANT_CONSTANT_BITS = 8 / NF4_BLOCKSIZE + 32 / (NF4_BLOCKSIZE * DQ_BLOCKSIZE)
# LLM.int8: one fp32 scale per output row; negligible per weight, counted by the estimator.
DEFAULT_INT8_THRESHOLD = 6.0
DEFAULT_SKIP_MODULES = ("lm_head",)


@dataclass(frozen=True)
class LoadOptions:
    """What the user may set on top of a precision."""

    compute_dtype: str | None = None  # None: best for the device (see default_compute_dtype)
    skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES
    int8_threshold: float = DEFAULT_INT8_THRESHOLD
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[Any, str] | None = None
    trust_remote_code: bool = False
    # calibrated rows (gptq-4bit, awq-4bit); None: the calibration text shipped in the package
    calibration_file: str | None = None
    calibration_samples: int = 16
    calibration_seq_len: int = 256


@dataclass(frozen=True)
class Precision:
    name: str
    summary: str
    weight_bits: float  # bits per quantized weight, constants included
    backend: str  # "torch" or the library that quantizes ("bitsandbytes", ...)
    dtype: str | None = None  # storage dtype of float precisions
    needs_gpu: bool = False
    quantizes: bool = False
    extra: str | None = None  # pip extra that installs the backend
    # torch.compile captures the forward as one graph (no graph breaks), so the fast engine can
    # compile it whole; checked with torch._dynamo.explain in tests/test_backends.py. bitsandbytes
    # 4-bit matmuls are torch.library ops (one graph); LLM.int8 splits outliers with a
    # data-dependent shape, one graph break per layer.
    compile_friendly: bool = False
    builder: Callable[[Precision, LoadOptions, torch.dtype], Any] | None = field(
        default=None, repr=False, compare=False
    )
    # rows that make their own checkpoint first (calibration): prepare_checkpoint, linear_bytes
    scheme: Any = field(default=None, repr=False, compare=False)

    def quantization_config(self, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
        return self.builder(self, options, compute_dtype) if self.builder else None

    def unquantized_dtype(self, compute_dtype: torch.dtype) -> torch.dtype:
        """dtype of everything that is not quantized (norms, embeddings, skipped linears)."""
        return DTYPES[self.dtype] if self.dtype else compute_dtype


def _bnb_int8(precision: Precision, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_8bit=True,
        llm_int8_threshold=options.int8_threshold,
        llm_int8_has_fp16_weight=False,
        llm_int8_skip_modules=list(options.skip_modules),
        llm_int8_enable_fp32_cpu_offload=precision.name == "int8-offload",
    )


def _bnb_4bit(quant_type: str, double_quant: bool) -> Callable[..., Any]:
    def build(precision: Precision, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=torch.uint8,
            llm_int8_skip_modules=list(options.skip_modules),
        )

    return build


# The other on-the-fly quantizers transformers supports. Constants are counted at 16 bits:
# on a GPU the scales / zero points live in the compute dtype (bf16 or fp16).
TORCHAO_INT4_GROUP = 128
HQQ_GROUP = 64
QUANTO_INT4_GROUP = 128  # quanto shrinks it (in steps of 32) until it divides the row


def _torchao(kind: str) -> Callable[..., Any]:
    """torchao configs; tensor subclasses replace the weights of nn.Linear."""

    def build(precision: Precision, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
        import torchao.quantization as ao
        from transformers import TorchAoConfig

        if kind == "int4" and compute_dtype != torch.bfloat16:
            raise QuantbenchError(
                f"precision '{precision.name}' needs bf16 compute (tinygemm kernel): --compute-dtype bf16"
            )
        if kind == "fp8" and torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
            raise QuantbenchError(
                f"precision '{precision.name}' needs float8 tensor cores (compute capability 8.9+, "
                f"Ada or Hopper); this GPU is {torch.cuda.get_device_name()}"
            )
        configs = {
            "int8": lambda: ao.Int8WeightOnlyConfig(),
            # tile_packed_to_4d is the tinygemm kernel in torch itself; the default "plain"
            # format needs the separate mslk kernel package.
            "int4": lambda: ao.Int4WeightOnlyConfig(
                group_size=TORCHAO_INT4_GROUP, int4_packing_format="tile_packed_to_4d"
            ),
            "int8-dyn": lambda: ao.Int8DynamicActivationInt8WeightConfig(),
            "fp8-wo": lambda: ao.Float8WeightOnlyConfig(),
            "fp8": lambda: ao.Float8DynamicActivationFloat8WeightConfig(granularity=ao.PerRow()),
        }
        return TorchAoConfig(configs[kind](), modules_to_not_convert=list(options.skip_modules) or None)

    return build


def _hqq(nbits: int) -> Callable[..., Any]:
    """HQQ, applied after loading: transformers 5 has HqqConfig but cannot quantize with it
    while loading ("HQQ is not available yet"), so the builder returns a function that
    replaces each nn.Linear by an HQQLinear; loading calls it on the loaded model."""

    def build(precision: Precision, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
        def quantize(model: torch.nn.Module) -> None:
            from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
            from transformers.quantizers.quantizers_utils import should_convert_module

            config = BaseQuantizeConfig(nbits=nbits, group_size=HQQ_GROUP)
            skip = list(options.skip_modules) or None
            for name, module in list(model.named_modules()):
                if isinstance(module, torch.nn.Linear) and should_convert_module(name, skip):
                    parent, _, child = name.rpartition(".")
                    layer = HQQLinear(module, config, compute_dtype=compute_dtype,
                                      device=str(module.weight.device), del_orig=True)
                    setattr(model.get_submodule(parent), child, layer)

        return quantize

    return build


def _quanto(weights: str) -> Callable[..., Any]:
    def build(precision: Precision, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
        from transformers import QuantoConfig

        return QuantoConfig(weights=weights, modules_to_not_convert=list(options.skip_modules) or None)

    return build


_TABLE = [
    Precision("fp32", "float32 weights and compute", 32, "torch", dtype="fp32", compile_friendly=True),
    Precision("fp16", "float16 weights and compute", 16, "torch", dtype="fp16", compile_friendly=True),
    Precision("bf16", "bfloat16 weights and compute", 16, "torch", dtype="bf16", compile_friendly=True),
    Precision(
        "int8", "LLM.int8: int8 weights, fp16 outliers above the threshold",
        8, "bitsandbytes", quantizes=True, builder=_bnb_int8,
    ),
    Precision(
        "int8-offload", "LLM.int8 with modules that do not fit the GPU kept in fp32 on the CPU",
        8, "bitsandbytes", quantizes=True, needs_gpu=True, builder=_bnb_int8,
    ),
    Precision(
        "nf4", "4-bit NormalFloat, blockwise fp32 absmax",
        4 + FOUR_BIT_CONSTANT_BITS, "bitsandbytes", quantizes=True,
        compile_friendly=True, builder=_bnb_4bit("nf4", double_quant=False),
    ),
    Precision(
        "nf4-dq", "4-bit NormalFloat with double quantization of the absmax",
        4 + DOUBLE_QUANT_CONSTANT_BITS, "bitsandbytes", quantizes=True,
        compile_friendly=True, builder=_bnb_4bit("nf4", double_quant=True),
    ),
    Precision(
        "fp4", "4-bit float (e2m1), blockwise fp32 absmax",
        4 + FOUR_BIT_CONSTANT_BITS, "bitsandbytes", quantizes=True,
        compile_friendly=True, builder=_bnb_4bit("fp4", double_quant=False),
    ),
    Precision(
        "torchao-int8", "torchao int8 weight-only, one scale per output row",
        8, "torchao", quantizes=True, extra="torchao", compile_friendly=True,
        builder=_torchao("int8"),
    ),
    Precision(
        "torchao-int4", f"torchao int4 weight-only, group {TORCHAO_INT4_GROUP}, tinygemm kernel "
        "(CUDA sm80+, bf16 compute)",
        4 + 32 / TORCHAO_INT4_GROUP, "torchao", quantizes=True, needs_gpu=True, extra="torchao",
        compile_friendly=True, builder=_torchao("int4"),
    ),
    Precision(
        "torchao-int8-dyn", "torchao int8 weights and dynamically quantized int8 activations",
        8, "torchao", quantizes=True, extra="torchao", compile_friendly=True,
        builder=_torchao("int8-dyn"),
    ),
    Precision(
        "torchao-fp8-wo", "torchao float8 (e4m3) weight-only, one scale per output row",
        8, "torchao", quantizes=True, extra="torchao", compile_friendly=True,
        builder=_torchao("fp8-wo"),
    ),
    Precision(
        "torchao-fp8", "torchao float8 (e4m3) weights and dynamic activations, per row "
        "(compute capability 8.9+: Ada, Hopper)",
        8, "torchao", quantizes=True, needs_gpu=True, extra="torchao", compile_friendly=True,
        builder=_torchao("fp8"),
    ),
    Precision(
        "hqq-4bit", f"HQQ 4-bit, group {HQQ_GROUP}, scale and zero per group, no calibration",
        4 + 32 / HQQ_GROUP, "hqq", quantizes=True, extra="hqq", compile_friendly=True,
        builder=_hqq(4),
    ),
    Precision(
        # 3-bit values are packed ten to an int32: 3.2 bits each
        "hqq-3bit", f"HQQ 3-bit, group {HQQ_GROUP}, scale and zero per group, no calibration",
        3.2 + 32 / HQQ_GROUP, "hqq", quantizes=True, extra="hqq", compile_friendly=True,
        builder=_hqq(3),
    ),
    Precision(
        "quanto-int8", "optimum-quanto int8 weights, one scale per output row",
        8, "optimum.quanto", quantizes=True, extra="quanto", compile_friendly=True,
        builder=_quanto("int8"),
    ),
    Precision(
        "quanto-int4", f"optimum-quanto int4 weights, group {QUANTO_INT4_GROUP}, scale and shift",
        4 + 32 / QUANTO_INT4_GROUP, "optimum.quanto", quantizes=True, extra="quanto",
        compile_friendly=True, builder=_quanto("int4"),
    ),
    *calibrated_precisions(Precision),
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


def default_compute_dtype(device: str) -> torch.dtype:
    """bf16 where the GPU has it, fp16 on older GPUs, fp32 on the CPU (bf16 matmuls are slow)."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_compute_dtype(options: LoadOptions, device: str) -> torch.dtype:
    if options.compute_dtype is None:
        return default_compute_dtype(device)
    try:
        return DTYPES[options.compute_dtype.lower()]
    except KeyError:
        raise QuantbenchError(
            f"unknown compute dtype '{options.compute_dtype}'; choose from: fp32, fp16, bf16"
        ) from None


def reference_precision(device: str) -> str:
    """The precision quality is measured against: half precision on GPU, fp32 on CPU."""
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"

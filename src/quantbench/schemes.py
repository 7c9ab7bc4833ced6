"""One small frozen config per quantization scheme: how a precision is built and what it stores.

In the style of torchao's `quantize_(model, config)`: a row of the precision table is a name, a
summary and one of these. A scheme says how to ask `from_pretrained` for it (`hf_config`), what
to do to the loaded model (`after_load`), how many bytes one quantized linear takes
(`linear_bytes`, constants included: the estimate and the table's bits per weight come from it)
and where it ranks for expected quality (`quality_tier`, lower is closer to the reference).

Constants (scales, zero points) are counted at 16 bits where they live in the compute dtype:
the estimate is for a GPU, where that dtype is bf16 or fp16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from quantbench.errors import QuantbenchError
from quantbench.options import LoadOptions

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
# bitsandbytes 4-bit: one fp32 absmax per 64 weights; with double quantization the absmax
# become 8-bit, with one fp32 scale per 256 of them and one fp32 offset; plus a 16-entry fp32
# code table per linear, and one shared 256-entry map for the nested absmax.
NF4_BLOCKSIZE = 64
DQ_BLOCKSIZE = 256
FOUR_BIT_CODE_BYTES = 16 * 4
DYNAMIC_MAP_BYTES = 256 * 4
HALF = 2  # bytes of a scale or zero point kept in the compute dtype


@dataclass(frozen=True)
class Scheme:
    """Defaults: a float row that quantizes nothing."""

    backend: ClassVar[str] = "torch"  # the library that quantizes (its import name)
    extra: ClassVar[str | None] = None  # pip extra that installs it

    @property
    def quantizes(self) -> bool:
        return True

    @property
    def needs_gpu(self) -> bool:
        return False

    @property
    def compile_friendly(self) -> bool:
        """torch.compile captures the forward as one graph (checked in tests/test_backends.py)."""
        return True

    @property
    def quality_tier(self) -> int:
        """Expected quality rank, lower is closer to the reference; measured Results override it."""
        return 0

    @property
    def offloads(self) -> bool:
        """A placement of another row (weights spilled to the CPU), not a size of its own."""
        return False

    @property
    def dense_at_run_time(self) -> bool:
        """The loaded (packed) linears are expanded to dense compute-dtype weights on the first
        forward, so weight memory while running is the unquantized model's."""
        return False

    def storage_dtype(self, compute_dtype: torch.dtype) -> torch.dtype:
        """dtype of everything that is not quantized (norms, embeddings, skipped linears)."""
        return compute_dtype

    def device_map(self, device: str) -> str:
        return device

    def hf_config(self, options: LoadOptions, compute_dtype: torch.dtype) -> Any | None:
        """The `quantization_config` for from_pretrained; None for float and post-load schemes."""
        return None

    def after_load(self, model: Any, options: LoadOptions, compute_dtype: torch.dtype) -> None:
        """Quantization applied to the loaded model (schemes transformers cannot load with)."""

    def prepare_checkpoint(self, model_dir: Path, options: LoadOptions) -> Path:
        """The folder to load from; schemes that write their own checkpoint return theirs."""
        return model_dir

    def keeps(self, in_features: int) -> bool:
        """Whether this row leaves a linear of `in_features` inputs in the compute dtype although
        it quantizes the others (a group layout its rows do not divide into)."""
        return False

    def linear_bytes(self, in_features: int, out_features: int) -> float:
        """Storage of one quantized linear of this shape: weights plus scales, zeros, absmax."""
        return self.packed_bytes(in_features, out_features) + self.constant_bytes(in_features, out_features)

    def packed_bytes(self, in_features: int, out_features: int) -> float:
        """The quantized weight values alone."""
        raise NotImplementedError

    def constant_bytes(self, in_features: int, out_features: int) -> float:
        """Scales, zero points, absmax and code tables of one linear."""
        return 0

    def shared_bytes(self) -> int:
        """Constants stored once per model, not per linear."""
        return 0

    def matmul_workspace_bytes(self, tokens: int, in_features: int, out_features: int,
                               act_bytes: int) -> int:
        """Transient memory one quantized matmul allocates beyond its input and output."""
        return 0


@dataclass(frozen=True)
class Float(Scheme):
    dtype: str = "fp32"

    @property
    def quantizes(self) -> bool:
        return False

    def storage_dtype(self, compute_dtype: torch.dtype) -> torch.dtype:
        return DTYPES[self.dtype]

    def packed_bytes(self, in_features: int, out_features: int) -> float:
        return in_features * out_features * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class Bnb8bit(Scheme):
    """LLM.int8: int8 weights, one fp32 scale per output row; outliers above the threshold
    (LoadOptions.int8_threshold) run in fp16."""

    backend: ClassVar[str] = "bitsandbytes"
    offload: bool = False  # modules that do not fit the GPU stay in fp32 on the CPU

    @property
    def needs_gpu(self) -> bool:
        return self.offload

    @property
    def compile_friendly(self) -> bool:
        return False  # the outlier split has a data-dependent shape: one graph break per layer

    @property
    def quality_tier(self) -> int:
        return 1

    @property
    def offloads(self) -> bool:
        return self.offload

    def device_map(self, device: str) -> str:
        return "auto" if self.offload else device

    def hf_config(self, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=options.int8_threshold,
            llm_int8_has_fp16_weight=False,
            llm_int8_skip_modules=list(options.skip_modules),
            llm_int8_enable_fp32_cpu_offload=self.offload,
        )

    def packed_bytes(self, in_features: int, out_features: int) -> float:
        return in_features * out_features

    def constant_bytes(self, in_features: int, out_features: int) -> float:
        return 4 * out_features  # one fp32 scale (SCB) per output row

    def matmul_workspace_bytes(self, tokens: int, in_features: int, out_features: int,
                               act_bytes: int) -> int:
        return tokens * (in_features + 4 * out_features)  # int8 copy of the input, int32 output


@dataclass(frozen=True)
class Bnb4bit(Scheme):
    """bitsandbytes 4-bit (NormalFloat or e2m1 float), blockwise absmax."""

    backend: ClassVar[str] = "bitsandbytes"
    quant_type: str = "nf4"
    double_quant: bool = False

    @property
    def quality_tier(self) -> int:
        return 2 if self.quant_type == "nf4" else 3

    def hf_config(self, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=torch.uint8,
            llm_int8_skip_modules=list(options.skip_modules),
        )

    def packed_bytes(self, in_features: int, out_features: int) -> float:
        return math.ceil(in_features * out_features / 2)

    def constant_bytes(self, in_features: int, out_features: int) -> float:
        blocks = math.ceil(in_features * out_features / NF4_BLOCKSIZE)
        if self.double_quant:  # uint8 absmax, an fp32 absmax per 256 of them, an fp32 offset
            return blocks + 4 * math.ceil(blocks / DQ_BLOCKSIZE) + 4 + FOUR_BIT_CODE_BYTES
        return 4 * blocks + FOUR_BIT_CODE_BYTES

    def shared_bytes(self) -> int:
        return DYNAMIC_MAP_BYTES if self.double_quant else 0

    def matmul_workspace_bytes(self, tokens: int, in_features: int, out_features: int,
                               act_bytes: int) -> int:
        return in_features * out_features * act_bytes  # the weight, dequantized for the prefill


@dataclass(frozen=True)
class TorchAo(Scheme):
    """torchao configs; tensor subclasses replace the weights of nn.Linear.

    kind: int8 (weight-only), int8-dyn (int8 activations too), int4 (weight-only, tinygemm),
    fp8-wo (float8 weight-only), fp8 (float8 weights and activations)."""

    backend: ClassVar[str] = "torchao"
    extra: ClassVar[str | None] = "torchao"
    kind: str = "int8"
    group: int | None = None  # int4 only: weights per scale and zero point

    @property
    def needs_gpu(self) -> bool:
        return self.kind in ("int4", "fp8")

    @property
    def quality_tier(self) -> int:
        return 2 if self.kind == "int4" else 1

    def hf_config(self, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
        import torchao.quantization as ao
        from transformers import TorchAoConfig

        if self.kind == "int4" and compute_dtype != torch.bfloat16:
            raise QuantbenchError("torchao int4 needs bf16 compute (tinygemm kernel): --compute-dtype bf16")
        if self.kind == "fp8" and torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
            raise QuantbenchError(
                "torchao fp8 needs float8 tensor cores (compute capability 8.9+, Ada or Hopper); "
                f"this GPU is {torch.cuda.get_device_name()}"
            )
        configs = {
            "int8": lambda: ao.Int8WeightOnlyConfig(),
            # tile_packed_to_4d is the tinygemm kernel in torch itself; the default "plain"
            # format needs the separate mslk kernel package.
            "int4": lambda: ao.Int4WeightOnlyConfig(
                group_size=self.group, int4_packing_format="tile_packed_to_4d"
            ),
            "int8-dyn": lambda: ao.Int8DynamicActivationInt8WeightConfig(),
            "fp8-wo": lambda: ao.Float8WeightOnlyConfig(),
            "fp8": lambda: ao.Float8DynamicActivationFloat8WeightConfig(granularity=ao.PerRow()),
        }
        return TorchAoConfig(configs[self.kind](), modules_to_not_convert=list(options.skip_modules) or None)

    def keeps(self, in_features: int) -> bool:
        # torchao's int4 returns a weight whose rows do not divide into its groups unchanged
        # (SmolLM2's 576-wide q/k/v/o and gate/up: 180 of its 210 linears)
        return self.kind == "int4" and in_features % self.group != 0

    def packed_bytes(self, in_features: int, out_features: int) -> float:
        n = in_features * out_features
        return math.ceil(n / 2) if self.kind == "int4" else n

    def constant_bytes(self, in_features: int, out_features: int) -> float:
        if self.kind == "int4":  # a scale and a zero per group
            return 2 * HALF * out_features * math.ceil(in_features / self.group)
        scale = 4 if self.kind.startswith("fp8") else HALF  # float8 scales are fp32
        return scale * out_features  # one scale per output row


@dataclass(frozen=True)
class Hqq(Scheme):
    """HQQ, applied after loading: transformers 5 has HqqConfig but cannot quantize with it
    while loading ("HQQ is not available yet"), so each nn.Linear becomes an HQQLinear here."""

    backend: ClassVar[str] = "hqq"
    extra: ClassVar[str | None] = "hqq"
    nbits: int = 4
    group: int = 64

    @property
    def quality_tier(self) -> int:
        return 2 if self.nbits >= 4 else 4

    def after_load(self, model: Any, options: LoadOptions, compute_dtype: torch.dtype) -> None:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
        from transformers.quantizers.quantizers_utils import should_convert_module

        config = BaseQuantizeConfig(nbits=self.nbits, group_size=self.group)
        skip = list(options.skip_modules) or None
        for name, module in list(model.named_modules()):
            if isinstance(module, torch.nn.Linear) and should_convert_module(name, skip):
                parent, _, child = name.rpartition(".")
                layer = HQQLinear(module, config, compute_dtype=compute_dtype,
                                  device=str(module.weight.device), del_orig=True)
                setattr(model.get_submodule(parent), child, layer)

    def packed_bytes(self, in_features: int, out_features: int) -> float:
        n = in_features * out_features
        # 3-bit values are packed ten to an int32; the others fill whole bytes
        return 4 * math.ceil(n / 10) if self.nbits == 3 else math.ceil(n * self.nbits / 8)

    def constant_bytes(self, in_features: int, out_features: int) -> float:
        return 2 * HALF * math.ceil(in_features * out_features / self.group)  # scale and zero

    def matmul_workspace_bytes(self, tokens: int, in_features: int, out_features: int,
                               act_bytes: int) -> int:
        return in_features * out_features * act_bytes  # dequantized before the matmul


@dataclass(frozen=True)
class Quanto(Scheme):
    """optimum-quanto weights: int8 with one scale per row, or int4 with a scale and a shift
    per group."""

    backend: ClassVar[str] = "optimum.quanto"
    extra: ClassVar[str | None] = "quanto"
    weights: str = "int8"
    group: int = 128

    @property
    def quality_tier(self) -> int:
        return 1 if self.weights == "int8" else 2

    def hf_config(self, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
        from transformers import QuantoConfig

        return QuantoConfig(weights=self.weights, modules_to_not_convert=list(options.skip_modules) or None)

    def group_for(self, in_features: int) -> int:
        """quanto shrinks the group in steps of 32 until it divides the row."""
        group = self.group
        while in_features % group and group > 32:
            group -= 32
        return group

    def packed_bytes(self, in_features: int, out_features: int) -> float:
        n = in_features * out_features
        return n if self.weights == "int8" else math.ceil(n / 2)

    def constant_bytes(self, in_features: int, out_features: int) -> float:
        if self.weights == "int8":
            return HALF * out_features  # one scale per output row
        groups = out_features * math.ceil(in_features / self.group_for(in_features))
        return 2 * HALF * groups  # a scale and a shift per group

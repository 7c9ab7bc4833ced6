"""What was quantized: layer classes and counts, what was left alone, dtypes, footprint."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

QUANTIZED_LINEAR_CLASSES = ("Linear4bit", "Linear8bitLt")


@dataclass
class Inspection:
    parameters: int  # logical weights, as the unquantized model would count them
    quantized_layers: dict[str, int]  # class name -> count
    quant_types: dict[str, int]  # "nf4" / "fp4" / "int8" -> count
    double_quant: bool
    unquantized_linears: list[str]
    full_precision_modules: dict[str, str]  # embeddings, heads -> dtype
    storage_dtypes: dict[str, int]  # dtype -> bytes
    compute_dtype: str
    footprint_bytes: int  # params + buffers + quantization constants
    fp16_footprint_bytes: int  # the same model with every parameter in fp16
    devices: dict[str, int] = field(default_factory=dict)  # device -> bytes

    @property
    def ratio_to_fp16(self) -> float:
        return self.footprint_bytes / self.fp16_footprint_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio_to_fp16": round(self.ratio_to_fp16, 4)}


def _quant_state_tensors(param: Any) -> list[torch.Tensor]:
    """The constants bitsandbytes keeps beside packed weights (absmax, nested absmax, code)."""
    tensors: list[torch.Tensor] = []
    state = getattr(param, "quant_state", None)
    while state is not None:
        tensors += [t for t in (state.absmax, getattr(state, "offset", None)) if t is not None]
        state = getattr(state, "state2", None)
    scb = getattr(param, "SCB", None)  # LLM.int8's per-row scales
    if isinstance(scb, torch.Tensor):
        tensors.append(scb)
    return tensors


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _is_quantized(module: nn.Module) -> bool:
    return type(module).__name__ in QUANTIZED_LINEAR_CLASSES


def _logical_numel(module: nn.Module, name: str, param: torch.Tensor) -> int:
    if _is_quantized(module) and name == "weight":
        return module.in_features * module.out_features
    return param.numel()


def _quant_type(module: nn.Module) -> str:
    if type(module).__name__ == "Linear8bitLt":
        return "int8"
    state = getattr(module.weight, "quant_state", None)
    return getattr(state, "quant_type", None) or getattr(module.weight, "quant_type", "4bit")


def inspect_model(model: nn.Module, compute_dtype: torch.dtype | None = None) -> Inspection:
    layers: Counter[str] = Counter()
    quant_types: Counter[str] = Counter()
    storage: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    unquantized: list[str] = []
    full_precision: dict[str, str] = {}
    double_quant = False
    footprint = logical = 0
    seen: set[int] = set()  # tied weights (embeddings = lm_head) count once

    for mod_name, module in model.named_modules():
        if _is_quantized(module):
            layers[type(module).__name__] += 1
            quant_types[_quant_type(module)] += 1
            state = getattr(module.weight, "quant_state", None)
            double_quant |= bool(getattr(state, "nested", False))
        elif isinstance(module, nn.Linear):
            unquantized.append(mod_name)
        if isinstance(module, nn.Embedding) or mod_name.endswith("lm_head"):
            full_precision[mod_name] = str(module.weight.dtype).removeprefix("torch.")
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            size = _bytes(tensor) + sum(_bytes(t) for t in _quant_state_tensors(tensor))
            footprint += size
            storage[str(tensor.dtype).removeprefix("torch.")] += _bytes(tensor)
            devices[str(tensor.device)] += size
            if isinstance(tensor, nn.Parameter):
                logical += _logical_numel(module, name, tensor)

    return Inspection(
        parameters=logical,
        quantized_layers=dict(layers),
        quant_types=dict(quant_types),
        double_quant=double_quant,
        unquantized_linears=unquantized,
        full_precision_modules=full_precision,
        storage_dtypes=dict(storage),
        compute_dtype=str(compute_dtype or next(model.parameters()).dtype).removeprefix("torch."),
        footprint_bytes=footprint,
        fp16_footprint_bytes=2 * logical,
        devices=dict(devices),
    )

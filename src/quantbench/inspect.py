"""What was quantized: layer classes and counts, what was left alone, dtypes, footprint."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

# torchao's int4 weight-only quantizer returns a weight unchanged when its last dimension
# (in_features) is not a multiple of the group (torchao.quantization.quant_api.
# _int4_weight_only_quantize_tensor: `weight.shape[-1] % group_size != 0` -> skip); the estimate
# applies the same rule (schemes.TorchAo.keeps).
from quantbench.precisions import TORCHAO_INT4_GROUP

QUANTIZED_LINEAR_CLASSES = ("Linear4bit", "Linear8bitLt", "HQQLinear", "QLinear")


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
    notes: list[str] = field(default_factory=list)  # rules that left layers alone, kernels

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
        parts = (state.absmax, getattr(state, "offset", None), getattr(state, "code", None))
        tensors += [t for t in parts if t is not None]
        state = getattr(state, "state2", None)
    scb = getattr(param, "SCB", None)  # LLM.int8's per-row scales
    if isinstance(scb, torch.Tensor):
        tensors.append(scb)
    return tensors


def _inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors a tensor subclass stores (torchao, quanto): packed data, scales, zeros.

    Such a subclass reports the logical shape and dtype (e.g. 576x576 fp32), not what it holds.
    """
    if not hasattr(type(t), "__tensor_flatten__"):
        return [t]
    names, _ = t.__tensor_flatten__()
    inner = (getattr(t, n) for n in names)
    return [leaf for x in inner if isinstance(x, torch.Tensor) for leaf in _inner_tensors(x)]


def _bytes(t: torch.Tensor) -> int:
    return sum(x.numel() * x.element_size() for x in _inner_tensors(t))


def _meta_tensors(meta: Any) -> list[torch.Tensor]:
    """HQQLinear keeps its scales and zeros in a plain dict (nested when they are quantized)."""
    if isinstance(meta, torch.Tensor):
        return [meta]
    if isinstance(meta, dict):
        return [t for value in meta.values() for t in _meta_tensors(value)]
    return []


def _ct_weights(module: nn.Module) -> Any:
    """compressed-tensors' weight QuantizationArgs on a linear it quantized, else None."""
    scheme = getattr(module, "quantization_scheme", None)
    return getattr(scheme, "weights", None) if isinstance(module, nn.Linear) else None


def _is_subclass_weight(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and hasattr(type(weight), "__tensor_flatten__")


def _is_quantized(module: nn.Module) -> bool:
    return (type(module).__name__ in QUANTIZED_LINEAR_CLASSES or _is_subclass_weight(module)
            or _ct_weights(module) is not None)


def _layer_class(module: nn.Module) -> str:
    """torchao keeps nn.Linear and swaps the weight: name it by the weight's tensor class;
    compressed-tensors keeps nn.Linear and adds packed weights, scales and zero points."""
    name = type(module).__name__
    if _ct_weights(module) is not None:
        return f"{name}[compressed-tensors]"
    if name not in QUANTIZED_LINEAR_CLASSES:
        name = f"{name}[{type(module.weight).__name__}]"
    return name


def _logical_numel(module: nn.Module, name: str, param: torch.Tensor) -> int:
    if type(module).__name__ == "HQQLinear" and name == "W_q":
        return module.meta["shape"].numel()
    if _ct_weights(module) is not None:  # packed or (after the first forward) decompressed
        return module.in_features * module.out_features if name in ("weight", "weight_packed") else 0
    if _is_quantized(module) and name == "weight":
        return module.in_features * module.out_features
    return param.numel()


def _quant_type(module: nn.Module) -> str:
    kind = type(module).__name__
    if kind == "Linear8bitLt":
        return "int8"
    if kind == "HQQLinear":
        return f"{module.meta['nbits']}bit"
    if (args := _ct_weights(module)) is not None:
        zero = "" if args.symmetric else "+zero"
        return f"{args.type}{args.num_bits} g{args.group_size}{zero}"
    qtype = getattr(module.weight, "qtype", None)  # quanto: qint8, qint4
    if qtype is not None:
        return getattr(qtype, "name", str(qtype)).removeprefix("q")
    match = re.match(r"(u?int|float)(\d+)", type(module.weight).__name__.lower())  # torchao
    if match:
        return match.group(0)
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
            layers[_layer_class(module)] += 1
            quant_types[_quant_type(module)] += 1
            state = getattr(getattr(module, "weight", None), "quant_state", None)  # not on HQQ
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
            for inner in _inner_tensors(tensor):
                storage[str(inner.dtype).removeprefix("torch.")] += _bytes(inner)
            devices[str(tensor.device)] += size
            if isinstance(tensor, nn.Parameter):
                logical += _logical_numel(module, name, tensor)
        hqq_meta = module.meta if type(module).__name__ == "HQQLinear" else None
        for tensor in _meta_tensors(hqq_meta):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                footprint += _bytes(tensor)
                storage[str(tensor.dtype).removeprefix("torch.")] += _bytes(tensor)
                devices[str(tensor.device)] += _bytes(tensor)

    return Inspection(
        notes=_notes(model, layers, unquantized, compute_dtype),
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


def _notes(model: nn.Module, layers: Counter[str], unquantized: list[str],
           compute_dtype: torch.dtype | None) -> list[str]:
    """Why layers were left alone and what runs the quantized ones, where a rule decides."""
    notes: list[str] = []
    if any("Int4" in name for name in layers):
        widths = Counter(
            model.get_submodule(n).in_features for n in unquantized
            if model.get_submodule(n).in_features % TORCHAO_INT4_GROUP and not n.endswith("lm_head")
        )
        if widths:
            notes.append(
                f"torchao int4 left {sum(widths.values())} linears in the compute dtype: their in_features "
                f"({', '.join(f'{w} x{c}' for w, c in sorted(widths.items()))}) is not a multiple of "
                f"its group {TORCHAO_INT4_GROUP} (torchao skips such weights)"
            )
    if any(name.endswith("[compressed-tensors]") for name in layers):
        dtype = str(compute_dtype).removeprefix("torch.") if compute_dtype else "the compute dtype"
        notes.append(
            "compressed-tensors int4 (pack-quantized): transformers has no int4 matmul for it; the "
            f"weights are decompressed to dense {dtype} on the first forward, so run-time weight "
            "memory is that of the unquantized model (int4 kernels: vLLM)"
        )
    return notes

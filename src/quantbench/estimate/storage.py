"""Bytes of the loaded weights: quantized linears as their scheme stores them, the rest at
their dtype."""

from __future__ import annotations

import math
from typing import Any

import torch

from quantbench.estimate.skeleton import Skeleton, Tensor
from quantbench.precisions import Precision


def _quantized(tensor: Tensor, precision: Precision) -> bool:
    """Whether the row quantizes this tensor: a linear it does not keep in the compute dtype."""
    scheme = precision.scheme
    return scheme.quantizes and tensor.quantized_shape is not None and not scheme.keeps(tensor.quantized_shape[0])


def tensor_bytes(tensor: Tensor, precision: Precision, compute_dtype: torch.dtype) -> tuple[int, int]:
    """(total bytes, of which quantization constants) of one tensor once loaded."""
    scheme = precision.scheme
    if _quantized(tensor, precision):
        n_in, n_out = tensor.quantized_shape
        total = math.ceil(scheme.linear_bytes(n_in, n_out))
        return total, math.ceil(scheme.constant_bytes(n_in, n_out))
    dtype = tensor.fixed_dtype or precision.unquantized_dtype(compute_dtype)
    return tensor.numel * dtype.itemsize, 0


def running_bytes(tensor: Tensor, precision: Precision, compute_dtype: torch.dtype) -> int:
    """Bytes of one tensor after the first forward: dense where the scheme expands its linears."""
    if precision.scheme.dense_at_run_time and _quantized(tensor, precision):
        return tensor.numel * compute_dtype.itemsize
    return tensor_bytes(tensor, precision, compute_dtype)[0]


def weights(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype) -> dict[str, Any]:
    """Parameter split and bytes of the loaded model, constants included; the weight bytes while
    it runs (more where the scheme expands its linears at the first forward); and the bits per
    weight of the linears a quantizing row would quantize, constants included."""
    out: dict[str, Any] = dict(quantized_parameters=0, full_precision_parameters=0, quantized_linears=0,
                               weights_bytes=0, quant_constants_bytes=0, run_weights_bytes=0)
    linear_bytes = linear_parameters = 0
    for t in skeleton.tensors:
        size, constants = tensor_bytes(t, precision, compute_dtype)
        out["weights_bytes"] += size
        out["quant_constants_bytes"] += constants
        out["run_weights_bytes"] += running_bytes(t, precision, compute_dtype)
        if t.quantized_shape is not None:
            linear_bytes += size
            linear_parameters += t.numel
        if _quantized(t, precision):
            out["quantized_parameters"] += t.numel
            out["quantized_linears"] += 1
    shared = precision.scheme.shared_bytes()
    out["weights_bytes"] += shared
    out["quant_constants_bytes"] += shared
    out["run_weights_bytes"] += 0 if precision.scheme.dense_at_run_time else shared
    # buffers (rotary tables) are not parameters
    out["full_precision_parameters"] = skeleton.arch.parameters - out["quantized_parameters"]
    out["bits_per_weight"] = 8 * (linear_bytes + shared) / linear_parameters if linear_parameters else None
    return out


def module_bytes(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype,
                 running: bool = False) -> dict[str, int]:
    """Bytes per module (its own tensors only), for placing modules on devices; `running`: as
    they are after the first forward (dense where the scheme expands its linears)."""
    sizes: dict[str, int] = {}
    for t in skeleton.tensors:
        size = running_bytes(t, precision, compute_dtype) if running else tensor_bytes(t, precision, compute_dtype)[0]
        sizes[t.module] = sizes.get(t.module, 0) + size
    return sizes

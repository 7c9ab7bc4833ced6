"""Bytes of the loaded weights: quantized linears as their scheme stores them, the rest at
their dtype."""

from __future__ import annotations

import math
from typing import Any

import torch

from quantbench.estimate.skeleton import Skeleton, Tensor
from quantbench.precisions import Precision


def tensor_bytes(tensor: Tensor, precision: Precision, compute_dtype: torch.dtype) -> tuple[int, int]:
    """(total bytes, of which quantization constants) of one tensor once loaded."""
    scheme = precision.scheme
    if scheme.quantizes and tensor.quantized_shape is not None and not scheme.keeps(tensor.quantized_shape[0]):
        n_in, n_out = tensor.quantized_shape
        total = math.ceil(scheme.linear_bytes(n_in, n_out))
        return total, math.ceil(scheme.constant_bytes(n_in, n_out))
    dtype = tensor.fixed_dtype or precision.unquantized_dtype(compute_dtype)
    return tensor.numel * dtype.itemsize, 0


def weights(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype) -> dict[str, Any]:
    """Parameter split and bytes of the loaded model, constants included; the weight bytes while
    it runs (more where the scheme expands its linears at the first forward); and the bits per
    weight of the linears a quantizing row would quantize, constants included."""
    out: dict[str, Any] = dict(quantized_parameters=0, full_precision_parameters=0, quantized_linears=0,
                               weights_bytes=0, quant_constants_bytes=0, run_weights_bytes=0)
    linear_bytes = linear_parameters = 0
    scheme = precision.scheme
    for t in skeleton.tensors:
        size, constants = tensor_bytes(t, precision, compute_dtype)
        quantized = scheme.quantizes and t.quantized_shape is not None and not scheme.keeps(t.quantized_shape[0])
        out["weights_bytes"] += size
        out["quant_constants_bytes"] += constants
        out["run_weights_bytes"] += t.numel * compute_dtype.itemsize if quantized and scheme.dense_at_run_time else size
        if t.quantized_shape is not None:
            linear_bytes += size
            linear_parameters += t.numel
        if quantized:
            out["quantized_parameters"] += t.numel
            out["quantized_linears"] += 1
    shared = precision.scheme.shared_bytes()
    out["weights_bytes"] += shared
    out["quant_constants_bytes"] += shared
    out["run_weights_bytes"] += 0 if scheme.dense_at_run_time else shared
    # buffers (rotary tables) are not parameters
    out["full_precision_parameters"] = skeleton.arch.parameters - out["quantized_parameters"]
    out["bits_per_weight"] = 8 * (linear_bytes + shared) / linear_parameters if linear_parameters else None
    return out


def module_bytes(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype,
                 running: bool = False) -> dict[str, int]:
    """Bytes per module (its own tensors only), for placing modules on devices; `running`: as
    they are after the first forward (dense where the scheme expands its linears)."""
    scheme = precision.scheme
    sizes: dict[str, int] = {}
    for t in skeleton.tensors:
        size = tensor_bytes(t, precision, compute_dtype)[0]
        if running and scheme.quantizes and scheme.dense_at_run_time and t.quantized_shape is not None:
            size = t.numel * compute_dtype.itemsize
        sizes[t.module] = sizes.get(t.module, 0) + size
    return sizes

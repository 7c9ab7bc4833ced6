"""Bytes of the loaded weights: quantized linears as their scheme stores them, the rest at
their dtype."""

from __future__ import annotations

import math

import torch

from quantbench.estimate.skeleton import Skeleton, Tensor
from quantbench.precisions import Precision


def tensor_bytes(tensor: Tensor, precision: Precision, compute_dtype: torch.dtype) -> tuple[int, int]:
    """(total bytes, of which quantization constants) of one tensor once loaded."""
    scheme = precision.scheme
    if scheme.quantizes and tensor.quantized_shape is not None:
        n_in, n_out = tensor.quantized_shape
        total = math.ceil(scheme.linear_bytes(n_in, n_out))
        return total, math.ceil(scheme.constant_bytes(n_in, n_out))
    dtype = tensor.fixed_dtype or precision.unquantized_dtype(compute_dtype)
    return tensor.numel * dtype.itemsize, 0


def weights(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype) -> dict[str, int]:
    """Parameter split and bytes of the loaded model, constants included."""
    out = dict(quantized_parameters=0, full_precision_parameters=0, quantized_linears=0,
               weights_bytes=0, quant_constants_bytes=0)
    for t in skeleton.tensors:
        size, constants = tensor_bytes(t, precision, compute_dtype)
        out["weights_bytes"] += size
        out["quant_constants_bytes"] += constants
        if precision.scheme.quantizes and t.quantized_shape is not None:
            out["quantized_parameters"] += t.numel
            out["quantized_linears"] += 1
    shared = precision.scheme.shared_bytes()
    out["weights_bytes"] += shared
    out["quant_constants_bytes"] += shared
    # buffers (rotary tables) are not parameters
    out["full_precision_parameters"] = skeleton.arch.parameters - out["quantized_parameters"]
    return out


def module_bytes(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype) -> dict[str, int]:
    """Bytes per module (its own tensors only), for placing modules on devices."""
    sizes: dict[str, int] = {}
    for t in skeleton.tensors:
        sizes[t.module] = sizes.get(t.module, 0) + tensor_bytes(t, precision, compute_dtype)[0]
    return sizes

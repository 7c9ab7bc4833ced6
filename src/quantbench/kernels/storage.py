"""Read (and merge) the weights of linear layers in the storage their library keeps.

`describe_linear` says whether a module is a linear the kernels serve (a dict), a linear they do
not (a one-line reason) or no linear (None). `merge` moves the weights of one or more such
layers into one buffer, points each layer at its view of it, and returns the launch
(x, first row, end row, act=False, norm=None, res=None) -> x @ W[first:end].T with the fusions of
prologue.py (act: x is [gate | up]; norm: (weight, eps) of an RMSNorm applied to x; res: a
residual added to the result).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbench.kernels import ops

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def describe_linear(module: nn.Module) -> dict[str, Any] | str | None:
    name = type(module).__name__
    bias = getattr(module, "bias", None) is not None
    if name in ("Linear4bit", "LinearNF4", "LinearFP4"):
        state = getattr(module.weight, "quant_state", None)
        if state is None:
            return "4-bit weight not quantized yet"
        k = module.in_features
        if module.weight.dtype != torch.uint8 or k % state.blocksize:
            return "4-bit storage other than uint8 with whole blocks per row"
        if getattr(state, "packing_format_for_cpu", False):
            return "4-bit weight repacked for the CPU"
        compute = getattr(module, "compute_dtype", None)
        if compute is not None and compute != state.dtype:
            return "compute dtype differs from the weights' dtype"
        label = state.quant_type + ("-dq" if state.nested else "")
        return {"kind": "4bit", "label": label, "in_features": k, "dtype": state.dtype,
                "blocksize": state.blocksize, "threshold": None, "has_bias": bias}
    if name == "Linear8bitLt":
        if module.state.has_fp16_weights:
            return "LLM.int8 with fp16 master weights"
        if getattr(module.weight, "CB", None) is not None:
            module.init_8bit_state()  # moves CB/SCB into the state, as its first forward would
        if module.state.CB is None and module.weight.dtype != torch.int8:
            return "LLM.int8 weight not quantized yet"
        threshold = float(module.state.threshold)
        label = "int8" + (f" outliers>={threshold:g}" if threshold > 0 else "")
        # The activation dtype is only known at call time: bitsandbytes returns it unchanged.
        return {"kind": "int8", "label": label, "in_features": module.in_features, "dtype": None,
                "blocksize": None, "threshold": threshold, "has_bias": bias}
    if type(module) is nn.Linear:
        foreign = _foreign_forward(module)
        if foreign:
            return foreign
        weight = getattr(module, "weight", None)
        if weight is None:
            return "no weight tensor (kept packed by its library)"
        if type(weight.data) is not torch.Tensor:  # e.g. torchao's Int8Tensor: its own matmul
            return f"weights held as {type(weight.data).__name__} ({type(weight.data).__module__.split('.')[0]})"
        if weight.dtype not in _FLOATS:
            return f"weights in {weight.dtype}"
        return {"kind": "dense", "label": "dense", "in_features": module.in_features,
                "dtype": weight.dtype, "blocksize": None, "threshold": None, "has_bias": bias}
    return None


def _foreign_forward(module: nn.Module) -> str | None:
    """Why a plain Linear whose forward another library replaced is left to it, or None.

    compressed-tensors (GPTQ/AWQ checkpoints) swaps in a forward that rebuilds the weight from its
    packed form and may quantize the activation too; a GEMV over `weight` would skip that.
    accelerate's device hooks only move tensors around the original forward, so they stay served.
    """
    forward = module.__dict__.get("forward")
    function = getattr(forward, "__func__", forward)
    if forward is None or hasattr(module, "_hf_hook") or function is type(module).forward:
        return None
    # wrappers copy the original's name and module (functools.wraps); the code's file does not
    path = Path(getattr(getattr(function, "__code__", None), "co_filename", "") or "")
    parts = path.parts
    library = parts[parts.index("site-packages") + 1] if "site-packages" in parts[:-1] else "another library"
    return f"forward replaced by {library}"


def _cat_into(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One buffer holding `tensors` end to end (flattened), and each one's view of it."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1), [tensors[0]]
    flat = torch.cat([t.reshape(-1) for t in tensors])
    views, start = [], 0
    for t in tensors:
        views.append(flat[start:start + t.numel()].view(t.shape))
        start += t.numel()
    return flat, views


def _bias(members: list[nn.Module]) -> torch.Tensor | None:
    if members[0].bias is None:
        return None
    return torch.cat([m.bias.detach() for m in members]) if len(members) > 1 else members[0].bias


def _norm(norm: tuple[torch.Tensor, float] | None) -> tuple[torch.Tensor | None, float]:
    return norm if norm is not None else (None, 0.0)


def merge(members: list[nn.Module], specs: list[dict[str, Any]]) -> Callable[..., torch.Tensor]:
    kind = specs[0]["kind"]
    k = specs[0]["in_features"]
    bias = _bias(members)

    def bias_rows(a: int, b: int) -> torch.Tensor | None:
        return None if bias is None else bias[a:b]

    if kind == "dense":
        flat, views = _cat_into([m.weight.data for m in members])
        for m, view in zip(members, views, strict=True):
            m.weight.data = view
        weight = flat.view(-1, k)
        return lambda x, a, b, act=False, norm=None, res=None: ops.gemv_dense(
            x, weight[a:b], bias_rows(a, b), act, *_norm(norm), res)

    if kind == "4bit":
        import bitsandbytes.functional as bnbf

        states = [m.weight.quant_state for m in members]
        flat, views = _cat_into([m.weight.data for m in members])
        for m, view in zip(members, views, strict=True):
            m.weight.data = view
        if states[0].nested:  # expanded once, exactly as dequantize_4bit does on every call
            absmax = torch.cat([(bnbf.dequantize_blockwise(s.absmax, s.state2) + s.offset).float()
                                for s in states])
        else:
            absmax, absmax_views = _cat_into([s.absmax for s in states])
            for s, view in zip(states, absmax_views, strict=True):
                s.absmax = view
        from quantbench.kernels.config import fourbit_gather
        from quantbench.kernels.fourbit import LOOKUPS, code_table

        # the lookup's table built once here, not in every launch
        code = code_table(states[0].code.float().contiguous(), LOOKUPS[fourbit_gather()])
        blocksize = states[0].blocksize
        if any(s.quant_type != states[0].quant_type for s in states):
            raise ValueError("merged 4-bit layers must share one quant type")

        def fourbit(x: torch.Tensor, a: int, b: int, act: bool = False, norm: Any = None,
                    res: Any = None) -> torch.Tensor:
            return ops.gemv_4bit(x, flat[a * k // 2:b * k // 2], absmax[a * k // blocksize:b * k // blocksize],
                                 code, b - a, blocksize, bias_rows(a, b), act, *_norm(norm), res)

        return fourbit

    if kind == "int8":
        weights = [m.state.CB if m.state.CB is not None else m.weight.data for m in members]
        scales = [m.state.SCB if m.state.SCB is not None else m.weight.SCB for m in members]
        flat, views = _cat_into(weights)
        scb, scb_views = _cat_into([s.float() for s in scales])
        for m, view, scale in zip(members, views, scb_views, strict=True):
            m.weight.data = view
            m.state.CB, m.state.SCB = view, scale
            if getattr(m.weight, "SCB", None) is not None:
                m.weight.SCB = scale
        weight = flat.view(-1, k)
        threshold = specs[0]["threshold"]
        return lambda x, a, b, act=False, norm=None, res=None: ops.gemv_int8(
            x, weight[a:b], scb[a:b], threshold, bias_rows(a, b), act, *_norm(norm), res)

    raise ValueError(f"no kernel for {kind}")

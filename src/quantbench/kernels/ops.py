"""The GEMV kernels as torch custom ops: `torch.compile` keeps each one as a single opaque call
(no tracing into Triton launch code, no graph break) and a CUDA graph captures its launch.

Every op takes the fusions of prologue.py: act (x is [gate | up]), norm_weight + eps (x read
RMSNorm-ed; None: off), residual (added to the result; None: off)."""

from __future__ import annotations

import torch

from quantbench.kernels import gemv

Tensor = torch.Tensor


def _norm(weight: Tensor | None, eps: float) -> tuple[Tensor, float] | None:
    return None if weight is None else (weight, eps)


@torch.library.custom_op("quantbench::gemv_dense", mutates_args=())
def gemv_dense(x: Tensor, weight: Tensor, bias: Tensor | None, act: bool, norm_weight: Tensor | None,
               eps: float, residual: Tensor | None) -> Tensor:
    return gemv.gemv_dense(x, weight, bias, act, _norm(norm_weight, eps), residual)


@gemv_dense.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, act: bool, norm_weight: Tensor | None, eps: float,
      residual: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("quantbench::gemv_4bit", mutates_args=())
def gemv_4bit(x: Tensor, packed: Tensor, absmax: Tensor, code: Tensor, n: int, blocksize: int,
              bias: Tensor | None, act: bool, norm_weight: Tensor | None, eps: float,
              residual: Tensor | None) -> Tensor:
    return gemv.gemv_4bit(x, packed, absmax, code, n, blocksize, bias, act, _norm(norm_weight, eps), residual)


@gemv_4bit.register_fake
def _(x: Tensor, packed: Tensor, absmax: Tensor, code: Tensor, n: int, blocksize: int, bias: Tensor | None,
      act: bool, norm_weight: Tensor | None, eps: float, residual: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], n)


@torch.library.custom_op("quantbench::gemv_int8", mutates_args=())
def gemv_int8(x: Tensor, weight: Tensor, scb: Tensor, threshold: float, bias: Tensor | None, act: bool,
              norm_weight: Tensor | None, eps: float, residual: Tensor | None) -> Tensor:
    return gemv.gemv_int8(x, weight, scb, threshold, bias, act, _norm(norm_weight, eps), residual)


@gemv_int8.register_fake
def _(x: Tensor, weight: Tensor, scb: Tensor, threshold: float, bias: Tensor | None, act: bool,
      norm_weight: Tensor | None, eps: float, residual: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])

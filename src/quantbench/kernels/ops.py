"""The GEMV kernels as torch custom ops: `torch.compile` keeps each one as a single opaque call
(no tracing into Triton launch code, no graph break) and a CUDA graph captures its launch."""

from __future__ import annotations

import torch

from quantbench.kernels import gemv


@torch.library.custom_op("quantbench::gemv_dense", mutates_args=())
def gemv_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: bool) -> torch.Tensor:
    return gemv.gemv_dense(x, weight, bias, act)


@gemv_dense.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: bool) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("quantbench::gemv_4bit", mutates_args=())
def gemv_4bit(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int,
              blocksize: int, bias: torch.Tensor | None, act: bool) -> torch.Tensor:
    return gemv.gemv_4bit(x, packed, absmax, code, n, blocksize, bias, act)


@gemv_4bit.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int,
      blocksize: int, bias: torch.Tensor | None, act: bool) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], n)


@torch.library.custom_op("quantbench::gemv_int8", mutates_args=())
def gemv_int8(x: torch.Tensor, weight: torch.Tensor, scb: torch.Tensor, threshold: float,
              bias: torch.Tensor | None, act: bool) -> torch.Tensor:
    return gemv.gemv_int8(x, weight, scb, threshold, bias, act=act)


@gemv_int8.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scb: torch.Tensor, threshold: float,
      bias: torch.Tensor | None, act: bool) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("quantbench::gemv_int8_outliers", mutates_args=("overflow",))
def gemv_int8_outliers(x: torch.Tensor, weight: torch.Tensor, scb: torch.Tensor, threshold: float,
                       bias: torch.Tensor | None, overflow: torch.Tensor, act: bool) -> torch.Tensor:
    """LLM.int8 with outliers; `overflow` counts rows that went over the outlier set's capacity."""
    return gemv.gemv_int8(x, weight, scb, threshold, bias, overflow, act)


@gemv_int8_outliers.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scb: torch.Tensor, threshold: float,
      bias: torch.Tensor | None, overflow: torch.Tensor, act: bool) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])

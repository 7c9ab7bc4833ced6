"""Decode engines: how tokens are generated once a model is loaded.

Two engines answer the same call, `generate(input_ids, new_tokens) -> new token ids`:
  eager  plain `model.generate`, greedy, fixed length (the reference);
  fast   static KV cache, a decode step compiled with `torch.compile` and captured as one CUDA
         graph, replayed once per token (see fast.py for what it does where it cannot capture).
Both suppress the end-of-sequence token, as `min_new_tokens == max_new_tokens` does, so both
always return exactly `new_tokens` tokens and the fast engine's tokens equal the eager ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from quantbench.errors import QuantbenchError


class Engine:
    """Greedy generation of a fixed number of tokens; `generate` returns after CUDA finished."""

    name = "base"
    # Whether generate calls its `first_token` hook between the prefill and the later steps (the
    # latency module then times decode directly instead of as generate(N) - generate(1)).
    splits_first_token = False

    def __init__(self, model: Any, max_batch_size: int, max_seq_len: int) -> None:
        if max_batch_size < 1 or max_seq_len < 2:
            raise QuantbenchError(
                f"engine needs max_batch_size >= 1 and max_seq_len >= 2, "
                f"got {max_batch_size} and {max_seq_len}"
            )
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.device = next(model.parameters()).device

    def generate(self, input_ids: torch.Tensor, new_tokens: int,
                 first_token: Callable[[], None] | None = None) -> torch.Tensor:
        """Greedy: the `new_tokens` next token ids, shape [batch, new_tokens]. first_token: called
        once the first token is issued, before the later steps, by engines that
        `splits_first_token` (others ignore it)."""
        raise NotImplementedError

    def warmup(self, input_ids: torch.Tensor, new_tokens: int) -> None:
        """Compile, capture and warm caches outside any timed region."""
        self.generate(input_ids, new_tokens)

    def describe(self) -> dict[str, Any]:
        """How this engine runs the decode step (for results' info)."""
        return {"engine": self.name}

    def _check(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        if input_ids.dim() != 2 or input_ids.shape[1] < 1:
            raise QuantbenchError("input_ids must have shape [batch, prompt_length]")
        batch, length = input_ids.shape
        if new_tokens < 1:
            raise QuantbenchError(f"new_tokens must be >= 1, got {new_tokens}")
        if batch > self.max_batch_size:
            raise QuantbenchError(
                f"batch {batch} is over the engine's max_batch_size {self.max_batch_size}"
            )
        if length + new_tokens > self.max_seq_len:
            raise QuantbenchError(
                f"prompt {length} + {new_tokens} new tokens is over the engine's "
                f"max_seq_len {self.max_seq_len}"
            )
        return input_ids.to(self.device)


def suppressed_tokens(model: Any) -> list[int]:
    """The end-of-sequence ids that `min_new_tokens` masks out in `model.generate`."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos])]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


ENGINES = ("eager", "fast")


def get_engine(name: str, model: Any, max_batch_size: int, max_seq_len: int, kernels: str | None = None) -> Engine:
    """'eager' or 'fast' -> an Engine for `model` (a loaded HF causal LM). `kernels` picks the
    fast engine's decode GEMVs on CUDA: 'quantbench' (default) or 'bnb' (see kernels/)."""
    key = name.strip().lower()
    if key == "eager":
        from quantbench.engine.eager import EagerEngine

        return EagerEngine(model, max_batch_size, max_seq_len)
    if key == "fast":
        from quantbench.engine.fast import FastEngine

        return FastEngine(model, max_batch_size, max_seq_len, kernels=kernels)
    raise QuantbenchError(f"unknown engine '{name}'; choose from: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "get_engine", "suppressed_tokens", "synchronize"]

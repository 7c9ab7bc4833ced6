"""The reference engine: plain `model.generate`, greedy, exactly `new_tokens` tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from quantbench.engine import Engine, synchronize


class EagerEngine(Engine):
    name = "eager"

    def generate(self, input_ids: torch.Tensor, new_tokens: int,
                 first_token: Callable[[], None] | None = None) -> torch.Tensor:
        input_ids = self._check(input_ids, new_tokens)
        pad = self._pad_token_id()
        # no_grad, never inference_mode, in every forward quantbench runs: backends that keep
        # state made on their first forward (compressed-tensors' decompressed weights, quanto's
        # int4 repacking) fail when a later forward outside inference_mode uses those tensors
        with torch.no_grad():
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # fixed length: end-of-sequence is masked out
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
            )
        synchronize(self.device)
        return out[:, input_ids.shape[1]:]

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "mode": "model.generate (dynamic cache, eager)"}

    def _pad_token_id(self) -> int:
        # Without one, generate warns on every call and borrows the eos id.
        config = getattr(self.model, "generation_config", None)
        for value in (getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)):
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
        return 0

"""The optimizer table for fine-tuning, and what a built optimizer's state costs.

One table names each optimizer the way transformers' Trainer does (`optim=`), so `finetune`,
the optimizer comparison and the estimate agree.

Paging (bitsandbytes' Paged* optimizers) puts large state tensors in CUDA unified memory, which
the driver can evict to host RAM under pressure. Two consequences worth knowing when reading
the numbers: paged tensors are not allocated by torch, so `torch.cuda.max_memory_allocated`
does not see them (we count state bytes from the tensors themselves); and bitsandbytes pages
only tensors of 100k elements or more, so LoRA adapters' small states are never paged.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from quantbench.errors import QuantbenchError


@dataclass(frozen=True)
class OptimizerChoice:
    name: str  # also transformers' TrainingArguments.optim value
    summary: str
    state_bits: int
    paged: bool = False
    backend: str = "torch"


_TABLE = [
    OptimizerChoice("adamw_torch", "torch AdamW, two states per weight in its dtype", 32),
    OptimizerChoice(
        "adamw_bnb_8bit", "bitsandbytes AdamW8bit: blockwise 8-bit states", 8,
        backend="bitsandbytes",
    ),
    OptimizerChoice(
        "paged_adamw_8bit", "bitsandbytes PagedAdamW8bit: 8-bit states in CUDA unified memory",
        8, paged=True, backend="bitsandbytes",
    ),
    OptimizerChoice(
        "paged_adamw_32bit", "bitsandbytes PagedAdamW: 32-bit states in CUDA unified memory",
        32, paged=True, backend="bitsandbytes",
    ),
]
OPTIMIZERS: dict[str, OptimizerChoice] = {o.name: o for o in _TABLE}
_ALIASES = {
    "adamw": "adamw_torch",
    "adamw8bit": "adamw_bnb_8bit",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw8bit": "paged_adamw_8bit",
    "paged_adamw": "paged_adamw_32bit",
}
CPU_PAGED_NOTE = (
    "paged optimizers need CUDA unified memory; on CPU bitsandbytes {version} falls back to "
    "the non-paged optimizer, so '{name}' runs unpaged here"
)


def get_optimizer(name: str) -> OptimizerChoice:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in OPTIMIZERS:
        raise QuantbenchError(
            f"unknown optimizer '{name}'; choose from: {', '.join(OPTIMIZERS)}"
        )
    return OPTIMIZERS[key]


def optimizer_notes(choice: OptimizerChoice, device: str) -> list[str]:
    """Check the optimizer can run here; return what the user should know about it."""
    if choice.backend != "bitsandbytes":
        return []
    try:
        import bitsandbytes
    except Exception as err:  # missing or broken native library: the user's environment
        raise QuantbenchError(
            f"optimizer '{choice.name}' needs a working bitsandbytes ({type(err).__name__})"
        ) from None
    if choice.paged and not device.startswith("cuda"):
        return [CPU_PAGED_NOTE.format(version=bitsandbytes.__version__, name=choice.name)]
    return []


def build_optimizer(choice: OptimizerChoice, params: list[torch.nn.Parameter], lr: float) -> Any:
    if choice.backend == "torch":
        return torch.optim.AdamW(params, lr=lr)
    import bitsandbytes as bnb

    classes = {
        "adamw_bnb_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW,
    }
    return classes[choice.name](params, lr=lr)


@contextlib.contextmanager
def quiet_paged_fallback() -> Iterator[None]:
    """bitsandbytes warns at the first CPU step; we report the fallback as a note instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
        yield


def optimizer_state_bytes(optimizer: Any) -> tuple[int, int]:
    """(all state bytes, paged state bytes) after at least one step; shared tensors count once."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the real one
    seen: set[int] = set()
    total = paged = 0
    for state in optimizer.state.values():
        for tensor in state.values():
            if not isinstance(tensor, torch.Tensor) or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            size = tensor.numel() * tensor.element_size()
            total += size
            paged += size if getattr(tensor, "is_paged", False) else 0
    return total, paged

"""LoRA on a loaded model: the settings, which linears get adapters, and the prepared model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from quantbench.errors import QuantbenchError

_LINEAR_CLASSES = ("Linear", "Linear4bit", "Linear8bitLt")


@dataclass(frozen=True)
class FinetuneConfig:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "auto"  # 'auto': every linear in the blocks
    optimizer: str = "paged_adamw_8bit"
    learning_rate: float = 2e-4
    max_steps: int = 60
    batch_size: int = 1  # per process
    grad_accum: int = 4
    seq_len: int = 256  # tokens per training block; text is packed into blocks
    gradient_checkpointing: bool = True
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    seed: int = 0
    compute_dtype: str | None = None  # None: best for the device
    progress: bool = True


def find_target_modules(model: torch.nn.Module) -> list[str]:
    """Names (last component) of every linear layer except the output head, in model order."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: dict[str, None] = {}
    for full_name, module in model.named_modules():
        if type(module).__name__ in _LINEAR_CLASSES and module is not output:
            names[full_name.rsplit(".", 1)[-1]] = None
    if not names:
        raise QuantbenchError("no linear layers found to attach LoRA adapters to")
    return list(names)


def prepare_model(loaded: Any, config: FinetuneConfig) -> tuple[Any, list[str]]:
    """Freeze the base, cast what must train stably to fp32, attach LoRA; (model, targets)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    checkpointing = {"use_reentrant": False}  # reentrant checkpointing breaks under DDP
    if loaded.precision.quantizes:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    auto = config.target_modules == "auto"
    targets = find_target_modules(model) if auto else list(config.target_modules)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora), targets
    except ValueError as err:  # e.g. target modules that the model does not have
        raise QuantbenchError(f"cannot attach LoRA: {str(err).splitlines()[0]}") from None


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, all) with 4-bit weights counted as logical parameters, as peft does."""
    return model.get_nb_trainable_parameters()

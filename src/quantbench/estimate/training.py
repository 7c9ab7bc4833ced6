"""Fine-tuning memory: trainable weights, their gradients, optimizer states, saved activations."""

from __future__ import annotations

import math
from typing import Any

import torch

from quantbench.estimate.activations import training_activation_bytes
from quantbench.estimate.records import EstimateSettings, TrainingEstimate
from quantbench.estimate.skeleton import Skeleton, largest_linear
from quantbench.estimate.storage import weights
from quantbench.precisions import Precision
from quantbench.schemes import DYNAMIC_MAP_BYTES

# bitsandbytes 8-bit optimizers keep 32-bit states below min_8bit_size, quantize the rest in
# blocks of 256, and page only tensors of 1e5+ elements.
OPTIMIZER_BLOCKSIZE = 256
MIN_8BIT_SIZE = 4096
PAGED_MIN_NUMEL = 100_000


def optimizer_bytes(choice: Any, tensors: list[tuple[int, int]]) -> tuple[int, int]:
    """(state bytes, paged part) for (numel, bytes per element) trainable tensors."""
    total = paged = 0
    for numel, itemsize in tensors:
        if choice.backend == "torch":
            size = 2 * numel * itemsize  # exp_avg, exp_avg_sq in the parameter's dtype
        elif choice.state_bits == 32 or numel < MIN_8BIT_SIZE:
            size = 2 * numel * 4
        else:
            size = 2 * numel + 2 * 4 * math.ceil(numel / OPTIMIZER_BLOCKSIZE)
        total += size
        if choice.paged and numel >= PAGED_MIN_NUMEL:
            paged += size
    if choice.backend != "torch" and choice.state_bits == 8:
        total += 2 * DYNAMIC_MAP_BYTES  # signed and unsigned quantile maps, shared
    return total, paged


def _mode_note(mode: str, precision: Precision) -> str | None:
    if mode == "full" and precision.quantizes:
        return "full fine-tuning needs float weights; quantized bases train with qlora"
    if mode == "lora" and precision.quantizes:
        return "a quantized base trains with qlora, not lora"
    if mode == "qlora" and not precision.quantizes:
        return "qlora needs a quantized precision; a float base trains with lora"
    return None


def training(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype,
             settings: EstimateSettings) -> tuple[TrainingEstimate | None, str | None]:
    from quantbench.training.optimizers import get_optimizer

    mode = settings.train or "full"
    if note := _mode_note(mode, precision):
        return None, note
    choice = get_optimizer(settings.optimizer)
    dtype = precision.unquantized_dtype(compute_dtype)
    act = dtype.itemsize
    if mode == "full":
        trainable = [(t.numel, (t.fixed_dtype or dtype).itemsize)
                     for t in skeleton.tensors if t.parameter]
        base = weights(skeleton, precision, compute_dtype)["weights_bytes"]
        lora_shapes: list[tuple[int, int]] = []
    else:
        lora_shapes = skeleton.lora_shapes
        trainable = [(settings.lora_r * n, 4) for shape in lora_shapes for n in shape]
        # peft's prepare_model_for_kbit_training upcasts every non-quantized weight to fp32
        upcast = torch.float32 if mode == "qlora" else compute_dtype
        base = weights(skeleton, precision, upcast)["weights_bytes"]
    grads = sum(n * b for n, b in trainable)
    states, paged = optimizer_bytes(choice, trainable)
    tokens = settings.batch_size * settings.seq_len
    acts, acts_ckpt = training_activation_bytes(skeleton.arch, tokens, act, lora_shapes,
                                                settings.lora_r)
    if mode == "qlora":  # the frozen quantized weight is dequantized again for the backward
        big = largest_linear(skeleton)
        acts, acts_ckpt = acts + big[0] * big[1] * act, acts_ckpt + big[0] * big[1] * act
    chosen = acts_ckpt if settings.gradient_checkpointing else acts
    return TrainingEstimate(
        mode=mode, optimizer=choice.name, trainable_parameters=sum(n for n, _ in trainable),
        weights_bytes=base, gradients_bytes=grads, optimizer_bytes=states,
        paged_optimizer_bytes=paged, lora_bytes=grads if mode != "full" else 0,
        activations_bytes=acts, activations_checkpointed_bytes=acts_ckpt,
        gradient_checkpointing=settings.gradient_checkpointing,
        peak_bytes=base + grads + states + chosen,
    ), None

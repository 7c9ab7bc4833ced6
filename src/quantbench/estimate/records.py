"""What an estimate is asked for and what it answers: plain records, JSON-ready."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from quantbench.estimate.skeleton import Architecture
from quantbench.precisions import DEFAULT_SKIP_MODULES

TRAIN_MODES = ("full", "lora", "qlora")


@dataclass(frozen=True)
class EstimateSettings:
    batch_size: int = 1
    seq_len: int = 2048  # tokens in the KV cache: prompt plus generated
    device: str = "cuda"
    compute_dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU, as load() picks
    skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES
    train: str | None = None  # full | lora | qlora
    optimizer: str = "adamw"
    lora_r: int = 16
    gradient_checkpointing: bool = False
    gpus: int = 1
    gpu_memory_bytes: int | None = None  # per-GPU cap for the split; None: balanced, no cap
    context_bytes: int | None = None  # None: CUDA_CONTEXT_BYTES on CUDA, 0 on CPU
    trust_remote_code: bool = False


@dataclass
class TrainingEstimate:
    mode: str
    optimizer: str
    trainable_parameters: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    paged_optimizer_bytes: int  # part of optimizer_bytes that may spill to host RAM
    lora_bytes: int
    activations_bytes: int
    activations_checkpointed_bytes: int
    gradient_checkpointing: bool
    peak_bytes: int  # weights + grads + states + activations of the chosen checkpointing


@dataclass
class GpuShare:
    device: str
    weights_bytes: int
    modules: list[str]
    run_weights_bytes: int = 0  # after the first forward (more where a row expands its linears)


@dataclass
class PrecisionEstimate:
    precision: str
    parameters: int
    quantized_parameters: int
    full_precision_parameters: int
    quantized_linears: int
    weights_bytes: int  # everything loading allocates, constants included
    quant_constants_bytes: int
    run_weights_bytes: int  # weights while running: more than weights_bytes where a row is expanded
    bits_per_weight: float | None  # of the linears a quantizing row quantizes, constants included
    kv_cache_bytes: int
    activations_bytes: int
    context_bytes: int
    peak_inference_bytes: int  # run-time weights + KV + activations: comparable to max_memory_allocated
    inference_total_bytes: int  # + context: what the GPU must hold
    training: TrainingEstimate | None = None
    training_note: str | None = None
    gpu_split: list[GpuShare] = field(default_factory=list)
    per_gpu_inference_bytes: int | None = None
    fits: dict[str, dict[str, int | None]] = field(default_factory=dict)  # gpu -> headroom


@dataclass
class Estimate:
    model: str
    architecture: Architecture
    settings: EstimateSettings
    compute_dtype: str
    precisions: list[PrecisionEstimate]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)

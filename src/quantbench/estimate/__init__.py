"""Memory from the config alone: weights, KV cache, activations, training, GPU fit and split.

The model is built on the meta device (skeleton), so parameter counts are exact and tied
embeddings count once. Each quantized linear costs what its precision's scheme stores
(storage); KV cache and activations follow the decoder block's shape (activations, training);
device_map='auto' placement over several GPUs is accelerate's own (placement).
"""

from __future__ import annotations

from typing import Any

import torch

from quantbench.errors import QuantbenchError
from quantbench.estimate.activations import (
    inference_activation_bytes,
    kv_cache_bytes,
    training_activation_bytes,
)
from quantbench.estimate.placement import (
    CUDA_CONTEXT_BYTES,
    GPUS,
    gpu_fits,
    gpu_split,
    per_gpu_inference_bytes,
)
from quantbench.estimate.records import (
    TRAIN_MODES,
    Estimate,
    EstimateSettings,
    GpuShare,
    PrecisionEstimate,
    TrainingEstimate,
    json_safe,
)
from quantbench.estimate.skeleton import (
    KNOWN_MODEL_TYPES,
    Architecture,
    Skeleton,
    build_skeleton,
    largest_linear,
)
from quantbench.estimate.storage import module_bytes, weights
from quantbench.estimate.training import training
from quantbench.precisions import PRECISIONS, Precision, get_precision, resolve_compute_dtype
from quantbench.units import GIB, MIB, gib, parse_size

__all__ = [
    "CUDA_CONTEXT_BYTES", "GIB", "GPUS", "KNOWN_MODEL_TYPES", "MIB", "TRAIN_MODES", "Architecture",
    "Estimate", "EstimateSettings", "GpuShare", "PrecisionEstimate", "Skeleton",
    "TrainingEstimate", "build_skeleton", "check_settings", "default_precisions", "estimate",
    "estimate_precision", "gib", "gpu_fits", "gpu_split", "inference_activation_bytes",
    "json_safe", "kv_cache_bytes", "largest_linear", "module_bytes", "parse_size",
    "per_gpu_inference_bytes", "training", "training_activation_bytes", "weights",
]


def check_settings(settings: EstimateSettings) -> None:
    from quantbench.training.optimizers import get_optimizer

    for what, value in (("batch size", settings.batch_size), ("sequence length", settings.seq_len),
                        ("GPU count", settings.gpus), ("LoRA rank", settings.lora_r)):
        if value < 1:
            raise QuantbenchError(f"{what} must be a positive integer, got {value}")
    if settings.train is not None and settings.train not in TRAIN_MODES:
        raise QuantbenchError(f"unknown training mode '{settings.train}'; choose from: "
                              f"{', '.join(TRAIN_MODES)}")
    if not settings.device.startswith(("cuda", "cpu")):
        raise QuantbenchError(f"unknown device '{settings.device}'; choose cuda or cpu")
    get_optimizer(settings.optimizer)


def estimate_precision(skeleton: Skeleton, precision: Precision, settings: EstimateSettings,
                       compute_dtype: torch.dtype) -> PrecisionEstimate:
    arch = skeleton.arch
    act = precision.unquantized_dtype(compute_dtype).itemsize
    w = weights(skeleton, precision, compute_dtype)
    kv = kv_cache_bytes(arch, settings.batch_size, settings.seq_len, act)
    acts = inference_activation_bytes(arch, settings.batch_size, settings.seq_len, act,
                                      precision.scheme, largest_linear(skeleton))
    context = settings.context_bytes
    if context is None:
        context = CUDA_CONTEXT_BYTES if settings.device.startswith("cuda") else 0
    peak = max(w["weights_bytes"], w["run_weights_bytes"]) + kv + acts
    result = PrecisionEstimate(
        precision=precision.name, parameters=arch.parameters, **w, kv_cache_bytes=kv,
        activations_bytes=acts, context_bytes=context, peak_inference_bytes=peak,
        inference_total_bytes=peak + context,
    )
    if settings.train:
        result.training, result.training_note = training(skeleton, precision, compute_dtype,
                                                          settings)
    if settings.gpus > 1:
        result.gpu_split = gpu_split(skeleton, precision, compute_dtype, settings)
        result.per_gpu_inference_bytes = per_gpu_inference_bytes(result, arch)
    result.fits = gpu_fits(result)
    return result


def default_precisions(device: str = "cuda") -> list[str]:
    """Every row that is a size, not a placement (int8-offload is int8 spilled to the CPU), and
    that runs on `device`."""
    on_gpu = device.startswith("cuda")
    return [name for name, p in PRECISIONS.items()
            if not p.scheme.offloads and (on_gpu or not p.needs_gpu)]


def estimate(model: str, precisions: list[str] | str | None = None,
             settings: EstimateSettings | None = None, *, config: Any = None) -> Estimate:
    """Memory for MODEL in each precision, from its config alone (HF id, folder or alias)."""
    from quantbench.models import load_config

    settings = settings or EstimateSettings()
    check_settings(settings)
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    chosen = [get_precision(p) for p in dict.fromkeys(precisions or default_precisions(settings.device))]
    config = config if config is not None else load_config(model, settings.trust_remote_code)
    skeleton = build_skeleton(config, settings.skip_modules)
    compute_dtype = resolve_compute_dtype(settings.compute_dtype, settings.device)
    results = [estimate_precision(skeleton, p, settings, compute_dtype) for p in chosen]
    return Estimate(
        model=model, architecture=skeleton.arch, settings=settings,
        compute_dtype=str(compute_dtype).removeprefix("torch."), precisions=results,
        notes=_notes(skeleton.arch, settings, results, compute_dtype),
    )


def _notes(arch: Architecture, settings: EstimateSettings, results: list[PrecisionEstimate],
           compute_dtype: torch.dtype) -> list[str]:
    notes = []
    if settings.device.startswith("cuda"):
        context = results[0].context_bytes if results else CUDA_CONTEXT_BYTES
        notes.append(f"inference totals include {context // MIB} MiB for the CUDA context, which "
                     "torch.cuda.max_memory_allocated does not report")
    expanded = [r.precision for r in results if r.run_weights_bytes > r.weights_bytes]
    if expanded:
        notes.append(f"{', '.join(expanded)}: transformers expands the packed weights to dense "
                     f"{str(compute_dtype).removeprefix('torch.')} on the first forward, so the peak "
                     "counts the unquantized model's weights (int4 kernels: vLLM)")
    if arch.tied_embeddings:
        notes.append("input and output embeddings are tied: counted once")
    if settings.train and settings.train != "full":
        notes.append(f"LoRA r={settings.lora_r} on every linear of the blocks, fp32 adapters")
    if any(r.training and r.training.paged_optimizer_bytes for r in results):
        notes.append("paged optimizer states live in CUDA unified memory and can spill to host "
                     "RAM under pressure; they are counted in full here")
    return notes

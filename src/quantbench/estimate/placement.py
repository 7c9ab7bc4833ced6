"""Where device_map='auto' puts each block over N equal GPUs, and what fits which GPU."""

from __future__ import annotations

import copy
import logging
import re
import warnings
from typing import Any

import torch

from quantbench.estimate.records import EstimateSettings, GpuShare, PrecisionEstimate
from quantbench.estimate.skeleton import Architecture, Skeleton
from quantbench.estimate.storage import module_bytes, tensor_bytes
from quantbench.precisions import LoadOptions, Precision
from quantbench.units import MIB

# Driver context, cuBLAS/cuDNN handles and loaded kernels: memory that torch's allocator never
# reports. Measured on H100 + CUDA 12 with lazy module loading at 450-550 MiB.
CUDA_CONTEXT_BYTES = 512 * MIB
# Total memory as nvidia-smi reports it (what the driver can hand out, before the context).
GPUS: dict[str, int] = {
    "T4 16GB": 15360 * MIB,
    "L4 24GB": 23034 * MIB,
    "RTX 4090 24GB": 24564 * MIB,
    "A100 40GB": 40960 * MIB,
    "A100 80GB": 81920 * MIB,
    "H100 80GB": 81559 * MIB,
    "H200 141GB": 143771 * MIB,
}


class _Quiet:
    """accelerate warns about every GPU index this machine does not have: expected here."""

    def __enter__(self) -> None:
        self._levels = {n: logging.getLogger(n).level for n in ("accelerate", "transformers")}
        for name in self._levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


class _SchemeSizes:
    """What accelerate asks a transformers quantizer while placing modules, answered from the
    scheme: bytes per element of each tensor, and the memory the backend keeps in reserve."""

    def __init__(self, skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype,
                 hf_quantizer: Any) -> None:
        self._per_element = {t.name: tensor_bytes(t, precision, compute_dtype)[0] / max(t.numel, 1)
                             for t in skeleton.tensors}
        self._hf_quantizer = hf_quantizer

    def param_element_size(self, model: Any, name: str, param: torch.Tensor) -> float:
        return self._per_element.get(name, param.element_size())

    def adjust_max_memory(self, max_memory: dict[Any, int]) -> dict[Any, int]:
        if self._hf_quantizer is None:
            return max_memory
        return self._hf_quantizer.adjust_max_memory(max_memory)


def _hf_quantizer(precision: Precision, options: LoadOptions, compute_dtype: torch.dtype) -> Any:
    config = precision.scheme.hf_config(options, compute_dtype)
    if config is None:
        return None
    from transformers.quantizers import AutoHfQuantizer

    return AutoHfQuantizer.from_config(config)


def gpu_split(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype,
              settings: EstimateSettings) -> list[GpuShare]:
    """Where device_map='auto' would put each block over N equal GPUs, and the bytes per GPU."""
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    sizes = module_bytes(skeleton, precision, compute_dtype)
    running = module_bytes(skeleton, precision, compute_dtype, running=True)
    model = copy.deepcopy(skeleton.model)
    cap = settings.gpu_memory_bytes or 2 * sum(sizes.values())
    max_memory: dict[Any, int] = {i: cap for i in range(settings.gpus)}
    max_memory["cpu"] = 2**50  # whatever does not fit the GPUs lands here, and is reported
    with _Quiet():
        options = LoadOptions(skip_modules=settings.skip_modules)
        quantizer = _SchemeSizes(skeleton, precision, compute_dtype,
                                 _hf_quantizer(precision, options, compute_dtype))
        no_split = model._no_split_modules
        # the same three steps from_pretrained(device_map="auto") takes
        balanced = get_balanced_memory(model, max_memory=max_memory,
                                       no_split_module_classes=no_split, hf_quantizer=quantizer)
        balanced = quantizer.adjust_max_memory(balanced)
        device_map = infer_auto_device_map(model, max_memory=balanced,
                                           no_split_module_classes=no_split, hf_quantizer=quantizer)
    shares: dict[str, GpuShare] = {}
    for prefix, device in device_map.items():
        key = f"cuda:{device}" if isinstance(device, int) else str(device)
        share = shares.setdefault(key, GpuShare(key, 0, []))
        share.modules.append(prefix)
        mine = [name for name in sizes if not prefix or name == prefix or name.startswith(prefix + ".")]
        share.weights_bytes += sum(sizes[name] for name in mine)
        share.run_weights_bytes += sum(running[name] for name in mine)
    return sorted(shares.values(), key=lambda s: (not s.device.startswith("cuda"), s.device))


def _layers_in(share: GpuShare) -> int:
    return sum(1 for m in share.modules if re.search(r"layers\.\d+$", m))


def per_gpu_inference_bytes(result: PrecisionEstimate, arch: Architecture) -> int:
    """The busiest GPU: its weights, its layers' KV cache, one layer's activations, context."""
    if not result.gpu_split:
        return result.inference_total_bytes
    gpus = [s for s in result.gpu_split if s.device.startswith("cuda")]
    return max(
        max(s.weights_bytes, s.run_weights_bytes) + result.kv_cache_bytes * _layers_in(s) // arch.layers
        + result.activations_bytes + result.context_bytes
        for s in gpus
    )


def gpu_fits(result: PrecisionEstimate) -> dict[str, dict[str, int | None]]:
    """Headroom in bytes per common GPU (negative: does not fit) for inference and training."""
    need = result.per_gpu_inference_bytes or result.inference_total_bytes
    offloaded = any(not s.device.startswith("cuda") for s in result.gpu_split)
    fits = {}
    for name, total in GPUS.items():
        train = None
        if result.training is not None:
            train = total - result.training.peak_bytes - result.context_bytes
        fits[name] = {"inference": None if offloaded else total - need, "training": train}
    return fits
